"""Embeds queries and document chunks on one dedicated thread, micro-batching concurrent queries."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from django.conf import settings
from django.utils.module_loading import import_string

from search import metrics
from search.embedding.base import Embedder

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddingConfig:
    backend: str = "search.embedding.minilm.MiniLMEmbedder"
    threads: int = 2
    query_batch_size: int = 64
    document_batch_size: int = 16

    @classmethod
    def from_settings(cls) -> EmbeddingConfig:
        conf = settings.EMBEDDING
        return cls(
            backend=conf.get("BACKEND", cls.backend),
            threads=int(conf.get("THREADS", cls.threads)),
            query_batch_size=int(conf.get("QUERY_BATCH_SIZE", cls.query_batch_size)),
            document_batch_size=int(conf.get("DOCUMENT_BATCH_SIZE", cls.document_batch_size)),
        )

    def build_embedder(self) -> Embedder:
        return import_string(self.backend)(threads=self.threads)


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


class EmbeddingService:
    """The process's way to embed text from async code.

    The model call takes milliseconds to seconds and releases the GIL, so it runs on a thread of
    its own while event loops keep serving. Queries that arrive while the model is busy are
    answered together by the next model call; queries go before queued document batches, so a
    large ingestion never holds searches for longer than one document batch.
    """

    def __init__(self, config: EmbeddingConfig | None = None) -> None:
        self._config = config
        self._embedder: Embedder | None = None
        self._condition = threading.Condition()
        self._queries: deque[_Job] = deque()
        self._documents: deque[_Job] = deque()
        self._thread: threading.Thread | None = None

    def configure(self, config: EmbeddingConfig) -> None:
        with self._condition:
            self._config = config
            self._embedder = None

    @property
    def config(self) -> EmbeddingConfig:
        if self._config is None:
            self._config = EmbeddingConfig.from_settings()
        return self._config

    @property
    def embedder(self) -> Embedder:
        """The configured model; building it does no I/O, the weights load on the first embedding."""
        if self._embedder is None:
            with self._condition:
                if self._embedder is None:
                    self._embedder = self.config.build_embedder()
        return self._embedder

    @property
    def model_id(self) -> str:
        return self.embedder.model_id

    @property
    def dimensions(self) -> int:
        return self.embedder.dimensions

    async def embed_query(self, text: str) -> list[float]:
        (vector,) = await self._submit([text], self._queries)
        return vector

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed many texts in batches of similar length, returned in the order given."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        size = self.config.document_batch_size
        batches = [order[start : start + size] for start in range(0, len(order), size)]
        results = await asyncio.gather(
            *(self._submit([texts[i] for i in batch], self._documents) for batch in batches)
        )
        vectors: list[list[float]] = [[] for _ in texts]
        for batch, batch_vectors in zip(batches, results):
            for i, vector in zip(batch, batch_vectors):
                vectors[i] = vector
        return vectors

    async def _submit(self, texts: list[str], queue: deque[_Job]) -> list[list[float]]:
        loop = asyncio.get_running_loop()
        job = _Job(texts, loop, loop.create_future(), "query" if queue is self._queries else "document")
        with self._condition:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="kbsite-embedding", daemon=True)
                self._thread.start()
            queue.append(job)
            self._condition.notify()
        return await job.future

    def _next_batch(self) -> list[_Job]:
        with self._condition:
            while not self._queries and not self._documents:
                self._condition.wait()
            if self._queries:
                batch, texts = [], 0
                while self._queries and texts < self.config.query_batch_size:
                    job = self._queries.popleft()
                    batch.append(job)
                    texts += len(job.texts)
                return batch
            return [self._documents.popleft()]

    def _work(self) -> None:
        while True:
            batch = [job for job in self._next_batch() if not job.future.cancelled()]
            if not batch:
                continue
            texts = [text for job in batch for text in job.texts]
            metrics.observe_embedding_batch(
                kind=batch[0].kind, queued_at=[j.queued_at for j in batch for _ in j.texts]
            )
            try:
                vectors = self.embedder.embed(texts).tolist()
            except Exception as exc:  # every waiter must hear of the failure
                logger.exception("Embedding %d texts failed", len(texts))
                for job in batch:
                    _settle(job, None, exc)
                continue
            position = 0
            for job in batch:
                _settle(job, vectors[position : position + len(job.texts)], None)
                position += len(job.texts)


embedding_service = EmbeddingService()
