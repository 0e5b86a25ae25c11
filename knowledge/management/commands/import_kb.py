"""manage.py import_kb: restore a knowledge base from an archive written by export_kb."""

from __future__ import annotations

from pathlib import Path

from asgiref.sync import async_to_sync
from django.core.management.base import BaseCommand, CommandError, CommandParser

from knowledge.management.progress import Progress
from knowledge.transfer.import_ import BATCH_SIZE, ImportReport, ImportService
from search.errors import KbsiteError
from search.plurals import counted, noun
from search.qdrant import qdrant_service


class Command(BaseCommand):
    help = (
        "Restore a knowledge base from an archive written by export_kb, as a new knowledge base, with the "
        "archive's vectors (nothing is embedded) or, with --re-embed, chunked and embedded again from the "
        "stored text. A damaged archive is refused before anything is written."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("archive", metavar="FILE", help="The archive export_kb wrote.")
        parser.add_argument("--slug", help="The new knowledge base's slug (default: the archive's).")
        parser.add_argument(
            "--re-embed",
            action="store_true",
            help="Chunk and embed the documents again with this site's model (needed when the archive's "
            "model or vector size differs from the site's).",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=BATCH_SIZE,
            metavar="N",
            help=f"Chunks written at a time (default {BATCH_SIZE}).",
        )

    def handle(
        self,
        *args,
        archive: str,
        slug: str | None,
        re_embed: bool,
        batch_size: int,
        verbosity: int,
        **options,
    ) -> None:
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        service = ImportService(batch_size=batch_size)
        progress = Progress(
            self.stdout, total=0, unit="documents" if re_embed else "chunks", verbosity=verbosity
        )
        # One event loop for the whole import, so one Qdrant client serves every step.
        report = async_to_sync(self._import)(
            service=service, path=Path(archive), slug=slug, re_embed=re_embed, progress=progress
        )
        progress.finish()
        if report.unknown_users and verbosity >= 1:
            self.stdout.write(
                f"Not members here (no such users, none created): {', '.join(report.unknown_users)}"
            )
        if not report.kept_ids and verbosity >= 1:
            self.stdout.write(
                "The archive's ids are taken here (a copy beside the original?): new ones were given."
            )
        rate = report.chunks / report.seconds if report.seconds else 0
        summary = (
            f"Imported {report.kb.slug!r}: {counted(report.ready, 'document')} ready with "
            f"{counted(report.chunks, 'chunk')}, {counted(report.members, 'member')}, in {report.seconds:.1f}s "
            f"({rate:.0f} chunks/s)"
        )
        if report.queued:
            summary += f"; {counted(report.queued, 'document')} {noun(report.queued, 'is', 'are')} queued for the workers"
        self.stdout.write(self.style.SUCCESS(summary + "."))
        if report.failed:
            reasons = "\n".join(f"  {d.title} ({d.pk}): {d.error}" for d in report.failed)
            raise CommandError(f"{counted(len(report.failed), 'document')} failed:\n{reasons}")

    async def _import(
        self, *, service: ImportService, path: Path, slug: str | None, re_embed: bool, progress: Progress
    ) -> ImportReport:
        try:
            await qdrant_service.check_available()
        except KbsiteError as exc:
            raise CommandError(exc.message) from exc

        def on_progress(done: int, total: int) -> None:
            progress.total = total
            progress.advance(done - progress.done)

        try:
            return await service.import_knowledge_base(path=path, slug=slug, re_embed=re_embed, on_progress=on_progress)
        except KbsiteError as exc:
            progress.finish()
            raise CommandError(exc.message) from exc
