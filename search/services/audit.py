"""Records and reads the search audit; concurrent searches share one INSERT."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from uuid import UUID

from asgiref.sync import sync_to_async

from search.models import SearchAudit


class SearchAuditService:
    """Each search's row is written before its caller returns.

    Rows are written by group commit: while one INSERT is under way, the rows of searches that
    finish meanwhile gather and go in the next one, so a burst of searches costs a few trips to
    the database instead of one each.
    """

    def __init__(self) -> None:
        self._waiting: dict[asyncio.AbstractEventLoop, list[tuple[SearchAudit, asyncio.Future]]] = {}
        self._writers: dict[asyncio.AbstractEventLoop, asyncio.Task] = {}

    async def record_search(
        self, *, user_id: int, query: str, kb_ids: Sequence[UUID], result_count: int, latency_ms: float
    ) -> SearchAudit:
        loop = asyncio.get_running_loop()
        row = SearchAudit(
            user_id=user_id,
            query=query,
            kb_ids=[str(kb_id) for kb_id in kb_ids],
            result_count=result_count,
            latency_ms=round(latency_ms, 3),
        )
        written = loop.create_future()
        self._waiting.setdefault(loop, []).append((row, written))
        if loop not in self._writers:
            self._writers[loop] = loop.create_task(self._write_waiting(loop))
        await written
        return row

    async def _write_waiting(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            while batch := self._waiting.pop(loop, None):
                try:
                    await sync_to_async(SearchAudit.objects.bulk_create)([row for row, _ in batch])
                except Exception as exc:
                    for _, written in batch:
                        if not written.done():
                            written.set_exception(exc)
                else:
                    for _, written in batch:
                        if not written.done():
                            written.set_result(None)
        finally:
            del self._writers[loop]

    async def history(self, *, user_id: int, limit: int = 50, before_id: int | None = None) -> list[SearchAudit]:
        """The user's own searches, newest first."""
        rows = SearchAudit.objects.filter(user_id=user_id)
        if before_id is not None:
            rows = rows.filter(id__lt=before_id)
        return [row async for row in rows.order_by("-id")[:limit]]
