"""AC-7.7.4 (story tests 4.1-4.4): 100 and 150 concurrent searches with the real embedder, embedded Qdrant and database.

The KB is realistic: real English prose that every install has (the docstrings of Python's standard library,
Django and NumPy, `tests.support.prose`) cut at the default chunk settings into at least 2,000 chunks, each
document taken through the ingestion pipeline. It needs nothing beside the checkout.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import statistics
import time

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings

from knowledge.models import DocumentStatus, KnowledgeBase, Membership
from knowledge.services.permissions import PermissionService
from search.services.audit import SearchAuditService
from search.services.chunks import ChunkService
from search.services.collections import CollectionService
from search.services.search import SearchService
from tests.conftest import drop_all_collections
from tests.factories import make_document, make_kb, make_user
from tests.support.prose import prose_documents

pytestmark = [pytest.mark.performance, pytest.mark.django_db(transaction=True)]

TOPICS = ["parse a JSON document", "open a socket connection", "time zone aware datetimes", "render a template",
          "compress files into an archive", "regular expression groups", "run tasks in a thread pool",
          "database migrations", "e-mail message headers", "round a decimal number"]
MIN_CHUNKS = 2000


def make_documents(kb, rows):
    return [make_document(kb=kb, title=title, text=text) for title, text in rows]


@pytest.fixture
def fresh_qdrant():
    """The store is emptied once, before the module's KB is indexed (indexed_store), not before each test."""
    yield


@pytest.fixture(scope="module")
def indexed_store(django_db_setup, django_db_blocker, ingestion_service):
    """The KB's chunks indexed once for the module's four tests, and the database rows a search reads
    (owner, KB, membership) to write back for each test after the one before emptied the database."""
    with django_db_blocker.unblock():
        asyncio.run(drop_all_collections())
        owner = make_user(username="alice")
        kb = asyncio.run(_ingest_documentation(owner, ingestion_service))
        kb = KnowledgeBase.objects.get(pk=kb.pk)
        rows = [type(owner).objects.get(pk=owner.pk), kb, *Membership.objects.filter(knowledge_base=kb)]
    yield rows
    asyncio.run(CollectionService().delete_knowledge_base(kb_id=kb.id))


@pytest.fixture
def knowledge_base(indexed_store, transactional_db):
    """(kb, owner), their rows as the indexing left them."""
    for row in indexed_store:
        row.save()
    owner, kb = indexed_store[:2]
    return kb, owner


async def _ingest_documentation(owner, ingestion_service):
    kb = await sync_to_async(make_kb)(owner=owner, name="Python and Django documentation")
    assert (kb.chunk_size, kb.chunk_overlap) == (settings.CHUNKING["SIZE"], settings.CHUNKING["OVERLAP"])
    chunks, texts = 0, prose_documents()
    while chunks < MIN_CHUNKS:
        batch = list(itertools.islice(texts, 50))
        assert batch, f"The installed prose ran out at {chunks} chunks, before the KB reached {MIN_CHUNKS}"
        documents = await sync_to_async(make_documents)(kb, batch)
        for document in documents:
            document = await ingestion_service.ingest_now(document_id=document.id, worker_id="load")
            assert document.status == DocumentStatus.READY, document.error
            chunks += document.chunk_count
    return kb


@pytest.fixture
def frozen_heap():
    """What kbsite's server does at start-up: move the objects alive now out of the collector's sight,
    so that a full collection during the burst scans the burst's objects, not the test session's."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture
async def search_service_for_load(knowledge_base, frozen_heap):
    kb, test_user = knowledge_base
    assert await ChunkService().count_chunks(kb_id=kb.id) >= MIN_CHUNKS
    service = SearchService(PermissionService(), SearchAuditService())
    # Load the model, open the store and let the model see a batch before timing, as a server
    # that has served its first few requests has.
    await asyncio.gather(
        *(service.semantic_search(query=f"warm up {i}", kb_ids=[kb.id], user_id=test_user.id) for i in range(20))
    )
    return service, kb, test_user


async def run_concurrently(service, kb, user, count: int, label: str):
    """Launch `count` searches at once; each latency runs from the common launch to that search's end."""
    finished: list[float] = []

    async def one(i: int):
        results = await service.semantic_search(
            query=f"{label} {TOPICS[i % len(TOPICS)]} question {i}", kb_ids=[str(kb.id)], user_id=user.id, limit=10
        )
        finished.append(time.perf_counter())
        return results

    launched = time.perf_counter()
    outcomes = await asyncio.gather(*(one(i) for i in range(count)), return_exceptions=True)
    latencies = sorted(end - launched for end in finished)
    return outcomes, latencies


def percentile(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * fraction))]


def report(show, label: str, latencies: list[float]) -> None:
    show(
        f"\n{label}: n={len(latencies)} p50={percentile(latencies, 0.50) * 1000:.1f}ms "
        f"p95={percentile(latencies, 0.95) * 1000:.1f}ms p99={percentile(latencies, 0.99) * 1000:.1f}ms "
        f"max={latencies[-1] * 1000:.1f}ms mean={statistics.mean(latencies) * 1000:.1f}ms "
        f"cv={statistics.stdev(latencies) / statistics.mean(latencies):.2f}"
    )


class TestAsyncQdrantLoadPerformance:
    async def test_100_concurrent_requests_complete(self, search_service_for_load, show) -> None:
        """4.1"""
        outcomes, latencies = await run_concurrently(*search_service_for_load, count=100, label="complete")
        report(show, "100 concurrent", latencies)

        failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        assert failures == []
        assert all(len(results) == 10 for results in outcomes)

    async def test_100_concurrent_requests_p99_under_500ms(self, search_service_for_load, show) -> None:
        """4.2: p99 under 500 ms. The embedder's own time for 100 other queries, measured just before in the
        same run, is printed beside it as the reference: the part of the budget the model alone takes."""
        service = search_service_for_load[0]
        queries = [f"floor {TOPICS[i % len(TOPICS)]} question {i}" for i in range(100)]
        started = time.perf_counter()
        await asyncio.gather(*(service.embeddings.embed_query(query) for query in queries))
        floor = time.perf_counter() - started
        outcomes, latencies = await run_concurrently(*search_service_for_load, count=100, label="performance")
        report(show, "100 concurrent", latencies)
        show(f"embedder alone on 100 queries: {floor * 1000:.1f}ms; bar 500ms")

        assert len(latencies) == 100
        assert percentile(latencies, 0.99) < 0.5

    async def test_consistent_latency_under_load(self, search_service_for_load, show) -> None:
        """4.3"""
        outcomes, latencies = await run_concurrently(*search_service_for_load, count=100, label="consistency")
        report(show, "100 concurrent", latencies)

        assert len(latencies) == 100
        assert statistics.stdev(latencies) / statistics.mean(latencies) < 1.0

    async def test_no_thread_pool_exhaustion(self, search_service_for_load, show) -> None:
        """4.4"""
        outcomes, latencies = await run_concurrently(*search_service_for_load, count=150, label="exhaustion")
        report(show, "150 concurrent", latencies)

        failures = [f"{type(o).__name__}: {o}" for o in outcomes if isinstance(o, BaseException)]
        assert failures == []
        assert len(latencies) == 150
