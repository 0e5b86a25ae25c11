"""Loading files and folders from disk into a knowledge base and indexing them as they come (the ingest command's work).

Folders are walked lazily, one directory at a time, and each file is read only when its turn
comes: memory stays bounded whatever the folder's size. Files are indexed several at once
(`PipelinedIndexing`), so that while one file's chunks are embedded the next files are read and
chunked, and the embedder is never left waiting for the sandbox.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asgiref.sync import sync_to_async

from knowledge.errors import InvalidInput, KnowledgeError
from knowledge.ingestion.extraction import format_for
from knowledge.ingestion.pipeline import IngestionService
from knowledge.ingestion.sandbox import DEFAULT_WARM_CHILDREN, warm_extraction
from knowledge.models import Document, DocumentStatus, KnowledgeBase
from knowledge.services.documents import DocumentService

#: How many problems a run keeps to list at its end; the rest are counted.
MOST_LISTED_PROBLEMS = 50


@dataclass(frozen=True)
class FoundFile:
    #: As the user named it (or as found in a folder they named): messages show the name they know,
    #: not the one resolving symbolic links or, on Windows, the file system's own case would give.
    path: Path
    #: What the document is known by: its path within the folder given, or its name if given itself.
    source_name: str


@dataclass(frozen=True)
class PassedOver:
    """A folder entry not loaded, and why: hidden, a symbolic link, an unsupported type, or unreadable."""

    path: Path
    reason: str

    HIDDEN = "hidden"
    SYMLINK = "symbolic link"
    UNSUPPORTED = "unsupported type"
    UNREADABLE = "unreadable"


@dataclass(frozen=True)
class FileOutcome:
    path: Path
    #: "queued" (new), "updated" (new version of a document), "duplicate", "rejected", "failed" or "ready".
    status: str
    message: str = ""
    document: Document | None = None


@dataclass
class Problems:
    """The first MOST_LISTED_PROBLEMS failed files with their reasons, and how many there were in all."""

    listed: list[FileOutcome] = field(default_factory=list)
    count: int = 0

    def add(self, outcome: FileOutcome) -> None:
        self.count += 1
        if len(self.listed) < MOST_LISTED_PROBLEMS:
            self.listed.append(outcome)


def walk_folder(folder: Path, *, recursive: bool) -> Iterator[FoundFile | PassedOver]:
    """The folder's files kbsite reads, and the entries passed over, one directory in memory at a time.

    Symbolic links are never followed: a link in a shared folder could point anywhere on the server.
    Hidden entries (a name starting with a dot) are passed over with all they hold.
    """
    pending = [folder]
    while pending:
        directory = pending.pop()
        try:
            with os.scandir(directory) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as exc:
            yield PassedOver(path=directory, reason=f"{PassedOver.UNREADABLE} ({exc.strerror})")
            continue
        subfolders = []
        for entry in entries:
            path = Path(entry.path)
            if entry.name.startswith("."):
                yield PassedOver(path=path, reason=PassedOver.HIDDEN)
            elif entry.is_symlink():
                yield PassedOver(path=path, reason=PassedOver.SYMLINK)
            elif entry.is_dir(follow_symlinks=False):
                if recursive:
                    subfolders.append(path)
            elif not entry.is_file(follow_symlinks=False) or format_for(entry.name) is None:
                yield PassedOver(path=path, reason=PassedOver.UNSUPPORTED)
            else:
                yield FoundFile(path=path, source_name=path.relative_to(folder).as_posix())
        # Depth first, in name order: the last pushed is walked first.
        pending.extend(reversed(subfolders))


class FileImportService:
    def __init__(self, *, documents: DocumentService | None = None) -> None:
        self.documents = documents or DocumentService()

    def sources(self, paths: Sequence[str | Path], *, recursive: bool) -> Iterator[FoundFile | PassedOver]:
        """The files to load, and those passed over in folders, as the folders are walked.

        A file named explicitly is always taken, so that an unreadable one is reported, not ignored.
        Files from a folder are known by their path within it, so a/notes.txt and b/notes.txt stay two.
        A path that does not exist raises InvalidInput when its turn comes.
        """
        for given in paths:
            path = Path(given).expanduser()
            if path.is_file():
                yield FoundFile(path=path, source_name=path.name)
            elif path.is_dir():
                yield from walk_folder(path, recursive=recursive)
            else:
                raise InvalidInput(f"{given} does not exist.")

    def add_file(
        self,
        *,
        kb: KnowledgeBase,
        found: FoundFile,
        tags: Sequence[str] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> FileOutcome:
        """Record the file as a document waiting for ingestion, with the labels given; say how it went."""
        path = found.path
        try:
            self.documents.check_upload_size(path.name, path.stat().st_size)
            added = self.documents.add_upload(
                kb=kb,
                filename=path.name,
                data=path.read_bytes(),
                source_name=found.source_name,
                tags=tags,
                metadata=metadata,
            )
        except KnowledgeError as exc:
            status = "duplicate" if exc.code == "duplicate_document" else "rejected"
            return FileOutcome(path=path, status=status, message=exc.message)
        except OSError as exc:
            return FileOutcome(path=path, status="rejected", message=f"{path} cannot be read: {exc.strerror}.")
        return FileOutcome(path=path, status="queued" if added.created else "updated", document=added.document)

    async def aadd_files(
        self,
        *,
        kb: KnowledgeBase,
        sources: Iterable[FoundFile | PassedOver],
        on_added: Callable[[FileOutcome | PassedOver], Any],
        tags: Sequence[str] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Walk the sources and record each file, one at a time, handing each outcome to `on_added` (awaited).

        The walk and the reading run in the database's thread, off the event loop.
        """
        iterator = iter(sources)

        def add_next() -> FileOutcome | PassedOver | None:
            item = next(iterator, None)
            if isinstance(item, FoundFile):
                return self.add_file(kb=kb, found=item, tags=tags, metadata=metadata)
            return item

        while (item := await sync_to_async(add_next)()) is not None:
            await on_added(item)


class PipelinedIndexing:
    """Indexes documents as they are handed in, several at once, so that reading, chunking and embedding overlap.

    Use as `async with PipelinedIndexing(...) as indexing: await indexing.add(outcome)`; leaving the
    block waits for every document handed in. Files are read by warm children meanwhile.
    `on_done(outcome)` gets each document's outcome ("ready" with its document, or "failed" with the
    reason); `on_chunks(n)` each batch of chunks embedded.
    """

    def __init__(
        self,
        *,
        on_done: Callable[[FileOutcome], None],
        on_chunks: Callable[[int], None],
        service: IngestionService | None = None,
        worker_id: str,
        warm_children: int = DEFAULT_WARM_CHILDREN,
    ) -> None:
        self.service = service or IngestionService()
        self.worker_id = worker_id
        self.on_done = on_done
        self.on_chunks = on_chunks
        self.warm_children = warm_children
        # Enough documents in work that the embedder always has the next one's chunks to hand, few
        # enough that memory stays flat: each holds at most one file's text.
        self._slots = asyncio.Semaphore(2 * warm_children + 2)
        self._tasks: set[asyncio.Task] = set()
        self._chunks_seen: dict[Any, int] = {}
        self._warm = None

    async def __aenter__(self) -> PipelinedIndexing:
        self._warm = warm_extraction(children=self.warm_children)
        await self._warm.__aenter__()
        return self

    async def __aexit__(self, *exc_info) -> None:
        try:
            if exc_info[0] is None:
                await asyncio.gather(*self._tasks)
            else:
                for task in self._tasks:
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            await self._warm.__aexit__(*exc_info)

    async def add(self, outcome: FileOutcome) -> None:
        """Start indexing the outcome's document once a slot is free."""
        await self._slots.acquire()
        task = asyncio.ensure_future(self._index(outcome))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _index(self, outcome: FileOutcome) -> None:
        try:
            document = await self.service.ingest_until_settled(
                document_id=outcome.document.pk, worker_id=self.worker_id, on_progress=self._progress
            )
        finally:
            self._slots.release()
            self._chunks_seen.pop(outcome.document.pk, None)
        if document is None:
            self.on_done(FileOutcome(path=outcome.path, status="elsewhere", document=outcome.document))
        elif document.status == DocumentStatus.READY:
            self.on_done(FileOutcome(path=outcome.path, status="ready", document=document))
        else:
            self.on_done(FileOutcome(path=outcome.path, status="failed", message=document.error, document=document))

    def _progress(self, document: Document, done: int, total: int) -> None:
        before = self._chunks_seen.get(document.pk, 0)
        self._chunks_seen[document.pk] = done
        if done > before:
            self.on_chunks(done - before)
