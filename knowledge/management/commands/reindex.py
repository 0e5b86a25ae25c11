"""manage.py reindex: chunk and embed documents again from their stored text."""

from __future__ import annotations

import uuid

from asgiref.sync import async_to_sync
from django.core.management.base import BaseCommand, CommandError, CommandParser

from knowledge.ingestion.pipeline import IngestionService, IngestionSettings
from knowledge.ingestion.worker import new_worker_id
from knowledge.management.progress import Progress
from knowledge.management.prompts import confirm
from knowledge.models import Document, KnowledgeBase
from knowledge.services.reindex import ReindexReport, ReindexService
from search.embedding.registry import embedders
from search.errors import SearchError
from search.plurals import counted, noun
from search.qdrant import qdrant_service


class Command(BaseCommand):
    help = (
        "Chunk and embed documents again from their stored text (after changing chunk settings, say). "
        "With --recreate, build each knowledge base into a new collection and switch to it at once, "
        "as needed after changing the embedding model; searches keep working meanwhile. With --enqueue, "
        "only queue the documents for a running server's worker."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--kb", action="append", default=[], metavar="SLUG", help="A KB to reindex (repeatable); default all.")
        parser.add_argument("--document", type=uuid.UUID, metavar="ID", help="Reindex only this document.")
        parser.add_argument("--recreate", action="store_true", help="Build new collections and switch the KBs to them.")
        parser.add_argument(
            "--model",
            metavar="NAME",
            help="With --recreate: move the KBs to this embedding model (the built-in one or an endpoint named in "
            "EMBEDDERS_JSON); default: each keeps its own if configured, else takes the built-in one.",
        )
        parser.add_argument(
            "--enqueue",
            action="store_true",
            help="Only queue the documents for the workers (the server's, with the embedded store): needs no store.",
        )
        parser.add_argument("--batch-size", type=int, default=64, metavar="N", help="Chunks embedded and written at a time (default 64).")
        parser.add_argument("--no-input", "--noinput", action="store_false", dest="interactive", help="Do not ask for confirmation.")

    def handle(self, *args, kb: list[str], document: uuid.UUID | None, recreate: bool, enqueue: bool, batch_size: int,
               interactive: bool, verbosity: int, model: str | None = None, **options) -> None:
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        if model is not None and not recreate:
            raise CommandError(
                "--model moves knowledge bases to another embedding model, which needs new vectors in that model's "
                "collection: use it with --recreate."
            )
        if model is not None and not embedders.is_configured(model):
            raise CommandError(
                f"No embedder named {model!r} is configured; the site has {', '.join(embedders.names())}. "
                "Add it to EMBEDDERS_JSON first."
            )
        if document and (recreate or kb):
            raise CommandError("--document reindexes one document in place: use it without --kb and --recreate.")
        if enqueue and recreate:
            raise CommandError(
                "--recreate builds new collections, which needs the store: stop the server and run it without "
                "--enqueue. --enqueue alone queues the documents to be chunked and embedded again in place."
            )
        knowledge_bases = self._knowledge_bases(kb)
        documents = Document.objects.filter(knowledge_base__in=knowledge_bases)
        if document:
            documents = documents.filter(pk=document)
            if not documents.exists():
                raise CommandError(f"There is no document {document}.")
        total = documents.count()
        if interactive:
            what = (
                f"Rebuild {counted(len(knowledge_bases), 'knowledge base')} ({counted(total, 'document')}) "
                f"into new collections{f' of {model}' if model else ''}?"
                if recreate
                else f"{'Queue' if enqueue else 'Chunk and embed'} {counted(total, 'document')} again?"
            )
            confirm(what, command="reindex")
        service = ReindexService(ingestion=IngestionService(config=IngestionSettings.from_settings(batch_size=batch_size)))
        ids = list(documents.order_by("knowledge_base_id", "pk").values_list("pk", flat=True))
        if enqueue:
            try:
                queued = service.queue_in_place(document_ids=ids)
            except SearchError as exc:
                raise CommandError(exc.message) from exc
            self.stdout.write(
                self.style.SUCCESS(f"Queued {counted(queued, 'document')}; the workers chunk and embed them again.")
            )
            return
        progress = Progress(self.stdout, total=total, unit="documents", verbosity=verbosity)
        # One event loop for the whole run, so one Qdrant client serves every step.
        reports = async_to_sync(self._reindex)(
            service=service,
            knowledge_bases=knowledge_bases if recreate else None,
            ids=ids,
            progress=progress,
            model=model,
        )
        seconds = progress.finish()
        indexed, chunks = sum(r.indexed for r in reports), sum(r.chunks for r in reports)
        failed = [d for r in reports for d in r.failed]
        busy = sum(r.busy for r in reports)
        summary = f"Reindexed {counted(indexed, 'document')} ({counted(chunks, 'chunk')}) in {seconds:.1f}s"
        if busy:
            summary += f"; {busy} {noun(busy, 'was', 'were')} being processed by a worker and left to it"
        self.stdout.write(self.style.SUCCESS(summary + "."))
        if failed:
            reasons = "\n".join(f"  {d.title} ({d.pk}): {d.error}" for d in failed)
            raise CommandError(f"{counted(len(failed), 'document')} failed:\n{reasons}")

    async def _reindex(
        self,
        *,
        service: ReindexService,
        knowledge_bases: list[KnowledgeBase] | None,
        ids: list[uuid.UUID],
        progress: Progress,
        model: str | None = None,
    ) -> list[ReindexReport]:
        """Every knowledge base rebuilt (`knowledge_bases` given) or the documents reindexed in place."""
        try:
            await qdrant_service.check_available()
        except SearchError as exc:
            hint = (
                "\nWhile the server holds the embedded store, queue the documents for its worker instead: "
                "`manage.py reindex --enqueue` with the same --kb or --document (or the admin's “Chunk and "
                "embed again” action); --recreate needs the server stopped."
                if qdrant_service.config.is_local
                else ""
            )
            raise CommandError(exc.message + hint) from exc
        worker_id = new_worker_id()

        def on_progress(doc, done, chunks_total):
            if done == chunks_total:
                progress.advance(1, detail=doc.title)
            else:
                progress.advance(0, detail=f"{doc.title} {done}/{counted(chunks_total, 'chunk')}")

        reports: list[ReindexReport] = []
        try:
            if knowledge_bases is None:
                reports.append(await service.reindex_in_place(document_ids=ids, worker_id=worker_id, on_progress=on_progress))
            for knowledge_base in knowledge_bases or ():
                report = await service.rebuild(
                    kb=knowledge_base, worker_id=worker_id, on_progress=on_progress, model=model
                )
                reports.append(report)
                progress.line(
                    f"{knowledge_base.slug}: switched to generation {report.generation} in {report.collection}, "
                    f"{counted(report.indexed, 'document')}, "
                    f"{counted(report.chunks, 'chunk')}; {report.requeued} changed meanwhile and "
                    f"{noun(report.requeued, 'was', 'were')} queued again"
                )
        except SearchError as exc:
            progress.finish()
            raise CommandError(f"{exc.message}\nThe knowledge bases keep their previous collections.") from exc
        return reports

    def _knowledge_bases(self, slugs: list[str]) -> list[KnowledgeBase]:
        if not slugs:
            return list(KnowledgeBase.objects.order_by("slug"))
        found = {kb.slug: kb for kb in KnowledgeBase.objects.filter(slug__in=slugs)}
        missing = [slug for slug in slugs if slug not in found]
        if missing:
            known = ", ".join(KnowledgeBase.objects.order_by("slug").values_list("slug", flat=True)[:20]) or "none yet"
            raise CommandError(f"No knowledge base {', '.join(missing)}. Known: {known}.")
        return [found[slug] for slug in slugs]
