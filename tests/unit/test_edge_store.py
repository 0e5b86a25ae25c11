"""EdgeStore behind a real AsyncQdrantClient: collections, aliases, points, queries, and parity with local mode."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import numpy as np
import pytest
import qdrant_edge as edge
from qdrant_client import AsyncQdrantClient, models

from search.edge import EdgeStore, StoreLocked, convert
from search.edge import store as edge_store

pytestmark = [pytest.mark.unit, pytest.mark.filterwarnings("ignore:Payload indexes have no effect")]

DIM = 8
DOCUMENTS = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"doc-{i}")) for i in range(5)]
WORDS = "qdrant edge vector search shard payload filter index alias fusion sparse dense django".split()


def edge_client(path) -> AsyncQdrantClient:
    """Wired the way search.qdrant wires it: a cheap local client whose backend is replaced."""
    client = AsyncQdrantClient(location=":memory:")
    client._client = EdgeStore(path)
    return client


@pytest.fixture
async def client(tmp_path) -> AsyncIterator[AsyncQdrantClient]:
    client = edge_client(tmp_path / "store")
    yield client
    await client.close()


@pytest.fixture
async def local() -> AsyncIterator[AsyncQdrantClient]:
    client = AsyncQdrantClient(location=":memory:")
    yield client
    await client.close()


async def optimized(client: AsyncQdrantClient, name: str, timeout: float = 120) -> models.CollectionInfo:
    """The collection's info once its optimisation has run (status green), as a Qdrant server's client would wait."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (info := await client.get_collection(name)).status != models.CollectionStatus.GREEN:
        assert asyncio.get_running_loop().time() < deadline, f"{name} was not optimised within {timeout} s"
        await asyncio.sleep(0.05)
    return info


def chunk_points(count: int = 120) -> list[models.PointStruct]:
    rng = np.random.default_rng(7)
    bm25 = edge.Bm25(edge.Bm25Config(language="english"))
    points = []
    for i in range(count):
        # A distinct length per text keeps BM25 scores, and so the ranks fusion works on, free of ties.
        text = " ".join(rng.choice(WORDS, size=4 + i))
        sparse = bm25.embed_document(text)
        points.append(
            models.PointStruct(
                id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"chunk-{i}")),
                vector={
                    "dense": rng.normal(size=DIM).tolist(),
                    "bm25": models.SparseVector(indices=list(sparse.indices), values=list(sparse.values)),
                },
                payload={
                    "kb_id": "kb-1" if i % 3 else "kb-2",
                    "document_id": DOCUMENTS[i % len(DOCUMENTS)],
                    "chunk_index": i // len(DOCUMENTS),
                    "archived": i % 4 == 0,
                    "archived_at": "2024-01-01T00:00:00Z" if i % 7 == 0 else None,
                    "text": text,
                    # Document metadata as ChunkService writes it: tags, and flat values under `meta`.
                    "tags": [WORDS[i % 5], WORDS[i % 7]],
                    "meta": {
                        "year": 2000 + i % 30,
                        "score": i / 8,
                        "status": ("draft", "final", "review")[i % 3],
                        "reviewed": i % 2 == 0,
                        "published": f"20{10 + i % 15}-0{1 + i % 9}-1{i % 10}",
                        **({"note": "x"} if i % 5 == 0 else {"note": None} if i % 5 == 1 else {}),
                    },
                },
            )
        )
    return points


async def fill(
    client: AsyncQdrantClient, name: str = "chunks", points: list[models.PointStruct] | None = None
) -> None:
    await client.create_collection(
        name,
        vectors_config={"dense": models.VectorParams(size=DIM, distance=models.Distance.COSINE)},
        sparse_vectors_config={"bm25": models.SparseVectorParams(modifier=models.Modifier.IDF)},
    )
    for field, schema in [
        ("kb_id", models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True)),
        ("document_id", models.PayloadSchemaType.KEYWORD),
        ("chunk_index", models.PayloadSchemaType.INTEGER),
        ("archived", models.PayloadSchemaType.BOOL),
    ]:
        await client.create_payload_index(name, field, field_schema=schema)
    await client.upsert(name, points if points is not None else chunk_points())


def query_vector(seed: int = 1) -> list[float]:
    return np.random.default_rng(seed).normal(size=DIM).tolist()


def sparse_query(text: str) -> models.SparseVector:
    sparse = edge.Bm25(edge.Bm25Config(language="english")).embed_query(text)
    return models.SparseVector(indices=list(sparse.indices), values=list(sparse.values))


def assert_same_ranking(ours: list[models.ScoredPoint], theirs: list[models.ScoredPoint]) -> None:
    """Same scores in the same order and the same ids, where points with equal scores may come in any order.

    The last group of equal scores may have been cut by the limit, so only its size is compared.
    """
    assert [p.score for p in ours] == pytest.approx([p.score for p in theirs], abs=1e-4)
    groups: list[list[int]] = []
    for i, point in enumerate(theirs):
        if groups and abs(theirs[groups[-1][0]].score - point.score) <= 1e-4:
            groups[-1].append(i)
        else:
            groups.append([i])
    for group in groups[:-1]:
        assert {ours[i].id for i in group} == {theirs[i].id for i in group}
    their_payloads = {p.id: p.payload for p in theirs}
    for point in ours:
        if point.id in their_payloads:
            assert point.payload == their_payloads[point.id]


class TestCollectionsAndAliases:
    async def test_created_collection_reports_its_vectors_and_payload_indexes(self, client) -> None:
        await fill(client)

        info = await optimized(client, "chunks")

        assert info.points_count == 120
        assert info.config.params.vectors == {
            "dense": models.VectorParams(size=DIM, distance=models.Distance.COSINE)
        }
        assert info.config.params.sparse_vectors["bm25"].modifier == models.Modifier.IDF
        assert info.payload_schema["chunk_index"].data_type == models.PayloadSchemaType.INTEGER
        assert info.payload_schema["archived"].data_type == models.PayloadSchemaType.BOOL
        assert info.payload_schema["kb_id"].params.is_tenant is True
        assert info.payload_schema["document_id"].points == 120

    async def test_a_payload_index_can_be_dropped(self, client) -> None:
        await fill(client)

        await client.delete_payload_index("chunks", "chunk_index", wait=True)

        info = await client.get_collection("chunks")
        assert "chunk_index" not in info.payload_schema and "archived" in info.payload_schema

    async def test_creating_an_existing_collection_fails(self, client) -> None:
        await client.create_collection(
            "c", vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT)
        )

        with pytest.raises(ValueError, match="Collection c already exists"):
            await client.create_collection(
                "c", vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT)
            )

    async def test_alias_reaches_its_collection_and_swaps_atomically(self, client) -> None:
        params = models.VectorParams(size=2, distance=models.Distance.EUCLID)
        await client.create_collection("v1", vectors_config=params)
        await client.create_collection("v2", vectors_config=params)
        await client.upsert("v1", [models.PointStruct(id=1, vector=[0.0, 1.0])])
        await client.update_collection_aliases(
            change_aliases_operations=[
                models.CreateAliasOperation(
                    create_alias=models.CreateAlias(collection_name="v1", alias_name="kb")
                )
            ]
        )
        assert (await client.count("kb")).count == 1
        assert (await client.get_collection("kb")).points_count == 1

        await client.update_collection_aliases(
            change_aliases_operations=[
                models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name="kb")),
                models.CreateAliasOperation(
                    create_alias=models.CreateAlias(collection_name="v2", alias_name="kb")
                ),
            ]
        )

        assert (await client.get_aliases()).aliases == [
            models.AliasDescription(alias_name="kb", collection_name="v2")
        ]
        assert (await client.count("kb")).count == 0
        assert await client.collection_exists("kb")

    async def test_a_failing_alias_operation_applies_none_of_the_batch(self, client) -> None:
        await client.create_collection(
            "v1", vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT)
        )

        with pytest.raises(ValueError, match="Collection missing not found"):
            await client.update_collection_aliases(
                change_aliases_operations=[
                    models.CreateAliasOperation(
                        create_alias=models.CreateAlias(collection_name="v1", alias_name="a")
                    ),
                    models.CreateAliasOperation(
                        create_alias=models.CreateAlias(collection_name="missing", alias_name="b")
                    ),
                ]
            )

        assert (await client.get_aliases()).aliases == []

    async def test_renamed_alias_keeps_its_collection(self, client) -> None:
        await client.create_collection(
            "v1", vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT)
        )
        await client.update_collection_aliases(
            change_aliases_operations=[
                models.CreateAliasOperation(
                    create_alias=models.CreateAlias(collection_name="v1", alias_name="old")
                )
            ]
        )

        await client.update_collection_aliases(
            change_aliases_operations=[
                models.RenameAliasOperation(
                    rename_alias=models.RenameAlias(old_alias_name="old", new_alias_name="new")
                )
            ]
        )

        assert (await client.get_aliases()).aliases == [
            models.AliasDescription(alias_name="new", collection_name="v1")
        ]

    async def test_deleting_a_collection_drops_its_aliases(self, client) -> None:
        await client.create_collection(
            "v1", vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT)
        )
        await client.update_collection_aliases(
            change_aliases_operations=[
                models.CreateAliasOperation(
                    create_alias=models.CreateAlias(collection_name="v1", alias_name="kb")
                )
            ]
        )

        assert await client.delete_collection("v1") is True

        assert await client.delete_collection("v1") is False
        assert (await client.get_collections()).collections == []
        assert (await client.get_aliases()).aliases == []
        assert not await client.collection_exists("kb")

    async def test_a_deleted_collection_can_be_created_again(self, client) -> None:
        params = models.VectorParams(size=2, distance=models.Distance.DOT)
        await client.create_collection("v1", vectors_config=params)
        await client.upsert("v1", [models.PointStruct(id=1, vector=[1.0, 0.0])])
        await client.delete_collection("v1")

        await client.create_collection("v1", vectors_config=params)

        assert (await client.count("v1")).count == 0

    @pytest.mark.parametrize(
        "call",
        [
            lambda c: c.get_collection("nope"),
            lambda c: c.count("nope"),
            lambda c: c.query_points("nope", query=[1.0, 0.0]),
            lambda c: c.scroll("nope"),
            lambda c: c.upsert("nope", [models.PointStruct(id=1, vector=[1.0, 0.0])]),
            lambda c: c.delete("nope", points_selector=[1]),
            lambda c: c.create_payload_index("nope", "f", models.PayloadSchemaType.KEYWORD),
        ],
        ids=["get_collection", "count", "query_points", "scroll", "upsert", "delete", "create_payload_index"],
    )
    async def test_a_missing_collection_raises_not_found(self, client, call) -> None:
        with pytest.raises(ValueError) as raised:
            await call(client)

        message = str(raised.value)
        assert message.startswith("Collection ") and "not found" in message
        assert not await client.collection_exists("nope")


class TestPersistenceAndLocking:
    async def test_reopened_store_keeps_collections_aliases_points_and_indexes(self, tmp_path) -> None:
        first = edge_client(tmp_path)
        await fill(first, "chunks_v1")
        await first.update_collection_aliases(
            change_aliases_operations=[
                models.CreateAliasOperation(
                    create_alias=models.CreateAlias(collection_name="chunks_v1", alias_name="kb")
                )
            ]
        )
        before = await first.query_points("kb", query=query_vector(), using="dense", limit=5)
        await first.close()

        second = edge_client(tmp_path)
        try:
            info = await second.get_collection("kb")
            after = await second.query_points("kb", query=query_vector(), using="dense", limit=5)
            aliases = (await second.get_aliases()).aliases
        finally:
            await second.close()

        assert info.points_count == 120
        assert set(info.payload_schema) == {"kb_id", "document_id", "chunk_index", "archived"}
        assert info.config.params.sparse_vectors["bm25"].modifier == models.Modifier.IDF
        assert aliases == [models.AliasDescription(alias_name="kb", collection_name="chunks_v1")]
        assert_same_ranking(after.points, before.points)

    async def test_each_shard_searches_with_the_threads_its_store_is_given_and_goes_back_to_one_per_two_cores(
        self, tmp_path
    ) -> None:
        import json

        def threads_of_opened_shard() -> int:
            (config,) = tmp_path.glob(f"collections/chunks_v1/{edge_store.SHARD_DIR}/edge_config.json")
            return json.loads(config.read_text())["max_search_threads"]

        async def open_and_read(**kwargs) -> int:
            client = AsyncQdrantClient(location=":memory:")
            client._client = EdgeStore(tmp_path, **kwargs)
            try:
                assert (await client.count("chunks_v1")).count == 120  # the shard opens on first use
            finally:
                await client.close()
            return threads_of_opened_shard()

        first = edge_client(tmp_path)
        await fill(first, "chunks_v1")
        await first.close()

        assert await open_and_read(search_threads=3) == 3
        # Back from 3 to the default (one per two cores, at least 1, at most 8): Edge would keep 3.
        assert await open_and_read() == edge_store.default_search_threads()
        assert await open_and_read(search_threads=2) == 2

    async def test_a_second_store_on_a_held_folder_is_refused(self, tmp_path) -> None:
        first = EdgeStore(tmp_path)
        try:
            with pytest.raises(StoreLocked, match=str(tmp_path)):
                EdgeStore(tmp_path)
        finally:
            await first.close()

        EdgeStore(tmp_path).close_now()

    async def test_closing_twice_is_harmless_and_memory_folder_is_removed(self) -> None:
        store = EdgeStore(":memory:")
        folder = store.path
        await store.create_collection(
            "c", vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT)
        )

        await store.close()
        await store.close()

        assert not folder.exists()
        with pytest.raises(RuntimeError, match="closed"):
            await store.get_collections()


class TestPoints:
    async def test_upserting_the_same_id_replaces_the_point(self, client) -> None:
        await client.create_collection(
            "c", vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT)
        )
        point_id = str(uuid.uuid4())

        await client.upsert("c", [models.PointStruct(id=point_id, vector=[1.0, 0.0], payload={"v": 1})])
        await client.upsert("c", [models.PointStruct(id=point_id, vector=[0.0, 1.0], payload={"v": 2})])

        records = await client.retrieve("c", [point_id], with_vectors=True)
        assert (await client.count("c")).count == 1
        assert records == [models.Record(id=point_id, payload={"v": 2}, vector=[0.0, 1.0])]

    async def test_uuid_ids_come_back_as_strings_and_none_payload_values_survive(self, client, local) -> None:
        points = [
            models.PointStruct(
                id=str(uuid.uuid4()), vector=[1.0, 0.5], payload={"archived_at": None, "n": 1}
            ),
            models.PointStruct(id=42, vector=[0.5, 1.0], payload={"archived_at": None, "n": 2}),
        ]
        for c in (client, local):
            await c.create_collection(
                "c", vectors_config=models.VectorParams(size=2, distance=models.Distance.COSINE)
            )
            await c.upsert("c", points)

        ours = await client.query_points("c", query=[1.0, 0.0], with_vectors=True)
        theirs = await local.query_points("c", query=[1.0, 0.0], with_vectors=True)

        assert_same_ranking(ours.points, theirs.points)
        assert [type(p.id) for p in ours.points] == [str, int]
        assert ours.points[0].payload == {"archived_at": None, "n": 1}
        assert ours.points[0].vector == pytest.approx(theirs.points[0].vector)

    async def test_hits_are_whole_models_as_model_construct_builds_them(self, client) -> None:
        """Hits are built by filling the model's slots (search.edge.convert): they must equal, dump, copy
        and validate as the same hits built by `ScoredPoint.model_construct` do."""
        await fill(client)

        answer = await client.query_points("chunks", query=query_vector(), using="dense", limit=3, with_vectors=True)
        hits = answer.points

        assert convert._FILL_SCORED_POINTS, "ScoredPoint changed: the hits are built by model_construct again"
        for hit in hits:
            constructed = models.ScoredPoint.model_construct(
                **{name: getattr(hit, name) for name in hit.model_fields_set}
            )
            assert hit == constructed
            assert hit.model_fields_set == constructed.model_fields_set
            assert hit.model_dump() == constructed.model_dump()
            assert hit.model_dump_json() == constructed.model_dump_json()
            assert hit.model_copy(update={"score": 0.5}).score == 0.5 and hit.score != 0.5
            assert models.ScoredPoint.model_validate(hit.model_dump()) == hit
            assert hit.shard_key is None and isinstance(hit.id, str) and hit.payload["kb_id"]

    async def test_batch_upsert_stores_every_point(self, client) -> None:
        await client.create_collection(
            "c", vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT)
        )

        await client.upsert(
            "c", models.Batch(ids=[1, 2], vectors=[[1.0, 0.0], [0.0, 1.0]], payloads=[{"a": 1}, {"a": 2}])
        )

        records, _ = await client.scroll("c", with_vectors=True)
        assert [(r.id, r.payload, r.vector) for r in records] == [
            (1, {"a": 1}, [1.0, 0.0]),
            (2, {"a": 2}, [0.0, 1.0]),
        ]

    async def test_set_payload_and_delete_by_filter_touch_only_matching_points(self, client) -> None:
        await fill(client)
        document = models.Filter(
            must=[models.FieldCondition(key="document_id", match=models.MatchValue(value=DOCUMENTS[0]))]
        )

        await client.set_payload("chunks", {"archived": True}, points=models.FilterSelector(filter=document))
        archived = models.Filter(
            must=[models.FieldCondition(key="archived", match=models.MatchValue(value=True))]
        )
        assert (await client.count("chunks", count_filter=document)).count == 24
        assert (await client.count("chunks", count_filter=archived)).count == 24 + 24
        await client.delete("chunks", points_selector=models.FilterSelector(filter=document))

        assert (await client.count("chunks")).count == 96
        assert (await client.count("chunks", count_filter=document)).count == 0

    async def test_payload_can_be_set_on_ids_and_points_deleted_by_id(self, client) -> None:
        await client.create_collection(
            "c", vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT)
        )
        await client.upsert(
            "c", [models.PointStruct(id=i, vector=[1.0, float(i)], payload={"a": i}) for i in (1, 2)]
        )

        await client.set_payload("c", {"b": "x"}, points=[1])
        await client.delete("c", points_selector=models.PointIdsList(points=[2]))

        assert await client.retrieve("c", [1, 2]) == [models.Record(id=1, payload={"a": 1, "b": "x"})]

    async def test_exact_count_with_a_filter_matches_local_mode(self, client, local) -> None:
        for c in (client, local):
            await fill(c)
        kb_filter = models.Filter(
            must=[models.FieldCondition(key="kb_id", match=models.MatchValue(value="kb-1"))],
            must_not=[models.FieldCondition(key="archived", match=models.MatchValue(value=True))],
        )

        ours = await client.count("chunks", count_filter=kb_filter, exact=True)

        assert ours == await local.count("chunks", count_filter=kb_filter, exact=True)
        assert ours.count > 0


FILTERS = {
    "match_value": models.Filter(
        must=[models.FieldCondition(key="document_id", match=models.MatchValue(value=DOCUMENTS[1]))]
    ),
    "match_any": models.Filter(
        must=[models.FieldCondition(key="document_id", match=models.MatchAny(any=DOCUMENTS[2:4]))]
    ),
    "match_except": models.Filter(
        must=[models.FieldCondition(key="document_id", match=models.MatchExcept(**{"except": DOCUMENTS[:4]}))]
    ),
    "must_not_archived": models.Filter(
        must_not=[models.FieldCondition(key="archived", match=models.MatchValue(value=True))]
    ),
    "must_archived_false": models.Filter(
        must=[models.FieldCondition(key="archived", match=models.MatchValue(value=False))]
    ),
    "is_empty": models.Filter(
        must=[models.IsEmptyCondition(is_empty=models.PayloadField(key="archived_at"))]
    ),
    "is_null": models.Filter(must=[models.IsNullCondition(is_null=models.PayloadField(key="archived_at"))]),
    "range": models.Filter(must=[models.FieldCondition(key="chunk_index", range=models.Range(gte=5, lt=12))]),
    "should_and_nested": models.Filter(
        should=[
            models.Filter(must=[models.FieldCondition(key="kb_id", match=models.MatchValue(value="kb-2"))]),
            models.FieldCondition(key="chunk_index", range=models.Range(lte=2)),
        ]
    ),
    "min_should": models.Filter(
        min_should=models.MinShould(
            conditions=[
                models.FieldCondition(key="kb_id", match=models.MatchValue(value="kb-1")),
                models.FieldCondition(key="archived", match=models.MatchValue(value=True)),
                models.FieldCondition(key="chunk_index", range=models.Range(gt=10)),
            ],
            min_count=2,
        )
    ),
    "has_id": models.Filter(
        must=[
            models.HasIdCondition(
                has_id=[str(uuid.uuid5(uuid.NAMESPACE_URL, f"chunk-{i}")) for i in range(9)]
            )
        ]
    ),
    "has_vector": models.Filter(must=[models.HasVectorCondition(has_vector="dense")]),
    # The conditions search.filters compiles metadata filters to, on nested `meta.<key>` paths.
    "meta_match_any_text": models.Filter(
        must=[models.FieldCondition(key="meta.status", match=models.MatchAny(any=["draft", "review"]))]
    ),
    "meta_match_except_int": models.Filter(
        must=[
            models.FieldCondition(key="meta.year", match=models.MatchExcept(**{"except": [2001, 2002, 2003]}))
        ]
    ),
    "meta_match_bool": models.Filter(
        must=[models.FieldCondition(key="meta.reviewed", match=models.MatchValue(value=False))]
    ),
    "meta_float_range": models.Filter(
        must=[models.FieldCondition(key="meta.score", range=models.Range(gt=2.5, lte=9.0))]
    ),
    "meta_int_equal_as_range": models.Filter(
        must=[models.FieldCondition(key="meta.year", range=models.Range(gte=2007, lte=2007))]
    ),
    "meta_datetime_range": models.Filter(
        must=[
            models.FieldCondition(
                key="meta.published",
                range=models.DatetimeRange(gte=datetime(2015, 3, 1, tzinfo=UTC), lt="2021-01-01T00:00:00Z"),
            )
        ]
    ),
    "meta_key_exists": models.Filter(
        must_not=[models.IsEmptyCondition(is_empty=models.PayloadField(key="meta.note"))]
    ),
    "meta_key_missing": models.Filter(
        must=[models.IsEmptyCondition(is_empty=models.PayloadField(key="meta.note"))]
    ),
    "meta_is_null": models.Filter(
        must=[models.IsNullCondition(is_null=models.PayloadField(key="meta.note"))]
    ),
    "tags_all_and_none": models.Filter(
        must=[models.FieldCondition(key="tags", match=models.MatchValue(value=WORDS[1]))],
        must_not=[models.FieldCondition(key="tags", match=models.MatchAny(any=[WORDS[3], WORDS[4]]))],
    ),
    "nested_and_or_not": models.Filter(
        must=[
            models.Filter(
                should=[
                    models.Filter(
                        must=[models.FieldCondition(key="meta.year", range=models.Range(gte=2025))]
                    ),
                    models.Filter(
                        must=[
                            models.FieldCondition(key="meta.status", match=models.MatchValue(value="final"))
                        ],
                        must_not=[
                            models.FieldCondition(key="meta.reviewed", match=models.MatchValue(value=True))
                        ],
                    ),
                ]
            )
        ],
        must_not=[models.Filter(must=[models.FieldCondition(key="meta.score", range=models.Range(lt=1.0))])],
    ),
}


class TestQueries:
    @pytest.mark.parametrize("name", FILTERS)
    async def test_nearest_with_a_filter_ranks_like_local_mode(self, client, local, name) -> None:
        for c in (client, local):
            await fill(c)

        ours = await client.query_points(
            "chunks", query=query_vector(), using="dense", query_filter=FILTERS[name], limit=10
        )
        theirs = await local.query_points(
            "chunks", query=query_vector(), using="dense", query_filter=FILTERS[name], limit=10
        )

        assert ours.points
        assert_same_ranking(ours.points, theirs.points)

    async def test_score_threshold_and_offset_cut_like_local_mode(self, client, local) -> None:
        for c in (client, local):
            await fill(c)
        kwargs = dict(query=query_vector(3), using="dense", limit=50, offset=2, score_threshold=0.2)

        ours = await client.query_points("chunks", **kwargs)
        theirs = await local.query_points("chunks", **kwargs)

        assert ours.points and all(p.score >= 0.2 for p in ours.points)
        assert_same_ranking(ours.points, theirs.points)

    async def test_unnamed_vector_query_with_each_distance_matches_local_mode(self, client, local) -> None:
        points = [models.PointStruct(id=i, vector=query_vector(i + 10), payload={"i": i}) for i in range(30)]
        for distance in models.Distance:
            for c in (client, local):
                await c.create_collection(
                    distance.value, vectors_config=models.VectorParams(size=DIM, distance=distance)
                )
                await c.upsert(distance.value, points)

            ours = await client.query_points(distance.value, query=query_vector(), limit=5)
            theirs = await local.query_points(distance.value, query=query_vector(), limit=5)

            assert_same_ranking(ours.points, theirs.points)

    async def test_sparse_vector_with_idf_ranks_like_local_mode(self, client, local) -> None:
        for c in (client, local):
            await fill(c)

        ours = await client.query_points(
            "chunks", query=sparse_query("sparse fusion alias"), using="bm25", limit=10
        )
        theirs = await local.query_points(
            "chunks", query=sparse_query("sparse fusion alias"), using="bm25", limit=10
        )

        assert ours.points
        assert_same_ranking(ours.points, theirs.points)

    @pytest.mark.parametrize(
        "fusion",
        [
            models.FusionQuery(fusion=models.Fusion.RRF),
            models.RrfQuery(rrf=models.Rrf(k=60)),
            models.RrfQuery(rrf=models.Rrf(k=10, weights=[3.0, 1.0])),
            models.FusionQuery(fusion=models.Fusion.DBSF),
        ],
        ids=["rrf_default", "rrf_k60", "rrf_weighted", "dbsf"],
    )
    async def test_dense_and_sparse_prefetches_fuse_like_local_mode(self, client, local, fusion) -> None:
        for c in (client, local):
            await fill(c)
        live = models.Filter(
            must_not=[models.FieldCondition(key="archived", match=models.MatchValue(value=True))]
        )
        prefetch = [
            models.Prefetch(query=query_vector(5), using="dense", limit=20),
            models.Prefetch(
                query=models.NearestQuery(nearest=sparse_query("qdrant shard index")), using="bm25", limit=20
            ),
        ]

        ours = await client.query_points(
            "chunks", prefetch=prefetch, query=fusion, query_filter=live, limit=8
        )
        theirs = await local.query_points(
            "chunks", prefetch=prefetch, query=fusion, query_filter=live, limit=8
        )

        assert ours.points
        assert_same_ranking(ours.points, theirs.points)

    async def test_batch_of_queries_answers_like_single_queries(self, client) -> None:
        await fill(client)
        requests = [
            models.QueryRequest(query=query_vector(seed), using="dense", limit=4, with_payload=True)
            for seed in (1, 2)
        ]

        batch = await client.query_batch_points("chunks", requests=requests)

        singles = [
            await client.query_points("chunks", query=query_vector(s), using="dense", limit=4) for s in (1, 2)
        ]
        assert [r.points for r in batch] == [r.points for r in singles]

    async def test_scroll_by_chunk_index_starts_from_the_given_value(self, client, local) -> None:
        for c in (client, local):
            await fill(c)
        document = models.Filter(
            must=[models.FieldCondition(key="document_id", match=models.MatchValue(value=DOCUMENTS[2]))]
        )
        order = models.OrderBy(key="chunk_index", start_from=10)

        records, next_offset = await client.scroll("chunks", scroll_filter=document, limit=5, order_by=order)
        theirs, their_next = await local.scroll("chunks", scroll_filter=document, limit=5, order_by=order)

        assert [r.payload["chunk_index"] for r in records] == [10, 11, 12, 13, 14]
        assert [r.id for r in records] == [r.id for r in theirs]
        assert next_offset is None and their_next is None

    async def test_scroll_by_id_pages_with_next_offset_like_local_mode(self, client, local) -> None:
        for c in (client, local):
            await fill(c)

        ours, ours_next = await client.scroll("chunks", limit=7, with_payload=False)
        theirs, theirs_next = await local.scroll("chunks", limit=7, with_payload=False)
        page_two, _ = await client.scroll("chunks", limit=7, offset=ours_next, with_payload=False)

        assert [r.id for r in ours] == [r.id for r in theirs]
        assert ours_next == theirs_next and isinstance(ours_next, str)
        assert page_two[0].id == ours_next

    async def test_descending_scroll_by_chunk_index(self, client) -> None:
        await fill(client)

        records, _ = await client.scroll(
            "chunks", limit=3, order_by=models.OrderBy(key="chunk_index", direction=models.Direction.DESC)
        )

        assert [r.payload["chunk_index"] for r in records] == [23, 23, 23]


def group_answer(result: models.GroupsResult) -> list[tuple[models.GroupId, list[models.ExtendedPointId]]]:
    return [(group.id, [hit.id for hit in group.hits]) for group in result.groups]


def assert_same_groups(ours: models.GroupsResult, theirs: models.GroupsResult) -> None:
    assert group_answer(ours) == group_answer(theirs)
    for mine, reference in zip(ours.groups, theirs.groups):
        assert [h.score for h in mine.hits] == pytest.approx([h.score for h in reference.hits], abs=1e-4)
        assert [h.payload for h in mine.hits] == [h.payload for h in reference.hits]
        for hit, reference_hit in zip(mine.hits, reference.hits):
            # Edge keeps float32, local mode float64: the same vectors, rounded differently.
            if reference_hit.vector is None:
                assert hit.vector is None
            else:
                assert hit.vector.keys() == reference_hit.vector.keys()
                for name, vector in reference_hit.vector.items():
                    assert hit.vector[name] == pytest.approx(vector, abs=1e-6)


class TestGroups:
    """Edge has no grouping query; EdgeStore builds it on its ranking and must group as local mode does."""

    @pytest.mark.parametrize(("limit", "group_size"), [(3, 4), (5, 1), (2, 30), (10, 2)])
    async def test_nearest_grouped_by_document_matches_local_mode(
        self, client, local, limit, group_size
    ) -> None:
        for c in (client, local):
            await fill(c)
        kwargs = dict(
            group_by="document_id",
            query=query_vector(4),
            using="dense",
            query_filter=FILTERS["must_not_archived"],
            limit=limit,
            group_size=group_size,
        )

        ours = await client.query_points_groups("chunks", **kwargs)
        theirs = await local.query_points_groups("chunks", **kwargs)

        assert len(ours.groups) == min(limit, len(DOCUMENTS))
        assert_same_groups(ours, theirs)

    async def test_fused_prefetches_grouped_match_local_mode_when_candidates_cover_the_collection(
        self, client, local
    ) -> None:
        # Local mode fuses whole rankings when grouping; the engine multiplies prefetch limits by the
        # number of groups (40 x 3 covers all 120 points), so both fuse the same lists.
        for c in (client, local):
            await fill(c)
        prefetch = [
            models.Prefetch(query=query_vector(5), using="dense", limit=40),
            models.Prefetch(
                query=models.NearestQuery(nearest=sparse_query("qdrant shard")), using="bm25", limit=40
            ),
        ]
        kwargs = dict(
            group_by="document_id",
            prefetch=prefetch,
            query=models.RrfQuery(rrf=models.Rrf(k=10, weights=[1.0, 0.7])),
            limit=3,
            group_size=3,
        )

        ours = await client.query_points_groups("chunks", **kwargs)
        theirs = await local.query_points_groups("chunks", **kwargs)

        assert_same_groups(ours, theirs)

    async def test_list_values_join_several_groups_and_other_values_none(self, client, local) -> None:
        labels = [["a", "b"], "a", 7, True, None, ["b", 3.5], [], "c", ["c", "c"], 7]
        points = [
            models.PointStruct(
                id=i,
                vector=query_vector(i + 20),
                payload={"i": i} if label is None else {"i": i, "label": label},
            )
            for i, label in enumerate(labels)
        ]
        for c in (client, local):
            await c.create_collection(
                "labels", vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE)
            )
            await c.upsert("labels", points)
        kwargs = dict(group_by="label", query=query_vector(), limit=10, group_size=10)

        ours = await client.query_points_groups("labels", **kwargs)
        theirs = await local.query_points_groups("labels", **kwargs)

        assert {group.id for group in ours.groups} == {"a", "b", "c", 7}
        assert_same_groups(ours, theirs)

    @pytest.mark.parametrize(("limit", "group_size"), [(1, 1), (2, 1), (3, 1), (2, 2), (4, 2), (5, 3)])
    async def test_pages_after_the_first_keep_points_whose_other_value_is_still_filling(
        self, client, local, limit, group_size, monkeypatch
    ) -> None:
        # Ranked by id (the vectors turn away from the query one step at a time), in pages of
        # limit * group_size points, so groups fill over several pages and a full group left out
        # must not take a point's other group with it.
        monkeypatch.setattr(edge_store, "GROUPS_PAGE", 1)
        labels = ["a", "a", ["a", "b"], "c", ["b", "c"], 5, "a", [5, "d"], "b", ["d", "e"], "e", 5, "d", "c"]
        points = [
            models.PointStruct(
                id=i, vector=[1.0, i / 10, *([0.0] * (DIM - 2))], payload={"label": label, "rank": i}
            )
            for i, label in enumerate(labels)
        ]
        for c in (client, local):
            await c.create_collection(
                "ranked", vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE)
            )
            await c.upsert("ranked", points)
        kwargs = dict(group_by="label", query=[1.0, *([0.0] * (DIM - 1))], limit=limit, group_size=group_size)

        ours = await client.query_points_groups("ranked", **kwargs)
        theirs = await local.query_points_groups("ranked", **kwargs)

        assert len(ours.groups) == limit
        assert_same_groups(ours, theirs)

    async def test_clustered_documents_group_like_local_mode_for_many_queries(
        self, client, local, monkeypatch
    ) -> None:
        monkeypatch.setattr(edge_store, "GROUPS_PAGE", 1)  # many small pages
        rng = np.random.default_rng(11)
        centres = rng.normal(size=(30, DIM))
        points = [
            models.PointStruct(
                id=d * 10 + i,
                vector=(centres[d] + rng.normal(scale=0.3, size=DIM)).tolist(),
                payload={"document_id": f"doc-{d}"},
            )
            for d in range(30)
            for i in range(10)
        ]
        for c in (client, local):
            await c.create_collection(
                "clusters", vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE)
            )
            await c.upsert("clusters", points)

        for n, centre in enumerate(centres[:10]):
            kwargs = dict(
                group_by="document_id",
                query=centre.tolist(),
                limit=3 + n % 4,
                group_size=1 + n % 3,
                with_payload=False,
            )
            ours = await client.query_points_groups("clusters", **kwargs)
            theirs = await local.query_points_groups("clusters", **kwargs)
            assert_same_groups(ours, theirs)

    async def test_payload_and_vectors_come_as_asked(self, client, local) -> None:
        for c in (client, local):
            await fill(c)
        for with_payload, with_vectors in [(False, False), (["chunk_index"], ["dense"]), (True, True)]:
            kwargs = dict(
                group_by="document_id",
                query=query_vector(6),
                using="dense",
                limit=2,
                group_size=2,
                with_payload=with_payload,
                with_vectors=with_vectors,
            )

            ours = await client.query_points_groups("chunks", **kwargs)
            theirs = await local.query_points_groups("chunks", **kwargs)

            assert_same_groups(ours, theirs)

    async def test_lookups_are_refused(self, client) -> None:
        await fill(client)
        with pytest.raises(NotImplementedError, match="with_lookup"):
            await client.query_points_groups(
                "chunks", group_by="document_id", query=query_vector(), using="dense", with_lookup="documents"
            )


class TestEngine:
    async def test_upserts_past_the_indexing_threshold_build_hnsw_segments(self, client) -> None:
        dim = 384
        rng = np.random.default_rng(3)
        vectors = rng.normal(size=(2_500, dim)).astype(np.float32)
        await client.create_collection(
            "big", vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE)
        )
        for start in range(0, len(vectors), 500):
            await client.upsert(
                "big",
                [models.PointStruct(id=i, vector=vectors[i].tolist()) for i in range(start, start + 500)],
            )

        info = await optimized(client, "big")
        hits = await client.query_points("big", query=vectors[1234].tolist(), limit=1)

        assert info.points_count == 2_500
        assert info.indexed_vectors_count > 0
        assert hits.points[0].id == 1234

    async def test_writes_are_searchable_at_once_and_optimised_once_reads_pause(self, client, monkeypatch) -> None:
        # A pause long enough that this test's own steps never make one on a busy machine.
        monkeypatch.setattr(edge_store, "OPTIMIZE_AFTER_QUIET_SECONDS", 5.0)
        vectors = np.random.default_rng(4).normal(size=(2_500, 384)).astype(np.float32)
        await client.create_collection(
            "big", vectors_config=models.VectorParams(size=384, distance=models.Distance.COSINE)
        )
        await client.count("big")
        await client.upsert("big", [models.PointStruct(id=i, vector=v.tolist()) for i, v in enumerate(vectors)])

        # Reads in a row keep the optimisation waiting; the points are found all the same.
        for probe in range(0, 2_500, 250):
            hits = await client.query_points("big", query=vectors[probe].tolist(), limit=1)
            assert hits.points[0].id == probe
        waiting = await client.get_collection("big")
        info = await optimized(client, "big")

        assert waiting.status == models.CollectionStatus.GREY and waiting.indexed_vectors_count == 0
        assert info.indexed_vectors_count > 0

    async def test_closing_the_store_runs_the_optimisation_still_due(self, tmp_path) -> None:
        vectors = np.random.default_rng(5).normal(size=(2_500, 384)).astype(np.float32)
        client = edge_client(tmp_path / "store")
        await client.create_collection(
            "big", vectors_config=models.VectorParams(size=384, distance=models.Distance.COSINE)
        )
        await client.upsert("big", [models.PointStruct(id=i, vector=v.tolist()) for i, v in enumerate(vectors)])
        await client.query_points("big", query=vectors[0].tolist(), limit=1)  # a read: the optimizer waits
        await client.close()

        reopened = edge_client(tmp_path / "store")
        try:
            info = await reopened.get_collection("big")
        finally:
            await reopened.close()

        assert info.status == models.CollectionStatus.GREEN and info.indexed_vectors_count > 0

    async def test_threads_with_their_own_event_loops_share_the_store(self, client) -> None:
        await fill(client)
        errors: list[BaseException] = []

        def read() -> None:
            async def queries() -> None:
                for seed in range(20):
                    await client.query_points("chunks", query=query_vector(seed), using="dense", limit=3)
                    await client.count("chunks")

            try:
                asyncio.run(queries())
            except Exception as exc:  # the assertion below reports it
                errors.append(exc)

        def write() -> None:
            try:
                asyncio.run(client.upsert("chunks", chunk_points(40)))
            except Exception as exc:
                errors.append(exc)

        threads = [threading.Thread(target=read) for _ in range(3)] + [threading.Thread(target=write)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert errors == []
        assert (await client.count("chunks")).count == 120


class TestConversions:
    def test_hits_fill_slots_only_of_a_model_whose_instances_hold_nothing_else(self) -> None:
        """`scored_point_from_edge` fills a hit's four slots itself only while ScoredPoint is a plain
        BaseModel with exactly its fields; each way it could stop being one sends it back to model_construct."""
        fields = set(models.ScoredPoint.model_fields)
        assert convert._slots_fillable(models.ScoredPoint, fields)
        assert not convert._slots_fillable(models.ScoredPoint, fields - {"shard_key"})

        class WithSlot(models.ScoredPoint):
            __slots__ = ("cache",)

        class WithNew(models.ScoredPoint):
            def __new__(cls, *args, **kwargs):
                return super().__new__(cls)

        class WithPostInit(models.ScoredPoint):
            def model_post_init(self, context) -> None:
                pass

        class WithExtra(models.ScoredPoint, extra="allow"):
            pass

        for model in (WithSlot, WithNew, WithPostInit, WithExtra):
            assert not convert._slots_fillable(model, fields), model.__name__

    def test_bool_match_reaches_edge_as_a_boolean_not_an_integer(self) -> None:
        converted = convert.match_to_edge(models.MatchValue(value=True))

        assert converted.value is True or converted.value == np.bool_(True)
        assert type(converted.value) is not int

    def test_uuid_ids_are_normalised_and_integers_kept(self) -> None:
        point_id = uuid.uuid4()

        assert convert.point_id_to_edge(str(point_id).upper()) == str(point_id)
        assert convert.point_id_to_edge(7) == 7
        assert convert.point_id_from_edge(point_id) == str(point_id)

    def test_sparse_vectors_convert_both_ways(self) -> None:
        sparse = models.SparseVector(indices=[1, 4], values=[0.5, 2.0])

        converted = convert.vector_to_edge({"bm25": sparse, "dense": np.array([1.0, 2.0])})

        assert converted["dense"] == [1.0, 2.0]
        assert convert.vector_from_edge(converted) == {"bm25": sparse, "dense": [1.0, 2.0]}

    def test_datetime_range_is_sent_as_iso_text(self) -> None:
        converted = convert.range_to_edge(models.DatetimeRange(gte=datetime(2024, 1, 2, tzinfo=UTC)))

        assert converted.gte.startswith("2024-01-02")

    def test_rrf_without_k_uses_the_client_default(self) -> None:
        fused = convert.query_to_edge(models.RrfQuery(rrf=models.Rrf()), None)

        assert fused.k == convert.DEFAULT_RRF_K

    def test_an_unsupported_condition_names_itself(self) -> None:
        class GeoDistanceCondition:
            pass

        with pytest.raises(NotImplementedError, match="GeoDistanceCondition"):
            convert.condition_to_edge(GeoDistanceCondition())

    def test_an_unsupported_query_names_itself(self) -> None:
        with pytest.raises(NotImplementedError, match="SampleQuery"):
            convert.query_to_edge(models.SampleQuery(sample=models.Sample.RANDOM), None)

    def test_an_unsupported_distance_or_modifier_is_refused(self) -> None:
        with pytest.raises(NotImplementedError, match="Multivectors"):
            convert.vector_params_to_edge(
                models.VectorParams(
                    size=2,
                    distance=models.Distance.COSINE,
                    multivector_config=models.MultiVectorConfig(
                        comparator=models.MultiVectorComparator.MAX_SIM
                    ),
                )
            )
