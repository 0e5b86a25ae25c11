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
from search.errors import SearchError
from search.qdrant import qdrant_service


class Command(BaseCommand):
    help = (
        "Chunk and embed documents again from their stored text (after changing chunk settings, say). "
        "With --recreate, build each knowledge base into a new collection and switch to it at once, "
        "as needed after changing the embedding model; searches keep working meanwhile."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--kb", action="append", default=[], metavar="SLUG", help="A KB to reindex (repeatable); default all.")
        parser.add_argument("--document", type=uuid.UUID, metavar="ID", help="Reindex only this document.")
        parser.add_argument("--recreate", action="store_true", help="Build new collections and switch the KBs to them.")
        parser.add_argument("--batch-size", type=int, default=64, metavar="N", help="Chunks embedded and written at a time (default 64).")
        parser.add_argument("--no-input", "--noinput", action="store_false", dest="interactive", help="Do not ask for confirmation.")

    def handle(self, *args, kb: list[str], document: uuid.UUID | None, recreate: bool, batch_size: int,
               interactive: bool, verbosity: int, **options) -> None:
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        if document and (recreate or kb):
            raise CommandError("--document reindexes one document in place: use it without --kb and --recreate.")
        knowledge_bases = self._knowledge_bases(kb)
        documents = Document.objects.filter(knowledge_base__in=knowledge_bases)
        if document:
            documents = documents.filter(pk=document)
            if not documents.exists():
                raise CommandError(f"There is no document {document}.")
        total = documents.count()
        if interactive:
            what = (
                f"Rebuild {len(knowledge_bases)} knowledge bases ({total} documents) into new collections?"
                if recreate
                else f"Chunk and embed {total} documents again?"
            )
            confirm(what, command="reindex")
        try:
            async_to_sync(qdrant_service.check_available)()
        except SearchError as exc:
            hint = (
                "\nWhile the server holds the embedded store, queue documents for its worker with the admin's "
                "“Chunk and embed again” action (or POST …/reindex in the API); --recreate needs the server stopped."
                if qdrant_service.config.is_local
                else ""
            )
            raise CommandError(exc.message + hint) from exc

        service = ReindexService(ingestion=IngestionService(config=IngestionSettings.from_settings(batch_size=batch_size)))
        progress = Progress(self.stdout, total=total, unit="documents", verbosity=verbosity)
        worker_id = new_worker_id()

        def on_progress(doc, done, chunks_total):
            if done == chunks_total:
                progress.advance(1, detail=doc.title)
            else:
                progress.advance(0, detail=f"{doc.title} {done}/{chunks_total} chunks")

        reports: list[ReindexReport] = []
        try:
            if recreate:
                for knowledge_base in knowledge_bases:
                    report = async_to_sync(service.rebuild)(kb=knowledge_base, worker_id=worker_id, on_progress=on_progress)
                    reports.append(report)
                    progress.line(
                        f"{knowledge_base.slug}: switched to generation {report.generation} in {report.collection}, "
                        f"{report.indexed} documents, "
                        f"{report.chunks} chunks; {report.requeued} changed meanwhile and were queued again"
                    )
            else:
                ids = list(documents.order_by("knowledge_base_id", "pk").values_list("pk", flat=True))
                reports.append(async_to_sync(service.reindex_in_place)(document_ids=ids, worker_id=worker_id, on_progress=on_progress))
        except SearchError as exc:
            progress.finish()
            raise CommandError(f"{exc.message}\nThe knowledge bases keep their previous collections.") from exc
        seconds = progress.finish()
        indexed, chunks = sum(r.indexed for r in reports), sum(r.chunks for r in reports)
        failed = [d for r in reports for d in r.failed]
        busy = sum(r.busy for r in reports)
        summary = f"Reindexed {indexed} documents ({chunks} chunks) in {seconds:.1f}s"
        if busy:
            summary += f"; {busy} were being processed by a worker and left to it"
        self.stdout.write(self.style.SUCCESS(summary + "."))
        if failed:
            reasons = "\n".join(f"  {d.title} ({d.pk}): {d.error}" for d in failed)
            raise CommandError(f"{len(failed)} documents failed:\n{reasons}")

    def _knowledge_bases(self, slugs: list[str]) -> list[KnowledgeBase]:
        if not slugs:
            return list(KnowledgeBase.objects.order_by("slug"))
        found = {kb.slug: kb for kb in KnowledgeBase.objects.filter(slug__in=slugs)}
        missing = [slug for slug in slugs if slug not in found]
        if missing:
            known = ", ".join(KnowledgeBase.objects.order_by("slug").values_list("slug", flat=True)[:20]) or "none yet"
            raise CommandError(f"No knowledge base {', '.join(missing)}. Known: {known}.")
        return [found[slug] for slug in slugs]
