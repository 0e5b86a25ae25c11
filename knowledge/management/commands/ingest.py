"""manage.py ingest: load files and folders into a knowledge base and index them."""

from __future__ import annotations

from asgiref.sync import async_to_sync, sync_to_async
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from knowledge.errors import KnowledgeError
from knowledge.ingestion.file_import import (
    FileImportService,
    FileOutcome,
    FoundFile,
    PassedOver,
    PipelinedIndexing,
    Problems,
)
from knowledge.ingestion.worker import new_worker_id
from knowledge.management.progress import Progress
from knowledge.models import KnowledgeBase
from knowledge.services.document_metadata import clean_tags, parse_metadata_pairs
from knowledge.services.knowledge_bases import KnowledgeBaseService
from search.errors import SearchError
from search.qdrant import qdrant_service


class Command(BaseCommand):
    help = (
        "Load files (.txt .md .html .pdf .docx) and folders into a knowledge base, then index them here, "
        "showing progress, until each is ready or failed. With --enqueue, only queue them for the workers."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("paths", nargs="+", help="Files and folders to load.")
        parser.add_argument("--kb", required=True, metavar="SLUG", help="The knowledge base to load into.")
        parser.add_argument("--recursive", action="store_true", help="Descend into sub-folders.")
        parser.add_argument("--create", action="store_true", help="Create the knowledge base if there is none.")
        parser.add_argument("--name", help="Name of the knowledge base --create makes (default: the slug).")
        parser.add_argument(
            "--owner", metavar="USERNAME", help="Owner of the knowledge base --create makes (default: superusers only)."
        )
        parser.add_argument(
            "--tag",
            action="append",
            dest="tags",
            metavar="TAG",
            help="A tag for every file loaded (repeat for several); searches can filter on tags.",
        )
        parser.add_argument(
            "--meta",
            action="append",
            metavar="KEY=VALUE",
            help="Metadata for every file loaded (repeat for several): 2024 is a number, true a boolean, "
            '\'"2024"\' text, 2024-05-17 a date (ISO 8601 text). Searches can filter on it.',
        )
        parser.add_argument(
            "--enqueue",
            action="store_true",
            help="Only record the documents for running workers (no Qdrant access needed): the way to "
            "add files while the server holds the embedded store.",
        )

    def handle(self, *args, paths: list[str], kb: str, recursive: bool, create: bool, name: str | None,
               owner: str | None, enqueue: bool, tags: list[str] | None, meta: list[str] | None,
               verbosity: int, **options) -> None:
        importer = FileImportService()
        try:
            # Labels first: a typing mistake in them should stop the command before anything is loaded.
            labels = {
                "tags": clean_tags(tags) if tags else None,
                "metadata": parse_metadata_pairs(meta) if meta else None,
            }
            # A first walk counts the files (for the progress bar) and finds a missing path before
            # anything is loaded; the second loads them, reading each in its turn.
            file_count, passed_over, example = 0, 0, None
            for item in importer.sources(paths, recursive=recursive):
                if isinstance(item, FoundFile):
                    file_count += 1
                elif item.reason != PassedOver.HIDDEN:
                    passed_over += 1
                    example = example or item
        except KnowledgeError as exc:
            raise CommandError(exc.message) from exc
        if passed_over and verbosity >= 1:
            self.stdout.write(
                f"Passed over {_count(passed_over, 'file')} kbsite cannot read, "
                f"e.g. {example.path} ({example.reason})."
            )
        if not file_count:
            raise CommandError("Found no files to load (.txt .md .html .pdf .docx); use --recursive for sub-folders.")
        run = _Run(self, total=file_count, verbosity=verbosity)
        knowledge_base = async_to_sync(self._load)(
            run, importer, paths, recursive=recursive, labels=labels, enqueue=enqueue,
            kb=kb, create=create, name=name, owner=owner,
        )
        seconds = run.progress.finish()
        tally = run.tally
        added = tally["queued"] + tally["updated"]
        if enqueue:
            self.stdout.write(
                self.style.SUCCESS(
                    f"Queued {_count(added, 'document')} in {knowledge_base.slug!r} for the "
                    f"workers ({_count(tally['duplicate'], 'duplicate')}, {tally['rejected']} rejected)."
                )
            )
        else:
            verb = "is" if file_count == 1 else "are"
            summary = (
                f"{tally['ready']} of {_count(file_count, 'file')} {verb} ready in "
                f"{knowledge_base.slug!r}"
            )
            if tally["duplicate"]:
                summary += f"; {tally['duplicate']} {'was' if tally['duplicate'] == 1 else 'were'} already there"
            if tally["elsewhere"]:
                summary += f"; {tally['elsewhere']} being indexed by another worker"
            self.stdout.write(
                self.style.SUCCESS(f"{summary}. {_count(run.chunks, 'chunk')} embedded in {seconds:.1f}s.")
            )
        problems = run.problems
        if problems.count:
            reasons = "\n".join(f"  {o.path}: {o.message}" for o in problems.listed)
            if problems.count > len(problems.listed):
                reasons += f"\n  … and {problems.count - len(problems.listed)} more (see the lines above)."
            raise CommandError(
                f"{problems.count} of {_count(file_count, 'file')} failed:\n{reasons}"
            )

    async def _load(self, run: _Run, importer: FileImportService, paths: list[str], *, recursive: bool,
                    labels: dict, enqueue: bool, kb: str, create: bool, name: str | None,
                    owner: str | None) -> KnowledgeBase:
        """The command's one async entry point: one event loop, so one Qdrant client, for the whole load."""
        if not enqueue:
            await self._check_qdrant()
        # Only now, with files to load and a Qdrant to load them into, may --create make the KB.
        knowledge_base = await sync_to_async(self._knowledge_base)(kb, create=create, name=name, owner=owner)
        await run.load(importer, knowledge_base, importer.sources(paths, recursive=recursive), labels, enqueue)
        return knowledge_base

    def _knowledge_base(self, slug: str, *, create: bool, name: str | None, owner: str | None) -> KnowledgeBase:
        existing = KnowledgeBase.objects.filter(slug=slug).first()
        if existing is not None:
            if owner:
                self.stdout.write(f"{slug!r} exists already: --owner applies only to a knowledge base --create makes.")
            return existing
        if not create:
            raise CommandError(f"There is no knowledge base {slug!r}; add --create to make it.")
        owner_user = None
        if owner:
            owner_user = get_user_model().objects.filter(username=owner).first()
            if owner_user is None:
                raise CommandError(f"There is no user {owner!r} to own the knowledge base.")
        try:
            created = KnowledgeBaseService().create_knowledge_base(name=name or slug, slug=slug, owner=owner_user)
        except KnowledgeError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"Created the knowledge base {created.slug!r}.")
        return created

    async def _check_qdrant(self) -> None:
        try:
            await qdrant_service.check_available()
        except SearchError as exc:
            raise CommandError(
                f"{exc.message}\nNothing was loaded. To queue the files for the server's worker instead, add --enqueue."
            ) from exc


def _count(number: int, noun: str) -> str:
    return f"{number} {noun if number == 1 else noun + 's'}"


class _Run:
    """One ingest's loading and indexing, with its progress bar (files and chunks) and its tally."""

    def __init__(self, command: Command, *, total: int, verbosity: int) -> None:
        self.progress = Progress(command.stdout, total=total, unit="files", verbosity=verbosity)
        self.verbosity = verbosity
        self.tally = dict.fromkeys(("queued", "updated", "duplicate", "rejected", "ready", "elsewhere"), 0)
        self.problems = Problems()
        self.chunks = 0

    async def load(self, importer: FileImportService, kb: KnowledgeBase, sources, labels: dict, enqueue: bool) -> None:
        async def added(item: FileOutcome | PassedOver) -> None:
            if isinstance(item, PassedOver):
                return
            self.tally[item.status] += 1
            if item.status in ("duplicate", "rejected"):
                if item.status == "rejected":
                    self.problems.add(item)
                if self.verbosity >= 1:
                    self.progress.line(f"{item.status}: {item.message}")
                self.progress.advance(1, detail=item.path.name)
            elif indexing is None:
                self.progress.advance(1, detail=item.path.name)
            else:
                await indexing.add(item)

        if enqueue:
            indexing = None
            await importer.aadd_files(kb=kb, sources=sources, on_added=added, **labels)
            return
        async with PipelinedIndexing(on_done=self._done, on_chunks=self._embedded, worker_id=new_worker_id()) as indexing:
            await importer.aadd_files(kb=kb, sources=sources, on_added=added, **labels)

    def _done(self, outcome: FileOutcome) -> None:
        name = outcome.document.source_name
        self.tally[outcome.status] = self.tally.get(outcome.status, 0) + 1
        if outcome.status == "elsewhere":
            self.progress.line(f"{name}: taken by another worker, which will finish it")
        elif outcome.status == "failed":
            self.problems.add(outcome)
            self.progress.line(f"{name}: {outcome.document.status}: {outcome.message}")
        elif not self.progress.on_terminal:
            self.progress.line(f"{name}: ready, {_count(outcome.document.chunk_count, 'chunk')}")
        self.progress.advance(1, detail=f"{_count(self.chunks, 'chunk')} | {name}")

    def _embedded(self, count: int) -> None:
        self.chunks += count
        self.progress.advance(0, detail=f"{_count(self.chunks, 'chunk')}")
