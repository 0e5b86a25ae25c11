"""Brings a knowledge base in step with a folder on disk: new files in, changed ones re-indexed, gone ones archived.

A file is known by its path within the folder (the document's source name) and compared by the
SHA-256 of its bytes (its content hash): an unchanged file costs a read and a hash, never an
embedding. Every change is one committed step, so a sync stopped anywhere leaves a knowledge base
that the next sync finishes: a document left pending by an interrupted run is indexed by the next,
and so is one a killed run was indexing (with the embedded store at once, else once its lease lapses).
The folder is walked lazily and compared in batches, so memory stays flat whatever its size.
"""

from __future__ import annotations

import enum
import hashlib
import stat
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path, PurePosixPath

from asgiref.sync import async_to_sync, sync_to_async
from django.db import transaction
from django.utils import timezone

from knowledge.errors import InvalidInput
from knowledge.ingestion.extraction import format_for
from knowledge.ingestion.file_import import (
    FileImportService,
    FileOutcome,
    FoundFile,
    PassedOver,
    PipelinedIndexing,
    walk_folder,
)
from knowledge.ingestion.pipeline import IngestionService
from knowledge.ingestion.worker import IngestionWorker, take_back_claims_of_earlier_processes
from knowledge.models import Document, DocumentStatus, KnowledgeBase
from knowledge.services.documents import DocumentService

# Files compared per database query, and documents looked at per query for files gone.
_BATCH = 500
_READ_BYTES = 1024 * 1024


class WhenGone(enum.StrEnum):
    """What becomes of a document whose file left the folder."""

    #: Out of searches, restorable (and restored by the next sync if the file comes back).
    ARCHIVE = "archive"
    #: Its row and its chunks removed for good.
    DELETE = "delete"


class Change(enum.StrEnum):
    NEW = "new"
    CHANGED = "changed"
    #: Indexing was interrupted (or is still due): indexed now.
    RESUMED = "resumed"
    #: The same content under a new path: renamed, nothing embedded.
    MOVED = "moved"
    #: An archived document whose file is back unchanged: restored, nothing embedded.
    RESTORED = "restored"
    UNCHANGED = "unchanged"
    ARCHIVED = "archived"
    DELETED = "deleted"
    #: The same content as another file of the folder: not added twice.
    DUPLICATE = "duplicate"
    #: Refused before indexing: too large, empty, a program.
    REFUSED = "refused"
    #: Failed to index (damaged, over the sandbox's budget).
    FAILED = "failed"
    #: The file could not be read (permissions): left alone, reported.
    UNREADABLE = "unreadable"
    #: Failed before, and the file has not changed since: left alone.
    STILL_FAILED = "still failed"
    #: Archiving, restoring or deleting changes Qdrant, which --enqueue leaves alone: the next sync does it.
    POSTPONED = "postponed"
    READY = "ready"


@dataclass(frozen=True)
class FolderSync:
    """One sync's request: which folder into which knowledge base, and how."""

    folder: Path
    kb: KnowledgeBase
    when_gone: WhenGone = WhenGone.ARCHIVE
    #: Say what would change and change nothing.
    dry_run: bool = False
    #: Only record the changes for the workers (no Qdrant access needed), as `ingest --enqueue`.
    enqueue: bool = False
    #: Let a folder with no file in it archive or delete every document synced from it.
    allow_empty: bool = False


@dataclass(frozen=True)
class SyncEvent:
    change: Change
    source_name: str
    message: str = ""
    chunks: int = 0


@dataclass
class SyncReport:
    changes: Counter = field(default_factory=Counter)
    #: Entries of the folder not synced, by reason (hidden, symbolic link, unsupported type, unreadable).
    passed_over: Counter = field(default_factory=Counter)
    #: One entry passed over per reason, to show.
    examples: dict[str, Path] = field(default_factory=dict)
    files: int = 0
    chunks: int = 0


class FolderSyncService:
    def __init__(
        self,
        *,
        documents: DocumentService | None = None,
        ingestion: IngestionService | None = None,
    ) -> None:
        self.documents = documents or DocumentService()
        self.importer = FileImportService(documents=self.documents)
        self.ingestion = ingestion

    @staticmethod
    def count_files(folder: Path) -> int:
        """How many files a sync of the folder compares (a walk reading no file), for a progress bar."""
        return sum(1 for entry in walk_folder(Path(folder).expanduser(), recursive=True) if isinstance(entry, FoundFile))

    @staticmethod
    def folder_key(folder: Path) -> str:
        """How documents record the folder they are synced from: its absolute path."""
        return str(Path(folder).expanduser().resolve())

    async def async_folder(
        self, *, request: FolderSync, on_event: Callable[[SyncEvent], None] = lambda event: None
    ) -> SyncReport:
        """Sync the folder into the KB (or, with dry_run, say what a sync would do); each change goes to on_event."""
        folder = Path(request.folder).expanduser()
        if not folder.is_dir():
            raise InvalidInput(f"{request.folder} is not a folder: give the folder to keep the knowledge base in step with.")
        key = self.folder_key(folder)
        report = SyncReport()

        def tell(event: SyncEvent) -> None:
            report.changes[event.change] += 1
            report.chunks += event.chunks
            on_event(event)

        def done(outcome: FileOutcome) -> None:
            name = outcome.document.source_name
            if outcome.status == "ready":
                tell(SyncEvent(Change.READY, name, chunks=outcome.document.chunk_count))
            elif outcome.status == "failed":
                tell(SyncEvent(Change.FAILED, name, outcome.message))

        indexing = None
        if not (request.dry_run or request.enqueue):
            worker = IngestionWorker(service=self.ingestion or IngestionService())
            # With the embedded store this process holds its lock, so no worker is alive to hold a claim:
            # what a killed sync (or server) was indexing is taken back now, not when its lease lapses.
            await take_back_claims_of_earlier_processes(worker)
            indexing = PipelinedIndexing(
                on_done=done, on_chunks=lambda count: None, service=worker.service, worker_id=worker.worker_id
            )
            await indexing.__aenter__()
        # A dry run renames nothing: the documents it would move must not look gone from their old path.
        moved_in_dry_run: set = set()
        try:
            files = _files(walk_folder(folder, recursive=True), report)
            while batch := await sync_to_async(lambda: list(islice(files, _BATCH)))():
                report.files += len(batch)
                for event, outcome in await sync_to_async(self._sync_batch)(request, key, batch):
                    if event.change == Change.RESTORED and request.enqueue and not request.dry_run:
                        event = _postponed(event.source_name, "back in the folder: restoring it")
                    elif event.change == Change.RESTORED and not request.dry_run:
                        await self._restore(outcome.document)
                    tell(event)
                    if request.dry_run and outcome is not None and outcome.status == "moved":
                        moved_in_dry_run.add(outcome.document.pk)
                    if outcome is not None and indexing is not None and event.change in _TO_INDEX:
                        await indexing.add(outcome)
        except BaseException as exc:
            if indexing is not None:
                await indexing.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        if indexing is not None:
            await indexing.__aexit__(None, None, None)
        if report.files == 0 and not request.allow_empty:
            if await Document.objects.filter(knowledge_base=request.kb, source_folder=key).aexists():
                raise InvalidInput(
                    f"{folder} holds no file kbsite reads, yet {request.kb.name!r} has documents synced from it: "
                    "if the folder is meant to be empty (not an unmounted share), run again with --allow-empty."
                )
        await self._handle_gone(request, key, folder, tell, moved_in_dry_run)
        return report

    # The comparison: one batch of files against their documents, in one short transaction per change.

    def _sync_batch(
        self, request: FolderSync, key: str, batch: list[FoundFile]
    ) -> list[tuple[SyncEvent, FileOutcome | None]]:
        known = {
            document.source_name: document
            for document in Document.objects.filter(
                knowledge_base=request.kb, source_name__in=[found.source_name for found in batch]
            ).only("id", "source_name", "content_hash", "status", "archived_at", "source_folder", "knowledge_base_id")
        }
        adopted = []
        results: list[tuple[SyncEvent, FileOutcome | None]] = []
        for found in batch:
            try:
                digest = _file_hash(found.path)
            except OSError as exc:
                results.append((SyncEvent(Change.UNREADABLE, found.source_name, exc.strerror or str(exc)), None))
                continue
            document = known.get(found.source_name)
            if document is not None and document.content_hash == digest:
                if document.source_folder != key:
                    adopted.append(document.pk)
                results.append(self._unchanged(document, found))
            elif document is not None:
                results.append(self._add(request, key, found, Change.CHANGED))
            else:
                results.append(self._new(request, key, found, digest))
        if adopted and not request.dry_run:
            # Documents ingested from this folder before it was synced: from now on, kept in step with it.
            Document.objects.filter(pk__in=adopted).update(source_folder=key)
        return results

    @staticmethod
    def _unchanged(document: Document, found: FoundFile) -> tuple[SyncEvent, FileOutcome | None]:
        outcome = FileOutcome(path=found.path, status="unchanged", document=document)
        if document.archived_at is not None:
            return SyncEvent(Change.RESTORED, found.source_name), outcome
        if document.status in (DocumentStatus.PENDING, DocumentStatus.PROCESSING):
            return SyncEvent(Change.RESUMED, found.source_name), outcome
        if document.status == DocumentStatus.FAILED:
            return SyncEvent(Change.STILL_FAILED, found.source_name), None
        return SyncEvent(Change.UNCHANGED, found.source_name), None

    def _new(
        self, request: FolderSync, key: str, found: FoundFile, digest: str
    ) -> tuple[SyncEvent, FileOutcome | None]:
        same = (
            Document.objects.filter(knowledge_base=request.kb, content_hash=digest)
            .only("id", "source_name", "source_folder", "archived_at")
            .first()
        )
        if same is not None and same.source_folder == key and not _in_folder(Path(key), same.source_name):
            # Moved or renamed within the folder: the chunks stay, only the name they are known by changes.
            event = SyncEvent(Change.MOVED, found.source_name, f"from {same.source_name}")
            if not request.dry_run:
                Document.objects.filter(pk=same.pk).update(source_name=found.source_name, updated_at=timezone.now())
                same.source_name = found.source_name
            if same.archived_at is not None:
                event = SyncEvent(Change.RESTORED, found.source_name, event.message)
            return event, FileOutcome(path=found.path, status="moved", document=same)
        if same is not None:
            return SyncEvent(Change.DUPLICATE, found.source_name, f"the same content as {same.source_name}"), None
        return self._add(request, key, found, Change.NEW)

    def _add(
        self, request: FolderSync, key: str, found: FoundFile, change: Change
    ) -> tuple[SyncEvent, FileOutcome | None]:
        if request.dry_run:
            return SyncEvent(change, found.source_name), None
        with transaction.atomic():
            outcome = self.importer.add_file(kb=request.kb, found=found)
            if outcome.document is not None:
                Document.objects.filter(pk=outcome.document.pk).update(source_folder=key, archived_at=None)
        if outcome.status == "duplicate":
            return SyncEvent(Change.DUPLICATE, found.source_name, outcome.message), None
        if outcome.document is None:
            return SyncEvent(Change.REFUSED, found.source_name, outcome.message), None
        return SyncEvent(change, found.source_name), outcome

    async def _restore(self, document: Document) -> None:
        full = await Document.objects.aget(pk=document.pk)
        await self.documents.aset_archived(document=full, archived=False)

    # Files gone from the folder.

    async def _handle_gone(
        self, request: FolderSync, key: str, folder: Path, tell: Callable[[SyncEvent], None], moved: set
    ) -> None:
        synced = Document.objects.filter(knowledge_base=request.kb, source_folder=key)
        if request.when_gone == WhenGone.ARCHIVE:
            synced = synced.filter(archived_at__isnull=True)
        last = None
        while True:
            page = synced.order_by("pk")
            if last is not None:
                page = page.filter(pk__gt=last)
            documents = [document async for document in page[:_BATCH]]
            if not documents:
                return
            last = documents[-1].pk
            for document in documents:
                if document.pk in moved or _in_folder(folder, document.source_name):
                    continue
                if request.enqueue and not request.dry_run:
                    action = "deleting" if request.when_gone == WhenGone.DELETE else "archiving"
                    tell(_postponed(document.source_name, f"gone from the folder: {action} it"))
                elif request.when_gone == WhenGone.DELETE:
                    if not request.dry_run:
                        await self.documents.adelete_document(document=document)
                    tell(SyncEvent(Change.DELETED, document.source_name))
                else:
                    if not request.dry_run:
                        await self.documents.aset_archived(document=document, archived=True)
                    tell(SyncEvent(Change.ARCHIVED, document.source_name))

    sync_folder = async_to_sync(async_folder)


_TO_INDEX = frozenset({Change.NEW, Change.CHANGED, Change.RESUMED})
#: The changes that each stand for one file compared (the others follow from one: ready, failed, gone).
PER_FILE = frozenset(
    {
        Change.NEW, Change.CHANGED, Change.RESUMED, Change.MOVED, Change.RESTORED, Change.UNCHANGED,
        Change.DUPLICATE, Change.REFUSED, Change.STILL_FAILED, Change.UNREADABLE,
    }
)  # fmt: skip


def _files(entries: Iterator[FoundFile | PassedOver], report: SyncReport) -> Iterator[FoundFile]:
    """The files of the walk; what it passes over is counted in the report."""
    for entry in entries:
        if isinstance(entry, FoundFile):
            yield entry
        else:
            reason = entry.reason.split(" (")[0]
            report.passed_over[reason] += 1
            report.examples.setdefault(reason, entry.path)


def _postponed(source_name: str, what: str) -> SyncEvent:
    return SyncEvent(
        Change.POSTPONED, source_name, f"{what} changes Qdrant, which --enqueue leaves alone; a sync without it will"
    )


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while part := file.read(_READ_BYTES):
            digest.update(part)
    return digest.hexdigest()


def _in_folder(folder: Path, source_name: str) -> bool:
    """Whether the folder still holds the file a sync would load under this source name."""
    relative = PurePosixPath(source_name)
    if relative.is_absolute() or any(part.startswith(".") for part in relative.parts):
        return False
    if format_for(relative.name) is None:
        return False
    path = folder.joinpath(*relative.parts)
    # No part of the way may be a symbolic link: a sync never follows one.
    current = folder
    for part in relative.parts:
        current = current / part
        try:
            mode = current.lstat().st_mode
        except OSError:
            return False
        if stat.S_ISLNK(mode):
            return False
    return stat.S_ISREG(path.lstat().st_mode)
