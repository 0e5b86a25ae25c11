"""The embedding service: one model thread, micro-batched queries ahead of document batches."""

from __future__ import annotations

import asyncio

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


class BrokenEmbedder(MiniLMEmbedder):
    def embed(self, texts):
        raise RuntimeError("the model file is damaged")


def service_with(backend: type) -> EmbeddingService:
    return EmbeddingService(EmbeddingConfig(backend=f"{__name__}.{backend.__name__}", document_batch_size=16))


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

    for text, vector in zip(texts, vectors):
        assert np.dot(vector, await counting.embed_query(text)) == pytest.approx(1.0, abs=1e-5)


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
