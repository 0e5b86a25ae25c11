"""Embeds queries and document chunks on threads of their own, queries micro-batched and first in line for the CPU."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils.module_loading import import_string

from search import metrics
from search.embedding.base import Embedder
from search.errors import KbsiteError
from search.priority import lower_this_threads_priority, name_this_thread

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddingConfig:
    backend: str = "search.embedding.minilm.MiniLMEmbedder"
    threads: int = 2
    #: Threads of the queries' model. One: micro-batched short queries cost a fifth less CPU on one
    #: thread than on two, which under load is throughput, for half a millisecond more on a lone query.
    query_threads: int = 1
    #: Threads that call the queries' model at once, sharing one copy of it. With one, a burst of
    #: queries waits for one batch after another; with one per core, the batches run side by side.
    query_workers: int = 2
    query_batch_size: int = 64
    #: Threads that call the documents' model at once, sharing one copy of it; `threads` are split
    #: between them. One model thread each by default: a worker that a search preempts then holds up
    #: no other model thread waiting for it at the end of each of the model's parallel sections.
    document_workers: int = 2
    document_batch_size: int = 8
    #: How much lower than the process's the documents' model threads run (Linux nice steps, 0 to 19).
    document_niceness: int = 10
    #: Query vectors remembered for repeated queries.
    query_cache_size: int = 1024
    #: Keyword arguments of the backend beyond `threads` (an endpoint's URL, model, batch size...).
    options: dict = field(default_factory=dict)

    @classmethod
    def from_settings(cls) -> EmbeddingConfig:
        conf = settings.EMBEDDING
        return cls(
            backend=conf.get("BACKEND", cls.backend),
            threads=int(conf.get("THREADS", cls.threads)),
            query_threads=int(conf.get("QUERY_THREADS", cls.query_threads)),
            query_workers=int(conf.get("QUERY_WORKERS", cls.query_workers)),
            query_batch_size=int(conf.get("QUERY_BATCH_SIZE", cls.query_batch_size)),
            document_workers=int(conf.get("DOCUMENT_WORKERS", cls.document_workers)),
            document_batch_size=int(conf.get("DOCUMENT_BATCH_SIZE", cls.document_batch_size)),
            document_niceness=int(conf.get("DOCUMENT_NICENESS", cls.document_niceness)),
            query_cache_size=int(conf.get("QUERY_CACHE_SIZE", cls.query_cache_size)),
            options=dict(conf.get("OPTIONS") or {}),
        )

    @property
    def threads_per_document_worker(self) -> int:
        return max(1, self.threads // max(1, self.document_workers))

    def build_embedder(self, *, threads: int | None = None) -> Embedder:
        return import_string(self.backend)(threads=threads or self.threads, **self.options)


@dataclass
class _Job:
    texts: list[str]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future = field(repr=False)
    kind: str = "query"
    queued_at: float = field(default_factory=time.monotonic)


def _settle(job: _Job, vectors: list[list[float]] | None, error: BaseException | None) -> None:
    def settle() -> None:
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(vectors)

    try:
        job.loop.call_soon_threadsafe(settle)
    except RuntimeError:
        pass  # The caller's event loop has closed; nobody is waiting any more.


class _ModelThread:
    """One model instance and the thread that alone calls it, fed by `next_batch`."""

    def __init__(self, name: str, build, next_batch, niceness=lambda: 0, *, os_name: str) -> None:
        self.name = name
        self.os_name = os_name  # what top -H and /proc show (15 bytes at most)
        self.build = build
        self.next_batch = next_batch
        self.niceness = niceness
        self.embedder: Embedder | None = None
        self.thread: threading.Thread | None = None

    def ensure_running(self) -> None:
        """Start the thread if it is not running; call with the service's condition held."""
        if self.thread is None or not self.thread.is_alive():
            self.thread = threading.Thread(target=self._work, name=self.name, daemon=True)
            self.thread.start()

    def _work(self) -> None:
        name_this_thread(self.os_name)
        lower_this_threads_priority(self.niceness(), what=f"the embedding thread {self.name}")
        while True:
            batch = [job for job in self.next_batch() if not job.future.cancelled()]
            if not batch:
                continue
            texts = [text for job in batch for text in job.texts]
            metrics.observe_embedding_batch(kind=batch[0].kind, queued_at=[j.queued_at for j in batch for _ in j.texts])
            try:
                if self.embedder is None:
                    self.embedder = self.build()
                if batch[0].kind == "query":
                    parts = self.embedder.embed_queries_in_parts(texts)
                else:
                    parts = iter([(range(len(texts)), self.embedder.embed(texts))])
                _settle_in_parts(batch, parts)
            except KbsiteError as exc:  # said on purpose (an endpoint down, a key refused): no traceback
                logger.warning("Embedding %d texts failed: %s", len(texts), exc.message)
                for job in batch:
                    _settle(job, None, exc)
            except Exception as exc:  # every waiter must hear of the failure
                logger.exception("Embedding %d texts failed", len(texts))
                for job in batch:
                    _settle(job, None, exc)


def _settle_in_parts(batch: list[_Job], parts: Iterator[tuple[Sequence[int], Any]]) -> None:
    """Answer each job of `batch` once the parts (positions among the batch's texts, their vectors) cover
    all its texts: a query is answered when its own part is done, not when the whole batch is.
    A job already answered is left alone when a later part fails (`_settle` sets a future once)."""
    owners = [(number, offset) for number, job in enumerate(batch) for offset in range(len(job.texts))]
    found = [[None] * len(job.texts) for job in batch]
    missing = [len(job.texts) for job in batch]
    for job in batch:
        if not job.texts:  # no part will cover it: answered now, or its caller would wait forever
            _settle(job, [], None)
    for positions, vectors in parts:
        for position, vector in zip(positions, vectors.tolist()):
            number, offset = owners[position]
            found[number][offset] = vector
            missing[number] -= 1
            if not missing[number]:
                _settle(batch[number], found[number], None)
    if any(missing):
        raise RuntimeError(f"The embedder gave no vector for {sum(missing)} of {len(owners)} texts.")


class EmbeddingService:
    """The process's way to embed text from async code.

    A model call takes milliseconds to seconds and releases the GIL, so it runs off the event loop.
    Queries and documents each have a model and threads of their own: a query never waits for a
    document batch to finish. The documents' threads run at a lower OS priority, so while searches
    run it gets what CPU they leave, and all of it when nobody searches. Queries that arrive while
    the model is busy are answered together by a next call; the queries' workers (`query_workers`)
    share one model and split a burst between them, so its batches run side by side. The documents'
    workers (`document_workers`) share another and take a batch each. A repeated query is answered
    from memory.
    """

    def __init__(self, config: EmbeddingConfig | None = None) -> None:
        self._config = config
        self._embedder: Embedder | None = None
        self._documents_embedder: Embedder | None = None
        self._condition = threading.Condition()
        self._queries: deque[_Job] = deque()
        self._documents: deque[_Job] = deque()
        self._query_cache: OrderedDict[str, list[float]] = OrderedDict()
        self._idle_query_workers = 0
        self._query_workers: list[_ModelThread] = []  # made on the first query, from the config then
        self._document_workers: list[_ModelThread] = []  # made on the first document, likewise

    def configure(self, config: EmbeddingConfig) -> None:
        with self._condition:
            self._config = config
            self._embedder = self._documents_embedder = None
            self._query_cache.clear()
            for worker in (*self._query_workers, *self._document_workers):
                worker.embedder = None

    @property
    def config(self) -> EmbeddingConfig:
        if self._config is None:
            self._config = EmbeddingConfig.from_settings()
        return self._config

    @property
    def embedder(self) -> Embedder:
        """The configured model (the queries' instance); building it does no I/O, the weights load on first use."""
        if self._embedder is None:
            with self._condition:
                if self._embedder is None:
                    self._embedder = self.config.build_embedder(threads=self.config.query_threads)
        return self._embedder

    @property
    def documents_embedder(self) -> Embedder:
        """The documents' instance of the model, which the documents' workers share."""
        if self._documents_embedder is None:
            with self._condition:
                if self._documents_embedder is None:
                    self._documents_embedder = self.config.build_embedder(
                        threads=self.config.threads_per_document_worker
                    )
        return self._documents_embedder

    @property
    def model_id(self) -> str:
        return self.embedder.model_id

    @property
    def dimensions(self) -> int:
        """The vector size; an endpoint configured without one is asked once (I/O: from async code, use adimensions)."""
        return self.embedder.dimensions

    async def adimensions(self) -> int:
        return await sync_to_async(lambda: self.embedder.dimensions, thread_sensitive=False)()

    async def embed_query(self, text: str) -> list[float]:
        cached = self._cached_query(text)
        if cached is not None:
            return cached
        (vector,) = await self._submit([text], self._queries, *self._query_workers_made())
        self._remember_query(text, vector)
        return list(vector)

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed many texts in batches of similar length, returned in the order given."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        size = self.config.document_batch_size
        batches = [order[start : start + size] for start in range(0, len(order), size)]
        results = await asyncio.gather(
            *(
                self._submit([texts[i] for i in batch], self._documents, *self._document_workers_made())
                for batch in batches
            )
        )
        vectors: list[list[float]] = [[] for _ in texts]
        for batch, batch_vectors in zip(batches, results):
            for i, vector in zip(batch, batch_vectors):
                vectors[i] = vector
        return vectors

    def _query_workers_made(self) -> list[_ModelThread]:
        return self._workers_made(
            self._query_workers, self.config.query_workers, "queries", "kb-query", lambda: self.embedder,
            self._next_queries,
        )

    def _document_workers_made(self) -> list[_ModelThread]:
        return self._workers_made(
            self._document_workers, self.config.document_workers, "documents", "kb-documents",
            lambda: self.documents_embedder, self._next_document_batch, niceness=lambda: self.config.document_niceness,
        )

    def _workers_made(self, workers: list[_ModelThread], count: int, kind: str, os_name: str, model, next_batch,
                      **options) -> list[_ModelThread]:
        """`workers`, made up to `count` threads (at least one) that call the shared `model` on `next_batch`'s jobs."""
        with self._condition:
            while len(workers) < max(1, count):
                n = len(workers)
                workers.append(
                    _ModelThread(f"kbsite-embedding-{kind}-{n}", model, next_batch, os_name=f"{os_name}-{n}", **options)
                )
            return workers

    def _cached_query(self, text: str) -> list[float] | None:
        with self._condition:
            vector = self._query_cache.get(text)
            if vector is None:
                return None
            self._query_cache.move_to_end(text)
        return list(vector)  # a copy: callers may change theirs

    def _remember_query(self, text: str, vector: list[float]) -> None:
        if self.config.query_cache_size <= 0:
            return
        with self._condition:
            self._query_cache[text] = vector
            self._query_cache.move_to_end(text)
            while len(self._query_cache) > self.config.query_cache_size:
                self._query_cache.popitem(last=False)

    async def _submit(self, texts: list[str], queue: deque[_Job], *workers: _ModelThread) -> list[list[float]]:
        loop = asyncio.get_running_loop()
        job = _Job(texts, loop, loop.create_future(), "query" if queue is self._queries else "document")
        with self._condition:
            for worker in workers:
                worker.ensure_running()
            queue.append(job)
            self._condition.notify_all()
        return await job.future

    def _next_queries(self) -> list[_Job]:
        """The calling worker's batch: an even share of the waiting queries among the idle workers."""
        with self._condition:
            self._idle_query_workers += 1
            while not self._queries:
                self._condition.wait()
            share = -(-len(self._queries) // self._idle_query_workers)
            self._idle_query_workers -= 1
            batch, texts = [], 0
            while self._queries and texts < min(share, self.config.query_batch_size):
                job = self._queries.popleft()
                batch.append(job)
                texts += len(job.texts)
            return batch

    def _next_document_batch(self) -> list[_Job]:
        with self._condition:
            while not self._documents:
                self._condition.wait()
            return [self._documents.popleft()]


embedding_service = EmbeddingService()
