"""manage.py export_kb: write a knowledge base to one archive, vectors included, to restore with import_kb."""

from __future__ import annotations

from pathlib import Path

from asgiref.sync import async_to_sync
from django.core.management.base import BaseCommand, CommandError, CommandParser

from knowledge.management.progress import Progress
from knowledge.management.prompts import confirm
from knowledge.models import DocumentStatus, KnowledgeBase
from knowledge.transfer.export import ExportReport, ExportService
from search.errors import KbsiteError
from search.plurals import counted
from search.qdrant import qdrant_service


class Command(BaseCommand):
    help = (
        "Write a knowledge base to one archive (a zip): its settings, members by user name, documents with "
        "their "
        "text, and the chunks of the ready ones with their vectors, so import_kb embeds nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug", help="The knowledge base to export.")
        parser.add_argument("--output", "-o", required=True, metavar="FILE", help="The archive to write.")
        parser.add_argument(
            "--no-input",
            "--noinput",
            action="store_false",
            dest="interactive",
            help="Replace FILE without asking.",
        )

    def handle(self, *args, slug: str, output: str, interactive: bool, verbosity: int, **options) -> None:
        kb = KnowledgeBase.objects.filter(slug=slug).first()
        if kb is None:
            known = (
                ", ".join(KnowledgeBase.objects.order_by("slug").values_list("slug", flat=True)[:20])
                or "none yet"
            )
            raise CommandError(f"No knowledge base {slug}. Known: {known}.")
        path = Path(output)
        if not path.parent.is_dir():
            raise CommandError(f"There is no folder {path.parent} to write {path.name} into.")
        if path.exists() and interactive:
            confirm(f"{path} exists. Replace it?", command="export_kb")
        total = sum(kb.documents.filter(status=DocumentStatus.READY).values_list("chunk_count", flat=True))
        progress = Progress(self.stdout, total=total, unit="chunks", verbosity=verbosity)
        # One event loop for the whole export, so one Qdrant client serves every step.
        report = async_to_sync(self._export)(kb=kb, path=path, progress=progress)
        progress.finish()
        for title in report.changed if verbosity >= 1 else ():
            self.stdout.write(
                f"{title}: changed while it was read; exported with its text, to be indexed on import"
            )
        rate = report.chunks / report.seconds if report.seconds else 0
        self.stdout.write(
            self.style.SUCCESS(
                f"Exported {kb.slug!r} to {path}: {counted(report.documents, 'document')} ({report.ready} with their "
                f"{counted(report.chunks, 'chunk')}), {counted(report.memberships, 'member')}, in {report.seconds:.1f}s "
                f"({rate:.0f} chunks/s)."
            )
        )

    async def _export(self, *, kb: KnowledgeBase, path: Path, progress: Progress) -> ExportReport:
        try:
            await qdrant_service.check_available()
        except KbsiteError as exc:
            raise CommandError(exc.message) from exc
        try:
            return await ExportService().export_knowledge_base(
                kb=kb, path=path, on_progress=lambda done, _: progress.advance(done - progress.done)
            )
        except KbsiteError as exc:
            progress.finish()
            raise CommandError(f"{exc.message}\nNo archive was written.") from exc
