"""One store contract, run against every Qdrant backend kbsite can use: Qdrant Edge, qdrant-client's
local mode, and the server path (gRPC, against the loopback server).

Every knowledge base is a tenant of its model's shared collection: two KBs written side by side must
never see each other's points under any operation, and a KB's next generation stays unsearched until
its active generation is switched.

Each test writes fixed synthetic chunks (8-dim seeded vectors, BM25 keyword vectors from the project's
encoder) through ChunkService/CollectionService and checks the answers against the same truth: exact
cosine computed here with numpy for dense searches, and the local mode's answer, computed in the same test
on a separate in-memory store, for keyword and hybrid (RRF) searches. No database is touched: a dict
stands in for the knowledge app's record of each KB's active generation.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID

import numpy as np
import pytest
from qdrant_client import models

from search.chunking import TextChunk
from search.edge import store as edge_store
from search.filters import SearchedFields, compile_filter
from search.keywords import KeywordSettings, keyword_encoder
from search.qdrant import QdrantConfig, qdrant_service
from search.services import collections
from search.services.chunks import RRF_K, RRF_WEIGHTS, ChunkSearch, ChunkService, StoredChunk, chunk_point_id
from search.services.collections import KbIndex
from tests.support.qdrant_grpc import LoopbackQdrantServer
from tests.support.tenants import as_written_before_search_keys

pytestmark = [pytest.mark.integration]

T = TypeVar("T")

DIM = 8
SCORE_TOLERANCE = 1e-4
KB = UUID("4a1f6a52-0c3e-4d8b-9b1e-7f0c2d3e4a51")
OTHER_KB = UUID("9d2e7b13-5f4a-4c6d-8e2f-1a3b5c7d9e02")
DOC_A = UUID("11111111-1111-4111-8111-111111111111")
DOC_B = UUID("22222222-2222-4222-8222-222222222222")
DOC_C = UUID("33333333-3333-4333-8333-333333333333")
DOCUMENTS = {DOC_A: 7, DOC_B: 5, DOC_C: 6}  # document -> number of chunks
TITLES = {DOC_A: "Tides and the moon", DOC_B: "Harbour storms", DOC_C: "Sand and rock"}
ARCHIVED_AT = datetime(2024, 5, 17, 9, 30, tzinfo=UTC)

VOCABULARY = (
    "tide moon sea river salt wind rock sand wave storm harbour ship current gravity shore cliff "
    "lighthouse fog anchor reef"
).split()
KEYWORD_QUERY = "moon tide storm gravity"

MODEL = "contract-model"
COLLECTION = f"kbsite_contract-model_{DIM}"


class ActiveIndexes:
    """What the knowledge app keeps per KB: which generation searches read. Switching is one assignment."""

    def __init__(self) -> None:
        self.active: dict[UUID, KbIndex] = {}

    def reset(self) -> None:
        self.active = {kb: KbIndex(kb_id=kb, model=MODEL, vector_size=DIM) for kb in (KB, OTHER_KB)}

    async def active_index(self, *, kb_id: UUID | str) -> KbIndex | None:
        return self.active.get(UUID(str(kb_id)))

    async def active_indexes(self, *, kb_ids: list[UUID | str]) -> dict[UUID, KbIndex]:
        return {UUID(str(k)): self.active[UUID(str(k))] for k in kb_ids if UUID(str(k)) in self.active}


INDEXES = ActiveIndexes()
chunks_service = ChunkService(indexes=INDEXES)
collections_service = chunks_service.collections
encoder = keyword_encoder(KeywordSettings())


@pytest.fixture(autouse=True)
def first_generations() -> None:
    INDEXES.reset()


async def search_chunks(
    *, kb_id: UUID = KB, service: ChunkService = chunks_service, **request: Any
) -> list[StoredChunk]:
    return await service.search_chunks(chunk_search(kb_id, **request))


async def search_chunk_groups(*, kb_id: UUID = KB, group_size: int = 3, **request: Any) -> list[list[StoredChunk]]:
    return await chunks_service.search_chunk_groups(chunk_search(kb_id, group_size=group_size, **request))


def chunk_search(kb_ids: UUID | list[UUID], **request: Any) -> ChunkSearch:
    ids = kb_ids if isinstance(kb_ids, list) else [kb_ids]
    if request.get("query_embedding") is not None:
        request["query_embedding"] = tuple(request["query_embedding"])
    request["document_ids"] = tuple(str(d) for d in request.get("document_ids") or ())
    return ChunkSearch(indexes=tuple(INDEXES.active[kb] for kb in ids), **request)


# --- synthetic data -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Doc:
    document_id: UUID
    title: str
    chunks: list[TextChunk]
    vectors: np.ndarray  # (n, DIM)


def build_corpus(seed: int = 7) -> dict[UUID, Doc]:
    rng = np.random.default_rng(seed)
    corpus: dict[UUID, Doc] = {}
    for document_id, count in DOCUMENTS.items():
        chunks, position = [], 0
        for index in range(count):
            words = rng.choice(VOCABULARY, size=int(rng.integers(4, 16)))
            content = " ".join(words)
            chunks.append(
                TextChunk(
                    index=index,
                    content=content,
                    char_start=position,
                    char_end=position + len(content),
                    token_count=len(words),
                )
            )
            position += len(content) + 1
        corpus[document_id] = Doc(document_id, TITLES[document_id], chunks, rng.normal(size=(count, DIM)))
    return corpus


CORPUS = build_corpus()
QUERY_VECTOR = np.random.default_rng(99).normal(size=DIM)


async def write_corpus(
    corpus: dict[UUID, Doc] = CORPUS, *, kb_id: UUID = KB, index: KbIndex | None = None
) -> None:
    for doc in corpus.values():
        await chunks_service.upsert_chunks(
            kb_id=kb_id,
            document_id=doc.document_id,
            title=doc.title,
            chunks=doc.chunks,
            vectors=doc.vectors.tolist(),
            keyword_vectors=encoder.encode_documents([c.content for c in doc.chunks]),
            index=index,
        )


def exact_cosine(
    corpus: dict[UUID, Doc],
    query: np.ndarray,
    *,
    excluded: set[UUID] = frozenset(),
    only: set[UUID] | None = None,
) -> list[tuple[UUID, int, float]]:
    """Every allowed chunk as (document, chunk index, cosine), best first."""
    q = query / np.linalg.norm(query)
    hits = []
    for doc in corpus.values():
        if doc.document_id in excluded or (only is not None and doc.document_id not in only):
            continue
        normed = doc.vectors / np.linalg.norm(doc.vectors, axis=1, keepdims=True)
        hits.extend((doc.document_id, i, float(score)) for i, score in enumerate(normed @ q))
    return sorted(hits, key=lambda hit: -hit[2])


def answer(results: list[StoredChunk]) -> list[tuple[UUID, int]]:
    return [(r.document_id, r.chunk_index) for r in results]


def assert_same_hits(got: list[StoredChunk], expected: list[tuple[UUID, int, float]]) -> None:
    assert answer(got) == [(d, i) for d, i, _ in expected]
    for result, (_, _, score) in zip(got, expected):
        assert result.score == pytest.approx(score, abs=SCORE_TOLERANCE)


def tie_groups(results: list[StoredChunk]) -> list[frozenset[tuple[UUID, int]]]:
    """Results grouped by equal score (within the tolerance): the order within a tie is not part of the contract."""
    groups: list[tuple[float, set[tuple[UUID, int]]]] = []
    for r in results:
        if groups and abs(groups[-1][0] - r.score) <= SCORE_TOLERANCE:
            groups[-1][1].add((r.document_id, r.chunk_index))
        else:
            groups.append((r.score, {(r.document_id, r.chunk_index)}))
    return [frozenset(ids) for _, ids in groups]


# --- backends -------------------------------------------------------------------------------------


@dataclass
class Store:
    name: str
    config: QdrantConfig
    server: LoopbackQdrantServer | None = None


REFERENCE = QdrantConfig(path=":memory:", engine="local")


async def on_reference(work: Callable[[], Awaitable[T]]) -> T:
    """Run `work` on a fresh in-memory local-mode store, then point the service back where it was.

    Call it before writing to the backend under test: switching away closes an in-memory embedded store.
    """
    saved = qdrant_service.config
    qdrant_service.configure(REFERENCE)
    try:
        return await work()
    finally:
        qdrant_service.configure(saved)


@pytest.fixture(params=["edge", "local", "grpc"])
def store(request) -> Iterator[Store]:
    """The process's qdrant_service pointed at one backend for the test, restored from settings after."""
    try:
        if request.param == "grpc":
            with LoopbackQdrantServer() as server:
                config = QdrantConfig(url=server.url, grpc_port=server.grpc_port, timeout=5)
                qdrant_service.configure(config)
                yield Store("grpc", config, server)
        else:
            config = QdrantConfig(path=":memory:", engine=request.param)
            qdrant_service.configure(config)
            yield Store(request.param, config)
    finally:
        qdrant_service.configure(QdrantConfig.from_settings())


# --- collection and alias life cycle --------------------------------------------------------------


async def collection_names() -> set[str]:
    return {c.name for c in (await qdrant_service.client.get_collections()).collections}


async def test_every_kb_of_a_model_lands_in_one_collection_reached_through_an_alias(store) -> None:
    index = INDEXES.active[KB]
    assert await collections_service.current_collection(index=index) is None

    first = await collections_service.ensure_collection(index=index)
    again = await collections_service.ensure_collection(index=INDEXES.active[OTHER_KB])
    other_model = await collections_service.ensure_collection(
        index=KbIndex(kb_id=OTHER_KB, model="Other/Model-2", vector_size=DIM * 2)
    )

    assert first == again == f"{COLLECTION}_v1"
    assert other_model == f"kbsite_other-model-2_{DIM * 2}_v1"
    assert await collection_names() == {first, other_model}
    aliases = {(a.alias_name, a.collection_name) for a in (await qdrant_service.client.get_aliases()).aliases}
    assert aliases == {(COLLECTION, first), (f"kbsite_other-model-2_{DIM * 2}", other_model)}
    assert await collections_service.model_collections() == sorted([COLLECTION, f"kbsite_other-model-2_{DIM * 2}"])


async def test_switching_the_active_generation_swaps_whole_answers_under_concurrent_reads(store) -> None:
    # Generations 1 and 2 hold different vectors for the same chunks, so each gives its own top five.
    new_corpus = build_corpus(seed=8)
    old_answer = [(d, i) for d, i, _ in exact_cosine(CORPUS, QUERY_VECTOR)[:5]]
    new_answer = [(d, i) for d, i, _ in exact_cosine(new_corpus, QUERY_VECTOR)[:5]]
    assert old_answer != new_answer
    await write_corpus()
    first = INDEXES.active[KB]
    second = first.next_generation(model=MODEL, vector_size=DIM)
    await write_corpus(new_corpus, index=second)
    assert answer(await search_chunks(query_embedding=QUERY_VECTOR.tolist(), limit=5)) == old_answer
    assert await chunks_service.count_chunks(kb_id=KB) == sum(DOCUMENTS.values())  # the next one is not counted

    seen: list[Any] = []
    read = threading.Condition()
    stop = threading.Event()

    async def read_until_stopped() -> None:
        while not stop.is_set():
            try:
                seen.append(answer(await search_chunks(query_embedding=QUERY_VECTOR.tolist(), limit=5)))
            except Exception as exc:  # noqa: BLE001 - every failure is a broken contract, recorded
                seen.append(exc)
            with read:
                read.notify_all()

    reader = threading.Thread(target=asyncio.run, args=(read_until_stopped(),))
    reader.start()
    try:
        for target in [second, first] * 5 + [second]:
            INDEXES.active[KB] = target
            # Wait for two more reads after each switch: at least the second of them began after it.
            switched_at = len(seen)
            with read:
                assert read.wait_for(lambda mark=switched_at: len(seen) >= mark + 2, timeout=10)
    finally:
        stop.set()
        reader.join(10)

    assert not reader.is_alive()
    assert old_answer in seen and new_answer in seen
    wrong = [a for a in seen if a not in (old_answer, new_answer)]
    assert wrong == [], f"{len(wrong)} of {len(seen)} reads saw neither generation's full answer: {wrong[:3]}"
    assert answer(await search_chunks(query_embedding=QUERY_VECTOR.tolist(), limit=5)) == new_answer


async def test_deleting_a_generation_leaves_the_active_one_and_other_kbs(store) -> None:
    await write_corpus()
    await write_corpus(kb_id=OTHER_KB)
    first = INDEXES.active[KB]
    second = first.next_generation(model=MODEL, vector_size=DIM)
    await write_corpus(index=second)
    INDEXES.active[KB] = second

    await collections_service.delete_generation(index=first)

    assert await chunks_service.count_chunks(kb_id=KB, index=first) == 0
    assert await chunks_service.count_chunks(kb_id=KB) == sum(DOCUMENTS.values())
    assert await chunks_service.count_chunks(kb_id=OTHER_KB) == sum(DOCUMENTS.values())
    assert await collection_names() == {f"{COLLECTION}_v1"}


async def test_deleting_a_knowledge_base_removes_every_generation_in_every_model_and_no_other_kb(store) -> None:
    await write_corpus()
    await write_corpus(kb_id=OTHER_KB)
    elsewhere = KbIndex(kb_id=KB, model="Other/Model-2", vector_size=DIM, generation=2)
    await write_corpus(index=elsewhere)
    assert await collections_service.holds_points(kb_id=KB)

    await collections_service.delete_knowledge_base(kb_id=KB)

    assert not await collections_service.holds_points(kb_id=KB)
    assert await chunks_service.count_chunks(kb_id=KB) == 0
    assert await chunks_service.count_chunks(kb_id=KB, index=elsewhere) == 0
    assert await search_chunks(query_embedding=QUERY_VECTOR.tolist()) == []
    assert await chunks_service.count_chunks(kb_id=OTHER_KB) == sum(DOCUMENTS.values())
    assert_same_hits(
        await search_chunks(kb_id=OTHER_KB, query_embedding=QUERY_VECTOR.tolist(), limit=50),
        exact_cosine(CORPUS, QUERY_VECTOR),
    )


async def test_two_knowledge_bases_never_see_each_others_points(store) -> None:
    # The same documents (same ids) in both KBs, with different vectors and titles in the other one.
    other = {d: Doc(d, f"Other {doc.title}", doc.chunks, -doc.vectors) for d, doc in build_corpus().items()}
    await write_corpus()
    await write_corpus(other, kb_id=OTHER_KB)
    query = encoder.encode_query(KEYWORD_QUERY)

    await chunks_service.set_title(kb_id=KB, document_id=DOC_A, title="Renamed")
    await chunks_service.set_archived(kb_id=KB, document_id=DOC_B, archived_at=ARCHIVED_AT)
    await chunks_service.set_labels(
        kb_id=KB, document_id=DOC_C, tags=["mine"], metadata={"year": 1}, fields={"year": "number"}
    )
    await chunks_service.delete_document_chunks(kb_id=KB, document_id=DOC_C, from_index=2)

    expected = exact_cosine(other, QUERY_VECTOR)
    assert_same_hits(await search_chunks(kb_id=OTHER_KB, query_embedding=QUERY_VECTOR.tolist(), limit=50), expected)
    for request in (
        {"query_keywords": query},
        {"query_embedding": QUERY_VECTOR.tolist(), "query_keywords": query},
        {"query_embedding": QUERY_VECTOR.tolist(), "metadata_filter": compile_filter({"tag": {"none": ["x"]}}, fields=SearchedFields({}))},
    ):
        hits = await search_chunks(kb_id=OTHER_KB, limit=50, **request)
        assert {h.kb_id for h in hits} == {OTHER_KB} and {h.title for h in hits} == {d.title for d in other.values()}
    groups = await search_chunk_groups(kb_id=OTHER_KB, query_embedding=QUERY_VECTOR.tolist(), limit=5)
    assert {c.kb_id for group in groups for c in group} == {OTHER_KB} and len(groups) == 3
    assert await chunks_service.count_chunks(kb_id=OTHER_KB) == sum(DOCUMENTS.values())
    assert await chunks_service.count_chunks(kb_id=OTHER_KB, document_id=DOC_C) == DOCUMENTS[DOC_C]
    page, _ = await chunks_service.get_chunks_by_document(kb_id=OTHER_KB, document_id=DOC_A)
    assert {c.title for c in page} == {"Other " + TITLES[DOC_A]} and len(page) == DOCUMENTS[DOC_A]
    fetched = await chunks_service.get_chunks(kb_id=OTHER_KB, positions=[(DOC_C, 5), (DOC_B, 0)])
    assert {(c.kb_id, c.tags, c.archived_at) for c in fetched} == {(OTHER_KB, (), None)}
    records = await chunks_service.get_document_chunk_records(kb_id=OTHER_KB, document_id=DOC_C)
    assert len(records) == DOCUMENTS[DOC_C] and all(r.payload["title"] == "Other " + TITLES[DOC_C] for r in records)
    # And KB sees only its own, changed, points.
    mine = await search_chunks(query_embedding=QUERY_VECTOR.tolist(), limit=50, include_archived=True)
    assert {h.kb_id for h in mine} == {KB}
    assert len(mine) == sum(DOCUMENTS.values()) - (DOCUMENTS[DOC_C] - 2)

    await collections_service.delete_knowledge_base(kb_id=KB)
    assert_same_hits(await search_chunks(kb_id=OTHER_KB, query_embedding=QUERY_VECTOR.tolist(), limit=50), expected)


async def test_knowledge_bases_whose_search_keys_collide_still_never_see_each_others_points(
    store, monkeypatch
) -> None:
    # Search keys are 62-bit hashes of tenant keys; make every tenant's the same, as a collision would.
    monkeypatch.setattr(collections, "_tenant_hash", lambda tenant: 4242)
    INDEXES.reset()  # an index works its keys out when it is made
    other = {d: Doc(d, f"Other {doc.title}", doc.chunks, -doc.vectors) for d, doc in build_corpus().items()}
    await write_corpus()
    await write_corpus(other, kb_id=OTHER_KB)
    await chunks_service.set_archived(kb_id=OTHER_KB, document_id=DOC_B, archived_at=ARCHIVED_AT)
    query = encoder.encode_query(KEYWORD_QUERY)

    assert_same_hits(
        await search_chunks(query_embedding=QUERY_VECTOR.tolist(), limit=50), exact_cosine(CORPUS, QUERY_VECTOR)
    )
    for kb_id, titles in ((KB, set(TITLES.values())), (OTHER_KB, {d.title for d in other.values()})):
        for request in ({"query_keywords": query}, {"query_embedding": QUERY_VECTOR.tolist(), "query_keywords": query}):
            hits = await search_chunks(kb_id=kb_id, limit=50, include_archived=True, **request)
            assert {h.kb_id for h in hits} == {kb_id} and {h.title for h in hits} == titles
        groups = await search_chunk_groups(kb_id=kb_id, query_embedding=QUERY_VECTOR.tolist(), limit=5)
        assert {c.kb_id for group in groups for c in group} == {kb_id} and len(groups) == 3 - (kb_id == OTHER_KB)


async def as_an_earlier_kbsite_wrote_them() -> None:
    """Write every point of the collection again without its search key, as kbsite before search keys did."""
    points, _ = await qdrant_service.client.scroll(
        collection_name=COLLECTION, limit=1_000, with_payload=True, with_vectors=True
    )
    await as_written_before_search_keys(COLLECTION, points)


async def test_points_from_before_search_keys_are_searched_by_tenant_until_given_their_keys(store) -> None:
    await write_corpus()
    await write_corpus(build_corpus(seed=3), kb_id=OTHER_KB)
    await chunks_service.set_archived(kb_id=KB, document_id=DOC_B, archived_at=ARCHIVED_AT)
    dense = QUERY_VECTOR.tolist()
    expected = exact_cosine(CORPUS, QUERY_VECTOR, excluded={DOC_B})
    everything = answer(await search_chunks(query_embedding=dense, limit=50, include_archived=True))
    await as_an_earlier_kbsite_wrote_them()
    total = 2 * sum(DOCUMENTS.values())

    assert not await collections_service.searches_by_key(collection=COLLECTION)
    assert await collections_service.count_without_search_key(collection=COLLECTION) == total
    assert_same_hits(await search_chunks(query_embedding=dense, limit=50), expected)

    steps: list[tuple[int, str]] = []
    written = await collections_service.write_search_keys(
        collection=COLLECTION, on_progress=lambda step, tenant: steps.append((step, tenant))
    )

    assert written == sum(step for step, _ in steps) == total
    # one step per tenant and archived state: KB's live and archived points, the other KB's
    assert sorted(steps) == sorted(
        [
            (total // 2 - DOCUMENTS[DOC_B], INDEXES.active[KB].tenant),
            (DOCUMENTS[DOC_B], INDEXES.active[KB].tenant),
            (total // 2, INDEXES.active[OTHER_KB].tenant),
        ]
    )
    assert await collections_service.count_without_search_key(collection=COLLECTION) == 0
    collections._keyed_collections.clear()
    assert await collections_service.searches_by_key(collection=COLLECTION)
    assert_same_hits(await search_chunks(query_embedding=dense, limit=50), expected)
    assert answer(await search_chunks(query_embedding=dense, limit=50, include_archived=True)) == everything
    assert await collections_service.write_search_keys(collection=COLLECTION, on_progress=lambda *_: None) == 0


@pytest.mark.parametrize("mode", ["semantic", "keyword"])
async def test_one_query_across_kbs_answers_as_the_merge_of_one_query_per_kb(store, mode) -> None:
    other = {d: Doc(d, doc.title, doc.chunks, doc.vectors[::-1].copy()) for d, doc in build_corpus(seed=11).items()}
    await write_corpus()
    await write_corpus(other, kb_id=OTHER_KB)
    vectors: dict[str, Any] = (
        {"query_embedding": QUERY_VECTOR.tolist()}
        if mode == "semantic"
        else {"query_keywords": encoder.encode_query(KEYWORD_QUERY)}
    )

    together = await chunks_service.search_chunks(chunk_search([KB, OTHER_KB], limit=12, **vectors))
    apart = [hit for kb in (KB, OTHER_KB) for hit in await search_chunks(kb_id=kb, limit=12, **vectors)]

    merged = sorted(apart, key=lambda hit: -(hit.score or 0))[:12]
    assert {h.kb_id for h in together} == {KB, OTHER_KB}
    if mode == "semantic":
        assert [(h.kb_id, h.document_id, h.chunk_index) for h in together] == [
            (h.kb_id, h.document_id, h.chunk_index) for h in merged
        ]
    else:
        # BM25's IDF is the collection's either way here: every query reads the one collection.
        assert [h.score for h in together] == pytest.approx([h.score for h in merged], abs=SCORE_TOLERANCE)


async def test_a_hybrid_search_across_kbs_fuses_their_semantic_and_keyword_rankings_and_nothing_else(store) -> None:
    # The fusion itself carries no filter: the prefetches' alone keep out the KB not searched (whose
    # chunks lie closest to both queries) and the archived document.
    third = UUID("5e3c8a24-6b1d-4f7e-9a0c-2d4f6b8e0a13")
    INDEXES.active[third] = KbIndex(kb_id=third, model=MODEL, vector_size=DIM)
    closest = {d: Doc(d, doc.title, doc.chunks, np.tile(QUERY_VECTOR, (len(doc.chunks), 1))) for d, doc in CORPUS.items()}
    await write_corpus()
    await write_corpus(build_corpus(seed=11), kb_id=OTHER_KB)
    await write_corpus(closest, kb_id=third)
    await chunks_service.set_archived(kb_id=KB, document_id=DOC_C, archived_at=ARCHIVED_AT)
    dense, keywords = QUERY_VECTOR.tolist(), encoder.encode_query(KEYWORD_QUERY)
    searched = [KB, OTHER_KB]

    fused = await chunks_service.search_chunks(chunk_search(searched, limit=10, query_embedding=dense, query_keywords=keywords))

    semantic = await chunks_service.search_chunks(chunk_search(searched, limit=100, query_embedding=dense))
    keyword = await chunks_service.search_chunks(chunk_search(searched, limit=100, query_keywords=keywords))
    scores: dict[tuple[UUID, UUID, int], float] = {}
    for ranking, weight in zip((semantic, keyword), RRF_WEIGHTS or (1.0, 1.0)):
        for position, hit in enumerate(ranking):  # Qdrant's reciprocal rank, positions from 0
            key = (hit.kb_id, hit.document_id, hit.chunk_index)
            scores[key] = scores.get(key, 0.0) + 1 / ((position + 1) / weight + RRF_K - 1)
    assert {h.kb_id for h in fused} == {KB, OTHER_KB} and len(fused) == 10
    assert not any(h.kb_id == KB and h.document_id == DOC_C for h in fused)
    assert [h.score for h in fused] == pytest.approx(sorted(scores.values(), reverse=True)[:10], abs=SCORE_TOLERANCE)
    assert all(h.score == pytest.approx(scores[(h.kb_id, h.document_id, h.chunk_index)], abs=SCORE_TOLERANCE) for h in fused)


# --- writes ---------------------------------------------------------------------------------------


async def test_upserting_the_same_chunks_twice_keeps_the_count(store) -> None:
    await write_corpus()
    await write_corpus()

    assert await chunks_service.count_chunks(kb_id=KB) == sum(DOCUMENTS.values())
    for document_id, count in DOCUMENTS.items():
        assert await chunks_service.count_chunks(kb_id=KB, document_id=document_id) == count
    # Same ids: the point for (document, chunk) is the one written last.
    points = await qdrant_service.client.retrieve(
        collection_name=COLLECTION, ids=[chunk_point_id(INDEXES.active[KB].tenant, DOC_A, 0)], with_payload=True
    )
    assert [p.payload["content"] for p in points] == [CORPUS[DOC_A].chunks[0].content]


# --- dense search ---------------------------------------------------------------------------------

THRESHOLD_CASE = "score_threshold"


@pytest.mark.parametrize("case", ["default", "include_archived", "document_ids", THRESHOLD_CASE])
async def test_dense_search_matches_exact_cosine(store, case) -> None:
    await write_corpus()
    await chunks_service.set_archived(kb_id=KB, document_id=DOC_C, archived_at=ARCHIVED_AT)
    kwargs: dict[str, Any] = {}
    if case == "default":
        expected = exact_cosine(CORPUS, QUERY_VECTOR, excluded={DOC_C})[:10]
    elif case == "include_archived":
        kwargs["include_archived"] = True
        expected = exact_cosine(CORPUS, QUERY_VECTOR)[:10]
    elif case == "document_ids":
        kwargs["document_ids"] = [DOC_B, DOC_C]
        kwargs["include_archived"] = True
        expected = exact_cosine(CORPUS, QUERY_VECTOR, only={DOC_B, DOC_C})[:10]
    else:
        allowed = exact_cosine(CORPUS, QUERY_VECTOR, excluded={DOC_C})
        # Halfway between the 4th and 5th scores: well clear of either, whatever the float rounding.
        kwargs["score_threshold"] = (allowed[3][2] + allowed[4][2]) / 2
        expected = allowed[:4]

    got = await search_chunks(
        kb_id=KB, query_embedding=QUERY_VECTOR.tolist(), limit=10, **kwargs
    )

    assert_same_hits(got, expected)
    if case != "default":
        assert {r.archived_at for r in got if r.document_id == DOC_C} <= {ARCHIVED_AT}


# --- keyword and hybrid search, against the local mode's answer -----------------------------------


async def keyword_and_hybrid_answers() -> dict[str, list[StoredChunk]]:
    await write_corpus()
    await chunks_service.set_archived(kb_id=KB, document_id=DOC_C, archived_at=ARCHIVED_AT)
    query = encoder.encode_query(KEYWORD_QUERY)
    dense = QUERY_VECTOR.tolist()
    return {
        "keyword": await search_chunks(kb_id=KB, query_keywords=query, limit=8),
        "keyword/document_ids": await search_chunks(
            kb_id=KB, query_keywords=query, limit=8, document_ids=[DOC_A, DOC_C], include_archived=True
        ),
        "hybrid": await search_chunks(
            kb_id=KB, query_embedding=dense, query_keywords=query, limit=8
        ),
        "hybrid/include_archived": await search_chunks(
            kb_id=KB, query_embedding=dense, query_keywords=query, limit=8, include_archived=True
        ),
    }


@pytest.mark.parametrize("mode", ["keyword", "keyword/document_ids", "hybrid", "hybrid/include_archived"])
async def test_keyword_and_hybrid_search_match_the_local_mode(store, mode) -> None:
    reference = (await on_reference(keyword_and_hybrid_answers))[mode]
    got = (await keyword_and_hybrid_answers())[mode]

    assert len(reference) > 3  # the query matches enough chunks for the order to mean something
    # The synthetic data gives no two chunks the same score, so the order is fully determined.
    assert all(len(group) == 1 for group in tie_groups(reference))
    assert answer(got) == answer(reference)
    for result, ref in zip(got, reference):
        assert result.score == pytest.approx(ref.score, abs=SCORE_TOLERANCE)


# --- listing, counting, payload updates, deletes --------------------------------------------------


async def test_pages_of_a_document_come_in_chunk_order(store) -> None:
    doc = CORPUS[DOC_A]
    order = [4, 0, 6, 2, 5, 1, 3]  # written out of order: pages follow chunk_index, not insertion
    for i in order:
        await chunks_service.upsert_chunks(
            kb_id=KB,
            document_id=DOC_A,
            title=doc.title,
            chunks=[doc.chunks[i]],
            vectors=[doc.vectors[i].tolist()],
            keyword_vectors=encoder.encode_documents([doc.chunks[i].content]),
        )
    await write_corpus({DOC_B: CORPUS[DOC_B]})

    pages, offset = [], None
    while True:
        page, offset = await chunks_service.get_chunks_by_document(
            kb_id=KB, document_id=DOC_A, offset=offset, limit=3
        )
        pages.append(([c.chunk_index for c in page], offset))
        if offset is None:
            break

    assert pages == [([0, 1, 2], 3), ([3, 4, 5], 6), ([6], None)]
    first, _ = await chunks_service.get_chunks_by_document(kb_id=KB, document_id=DOC_A, limit=1)
    chunk = doc.chunks[0]
    assert (first[0].content, first[0].title, first[0].char_start, first[0].char_end) == (
        chunk.content, doc.title, chunk.char_start, chunk.char_end,
    )  # fmt: skip
    whole, end = await chunks_service.get_chunks_by_document(kb_id=KB, document_id=DOC_B)
    assert ([c.chunk_index for c in whole], end) == (list(range(DOCUMENTS[DOC_B])), None)
    assert await chunks_service.get_chunks_by_document(kb_id=OTHER_KB, document_id=DOC_A) == ([], None)


async def test_counts_are_exact_per_document_and_per_knowledge_base(store) -> None:
    assert await chunks_service.count_chunks(kb_id=KB) == 0
    await write_corpus()
    await write_corpus({DOC_B: CORPUS[DOC_B]}, kb_id=OTHER_KB)
    await chunks_service.set_archived(kb_id=KB, document_id=DOC_C, archived_at=ARCHIVED_AT)

    assert await chunks_service.count_chunks(kb_id=KB) == sum(DOCUMENTS.values())  # archived chunks count
    assert {d: await chunks_service.count_chunks(kb_id=KB, document_id=d) for d in DOCUMENTS} == DOCUMENTS
    assert await chunks_service.count_chunks(kb_id=KB, document_id=UUID(int=5)) == 0
    assert await chunks_service.count_chunks(kb_id=OTHER_KB) == DOCUMENTS[DOC_B]
    assert await chunks_service.count_chunks_per_kb(kb_ids=[OTHER_KB, KB, UUID(int=9)]) == {
        OTHER_KB: DOCUMENTS[DOC_B], KB: sum(DOCUMENTS.values()), UUID(int=9): 0,
    }  # fmt: skip


async def test_title_and_archive_updates_are_visible_to_the_next_search(store) -> None:
    await write_corpus()
    dense = QUERY_VECTOR.tolist()

    await chunks_service.set_title(kb_id=KB, document_id=DOC_A, title="Renamed")
    hits = await search_chunks(kb_id=KB, query_embedding=dense, limit=50)
    assert {r.document_id: r.title for r in hits} == {
        DOC_A: "Renamed",
        DOC_B: TITLES[DOC_B],
        DOC_C: TITLES[DOC_C],
    }

    await chunks_service.set_archived(kb_id=KB, document_id=DOC_B, archived_at=ARCHIVED_AT)
    assert_same_hits(
        await search_chunks(kb_id=KB, query_embedding=dense, limit=50),
        exact_cosine(CORPUS, QUERY_VECTOR, excluded={DOC_B}),
    )
    everything = await search_chunks(
        kb_id=KB, query_embedding=dense, limit=50, include_archived=True
    )
    assert {r.document_id: r.archived_at for r in everything} == {
        DOC_A: None,
        DOC_B: ARCHIVED_AT,
        DOC_C: None,
    }
    assert {r.document_id: r.title for r in everything}[DOC_A] == "Renamed"  # one update left the other alone

    await chunks_service.set_archived(kb_id=KB, document_id=DOC_B, archived_at=None)
    assert_same_hits(
        await search_chunks(kb_id=KB, query_embedding=dense, limit=50),
        exact_cosine(CORPUS, QUERY_VECTOR),
    )


async def test_deleting_a_documents_chunks_all_or_from_an_index(store) -> None:
    await write_corpus()

    await chunks_service.delete_document_chunks(kb_id=KB, document_id=DOC_A, from_index=3)
    await chunks_service.delete_document_chunks(kb_id=KB, document_id=DOC_B)
    await chunks_service.delete_document_chunks(kb_id=OTHER_KB, document_id=DOC_A)  # no points: no error

    assert await chunks_service.count_chunks(kb_id=KB, document_id=DOC_A) == 3
    assert await chunks_service.count_chunks(kb_id=KB, document_id=DOC_B) == 0
    assert await chunks_service.count_chunks(kb_id=KB, document_id=DOC_C) == DOCUMENTS[DOC_C]
    page, _ = await chunks_service.get_chunks_by_document(kb_id=KB, document_id=DOC_A)
    assert [c.chunk_index for c in page] == [0, 1, 2]
    expected = [
        hit for hit in exact_cosine(CORPUS, QUERY_VECTOR, excluded={DOC_B}) if hit[0] != DOC_A or hit[1] < 3
    ]
    assert_same_hits(
        await search_chunks(kb_id=KB, query_embedding=QUERY_VECTOR.tolist(), limit=50),
        expected,
    )


# --- persistence ----------------------------------------------------------------------------------


async def test_closing_and_reopening_keeps_everything(store, tmp_path) -> None:
    if store.name == "grpc":
        pytest.skip("the server keeps its data across client connections; there is no store folder to reopen")
    config = QdrantConfig(path=str(tmp_path / "qdrant"), engine=store.config.engine)
    qdrant_service.configure(config)
    await write_corpus()
    second = INDEXES.active[KB].next_generation(model=MODEL, vector_size=DIM)
    await write_corpus(index=second)
    first, INDEXES.active[KB] = INDEXES.active[KB], second
    await collections_service.delete_generation(index=first)
    await chunks_service.set_archived(kb_id=KB, document_id=DOC_C, archived_at=ARCHIVED_AT)
    await chunks_service.set_title(kb_id=KB, document_id=DOC_A, title="Renamed")
    await chunks_service.delete_document_chunks(kb_id=KB, document_id=DOC_B, from_index=2)
    keyword_before = await search_chunks(
        kb_id=KB, query_keywords=encoder.encode_query(KEYWORD_QUERY), limit=8
    )

    qdrant_service.close()
    qdrant_service.configure(config)

    assert await collection_names() == {f"{COLLECTION}_v1"}
    assert await chunks_service.count_chunks(kb_id=KB, index=first) == 0
    assert await chunks_service.count_chunks(kb_id=KB) == sum(DOCUMENTS.values()) - (DOCUMENTS[DOC_B] - 2)
    expected = [
        hit for hit in exact_cosine(CORPUS, QUERY_VECTOR, excluded={DOC_C}) if hit[0] != DOC_B or hit[1] < 2
    ]
    hits = await search_chunks(kb_id=KB, query_embedding=QUERY_VECTOR.tolist(), limit=50)
    assert_same_hits(hits, expected)
    assert {r.document_id: r.title for r in hits}[DOC_A] == "Renamed"
    page, _ = await chunks_service.get_chunks_by_document(kb_id=KB, document_id=DOC_B)
    assert [c.chunk_index for c in page] == [0, 1]
    keyword_after = await search_chunks(
        kb_id=KB, query_keywords=encoder.encode_query(KEYWORD_QUERY), limit=8
    )
    assert tie_groups(keyword_after) == tie_groups(keyword_before)


# --- tags, metadata and filters -------------------------------------------------------------------

LABELS: dict[UUID, tuple[list[str], dict[str, Any]]] = {
    DOC_A: (
        ["tides", "moon"],
        {"year": 2019, "status": "draft", "reviewed": True, "published": "2019-06-01", "score": 4.5},
    ),
    DOC_B: (
        ["storms"],
        {"year": 2021, "status": "final", "reviewed": False, "published": "2021-03-15T12:00:00Z", "score": 3},
    ),
    DOC_C: (["tides", "sand"], {"year": 2023, "status": "final", "published": "2023-11-30"}),
}
# What the KB declares (`missing` too: declared, carried by no document).
FIELDS = {
    "year": "number",
    "status": "text",
    "reviewed": "bool",
    "published": "date",
    "score": "number",
    "missing": "text",
}
A, B, C = DOC_A, DOC_B, DOC_C
# Each operator on each value type, and their combinations, with the documents they must leave.
FILTER_CASES: list[tuple[dict[str, Any], set[UUID]]] = [
    ({"tag": {"any": ["moon", "sand"]}}, {A, C}),
    ({"tag": {"all": ["tides", "moon"]}}, {A}),
    ({"tag": {"none": ["tides"]}}, {B}),
    ({"key": "status", "eq": "final"}, {B, C}),
    ({"key": "reviewed", "eq": True}, {A}),
    ({"key": "reviewed", "eq": False}, {B}),
    ({"key": "year", "eq": 2021}, {B}),
    ({"key": "score", "eq": 4.5}, {A}),
    ({"key": "status", "ne": "draft"}, {B, C}),
    ({"key": "reviewed", "ne": True}, {B, C}),  # C has no `reviewed`: ne keeps it
    ({"key": "status", "in": ["draft", "final"]}, {A, B, C}),
    ({"key": "year", "in": [2019, 2023]}, {A, C}),
    ({"key": "status", "not_in": ["draft"]}, {B, C}),
    ({"key": "year", "not_in": [2019, 2021]}, {C}),
    ({"key": "year", "gt": 2019}, {B, C}),
    ({"key": "year", "gte": 2021}, {B, C}),
    ({"key": "year", "lt": 2021}, {A}),
    ({"key": "year", "lte": 2021}, {A, B}),
    ({"key": "score", "gt": 3, "lte": 4.5}, {A}),
    ({"key": "published", "gte": "2021-01-01"}, {B, C}),
    ({"key": "published", "lt": "2021-03-15T12:00:00Z"}, {A}),
    ({"key": "published", "gt": "2021-03-15T13:00:00+02:00"}, {B, C}),
    ({"key": "published", "lte": "2021-03-15T12:00:00Z"}, {A, B}),
    ({"key": "reviewed", "exists": True}, {A, B}),
    ({"key": "reviewed", "exists": False}, {C}),
    ({"key": "missing", "exists": False}, {A, B, C}),
    ({"or": [{"key": "year", "gte": 2022}, {"key": "reviewed", "eq": True}]}, {A, C}),
    (
        {
            "and": [
                {"tag": {"any": ["tides"]}},
                {"or": [{"key": "year", "gte": 2022}, {"key": "status", "eq": "draft"}]},
            ]
        },
        {A, C},
    ),
    ({"and": [{"key": "status", "eq": "final"}, {"tag": {"none": ["sand"]}}]}, {B}),
]


async def write_labelled_corpus() -> None:
    for doc in CORPUS.values():
        tags, metadata = LABELS[doc.document_id]
        await chunks_service.upsert_chunks(
            kb_id=KB,
            document_id=doc.document_id,
            title=doc.title,
            chunks=doc.chunks,
            vectors=doc.vectors.tolist(),
            keyword_vectors=encoder.encode_documents([c.content for c in doc.chunks]),
            tags=tags,
            metadata=metadata,
            fields=FIELDS,
        )


async def documents_found(
    spec: dict[str, Any], mode: str, service: ChunkService = chunks_service, **kwargs: Any
) -> set[UUID]:
    vectors: dict[str, Any] = {}
    if mode in ("semantic", "hybrid"):
        vectors["query_embedding"] = QUERY_VECTOR.tolist()
    if mode in ("keyword", "hybrid"):
        vectors["query_keywords"] = encoder.encode_query(KEYWORD_QUERY)
    hits = await search_chunks(
        service=service,
        limit=50,
        metadata_filter=compile_filter(spec, fields=SearchedFields({"Contract": FIELDS})),
        **vectors,
        **kwargs,
    )
    found = {hit.document_id for hit in hits}
    if mode == "semantic":
        # Every chunk of the documents left, in exact cosine order.
        assert_same_hits(hits, exact_cosine(CORPUS, QUERY_VECTOR, only=found))
    return found


@pytest.mark.parametrize("mode", ["semantic", "keyword", "hybrid"])
async def test_metadata_filters_leave_the_documents_each_operator_selects(store, mode) -> None:
    await write_labelled_corpus()
    # The keyword query matches chunks of every document, so each mode can show every document.
    assert await documents_found({"key": "missing", "exists": False}, mode) == set(DOCUMENTS)
    service = ChunkService(indexes=INDEXES)  # a new service: filtering is never a reason to make an index

    wrong = {}
    for spec, expected in FILTER_CASES:
        found = await documents_found(spec, mode, service)
        if found != expected:
            wrong[str(spec)] = (sorted(TITLES[d] for d in found), sorted(TITLES[d] for d in expected))

    assert wrong == {}


async def test_a_metadata_filter_keeps_the_archive_and_document_conditions(store) -> None:
    await write_labelled_corpus()
    await chunks_service.set_archived(kb_id=KB, document_id=DOC_C, archived_at=ARCHIVED_AT)
    tides = {"tag": {"any": ["tides"]}}

    assert await documents_found(tides, "hybrid") == {DOC_A}
    assert await documents_found(tides, "hybrid", include_archived=True) == {DOC_A, DOC_C}
    b_and_c = {"include_archived": True, "document_ids": [DOC_B, DOC_C]}
    assert await documents_found(tides, "semantic", **b_and_c) == {DOC_C}


async def test_changed_labels_are_seen_by_the_next_search_without_new_vectors(store) -> None:
    await write_labelled_corpus()
    point_ids = [chunk_point_id(INDEXES.active[KB].tenant, DOC_B, i) for i in range(DOCUMENTS[DOC_B])]

    async def vectors() -> dict[str, tuple[list[float], list[int], list[float]]]:
        points = await qdrant_service.client.retrieve(collection_name=COLLECTION, ids=point_ids, with_vectors=True)
        sparse = {str(p.id): p.vector["bm25"] for p in points}
        return {
            str(p.id): (
                list(p.vector["dense"]),
                list(sparse[str(p.id)].indices),
                list(sparse[str(p.id)].values),
            )
            for p in points
        }

    before = await vectors()
    final = {"key": "status", "eq": "final"}
    assert await documents_found(final, "hybrid") == {DOC_B, DOC_C}

    await chunks_service.set_labels(
        kb_id=KB,
        document_id=DOC_B,
        tags=["storms", "moon"],
        metadata={"status": "draft", "year": 2030},
        fields=FIELDS,
    )

    assert await documents_found(final, "hybrid") == {DOC_C}
    assert await documents_found({"key": "year", "gte": 2030}, "keyword") == {DOC_B}
    assert await documents_found({"key": "score", "exists": True}, "semantic") == {DOC_A}  # B's score is gone
    assert await documents_found({"tag": {"all": ["moon"]}}, "semantic") == {DOC_A, DOC_B}
    page, _ = await chunks_service.get_chunks_by_document(kb_id=KB, document_id=DOC_B, limit=1)
    assert (page[0].tags, page[0].metadata) == (("storms", "moon"), {"status": "draft", "year": 2030})
    after = await vectors()
    assert after.keys() == before.keys() == set(point_ids)
    for point_id, (dense, indices, values) in before.items():
        # Local mode hands back float32 rounding of its own on a second read; nothing else may differ.
        assert after[point_id] == (pytest.approx(dense, abs=1e-6), indices, pytest.approx(values, abs=1e-6))


async def test_declared_fields_are_indexed_by_writes_with_their_type_and_never_by_filters(store) -> None:
    await write_labelled_corpus()
    schema = (await qdrant_service.client.get_collection(collection_name=f"{COLLECTION}_v1")).payload_schema
    spec = {"and": [{"tag": {"any": ["tides"]}}, {"key": "missing", "eq": "x"}, {"key": "year", "gte": 2020}]}

    assert await documents_found(spec, "hybrid", ChunkService(indexes=INDEXES)) == set()

    after = (await qdrant_service.client.get_collection(collection_name=f"{COLLECTION}_v1")).payload_schema
    indexed = {key: info.data_type for key, info in after.items() if key == "tags" or key.startswith("meta")}
    if store.name == "local":
        assert indexed == {}  # local mode keeps no payload indexes
    else:
        assert after.keys() == schema.keys()  # the search made none
        assert indexed == {
            "tags": models.PayloadSchemaType.KEYWORD,
            "meta_number.year": models.PayloadSchemaType.FLOAT,
            "meta_number.score": models.PayloadSchemaType.FLOAT,
            "meta_date.published": models.PayloadSchemaType.DATETIME,
            "meta_text.status": models.PayloadSchemaType.KEYWORD,
            "meta_bool.reviewed": models.PayloadSchemaType.BOOL,
        }
        assert schema["tenant"].params.is_tenant  # the tenant key is stored and planned per tenant


async def test_two_kbs_of_one_collection_declare_a_key_with_different_types_without_meeting(store) -> None:
    await write_labelled_corpus()
    doc = CORPUS[DOC_A]
    await chunks_service.upsert_chunks(
        kb_id=OTHER_KB,
        document_id=DOC_A,
        title=doc.title,
        chunks=doc.chunks,
        vectors=doc.vectors.tolist(),
        keyword_vectors=encoder.encode_documents([c.content for c in doc.chunks]),
        metadata={"year": "MMXIX"},
        fields={"year": "text"},
    )
    other = SearchedFields({"Other": {"year": "text"}})

    hits = await search_chunks(
        kb_id=OTHER_KB,
        query_embedding=QUERY_VECTOR.tolist(),
        limit=50,
        metadata_filter=compile_filter({"key": "year", "eq": "MMXIX"}, fields=other),
    )

    assert {hit.document_id for hit in hits} == {DOC_A} and {hit.kb_id for hit in hits} == {OTHER_KB}
    assert await documents_found({"key": "year", "gte": 2021}, "semantic") == {B, C}


# --- one hit per document: grouped search ---------------------------------------------------------


def exact_groups(
    hits: list[tuple[UUID, int, float]], *, limit: int, group_size: int
) -> list[list[tuple[UUID, int, float]]]:
    """The ranked hits grouped by document: documents by their best hit, each with its best `group_size`."""
    groups: dict[UUID, list[tuple[UUID, int, float]]] = {}
    for hit in hits:
        groups.setdefault(hit[0], [])
        if len(groups[hit[0]]) < group_size:
            groups[hit[0]].append(hit)
    return list(groups.values())[:limit]


def grouped_answer(groups: list[list[StoredChunk]]) -> list[list[tuple[UUID, int]]]:
    return [answer(group) for group in groups]


@pytest.mark.parametrize(
    ("limit", "group_size", "case"),
    [(2, 3, "default"), (3, 2, "include_archived"), (5, 10, "include_archived"), (1, 1, "document_ids")],
)
async def test_grouped_dense_search_matches_exact_grouping(store, limit, group_size, case) -> None:
    await write_corpus()
    await chunks_service.set_archived(kb_id=KB, document_id=DOC_C, archived_at=ARCHIVED_AT)
    kwargs: dict[str, Any] = {}
    if case == "default":
        ranked = exact_cosine(CORPUS, QUERY_VECTOR, excluded={DOC_C})
    elif case == "include_archived":
        kwargs["include_archived"] = True
        ranked = exact_cosine(CORPUS, QUERY_VECTOR)
    else:
        kwargs["document_ids"] = [DOC_B, DOC_C]
        kwargs["include_archived"] = True
        ranked = exact_cosine(CORPUS, QUERY_VECTOR, only={DOC_B, DOC_C})
    expected = exact_groups(ranked, limit=limit, group_size=group_size)

    got = await search_chunk_groups(
        kb_id=KB, query_embedding=QUERY_VECTOR.tolist(), limit=limit, group_size=group_size, **kwargs
    )

    assert grouped_answer(got) == [[(d, i) for d, i, _ in group] for group in expected]
    for group, expected_group in zip(got, expected):
        assert_same_hits(group, expected_group)
        assert {c.title for c in group} == {TITLES[group[0].document_id]}  # payload came back whole


async def test_grouping_finds_the_next_documents_below_one_holding_every_best_chunk(
    store, monkeypatch
) -> None:
    # DOC_A's chunks all lie next to the query: the Edge store's first page (limit * group_size
    # points, made that small here) holds only DOC_A's, so the others are found only by reading on.
    monkeypatch.setattr(edge_store, "GROUPS_PAGE", 1)
    near = QUERY_VECTOR + np.random.default_rng(3).normal(scale=0.01, size=(DOCUMENTS[DOC_A], DIM))
    corpus = dict(CORPUS)
    corpus[DOC_A] = Doc(DOC_A, TITLES[DOC_A], CORPUS[DOC_A].chunks, near)
    await write_corpus(corpus)

    got = await search_chunk_groups(
        kb_id=KB, query_embedding=QUERY_VECTOR.tolist(), limit=3, group_size=1
    )

    expected = exact_groups(exact_cosine(corpus, QUERY_VECTOR), limit=3, group_size=1)
    assert [group[0].document_id for group in got] == [DOC_A, *(g[0][0] for g in expected[1:])]
    assert grouped_answer(got) == [[(d, i) for d, i, _ in group] for group in expected]


@pytest.mark.parametrize("mode", ["keyword", "hybrid"])
async def test_grouped_keyword_and_hybrid_search_group_the_full_ranking(store, mode) -> None:
    # With candidates enough for the whole collection every backend fuses the same full lists, so
    # the groups must be those of the ungrouped ranking.
    await write_corpus()
    query = encoder.encode_query(KEYWORD_QUERY)
    vectors: dict[str, Any] = {"query_keywords": query}
    if mode == "hybrid":
        vectors["query_embedding"] = QUERY_VECTOR.tolist()
    ranking = await search_chunks(kb_id=KB, limit=sum(DOCUMENTS.values()), **vectors)
    assert len({c.document_id for c in ranking}) == 3

    got = await search_chunk_groups(kb_id=KB, limit=2, group_size=2, **vectors)

    expected = exact_groups([(c.document_id, c.chunk_index, c.score) for c in ranking], limit=2, group_size=2)
    assert grouped_answer(got) == [[(d, i) for d, i, _ in group] for group in expected]
    for group, expected_group in zip(got, expected):
        assert_same_hits(group, expected_group)


async def test_grouped_search_of_a_model_without_collection_finds_nothing(store) -> None:
    got = await search_chunk_groups(kb_id=OTHER_KB, query_embedding=QUERY_VECTOR.tolist())

    assert got == []


async def test_chunks_are_fetched_by_position_skipping_those_that_do_not_exist(store) -> None:
    await write_corpus()

    got = await chunks_service.get_chunks(
        kb_id=KB, positions=[(DOC_A, -1), (DOC_A, 0), (DOC_A, 6), (DOC_A, 7), (DOC_B, 2), (DOC_B, 2)]
    )

    assert sorted(answer(got)) == sorted([(DOC_A, 0), (DOC_A, 6), (DOC_B, 2)])
    by_position = {(c.document_id, c.chunk_index): c for c in got}
    chunk = CORPUS[DOC_B].chunks[2]
    found = by_position[(DOC_B, 2)]
    assert (found.content, found.char_start, found.char_end) == (
        chunk.content, chunk.char_start, chunk.char_end,
    )
    assert await chunks_service.get_chunks(kb_id=OTHER_KB, positions=[(DOC_A, 0)]) == []
