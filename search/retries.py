"""Retries of idempotent Qdrant calls after transient gRPC failures (UNAVAILABLE, DEADLINE_EXCEEDED), with backoff.

A Qdrant cluster answers UNAVAILABLE while a node restarts or a shard moves, for a moment; reads
and writes that give the same result when repeated (kbsite's point ids come from document and chunk,
so an upsert is one) are worth another try. Calls that are not idempotent (creating a collection,
changing aliases) fail at once and their callers decide. Every failed call is counted in the metrics.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from qdrant_client import AsyncQdrantClient

from search import metrics

logger = logging.getLogger(__name__)

TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
IDEMPOTENT = frozenset(
    {
        "info",
        "get_collections",
        "get_collection",
        "collection_exists",
        "get_aliases",
        "get_collection_aliases",
        "query_points",
        "query_batch_points",
        "query_points_groups",
        "scroll",
        "count",
        "retrieve",
        "upsert",
        "delete",
        "set_payload",
        "overwrite_payload",
        "delete_payload",
        "create_payload_index",
    }
)
# Every other call kbsite makes: counted when it fails, never repeated.
ONCE_ONLY = frozenset(
    {"create_collection", "delete_collection", "update_collection_aliases", "delete_payload_index"}
)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a transient failure is tried again."""

    retries: int = 2
    backoff_seconds: float = 0.2

    def delay(self, retry: int) -> float:
        """Seconds before retry number `retry` (1-based): doubling, with jitter so clients spread out."""
        return self.backoff_seconds * 2 ** (retry - 1) * random.uniform(0.5, 1.0)


def status_code(error: BaseException) -> str:
    """The gRPC status name of a failed call, or the exception's type."""
    if isinstance(error, grpc.RpcError) and hasattr(error, "code"):
        return error.code().name
    return type(error).__name__


def is_transient(error: BaseException) -> bool:
    return isinstance(error, grpc.RpcError) and hasattr(error, "code") and error.code() in TRANSIENT


def with_retries(client: AsyncQdrantClient, policy: RetryPolicy) -> AsyncQdrantClient:
    """`client` with its idempotent methods retried under `policy` and every failure counted; returns it."""
    for name in IDEMPOTENT | ONCE_ONLY:
        method = getattr(client, name)
        setattr(client, name, _guarded(name, method, policy if name in IDEMPOTENT else None))
    return client


def _guarded(
    name: str, method: Callable[..., Awaitable[Any]], policy: RetryPolicy | None
) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    async def call(*args: Any, **kwargs: Any) -> Any:
        retry = 0
        while True:
            try:
                return await method(*args, **kwargs)
            except Exception as error:
                metrics.count_qdrant_error(method=name, code=status_code(error))
                if policy is None or retry >= policy.retries or not is_transient(error):
                    raise
                retry += 1
                delay = policy.delay(retry)
                logger.warning(
                    "Qdrant %s failed with %s; retry %d of %d in %.2f s",
                    name,
                    status_code(error),
                    retry,
                    policy.retries,
                    delay,
                )
                await asyncio.sleep(delay)

    return call
