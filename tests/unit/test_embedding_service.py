"""The embedding service: model threads for queries (micro-batched, cached) and for documents, at a lower priority."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from search.embedding import EmbeddingConfig, EmbeddingService
from search.embedding.minilm import MiniLMEmbedder

pytestmark = pytest.mark.unit


class CountingMiniLM(MiniLMEmbedder):
    """The real model, counting its calls and what each was given."""

    calls: list[list[str]] = []

    def embed(self, texts):
        CountingMiniLM.calls.append(list(texts))
        return super().embed(texts)

    def embed_queries_in_parts(self, texts):
        CountingMiniLM.calls.append(list(texts))
        return super().embed_queries_in_parts(texts)


class BrokenEmbedder(MiniLMEmbedder):
    def embed(self, texts):
        raise RuntimeError("the model file is damaged")

    embed_queries_in_parts = embed


def os_thread_name() -> str:
    """The calling thread's name as the OS shows it (top -H, /proc/PID/task), Linux only."""
    return Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()


class HeldDocumentsMiniLM(MiniLMEmbedder):
    """The real model, except that a batch of documents waits in the model call until let go,
    and each call notes the OS priority (nice value) and name of the thread that made it."""

    documents_in_model = threading.Event()
    let_documents_go = threading.Event()
    niceness: dict[str, int] = {}
    os_names: dict[str, str] = {}

    def embed(self, texts):
        self._note(texts)
        return super().embed(texts)

    def embed_queries_in_parts(self, texts):
        self._note(texts)
        return super().embed_queries_in_parts(texts)

    def _note(self, texts):
        kind = "documents" if texts[0].startswith("document") else "queries"
        HeldDocumentsMiniLM.niceness[kind] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        if sys.platform.startswith("linux"):
            HeldDocumentsMiniLM.os_names[kind] = os_thread_name()
        if kind == "documents":
            HeldDocumentsMiniLM.documents_in_model.set()
            HeldDocumentsMiniLM.let_documents_go.wait(timeout=60)


def service_with(backend: type, **config) -> EmbeddingService:
    return EmbeddingService(
        EmbeddingConfig(backend=f"{__name__}.{backend.__name__}", document_batch_size=16, **config)
    )


@pytest.fixture
def counting():
    CountingMiniLM.calls = []
    return service_with(CountingMiniLM)


async def test_vectors_are_unit_length_and_the_model_size(counting) -> None:
    vector = await counting.embed_query("How do bees find flowers?")

    assert len(vector) == 384 and np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)


async def test_concurrent_queries_share_model_calls(counting) -> None:
    queries = [f"question {i} about honeybees" for i in range(40)]

    together = await asyncio.gather(*(counting.embed_query(query) for query in queries))

    assert len(CountingMiniLM.calls) < len(queries) / 4
    alone = [await counting.embed_query(query) for query in queries[:3]]
    for one, other in zip(alone, together):
        assert np.dot(one, other) == pytest.approx(1.0, abs=1e-5)


async def test_documents_come_back_in_the_order_given(counting) -> None:
    texts = ["short", "a somewhat longer text about the sea and its tides", "mid length text here"]

    vectors = await counting.embed_documents(texts)

    alone = MiniLMEmbedder(threads=1).embed(texts)
    for vector, expected in zip(vectors, alone):
        assert np.dot(vector, expected) == pytest.approx(1.0, abs=1e-5)


async def test_a_query_does_not_wait_for_a_long_indexing_job(counting) -> None:
    long_chunks = [" ".join(["The tide rises and falls twice each day"] * 8) + f" {i}" for i in range(64)]

    indexing = asyncio.ensure_future(counting.embed_documents(long_chunks))
    await asyncio.sleep(0)
    await counting.embed_query("when is high tide")
    query_done_while_indexing = not indexing.done()
    await indexing

    assert query_done_while_indexing
    document_batches = [call for call in CountingMiniLM.calls if len(call) == 16]
    assert len(document_batches) == 4


async def test_a_query_is_answered_while_a_document_batch_is_in_the_model() -> None:
    HeldDocumentsMiniLM.documents_in_model.clear()
    HeldDocumentsMiniLM.let_documents_go.clear()
    service = service_with(HeldDocumentsMiniLM)
    indexing = asyncio.ensure_future(service.embed_documents([f"document {i} about tides" for i in range(16)]))
    try:
        assert await asyncio.to_thread(HeldDocumentsMiniLM.documents_in_model.wait, 60)

        vector = await asyncio.wait_for(service.embed_query("queries: when is high tide"), timeout=30)

        assert len(vector) == 384 and not indexing.done()
    finally:
        HeldDocumentsMiniLM.let_documents_go.set()
    assert len(await indexing) == 16


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="threads have a priority and a name of their own on Linux")
async def test_documents_are_embedded_at_a_lower_priority_than_queries_on_threads_named_for_them() -> None:
    HeldDocumentsMiniLM.let_documents_go.set()
    HeldDocumentsMiniLM.niceness, HeldDocumentsMiniLM.os_names = {}, {}
    service = service_with(HeldDocumentsMiniLM, document_niceness=5)

    await service.embed_documents(["document about the sea"])
    await service.embed_query("queries: the sea")

    niceness = HeldDocumentsMiniLM.niceness
    assert niceness["documents"] == min(19, niceness["queries"] + 5)
    assert niceness["queries"] == os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    # whichever documents' worker was idle first embeds
    assert HeldDocumentsMiniLM.os_names["documents"] in {f"kb-documents-{i}" for i in range(len(service._document_workers))}
    # whichever query worker was idle first answers
    assert HeldDocumentsMiniLM.os_names["queries"] in {f"kb-query-{i}" for i in range(len(service._query_workers))}
    assert set(HeldDocumentsMiniLM.os_names) == {"documents", "queries"}


async def test_a_repeated_query_is_answered_without_the_model(counting) -> None:
    first = await counting.embed_query("how do bees find flowers")
    first.append(0.0)  # a caller changing its vector changes nobody else's

    second = await counting.embed_query("how do bees find flowers")

    assert [call for call in CountingMiniLM.calls] == [["how do bees find flowers"]]
    assert second == first[:-1]


async def test_the_query_cache_keeps_the_most_recent_queries() -> None:
    CountingMiniLM.calls = []
    service = service_with(CountingMiniLM, query_cache_size=2)

    for query in ["tides", "bees", "tides", "lava", "tides", "bees"]:
        await service.embed_query(query)

    assert [texts for call in CountingMiniLM.calls for texts in call] == ["tides", "bees", "lava", "bees"]


async def test_a_model_failure_reaches_every_waiter() -> None:
    service = service_with(BrokenEmbedder)

    outcomes = await asyncio.gather(
        *(service.embed_query(f"q{i}") for i in range(5)), service.embed_documents(["a", "b"]), return_exceptions=True
    )

    assert all(isinstance(outcome, RuntimeError) and "damaged" in str(outcome) for outcome in outcomes)
    # The thread survives a failed batch.
    with pytest.raises(RuntimeError):
        await service.embed_query("again")


def test_building_the_service_loads_nothing() -> None:
    service = service_with(CountingMiniLM)

    assert service.model_id == "all-MiniLM-L6-v2-int8" and service.dimensions == 384
    assert service.embedder._session is None


class ThreadNotingMiniLM(MiniLMEmbedder):
    """The real model, noting for each kind of text how many threads its instance was built with."""

    threads_by_kind: dict[str, int] = {}

    def embed(self, texts):
        ThreadNotingMiniLM.threads_by_kind["documents"] = self._threads
        return super().embed(texts)

    def embed_queries_in_parts(self, texts):
        ThreadNotingMiniLM.threads_by_kind["queries"] = self._threads
        return super().embed_queries_in_parts(texts)


async def test_queries_and_documents_get_a_model_each_with_its_own_thread_count() -> None:
    ThreadNotingMiniLM.threads_by_kind = {}
    service = service_with(ThreadNotingMiniLM, threads=2, query_threads=1, document_workers=1)

    await asyncio.gather(service.embed_query("query about tides"), service.embed_documents(["document on tides"]))

    assert ThreadNotingMiniLM.threads_by_kind == {"queries": 1, "documents": 2}


class TwoAtOnceMiniLM(MiniLMEmbedder):
    """The real model, whose calls wait in the model until two of them are in it at once (or 30 s pass)."""

    lock = threading.Lock()
    inside = 0
    two_inside = threading.Event()
    threads: set[str] = set()
    os_names: set[str] = set()

    def embed_queries_in_parts(self, texts):
        # Every part made inside, while the other call is in the model too.
        return self._with_another(lambda texts: list(super(TwoAtOnceMiniLM, self).embed_queries_in_parts(texts)), texts)

    def _with_another(self, embed, texts):
        cls = TwoAtOnceMiniLM
        with cls.lock:
            cls.inside += 1
            cls.threads.add(threading.current_thread().name)
            if sys.platform.startswith("linux"):
                cls.os_names.add(os_thread_name())
            if cls.inside == 2:
                cls.two_inside.set()
        try:
            cls.two_inside.wait(timeout=30)
            return embed(texts)
        finally:
            with cls.lock:
                cls.inside -= 1


class TwoDocumentBatchesAtOnceMiniLM(TwoAtOnceMiniLM):
    """The same for document batches: each waits in the model until a second is in it too."""

    def embed(self, texts):
        return self._with_another(super().embed, texts)


async def test_a_burst_of_queries_is_split_between_workers_that_share_one_model() -> None:
    TwoAtOnceMiniLM.two_inside.set()  # the warm-up query passes alone
    service = service_with(TwoAtOnceMiniLM, query_workers=2)
    warm = await service.embed_query("warm up")

    def both_workers_idle() -> bool:
        with service._condition:
            return service._condition.wait_for(lambda: service._idle_query_workers == 2, timeout=30)

    assert await asyncio.to_thread(both_workers_idle)
    TwoAtOnceMiniLM.two_inside.clear()
    TwoAtOnceMiniLM.threads, TwoAtOnceMiniLM.os_names = set(), set()
    queries = [f"question {i} about honeybees" for i in range(40)]

    vectors = await asyncio.wait_for(asyncio.gather(*(service.embed_query(q) for q in queries)), timeout=60)

    assert TwoAtOnceMiniLM.two_inside.is_set()
    assert TwoAtOnceMiniLM.threads == {"kbsite-embedding-queries-0", "kbsite-embedding-queries-1"}
    if sys.platform.startswith("linux"):  # what top -H and /proc/PID/task show
        assert TwoAtOnceMiniLM.os_names == {"kb-query-0", "kb-query-1"}
    assert len({id(worker.embedder) for worker in service._query_workers}) == 1
    alone = MiniLMEmbedder(threads=1).embed_queries([queries[0], queries[-1], "warm up"])
    assert np.dot(vectors[0], alone[0]) == pytest.approx(1.0, abs=1e-5)
    assert np.dot(vectors[-1], alone[1]) == pytest.approx(1.0, abs=1e-5)
    assert np.dot(warm, alone[2]) == pytest.approx(1.0, abs=1e-5)


async def test_document_batches_are_split_between_workers_of_one_model_thread_each() -> None:
    TwoAtOnceMiniLM.two_inside.clear()
    TwoAtOnceMiniLM.threads, TwoAtOnceMiniLM.os_names = set(), set()
    service = service_with(TwoDocumentBatchesAtOnceMiniLM, threads=2, document_workers=2)
    texts = [f"document {i} about the tides and the moon" for i in range(32)]  # two batches of 16

    vectors = await asyncio.wait_for(service.embed_documents(texts), timeout=60)

    assert TwoAtOnceMiniLM.two_inside.is_set()
    assert TwoAtOnceMiniLM.threads == {"kbsite-embedding-documents-0", "kbsite-embedding-documents-1"}
    if sys.platform.startswith("linux"):
        assert TwoAtOnceMiniLM.os_names == {"kb-documents-0", "kb-documents-1"}
    (shared,) = {id(worker.embedder) for worker in service._document_workers}
    assert service.documents_embedder._threads == 1 and id(service.documents_embedder) == shared
    alone = MiniLMEmbedder(threads=1).embed([texts[0], texts[-1]])
    assert np.dot(vectors[0], alone[0]) == pytest.approx(1.0, abs=1e-5)
    assert np.dot(vectors[-1], alone[1]) == pytest.approx(1.0, abs=1e-5)


async def test_one_query_worker_answers_every_query_of_a_burst_alone() -> None:
    CountingMiniLM.calls = []
    service = service_with(CountingMiniLM, query_workers=1)

    await asyncio.gather(*(service.embed_query(f"question {i} about tides") for i in range(20)))

    assert [worker.name for worker in service._query_workers] == ["kbsite-embedding-queries-0"]
    assert sum(len(call) for call in CountingMiniLM.calls) == 20


async def test_each_query_is_answered_when_its_own_part_of_the_batch_is_done() -> None:
    from search.embedding.service import _Job, _settle_in_parts

    loop = asyncio.get_running_loop()
    jobs = [_Job([text], loop, loop.create_future()) for text in ("first", "second")]
    second_part_may_go = threading.Event()

    def parts():
        yield [1], np.array([[1.0, 0.0]], dtype=np.float32)
        second_part_may_go.wait(timeout=30)
        yield [0], np.array([[0.0, 1.0]], dtype=np.float32)

    model_thread = asyncio.ensure_future(asyncio.to_thread(_settle_in_parts, jobs, parts()))
    # The second query's part is done: it is answered while the first one's is still in the model.
    assert await asyncio.wait_for(jobs[1].future, timeout=30) == [[1.0, 0.0]]
    assert not jobs[0].future.done()
    second_part_may_go.set()
    await model_thread
    assert await jobs[0].future == [[0.0, 1.0]]


async def test_a_text_the_model_left_without_a_vector_is_an_error_not_a_wait() -> None:
    from search.embedding.service import _Job, _settle_in_parts

    loop = asyncio.get_running_loop()
    jobs = [_Job(["a", "b"], loop, loop.create_future())]

    with pytest.raises(RuntimeError, match="no vector for 1 of 2 texts"):
        _settle_in_parts(jobs, iter([([0], np.zeros((1, 2), dtype=np.float32))]))
    assert not jobs[0].future.done()


async def test_a_job_of_no_texts_is_answered_with_no_vectors() -> None:
    from search.embedding.service import _Job, _settle_in_parts

    loop = asyncio.get_running_loop()
    jobs = [_Job([], loop, loop.create_future()), _Job(["a"], loop, loop.create_future())]

    _settle_in_parts(jobs, iter([([0], np.array([[1.0, 0.0]], dtype=np.float32))]))

    assert await asyncio.wait_for(jobs[0].future, timeout=30) == []
    assert await asyncio.wait_for(jobs[1].future, timeout=30) == [[1.0, 0.0]]
