"""AC-7.7.1 to 7.7.3 (story tests 1.1-1.3, 2.1-2.4, 3.1-3.3): the client is async and services await it natively."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import AsyncMock, patch
from uuid import uuid4

import pytest
from qdrant_client import AsyncQdrantClient, models
from qdrant_client.http import models as rest

from search.keywords import KeywordSettings
from search.qdrant import QdrantConfig, QdrantService, qdrant_service

pytestmark = pytest.mark.unit

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROJECT_PACKAGES = ("kbsite", "knowledge", "search")


class TestAsyncQdrantClientInitialization:
    """AC-7.7.1: AsyncQdrantClient replaces the sync QdrantClient."""

    def test_qdrant_service_uses_async_client(self) -> None:
        service = QdrantService()
        try:
            assert isinstance(service.client, AsyncQdrantClient)
        finally:
            service.close()

    def test_server_client_is_configured_with_grpc(self) -> None:
        with patch("search.qdrant.AsyncQdrantClient") as client_class:
            service = QdrantService(QdrantConfig(url="http://qdrant.internal:6333", grpc_port=6334, api_key="k"))
            assert service.client is client_class.return_value

        client_class.assert_called_once()
        kwargs = client_class.call_args.kwargs
        assert kwargs["prefer_grpc"] is True
        assert kwargs["url"] == "http://qdrant.internal:6333"
        assert kwargs["grpc_port"] == 6334
        assert kwargs["api_key"] == "k"
        # The compatibility check is a blocking HTTP call per client.
        assert kwargs["check_compatibility"] is False

    async def test_async_client_calls_are_awaitable(self) -> None:
        result = qdrant_service.client.get_collections()

        assert inspect.isawaitable(result)
        assert isinstance(await result, models.CollectionsResponse)


@pytest.fixture
def mock_async_qdrant():
    """The process's Qdrant client replaced by an AsyncMock, as the chunk service sees it."""
    with patch("search.services.chunks.qdrant_service") as service, patch(
        "search.services.collections.qdrant_service", service
    ):
        client = AsyncMock()
        service.client = client
        service.config = QdrantConfig(url="http://qdrant.internal:6333")
        yield client


def _scored_point(kb_id: str, document_id: str, chunk_index: int, score: float) -> models.ScoredPoint:
    return models.ScoredPoint(
        id=str(uuid4()),
        version=1,
        score=score,
        payload={
            "tenant": _index(kb_id).tenant,
            "kb_id": kb_id,
            "document_id": document_id,
            "chunk_index": chunk_index,
            "content": f"chunk {chunk_index}",
            "title": "A title",
            "char_start": 0,
            "char_end": 10,
            "archived_at": None,
        },
    )


def _index(kb_id: str | None = None):
    from search.services.collections import KbIndex

    return KbIndex(kb_id=kb_id or uuid4(), model="test-model", vector_size=384)


class TestKbIndex:
    def test_an_index_carries_its_tenant_and_search_keys_and_searches_share_one_per_generation(self) -> None:
        from search.services.collections import KbIndex, kb_index, search_key

        kb_id = uuid4()
        index = kb_index(kb_id, "test-model", 384, 2)

        assert index.tenant == f"{kb_id}:2"
        assert (index.live_key, index.archived_key) == tuple(search_key(index.tenant, archived=a) for a in (False, True))
        assert index.search_key(archived=True) == index.archived_key != index.live_key == index.search_key(archived=False)
        assert kb_index(kb_id, "test-model", 384, 2) is index
        assert index == KbIndex(kb_id=kb_id, model="test-model", vector_size=384, generation=2)
        following = index.next_generation(model="test-model", vector_size=384)
        assert (following.tenant, following.generation) == (f"{kb_id}:3", 3)
        assert {following.live_key, following.archived_key}.isdisjoint({index.live_key, index.archived_key})


class TestChunkServiceAsyncOperations:
    """AC-7.7.2: ChunkService awaits scroll, query_points and count on the async client."""

    async def test_get_chunks_uses_native_async_scroll(self, mock_async_qdrant: AsyncMock) -> None:
        from search.services.chunks import ChunkService

        mock_async_qdrant.scroll.return_value = ([], None)

        chunks, next_offset = await ChunkService().get_chunks_by_document(
            kb_id=str(uuid4()), document_id=str(uuid4()), index=_index()
        )

        mock_async_qdrant.scroll.assert_awaited_once()
        assert (chunks, next_offset) == ([], None)

    async def test_search_chunks_uses_native_async_query_points(self, mock_async_qdrant: AsyncMock) -> None:
        from search.services.chunks import ChunkSearch, ChunkService

        kb_id, document_id = str(uuid4()), str(uuid4())
        mock_async_qdrant.scroll.return_value = ([], None)  # no point without its search key
        mock_async_qdrant.query_points.return_value = rest.QueryResponse(
            points=[_scored_point(kb_id, document_id, 3, 0.9)]
        )

        hits = await ChunkService().search_chunks(
            ChunkSearch(indexes=(_index(kb_id),), query_embedding=(0.1,) * 384, limit=10)
        )

        mock_async_qdrant.query_points.assert_awaited_once()
        assert mock_async_qdrant.query_points.call_args.kwargs["limit"] == 10
        assert [(hit.chunk_index, hit.score) for hit in hits] == [(3, 0.9)]

    async def test_count_chunks_uses_native_async_count(self, mock_async_qdrant: AsyncMock) -> None:
        from search.services.chunks import ChunkService

        mock_async_qdrant.count.return_value = models.CountResult(count=42)

        result = await ChunkService().count_chunks(kb_id=str(uuid4()), index=_index())

        mock_async_qdrant.count.assert_awaited_once()
        assert mock_async_qdrant.count.call_args.kwargs["exact"] is True
        assert result == 42

    def test_a_hybrid_search_fuses_the_same_candidates_whatever_limit_it_asks(self) -> None:
        # A search's first results must not depend on the limit asked: a larger limit that brought more
        # candidates would change their fused ranks (CI caught it with 30 candidates a side).
        from search.services.chunks import ChunkSearch
        from search.services.search import MAX_LIMIT

        keywords = models.SparseVector(indices=[1, 2], values=[0.5, 0.5])
        prefetch_limits = {
            limit: [
                p.limit
                for p in ChunkSearch(
                    indexes=(_index(),), query_embedding=(0.1,) * 384, query_keywords=keywords, limit=limit
                ).query_request().prefetch
            ]
            for limit in (1, 5, 10, 30, MAX_LIMIT)
        }

        assert len(set(map(tuple, prefetch_limits.values()))) == 1
        assert all(candidates >= MAX_LIMIT for candidates in prefetch_limits[MAX_LIMIT])

    def test_no_asyncio_to_thread_in_chunk_service(self) -> None:
        from search.services import chunks

        assert "to_thread" not in inspect.getsource(chunks)


class _Embeddings:
    """Stands in for the embedding service: these tests are about how Qdrant is called."""

    model_id = "test-model"

    def __init__(self) -> None:
        self.embed_query = AsyncMock(return_value=[0.1] * 384)


def _search_service(kb_ids):
    from search.services.search import SearchService

    permissions = SimpleNamespace(
        readable_knowledge_bases=AsyncMock(
            return_value=[
                SimpleNamespace(
                    id=kb_id,
                    name="kb",
                    embedding_model="test-model",
                    vector_size=384,
                    index_generation=3,
                    keyword_settings=KeywordSettings().as_dict(),
                )
                for kb_id in kb_ids
            ]
        )
    )
    audit = SimpleNamespace(record_search=AsyncMock())
    return SearchService(permission_service=permissions, audit_service=audit, embeddings=_Embeddings()), audit


class TestSearchServiceAsyncOperations:
    """AC-7.7.3: semantic_search awaits query_points with a query_filter: one query for every KB searched."""

    async def test_semantic_search_of_many_kbs_is_one_native_async_query(self, mock_async_qdrant: AsyncMock) -> None:
        from search.services.collections import search_key

        kb_ids = [uuid4(), uuid4()]
        mock_async_qdrant.scroll.return_value = ([], None)  # every point has its search key
        mock_async_qdrant.query_points.return_value = rest.QueryResponse(points=[])
        service, audit = _search_service(kb_ids)

        results = await service.semantic_search(query="test query", kb_ids=kb_ids, user_id=1, limit=10)

        assert results == []
        mock_async_qdrant.query_points.assert_awaited_once()
        call = mock_async_qdrant.query_points.call_args.kwargs
        assert call["collection_name"] == "kbsite_test-model_384"
        keys = call["query_filter"].must[0]
        live = [search_key(f"{kb_id}:3", archived=False) for kb_id in kb_ids]
        assert (keys.key, keys.match.any) == ("search_key", live)
        assert not call["query_filter"].must_not
        audit.record_search.assert_awaited_once()

    async def test_a_search_encodes_the_query_once_per_keyword_encoder_not_per_kb(
        self, mock_async_qdrant: AsyncMock
    ) -> None:
        from search.keywords import KeywordEncoder

        kb_ids = [uuid4(), uuid4(), uuid4(), uuid4()]
        mock_async_qdrant.scroll.return_value = ([], None)
        mock_async_qdrant.query_points.return_value = rest.QueryResponse(points=[])
        service, _ = _search_service(kb_ids)
        kbs = service.permission_service.readable_knowledge_bases.return_value
        kbs[3].keyword_settings = KeywordSettings(language="german").as_dict()

        with patch.object(KeywordEncoder, "encode_query", autospec=True, side_effect=KeywordEncoder.encode_query) as encode:
            await service.asearch(query="tidal harbours", kb_ids=kb_ids, user_id=1, mode="keyword")

        assert sorted(call.args[0].settings.language for call in encode.call_args_list) == ["english", "german"]

    def test_knowledge_bases_are_searched_together_per_collection_and_keyword_query_in_their_order(self) -> None:
        from search.services.search import SearchMode

        kb_ids = [uuid4() for _ in range(6)]
        service, _ = _search_service(kb_ids)
        kbs = [
            SimpleNamespace(id=kb_id, embedding_model="test-model", vector_size=384, index_generation=3,
                            keyword_settings=settings)
            for kb_id, settings in zip(kb_ids, (None, {}, KeywordSettings().as_dict(), {"language": "german"},
                                                KeywordSettings(language="german").as_dict(), None), strict=True)
        ]  # fmt: skip
        kbs[5].embedding_model = "other-model"

        searches = service._chunk_searches(kbs, mode=SearchMode.HYBRID, query="running tides", vector=[0.1] * 384)

        # Three spellings of the default settings make one keyword query, two of German another; the
        # other model's KB is its own collection.
        assert [[index.kb_id for index in search.indexes] for search in searches] == [
            kb_ids[0:3], kb_ids[3:5], kb_ids[5:6]
        ]  # fmt: skip
        assert [search.collection for search in searches] == ["kbsite_test-model_384"] * 2 + ["kbsite_other-model_384"]
        assert searches[0].query_keywords != searches[1].query_keywords
        assert searches[0].query_keywords == searches[2].query_keywords
        assert all(search.query_embedding == (0.1,) * 384 for search in searches)

    def test_a_semantic_search_makes_no_keyword_query(self) -> None:
        from search.services.search import SearchMode

        kb_ids = [uuid4(), uuid4()]
        service, _ = _search_service(kb_ids)
        kbs = [SimpleNamespace(id=k, embedding_model="test-model", vector_size=384, index_generation=1,
                               keyword_settings={"language": g}) for k, g in zip(kb_ids, ("english", "german"))]  # fmt: skip

        (search,) = service._chunk_searches(kbs, mode=SearchMode.SEMANTIC, query="tides", vector=[0.2] * 384)

        assert [index.kb_id for index in search.indexes] == kb_ids and search.query_keywords is None

    def test_search_service_has_no_to_thread_wrapper(self) -> None:
        from search.services import search

        assert "to_thread" not in inspect.getsource(search)

    async def test_search_with_filters_uses_native_async(self, mock_async_qdrant: AsyncMock) -> None:
        from search.services.collections import search_key

        kb_id = uuid4()
        mock_async_qdrant.scroll.return_value = ([], None)  # every point has its search key
        mock_async_qdrant.query_points.return_value = rest.QueryResponse(points=[])
        service, _ = _search_service([kb_id])

        await service.semantic_search(query="test", kb_ids=[kb_id], user_id=1, limit=10, include_archived=False)
        default_filter = mock_async_qdrant.query_points.call_args.kwargs["query_filter"]
        await service.semantic_search(query="test", kb_ids=[kb_id], user_id=1, limit=10, include_archived=True)
        archived_too_filter = mock_async_qdrant.query_points.call_args.kwargs["query_filter"]

        live, archived = (search_key(f"{kb_id}:3", archived=a) for a in (False, True))
        assert default_filter.must == [models.FieldCondition(key="search_key", match=models.MatchValue(value=live))]
        assert archived_too_filter.must == [
            models.FieldCondition(key="search_key", match=models.MatchAny(any=[live, archived]))
        ]
        assert not default_filter.must_not and not archived_too_filter.must_not

    async def test_a_collection_with_points_from_before_search_keys_is_searched_by_tenant_and_archive_flag(
        self, mock_async_qdrant
    ) -> None:
        """Such points have no search key: the tenant key of the active generation is the way in, as it was."""
        from search.services import chunks

        kb_id = uuid4()
        mock_async_qdrant.scroll.return_value = ([models.Record(id=1, payload=None)], None)  # a point without a key
        mock_async_qdrant.query_points.return_value = rest.QueryResponse(points=[])
        chunks.qdrant_service.config = QdrantConfig()  # embedded
        service, _ = _search_service([kb_id])

        await service.semantic_search(query="test", kb_ids=[kb_id], user_id=1, include_archived=True)
        archived_too_filter = mock_async_qdrant.query_points.call_args.kwargs["query_filter"]
        await service.semantic_search(query="test", kb_ids=[kb_id], user_id=1, include_archived=False)
        default_filter = mock_async_qdrant.query_points.call_args.kwargs["query_filter"]

        tenant = models.FieldCondition(key="tenant", match=models.MatchValue(value=f"{kb_id}:3"))
        assert archived_too_filter.must == [tenant] and not archived_too_filter.must_not
        assert default_filter.must == [tenant]
        assert default_filter.must_not == [models.FieldCondition(key="archived", match=models.MatchValue(value=True))]
        # asked once: the second search knew the answer
        mock_async_qdrant.scroll.assert_awaited_once()


def _calls_in_project():
    for package in PROJECT_PACKAGES:
        for path in (PROJECT_ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Call):
                    yield path, node


def test_nothing_in_the_project_runs_qdrant_on_a_thread_pool() -> None:
    """AC-7.7.3: no asyncio.to_thread or run_in_executor anywhere, so no Qdrant call can hide behind one."""
    offenders = [
        f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}"
        for path, node in _calls_in_project()
        if isinstance(node.func, ast.Attribute) and node.func.attr in {"to_thread", "run_in_executor"}
    ]
    assert offenders == []


def test_no_sync_qdrant_client_in_the_project() -> None:
    """AC-7.7.1: the synchronous QdrantClient is never constructed."""
    offenders = [
        f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}"
        for path, node in _calls_in_project()
        if getattr(node.func, "id", getattr(node.func, "attr", None)) == "QdrantClient"
    ]
    assert offenders == []
