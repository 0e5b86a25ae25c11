"""The ingestion worker: takes due documents off the queue one at a time, in a process of its own or inside the web server."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.db import DatabaseError

from knowledge.ingestion.events import listen_for_new_work, stop_listening
from knowledge.ingestion.pipeline import IngestionService
from search.errors import VectorStoreUnavailable
from search.qdrant import qdrant_service

logger = logging.getLogger(__name__)


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class IngestionWorker:
    def __init__(
        self,
        *,
        service: IngestionService | None = None,
        worker_id: str | None = None,
        poll_seconds: float | None = None,
        concurrency: int | None = None,
    ) -> None:
        self.service = service or IngestionService()
        self.worker_id = worker_id or new_worker_id()
        self.poll_seconds = poll_seconds if poll_seconds is not None else float(settings.INGESTION["POLL_SECONDS"])
        # Documents in work at once: a big file taking its time budget does not hold up the next one.
        self.concurrency = max(1, concurrency or int(settings.INGESTION.get("CONCURRENCY", 2)))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    async def run(self, *, stop: asyncio.Event | None = None, until_idle: bool = False) -> int:
        """Process due documents until `stop` is set, or (`until_idle`) none is due; returns how many.

        Up to `concurrency` documents are in work at once, those of other knowledge bases than
        the ones already in work claimed first.
        """
        stop = stop or asyncio.Event()
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        in_work: dict[asyncio.Task, object] = {}
        processed = 0
        logger.info("Ingestion worker %s started", self.worker_id)
        try:
            while not stop.is_set():
                if len(in_work) >= self.concurrency:
                    processed += await self._settle(in_work, stop)
                    continue
                try:
                    document = await self.service.queue.aclaim_next(
                        worker_id=self.worker_id, busy_knowledge_base_ids=set(in_work.values())
                    )
                except DatabaseError:
                    logger.exception("Could not read the ingestion queue; trying again in %.0fs", self.poll_seconds)
                    document = None
                if document is not None:
                    in_work[asyncio.ensure_future(self._process(document))] = document.knowledge_base_id
                elif in_work:
                    processed += await self._settle(in_work, stop)
                elif until_idle:
                    break
                else:
                    await self._idle(stop)
        except asyncio.CancelledError:
            # Given up on (a shutdown past its grace period): so are the documents in work; their
            # leases lapse and another worker, or the restarted server, takes them again.
            for task in in_work:
                task.cancel()
            await asyncio.gather(*in_work, return_exceptions=True)
            raise
        # A stop lets the documents in work finish; the caller bounds that with its grace period.
        done = await asyncio.gather(*in_work, return_exceptions=True)
        processed += sum(1 for outcome in done if not isinstance(outcome, BaseException))
        logger.info("Ingestion worker %s stopped after %d documents", self.worker_id, processed)
        return processed

    async def _process(self, document) -> None:
        document = await self.service.process(document, worker_id=self.worker_id)
        logger.info("%s (%s): %s %s", document.title, document.pk, document.status, document.error or document.progress)

    async def _settle(self, in_work: dict[asyncio.Task, object], stop: asyncio.Event) -> int:
        """Wait until a document in work is done (or the worker is told to stop or woken); count those done."""
        stopping = asyncio.ensure_future(stop.wait())
        waking = asyncio.ensure_future(self._wake.wait())
        try:
            # The poll bounds the wait: a document whose retry falls due wakes nobody.
            await asyncio.wait(
                [*in_work, stopping, waking], timeout=self.poll_seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stopping.cancel()
            waking.cancel()
        self._wake.clear()
        finished = [task for task in in_work if task.done()]
        for task in finished:
            del in_work[task]
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()
        return len(finished)

    async def _idle(self, stop: asyncio.Event) -> None:
        waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())}
        await asyncio.wait(waits, timeout=self.poll_seconds, return_when=asyncio.FIRST_COMPLETED)
        for wait in waits:
            wait.cancel()
        self._wake.clear()

    def wake(self) -> None:
        """Look at the queue now rather than at the next poll; callable from any thread."""
        if self._loop is None or self._wake is None:
            return
        try:
            self._loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:
            pass  # The worker's loop has closed.


@dataclass
class _Running:
    worker: IngestionWorker
    task: asyncio.Task
    stop: asyncio.Event


_in_process: _Running | None = None
_in_process_lock = threading.Lock()


def in_process_worker_enabled() -> bool:
    """Whether the web server runs the worker: by default exactly when the store is embedded."""
    choice = str(settings.INGESTION.get("IN_PROCESS_WORKER", "auto")).lower()
    if choice == "auto":
        return qdrant_service.config.is_local
    return choice in {"1", "true", "yes", "on"}


async def start_in_process() -> None:
    """Start the worker on the server's event loop (an ASGI lifespan start-up hook)."""
    global _in_process
    if not in_process_worker_enabled():
        return
    with _in_process_lock:
        if _in_process is not None:
            return
        worker, stop = IngestionWorker(), asyncio.Event()
        _in_process = _Running(worker=worker, task=asyncio.create_task(_serve_queue(worker, stop)), stop=stop)
        listen_for_new_work(worker.wake)


async def _serve_queue(worker: IngestionWorker, stop: asyncio.Event) -> int:
    await take_back_claims_of_earlier_processes(worker)
    return await worker.run(stop=stop)


async def take_back_claims_of_earlier_processes(worker: IngestionWorker) -> int:
    """Embedded store: queue again at once what a killed predecessor held, instead of waiting out its leases.

    The store's folder lock lets one process at a time work on it, so once this process holds it,
    no other worker can be alive to renew those leases. With a Qdrant server, several workers
    share the queue and nothing is taken back here. Returns how many documents were.
    """
    if not qdrant_service.config.is_local:
        return 0
    try:
        # Opens the store, taking its folder lock, before anything is released.
        await qdrant_service.check_available()
        released = await worker.service.queue.arelease_stale_claims(keep_worker_id=worker.worker_id)
    except (VectorStoreUnavailable, DatabaseError):
        logger.exception("Could not take back the documents an earlier server held; their leases will lapse")
        return 0
    if released:
        logger.info("Queued again %d documents an earlier server process was working on", released)
    return released


async def stop_in_process(grace_seconds: float = 10.0) -> None:
    """Let the current document finish for a while, then give it back to the queue (a shut-down hook)."""
    global _in_process
    with _in_process_lock:
        running, _in_process = _in_process, None
    if running is None:
        return
    stop_listening(running.worker.wake)
    running.stop.set()
    try:
        await asyncio.wait_for(asyncio.shield(running.task), timeout=grace_seconds)
    except TimeoutError:
        running.task.cancel()
        await asyncio.gather(running.task, return_exceptions=True)
