"""The Qdrant server code path (gRPC, one client per event loop) against a loopback server built from qdrant_client.grpc."""

from __future__ import annotations

import asyncio
import threading
from uuid import UUID

import grpc
import pytest
import uvloop
from asgiref.sync import async_to_sync
from qdrant_client import AsyncQdrantClient

from knowledge.services.permissions import PermissionService
from search.errors import VectorStoreUnavailable
from search.qdrant import QdrantConfig, qdrant_service
from search.services.audit import SearchAuditService
from search.services.chunks import ChunkService
from search.services.collections import KbIndex
from search.services.search import SearchService
from tests.conftest import index_corpus

pytestmark = [pytest.mark.server, pytest.mark.integration, pytest.mark.django_db(transaction=True)]

QUERY = "why does the sea rise and fall twice a day"


@pytest.fixture
def indexed_on_server(qdrant_server, test_user, ingestion_service):
    """The test corpus indexed into the server, through a loop of its own that ends before the test."""
    kb, _ = asyncio.run(index_corpus(owner=test_user, ingestion=ingestion_service, chunk_size=64, chunk_overlap=12))
    return kb


def search(kb, user) -> list:
    service = SearchService(PermissionService(), SearchAuditService())
    return asyncio.run(service.semantic_search(query=QUERY, kb_ids=[kb.id], user_id=user.id, limit=5))


async def test_the_client_is_an_async_grpc_client(qdrant_server) -> None:
    client = qdrant_service.client

    await client.get_collections()

    assert isinstance(client, AsyncQdrantClient)
    assert client.init_options["prefer_grpc"] is True
    # The loopback server speaks only gRPC, so the answer proves which protocol was used.
    assert qdrant_server.request_counts["Collections.List"] == 1


async def test_each_loop_gets_its_own_client(qdrant_server) -> None:
    here = qdrant_service.client
    elsewhere: list[AsyncQdrantClient] = []

    async def other_loop() -> None:
        elsewhere.append(qdrant_service.client)
        await qdrant_service.client.get_collections()

    thread = threading.Thread(target=asyncio.run, args=(other_loop(),))
    thread.start()
    thread.join()

    assert qdrant_service.client is here
    assert elsewhere[0] is not here
    # The other loop has ended, and its client was closed with it.
    assert elsewhere[0]._client.closed


def test_two_asyncio_runs_in_a_row_search_with_the_same_service(indexed_on_server, test_user) -> None:
    first = search(indexed_on_server, test_user)
    second = search(indexed_on_server, test_user)

    assert len(first) == 5 and "tide" in first[0].title.lower()
    assert [(r.document_id, r.chunk_index) for r in first] == [(r.document_id, r.chunk_index) for r in second]


def test_uvicorns_uvloop_serves_the_grpc_client_too(indexed_on_server, test_user) -> None:
    """uvicorn runs on uvloop when it is installed, as it is with kbsite: gRPC channels must bind to it."""
    service = SearchService(PermissionService(), SearchAuditService())

    async def search_and_keep_client():
        results = await service.semantic_search(query=QUERY, kb_ids=[indexed_on_server.id], user_id=test_user.id)
        return results, qdrant_service.client

    first, first_client = uvloop.run(search_and_keep_client())
    second, _ = uvloop.run(search_and_keep_client())

    assert first and [r.chunk_index for r in first] == [r.chunk_index for r in second]
    assert first_client._client.closed


def test_two_threads_with_their_own_loops_search_at_once(indexed_on_server, test_user) -> None:
    results: list[list] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def searcher() -> None:
        start.wait()
        try:
            results.append(search(indexed_on_server, test_user))
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=searcher) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(results) == 2 and results[0] == results[1] and results[0]


def test_sync_code_reaches_the_server_through_async_to_sync(indexed_on_server) -> None:
    count = async_to_sync(ChunkService().count_chunks)

    assert count(kb_id=indexed_on_server.id) == count(kb_id=indexed_on_server.id) > 0


def test_server_results_match_the_embedded_store(indexed_on_server, test_user, ingestion_service) -> None:
    on_server = search(indexed_on_server, test_user)
    qdrant_service.configure(QdrantConfig.from_settings())
    kb, _ = asyncio.run(
        index_corpus(owner=test_user, ingestion=ingestion_service, chunk_size=64, chunk_overlap=12, name="Embedded")
    )

    embedded = search(kb, test_user)

    assert [(r.title, r.chunk_index, r.content) for r in on_server] == [
        (r.title, r.chunk_index, r.content) for r in embedded
    ]
    assert [r.score for r in on_server] == pytest.approx([r.score for r in embedded], abs=1e-5)


def test_collections_on_a_server_get_payload_indexes(indexed_on_server, qdrant_server) -> None:
    # the tenant key (is_tenant), the search key, kb_id, document_id, chunk_index, the archive flag and
    # tags (the indexed corpus declares no metadata field, so no typed metadata index)
    assert qdrant_server.request_counts["Points.CreateFieldIndex"] == 7
    assert qdrant_server.request_counts["Collections.Create"] == 1


def test_an_unreachable_server_raises_a_clear_error(indexed_on_server, qdrant_server, test_user) -> None:
    # the first call and each retry
    qdrant_server.fail_next("Points.Query", grpc.StatusCode.UNAVAILABLE, times=1 + qdrant_service.config.retry.retries)

    with pytest.raises(VectorStoreUnavailable) as unavailable:
        search(indexed_on_server, test_user)

    assert qdrant_server.url in unavailable.value.message and "QDRANT_URL" in unavailable.value.message
    assert search(indexed_on_server, test_user)


def test_a_stopped_server_raises_a_clear_error(qdrant_server) -> None:
    qdrant_server.stop()

    with pytest.raises(VectorStoreUnavailable):
        index = KbIndex(kb_id=UUID("6a1f7a4e-0000-4000-8000-000000000000"), model="any", vector_size=384)
        asyncio.run(ChunkService().count_chunks(kb_id=index.kb_id, index=index))
