"""manage.py ingest: load files and folders into a knowledge base and index them."""

from __future__ import annotations

from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from knowledge.errors import KnowledgeError
from knowledge.ingestion.file_import import FileImportService
from knowledge.ingestion.pipeline import IngestionService
from knowledge.ingestion.worker import new_worker_id
from knowledge.management.progress import Progress
from knowledge.models import DocumentStatus, KnowledgeBase
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
            files, passed_over = importer.collect(paths, recursive=recursive)
        except KnowledgeError as exc:
            raise CommandError(exc.message) from exc
        if passed_over and verbosity >= 1:
            self.stdout.write(f"Passed over {len(passed_over)} files kbsite cannot read, e.g. {passed_over[0]}.")
        if not files:
            raise CommandError("Found no files to load (.txt .md .html .pdf .docx); use --recursive for sub-folders.")
        if not enqueue:
            self._check_qdrant()
        # Only now, with files to load and a Qdrant to load them into, may --create make the KB.
        knowledge_base = self._knowledge_base(kb, create=create, name=name, owner=owner)

        outcomes = importer.add_files(kb=knowledge_base, files=files, **labels)
        queued = [o for o in outcomes if o.document is not None]
        rejected = [o for o in outcomes if o.status == "rejected"]
        problems = list(rejected)
        for outcome in outcomes:
            if outcome.status in ("duplicate", "rejected") and verbosity >= 1:
                self.stdout.write(f"{outcome.status}: {outcome.message}")

        if enqueue:
            self.stdout.write(
                self.style.SUCCESS(
                    f"Queued {len(queued)} documents in {knowledge_base.slug!r} for the workers "
                    f"({len(outcomes) - len(queued) - len(rejected)} duplicates, {len(rejected)} rejected)."
                )
            )
        else:
            failed = self._process(queued, verbosity)
            problems += failed
            ready = len(queued) - len(failed)
            duplicates = len(outcomes) - len(queued) - len(rejected)
            summary = f"{ready} of {len(files)} files are ready in {knowledge_base.slug!r}"
            if duplicates:
                summary += f"; {duplicates} were already there"
            self.stdout.write(self.style.SUCCESS(summary + "."))
        if problems:
            reasons = "\n".join(f"  {o.path}: {o.message}" for o in problems)
            raise CommandError(f"{len(problems)} of {len(files)} files failed:\n{reasons}")

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

    def _check_qdrant(self) -> None:
        try:
            async_to_sync(qdrant_service.check_available)()
        except SearchError as exc:
            raise CommandError(
                f"{exc.message}\nNothing was loaded. To queue the files for the server's worker instead, add --enqueue."
            ) from exc

    def _process(self, outcomes, verbosity: int):
        """Index the queued documents here; returns the outcomes of those that failed, with the reason."""
        service, worker_id = IngestionService(), new_worker_id()
        progress = Progress(self.stdout, total=len(outcomes), unit="files", verbosity=verbosity)
        failed = []

        async def run() -> None:
            for outcome in outcomes:
                name = outcome.document.source_name
                document = await service.ingest_until_settled(
                    document_id=outcome.document.pk,
                    worker_id=worker_id,
                    on_progress=lambda _, done, total, name=name: progress.advance(
                        0, detail=f"{name} {done}/{total} chunks"
                    ),
                )
                if document is None:
                    progress.line(f"{name}: taken by another worker, which will finish it")
                elif document.status != DocumentStatus.READY:
                    failed.append(type(outcome)(path=outcome.path, status="failed", message=document.error))
                    progress.line(f"{name}: {document.status}: {document.error}")
                elif not progress.on_terminal:
                    progress.line(f"{name}: ready, {document.chunk_count} chunks")
                progress.advance(1, detail=name)

        async_to_sync(run)()
        seconds = progress.finish()
        if verbosity >= 2:
            self.stdout.write(f"Indexed {len(outcomes)} files in {seconds:.1f}s.")
        return failed
