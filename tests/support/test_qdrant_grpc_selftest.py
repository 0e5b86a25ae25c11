"""Self-test of the loopback Qdrant gRPC server: over gRPC, the async client gets what Edge answers in process."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc
import pytest
from qdrant_client import AsyncQdrantClient, models

from search.edge import EdgeStore
from tests.support.qdrant_grpc import LoopbackQdrantServer

pytestmark = [pytest.mark.server]

DIM = 384
COLLECTION = "chunks"
ALIAS = "chunks_current"
VECTORS = models.VectorParams(size=DIM, distance=models.Distance.COSINE)
UNTITLED = models.Filter(must=[models.IsEmptyCondition(is_empty=models.PayloadField(key="title"))])


def _vector(seed: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(0.0, 1.0) for _ in range(DIM)]


def _points() -> list[models.PointStruct]:
    return [
        models.PointStruct(
            id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"chunk-{n}")),
            vector=_vector(n),
            payload={
                "document_id": "doc-a" if n % 2 else "doc-b",
                "chunk_index": n,
                "lang": ("en", "de", "fr")[n % 3],
                "title": None if n % 4 == 0 else f"Title {n}",
            },
        )
        for n in range(12)
    ]


def _field(key: str, value: Any) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def _hits(points: list[models.ScoredPoint]) -> list[tuple[str, float]]:
    return [(str(point.id), point.score) for point in points]


async def _scenario(client: AsyncQdrantClient) -> dict[str, Any]:
    """Run the operations the project relies on and record what each returned."""
    seen: dict[str, Any] = {}
    seen["created"] = await client.create_collection(COLLECTION, vectors_config=VECTORS)
    alias = models.CreateAliasOperation(
        create_alias=models.CreateAlias(collection_name=COLLECTION, alias_name=ALIAS)
    )
    seen["aliased"] = await client.update_collection_aliases([alias])
    seen["aliases"] = [(a.alias_name, a.collection_name) for a in (await client.get_aliases()).aliases]
    seen["exists"] = await client.collection_exists(COLLECTION)
    # a server orders by a payload key only once it has a range index on it
    await client.create_payload_index(COLLECTION, "chunk_index", models.PayloadSchemaType.INTEGER)
    await client.create_payload_index(COLLECTION, "document_id", models.PayloadSchemaType.KEYWORD)
    seen["upsert"] = (await client.upsert(COLLECTION, points=_points())).status

    query_filter = models.Filter(
        must=[
            _field("document_id", "doc-a"),
            models.FieldCondition(key="lang", match=models.MatchAny(any=["en", "fr"])),
        ],
        must_not=[models.IsEmptyCondition(is_empty=models.PayloadField(key="title"))],
    )
    found = await client.query_points(ALIAS, query=_vector(100), query_filter=query_filter, limit=5)
    seen["query"] = _hits(found.points)
    seen["query_payloads"] = [point.payload for point in found.points]
    untitled = await client.query_points(COLLECTION, query=_vector(101), query_filter=UNTITLED, limit=10)
    seen["untitled"] = _hits(untitled.points)
    batch = await client.query_batch_points(
        COLLECTION, [models.QueryRequest(query=_vector(seed), limit=3) for seed in (102, 103)]
    )
    seen["batch"] = [_hits(response.points) for response in batch]

    records, next_offset = await client.scroll(
        COLLECTION,
        scroll_filter=models.Filter(must=[_field("document_id", "doc-a")]),
        order_by=models.OrderBy(key="chunk_index", start_from=3),
        limit=100,
    )
    seen["scroll"] = [(str(record.id), record.payload["chunk_index"]) for record in records]
    seen["scroll_next"] = next_offset
    seen["retrieve"] = [(str(r.id), r.payload) for r in await client.retrieve(COLLECTION, [records[0].id])]

    doc_b = models.Filter(must=[_field("document_id", "doc-b")])
    seen["count_all"] = (await client.count(COLLECTION, exact=True)).count
    seen["count_doc_b"] = (await client.count(COLLECTION, count_filter=doc_b, exact=True)).count
    await client.set_payload(COLLECTION, payload={"lang": "it"}, points=models.FilterSelector(filter=doc_b))
    italian = models.Filter(must=[_field("lang", "it")])
    seen["count_it"] = (await client.count(COLLECTION, count_filter=italian)).count

    late_doc_a = models.Filter(
        must=[
            _field("document_id", "doc-a"),
            models.FieldCondition(key="chunk_index", range=models.Range(gte=7)),
        ]
    )
    await client.delete(COLLECTION, points_selector=models.FilterSelector(filter=late_doc_a))
    seen["count_after_delete"] = (await client.count(COLLECTION, exact=True)).count

    seen["deleted"] = await client.delete_collection(COLLECTION)
    seen["exists_after_delete"] = await client.collection_exists(COLLECTION)
    return seen


def _grpc_client(server: LoopbackQdrantServer) -> AsyncQdrantClient:
    return AsyncQdrantClient(
        url=server.url, grpc_port=server.grpc_port, prefer_grpc=True, check_compatibility=False
    )


def _run(client: AsyncQdrantClient, work: Callable[[AsyncQdrantClient], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        try:
            return await work(client)
        finally:
            await client.close()

    return asyncio.run(run())


@pytest.fixture
def server() -> Iterator[LoopbackQdrantServer]:
    with LoopbackQdrantServer() as running:
        yield running


def _assert_same_hits(over_grpc: list[tuple[str, float]], local: list[tuple[str, float]]) -> None:
    assert [point_id for point_id, _ in over_grpc] == [point_id for point_id, _ in local]
    for (_, grpc_score), (_, local_score) in zip(over_grpc, local, strict=True):
        assert grpc_score == pytest.approx(local_score, abs=1e-6)


def _edge_client() -> AsyncQdrantClient:
    """An async client on an EdgeStore in this process: the engine the server runs, without the protocol."""
    client = AsyncQdrantClient(location=":memory:")
    client._client = EdgeStore()
    return client


def test_grpc_answers_match_edge_in_process(server: LoopbackQdrantServer) -> None:
    over_grpc = _run(_grpc_client(server), _scenario)
    local = _run(_edge_client(), _scenario)

    for key in ("query", "untitled"):
        _assert_same_hits(over_grpc[key], local[key])
    for over_grpc_hits, local_hits in zip(over_grpc["batch"], local["batch"], strict=True):
        _assert_same_hits(over_grpc_hits, local_hits)
    scored = {"query", "untitled", "batch"}
    assert {k: v for k, v in over_grpc.items() if k not in scored} == {
        k: v for k, v in local.items() if k not in scored
    }
    # the scenario is only a useful comparison if its filters actually selected something
    assert over_grpc["query"] and over_grpc["untitled"]
    assert over_grpc["aliases"] == [(ALIAS, COLLECTION)]
    assert {payload["title"] is not None for payload in over_grpc["query_payloads"]} == {True}
    assert [index for _, index in over_grpc["scroll"]] == [3, 5, 7, 9, 11]
    assert (over_grpc["count_all"], over_grpc["count_doc_b"], over_grpc["count_it"]) == (12, 6, 6)
    assert over_grpc["count_after_delete"] == 9
    assert (over_grpc["deleted"], over_grpc["exists_after_delete"]) == (True, False)
    assert server.request_counts["Points.Query"] == 2
    assert server.request_counts["Points.QueryBatch"] == 1


@pytest.mark.parametrize(
    "call",
    [
        lambda client: client.count("missing"),
        lambda client: client.query_points("missing", query=_vector(0)),
        lambda client: client.get_collection("missing"),
    ],
    ids=["count", "query", "get_collection"],
)
def test_missing_collection_is_not_found(
    server: LoopbackQdrantServer, call: Callable[[AsyncQdrantClient], Awaitable[Any]]
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        _run(_grpc_client(server), call)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert raised.value.details() == "Not found: Collection `missing` doesn't exist!"


def test_invalid_input_is_invalid_argument(server: LoopbackQdrantServer) -> None:
    async def query_with_wrong_dimension(client: AsyncQdrantClient) -> None:
        await client.create_collection(COLLECTION, vectors_config=VECTORS)
        await client.upsert(COLLECTION, points=_points()[:1])
        await client.query_points(COLLECTION, query=[1.0, 2.0])

    with pytest.raises(grpc.RpcError) as raised:
        _run(_grpc_client(server), query_with_wrong_dimension)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _seed(server: LoopbackQdrantServer) -> None:
    async def seed(client: AsyncQdrantClient) -> None:
        await client.create_collection(COLLECTION, vectors_config=VECTORS)
        await client.upsert(COLLECTION, points=_points())

    _run(_grpc_client(server), seed)


def test_fail_next_fails_only_the_scheduled_calls(server: LoopbackQdrantServer) -> None:
    _seed(server)
    server.fail_next("Points.Query", grpc.StatusCode.UNAVAILABLE)

    async def query_twice(client: AsyncQdrantClient) -> tuple[grpc.StatusCode, int]:
        try:
            await client.query_points(COLLECTION, query=_vector(100))
        except grpc.RpcError as error:
            failure = error.code()
        else:
            pytest.fail("the scheduled failure was not injected")
        return failure, len((await client.query_points(COLLECTION, query=_vector(100), limit=4)).points)

    assert _run(_grpc_client(server), query_twice) == (grpc.StatusCode.UNAVAILABLE, 4)
    assert server.request_counts["Points.Query"] == 2


def test_health_check_names_qdrant(server: LoopbackQdrantServer) -> None:
    info = _run(_grpc_client(server), lambda client: client.info())
    assert info.title == "qdrant - vector search engine"


def test_stop_releases_port_and_threads() -> None:
    before = set(threading.enumerate())
    server = LoopbackQdrantServer().start()
    port = server.grpc_port
    assert _run(_grpc_client(server), lambda client: client.collection_exists(COLLECTION)) is False
    server.stop()

    # "_serve" is the name grpc gives its server's polling thread
    leftover = [
        thread.name
        for thread in set(threading.enumerate()) - before
        if thread.name.startswith("loopback-qdrant") or "_serve" in thread.name
    ]
    assert leftover == []
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_a_stopped_server_starts_again_on_its_port_with_its_points() -> None:
    server = LoopbackQdrantServer().start()
    port = server.grpc_port
    _seed(server)
    server.stop()
    try:
        server.start()
        counted = _run(_grpc_client(server), lambda client: client.count(COLLECTION, exact=True))
    finally:
        server.stop()

    assert server.grpc_port == port
    assert counted.count == len(_points())


async def _engine_scenario(client: AsyncQdrantClient) -> dict[str, Any]:
    """Fusion, grouping and a tenant index: what local mode only imitated and Edge computes."""
    tenant = models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True)
    await client.create_collection(COLLECTION, vectors_config=VECTORS)
    await client.create_payload_index(COLLECTION, "document_id", field_schema=tenant)
    await client.upsert(COLLECTION, points=_points())
    fused = await client.query_points(
        COLLECTION,
        prefetch=[
            models.Prefetch(query=_vector(200), limit=6),
            models.Prefetch(query=_vector(201), filter=models.Filter(must=[_field("lang", "en")]), limit=6),
        ],
        query=models.FusionQuery(fusion=models.Fusion.RRF),
        limit=5,
    )
    groups = await client.query_points_groups(
        COLLECTION, group_by="document_id", query=_vector(202), limit=2, group_size=2
    )
    info = await client.get_collection(COLLECTION)
    return {
        "fused": _hits(fused.points),
        "groups": [(group.id, [str(hit.id) for hit in group.hits]) for group in groups.groups],
        "indexed": sorted(info.payload_schema),
    }


def test_fusion_grouping_and_tenant_indexes_answer_as_edge_does(server: LoopbackQdrantServer) -> None:
    over_grpc = _run(_grpc_client(server), _engine_scenario)
    in_process = _run(_edge_client(), _engine_scenario)

    # RRF gives equal scores to equal ranks, and ties may come in either order
    def by_score(hits: list[tuple[str, float]]) -> list[tuple[float, str]]:
        return sorted((round(score, 6), point_id) for point_id, score in hits)

    assert by_score(over_grpc["fused"]) == by_score(in_process["fused"])
    assert over_grpc["groups"] == in_process["groups"]
    assert {group_id for group_id, _ in over_grpc["groups"]} == {"doc-a", "doc-b"}
    assert all(len(hits) == 2 for _, hits in over_grpc["groups"])
    assert len(over_grpc["fused"]) == 5
    assert over_grpc["indexed"] == ["document_id"]
