"""manage.py ingest_worker: process queued documents until stopped (for a Qdrant server; several may run)."""

from __future__ import annotations

import asyncio
import signal

from django.core.management.base import BaseCommand, CommandError, CommandParser

from knowledge.ingestion.worker import IngestionWorker
from search.errors import SearchError
from search.plurals import counted
from search.qdrant import qdrant_service


class Command(BaseCommand):
    help = (
        "Process the ingestion queue until stopped (SIGINT/SIGTERM finish the current document first). "
        "Run several at once with a Qdrant server; with the embedded store the web server runs the worker."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--until-idle", action="store_true", help="Stop when no document is due.")
        parser.add_argument("--poll", type=float, metavar="SECONDS", help="How often to look at the queue.")

    def handle(self, *args, until_idle: bool, poll: float | None, verbosity: int, **options) -> None:
        worker = IngestionWorker(poll_seconds=poll)
        processed = asyncio.run(self._run(worker, until_idle))
        self.stdout.write(self.style.SUCCESS(f"Worker {worker.worker_id} processed {counted(processed, 'document')}."))

    async def _run(self, worker: IngestionWorker, until_idle: bool) -> int:
        try:
            await qdrant_service.check_available()
        except SearchError as exc:
            raise CommandError(exc.message) from exc
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        self.stdout.write(f"Worker {worker.worker_id} is waiting for documents (Ctrl-C to stop).")
        return await worker.run(stop=stop, until_idle=until_idle)
