"""Concurrent queries of one collection sent to Qdrant together, as one `query_batch_points` call.

A burst of searches wakes together: the embedder answers a batch of queries at once, so their
engine queries all start in the same turn of the event loop. Sent one by one they queue behind
each other; sent as one batch, Qdrant plans them together (Edge scores queries that differ only in
their vector in one pass over the segments: about half the time per query at 100), and a server
sees one round trip instead of a hundred. A query alone in its turn goes out as `query_points`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from qdrant_client import AsyncQdrantClient, models

# The most queries in one call: Edge runs a batch without yielding, so this bounds the pause.
MAX_BATCH = 64

_Pending = list[tuple[models.QueryRequest, asyncio.Future]]


class _UncopiedRequest(models.QueryRequest):
    """A request that qdrant-client's `query_batch_points` copies shallowly.

    It deep-copies every request before looking for inference objects in it (there are none here:
    the vectors are computed already), and the copy of a hybrid query's two prefetches, a 384-float
    vector and a sparse one, took a sixth of the event loop's time per search under load. Nothing
    changes a request after it is built, so a shallow copy is as safe.
    """

    def __deepcopy__(self, memo: dict | None = None) -> _UncopiedRequest:
        return self.model_copy()


def _uncopied(request: models.QueryRequest) -> _UncopiedRequest:
    return _UncopiedRequest.model_construct(_fields_set=request.model_fields_set, **dict(request))


class QueryBatcher:
    """Collects the `query_points` calls made in one loop turn, per loop and collection, and sends them together."""

    def __init__(self, client: Callable[[], AsyncQdrantClient]) -> None:
        self._client = client
        self._pending: dict[tuple[asyncio.AbstractEventLoop, str], _Pending] = {}

    async def query(self, *, collection_name: str, request: models.QueryRequest) -> list[Any]:
        """The points `request` finds in `collection_name`, as `query_points` would return them."""
        loop = asyncio.get_running_loop()
        key = (loop, collection_name)
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = []
            loop.call_soon(self._flush, key)
        future = loop.create_future()
        pending.append((request, future))
        return await future

    def _flush(self, key: tuple[asyncio.AbstractEventLoop, str]) -> None:
        loop, collection_name = key
        pending = self._pending.pop(key, [])
        for start in range(0, len(pending), MAX_BATCH):
            loop.create_task(self._send(collection_name, pending[start : start + MAX_BATCH]))

    async def _send(self, collection_name: str, batch: _Pending) -> None:
        batch = [(request, future) for request, future in batch if not future.done()]
        if not batch:
            return
        client = self._client()
        try:
            if len(batch) == 1:
                request = batch[0][0]
                responses = [
                    await client.query_points(
                        collection_name=collection_name,
                        query=request.query,
                        using=request.using,
                        prefetch=request.prefetch,
                        query_filter=request.filter,
                        limit=request.limit,
                        score_threshold=request.score_threshold,
                        with_payload=request.with_payload,
                        with_vectors=request.with_vector,
                    )
                ]
            else:
                responses = await client.query_batch_points(
                    collection_name=collection_name, requests=[_uncopied(request) for request, _ in batch]
                )
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), response in zip(batch, responses):
            if not future.done():
                future.set_result(response.points)
