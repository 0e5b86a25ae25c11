"""manage.py sync_folder: keep a knowledge base in step with a folder (new files in, changed re-indexed, gone archived)."""

from __future__ import annotations

from pathlib import Path

from asgiref.sync import async_to_sync
from django.core.management.base import BaseCommand, CommandError, CommandParser

from knowledge.errors import KnowledgeError
from knowledge.management.progress import Progress
from knowledge.models import KnowledgeBase
from knowledge.services.folder_sync import (
    PER_FILE,
    Change,
    FolderSync,
    FolderSyncService,
    SyncEvent,
    SyncReport,
    WhenGone,
)
from search.errors import SearchError
from search.qdrant import qdrant_service

# Printed as they happen (verbosity 1); unchanged files only at verbosity 2.
_QUIET = {Change.UNCHANGED}
_ORDER = (
    Change.NEW, Change.CHANGED, Change.RESUMED, Change.MOVED, Change.RESTORED, Change.ARCHIVED, Change.DELETED,
    Change.UNCHANGED, Change.DUPLICATE, Change.REFUSED, Change.STILL_FAILED, Change.UNREADABLE, Change.POSTPONED,
    Change.READY, Change.FAILED,
)  # fmt: skip


class Command(BaseCommand):
    help = (
        "Bring a knowledge base in step with a folder and its sub-folders: new files are added, changed ones "
        "(by content hash) re-indexed in place, files gone from the folder archived (or deleted with "
        "--when-gone delete), unchanged ones left alone. Safe to run again at any time, and to interrupt."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("folder", help="The folder to keep the knowledge base in step with.")
        parser.add_argument("--kb", required=True, metavar="SLUG", help="The knowledge base to keep in step.")
        parser.add_argument(
            "--when-gone",
            choices=[choice.value for choice in WhenGone],
            default=WhenGone.ARCHIVE.value,
            help="What becomes of a document whose file left the folder: archive (the default: out of "
            "searches, restored if the file comes back) or delete (for good).",
        )
        parser.add_argument("--dry-run", action="store_true", help="Say what would change; change nothing.")
        parser.add_argument(
            "--enqueue",
            action="store_true",
            help="Only record the changes for running workers (no Qdrant access needed): the way to sync "
            "while the server holds the embedded store. Archiving, restoring and deleting change Qdrant: "
            "they are reported as postponed and left for the next sync without --enqueue.",
        )
        parser.add_argument(
            "--allow-empty",
            action="store_true",
            help="Let a folder with no readable file archive or delete every document synced from it "
            "(without it, an empty folder, such as an unmounted share, changes nothing).",
        )

    def handle(self, *args, folder: str, kb: str, when_gone: str, dry_run: bool, enqueue: bool,
               allow_empty: bool, verbosity: int, **options) -> None:  # fmt: skip
        knowledge_base = KnowledgeBase.objects.filter(slug=kb).first()
        if knowledge_base is None:
            raise CommandError(f"There is no knowledge base {kb!r}; make it first (e.g. manage.py ingest --create).")
        request = FolderSync(
            folder=Path(folder),
            kb=knowledge_base,
            when_gone=WhenGone(when_gone),
            dry_run=dry_run,
            enqueue=enqueue,
            allow_empty=allow_empty,
        )
        service = FolderSyncService()
        total = service.count_files(request.folder) if request.folder.is_dir() else 0
        progress = Progress(self.stdout, total=total, unit="files", verbosity=verbosity)
        prefix = "would be " if dry_run else ""
        failed: list[SyncEvent] = []

        def show(event: SyncEvent) -> None:
            if event.change in (Change.FAILED, Change.REFUSED):
                failed.append(event)
            if event.change == Change.READY:
                if not progress.on_terminal:
                    progress.line(f"{event.source_name}: ready, {_count(event.chunks, 'chunk')}")
            elif event.change not in _QUIET or verbosity >= 2:
                detail = f" ({event.message})" if event.message else ""
                progress.line(f"{event.source_name}: {prefix}{event.change}{detail}")
            progress.advance(1 if event.change in PER_FILE else 0, detail=event.source_name)

        try:
            report = async_to_sync(self._sync)(service, request, show, check_qdrant=not (dry_run or enqueue))
        except KnowledgeError as exc:
            raise CommandError(exc.message) from exc
        seconds = progress.finish()
        self._passed_over(report, verbosity)
        summary = self._summary(report, dry_run)
        self.stdout.write(self.style.SUCCESS(f"{summary} ({seconds:.1f}s)."))
        if failed:
            reasons = "\n".join(f"  {event.source_name}: {event.message}" for event in failed[:50])
            raise CommandError(f"{_count(len(failed), 'file')} failed:\n{reasons}")

    @staticmethod
    async def _sync(service: FolderSyncService, request: FolderSync, on_event, *, check_qdrant: bool) -> SyncReport:
        """The command's one async entry point: one event loop, so one Qdrant client, for the whole sync."""
        if check_qdrant:
            try:
                await qdrant_service.check_available()
            except SearchError as exc:
                raise CommandError(
                    f"{exc.message}\nNothing was changed. To queue the changes for the server's worker instead, "
                    "add --enqueue."
                ) from exc
        return await service.async_folder(request=request, on_event=on_event)

    def _passed_over(self, report: SyncReport, verbosity: int) -> None:
        if verbosity < 1:
            return
        for reason, count in sorted(report.passed_over.items()):
            self.stdout.write(f"Passed over {_count(count, 'entry')} ({reason}), e.g. {report.examples[reason]}.")
        if unreadable := report.changes[Change.UNREADABLE]:
            self.stdout.write(f"Could not read {_count(unreadable, 'file')}: check their permissions.")

    @staticmethod
    def _summary(report: SyncReport, dry_run: bool) -> str:
        parts = [f"{report.changes[change]} {change}" for change in _ORDER if report.changes[change]]
        head = f"Compared {_count(report.files, 'file')}"
        if dry_run:
            return f"{head}; a sync would make: {', '.join(parts) or 'no change'}"
        made = f"; {_count(report.chunks, 'chunk')} embedded" if report.chunks else "; nothing embedded"
        return f"{head}: {', '.join(parts) or 'no change'}{made}"


def _count(number: int, noun: str) -> str:
    plural = noun[:-1] + "ies" if noun.endswith("y") else noun + "s"
    return f"{number} {noun if number == 1 else plural}"
