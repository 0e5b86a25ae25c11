"""Prometheus metrics of this process, and their exposition across every process of a deployment.

Each process records into prometheus-client's metrics here; with `PROMETHEUS_MULTIPROC_DIR` set
(as it must be under several uvicorn workers or beside `ingest_worker`s), they go to files in that
folder that any one process reads back whole when scraped. Recording is a few in-memory additions:
call sites record unconditionally.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.registry import REGISTRY, Collector

# Seconds, from a cached search on an idle machine to a cold one on a busy one.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

REQUEST_SECONDS = Histogram(
    "kbsite_request_seconds",
    "Time to answer an HTTP request, by method, URL pattern and status class.",
    ("method", "route", "status"),
    buckets=LATENCY_BUCKETS,
)
SEARCH_SECONDS = Histogram(
    "kbsite_search_seconds",
    "Time to answer a search through the API, by the mode that ran.",
    ("mode",),
    buckets=LATENCY_BUCKETS,
)
EMBEDDING_BATCH_TEXTS = Histogram(
    "kbsite_embedding_batch_texts",
    "Texts per batch a model worker takes from the embedder's queue (the built-in model may split it"
    " into calls by length), by kind.",
    ("kind",),
    buckets=BATCH_BUCKETS,
)
EMBEDDING_QUEUE_SECONDS = Histogram(
    "kbsite_embedding_queue_wait_seconds",
    "Time a text waited in the embedder's queue before its model call began, by kind.",
    ("kind",),
    buckets=LATENCY_BUCKETS,
)
INGESTED_CHUNKS = Counter(
    "kbsite_ingested_chunks",
    "Chunks embedded and written to Qdrant by ingestion; rate() of it is chunks per second.",
)
QDRANT_ERRORS = Counter(
    "kbsite_qdrant_errors",
    "Qdrant calls that failed, by method and gRPC status (or exception type), retried ones included.",
    ("method", "code"),
)


def observe_request(*, method: str, route: str, status: int, seconds: float) -> None:
    REQUEST_SECONDS.labels(method, route, f"{status // 100}xx").observe(seconds)


def observe_search(*, mode: str, seconds: float) -> None:
    SEARCH_SECONDS.labels(mode).observe(seconds)


def observe_embedding_batch(*, kind: str, queued_at: Iterable[float]) -> None:
    """One batch a model worker takes, starting now (the model may split it into calls by length):
    `queued_at` holds when each of its texts was queued (time.monotonic)."""
    now = time.monotonic()
    waits = [now - at for at in queued_at]
    EMBEDDING_BATCH_TEXTS.labels(kind).observe(len(waits))
    queued = EMBEDDING_QUEUE_SECONDS.labels(kind)
    for wait in waits:
        queued.observe(wait)


def count_ingested_chunks(count: int) -> None:
    INGESTED_CHUNKS.inc(count)


def count_qdrant_error(*, method: str, code: str) -> None:
    QDRANT_ERRORS.labels(method, code).inc()


def exposition(*collectors: Collector) -> tuple[bytes, str]:
    """The text format of every process's metrics plus `collectors` (read at this call), and its type."""
    extra = CollectorRegistry()
    for collector in collectors:
        extra.register(collector)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        recorded = CollectorRegistry()
        multiprocess.MultiProcessCollector(recorded)
    else:
        recorded = REGISTRY
    return generate_latest(recorded) + generate_latest(extra), CONTENT_TYPE_LATEST
