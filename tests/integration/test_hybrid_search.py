"""Search modes on the real embedder and embedded Qdrant: hybrid by default, semantic, keyword; many KBs in one query."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async

from knowledge.models import DocumentStatus, KnowledgeBase
from knowledge.services.permissions import PermissionService
from search.errors import InvalidFilter, InvalidSearchMode
from search.keywords import KeywordSettings
from search.services.audit import SearchAuditService
from search.services.chunks import ChunkSearch, ChunkService
from search.services.search import SearchMode, SearchService
from tests.factories import make_document, make_kb

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

# A part number means nothing to the embedder; only the words match it.
NOTES = {
    "Pump manual": "Replace the impeller of pump model QX-4471 every two thousand hours of running. "
    "Use the gasket kit shipped with the pump.",
    "Garden pond": "A small pump keeps the water of a garden pond moving, so algae do not take over "
    "and the fish get oxygen.",
    "Tides": "Tides are the rise and fall of the sea caused by the pull of the Moon and the Sun.",
    "Bees": "A forager returning to the hive dances to tell her sisters where the flowers are.",
}


async def kb_with_notes(owner, ingestion_service, *, name: str | None = None) -> KnowledgeBase:
    kb = await sync_to_async(make_kb)(owner=owner, name=name or f"Workshop of {owner.username}")
    for title, text in NOTES.items():
        document = await sync_to_async(make_document)(kb=kb, title=title, text=text)
        document = await ingestion_service.ingest_now(document_id=document.id, worker_id="tests")
        assert document.status == DocumentStatus.READY, document.error
    return await KnowledgeBase.objects.aget(pk=kb.pk)


class CountingChunkService(ChunkService):
    """The real chunk service, keeping the requests it sends to Qdrant."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[ChunkSearch] = []

    async def search_chunks(self, request: ChunkSearch):
        self.requests.append(request)
        return await super().search_chunks(request)


@pytest.fixture
def service() -> SearchService:
    return SearchService(PermissionService(), SearchAuditService())


async def test_hybrid_is_the_default_and_finds_a_part_number_by_its_words(
    service, test_user, ingestion_service
) -> None:
    kb = await kb_with_notes(test_user, ingestion_service)

    response = await service.asearch(query="QX-4471 impeller", kb_ids=[kb.id], user_id=test_user.id, limit=3)

    assert response.mode == SearchMode.HYBRID and response.notices == []
    best = response.results[0]
    assert best.title == "Pump manual"
    assert {best.content[start:end] for start, end in best.highlights} >= {"QX", "4471", "impeller"}


async def test_keyword_mode_ranks_by_bm25_and_only_chunks_holding_a_query_word(
    service, test_user, ingestion_service
) -> None:
    kb = await kb_with_notes(test_user, ingestion_service)

    response = await service.asearch(query="pump gasket", kb_ids=[kb.id], user_id=test_user.id, mode="keyword")

    assert response.mode == SearchMode.KEYWORD
    assert [r.title for r in response.results] == ["Pump manual", "Garden pond"]
    assert all(r.highlights for r in response.results)
    assert response.results[0].score > response.results[1].score > 0


async def test_semantic_mode_finds_meaning_without_shared_words(service, test_user, ingestion_service) -> None:
    kb = await kb_with_notes(test_user, ingestion_service)

    semantic = await service.asearch(
        query="why does the ocean go up and down", kb_ids=[kb.id], user_id=test_user.id, mode="semantic", limit=1
    )
    keyword = await service.asearch(
        query="why does the ocean go up and down", kb_ids=[kb.id], user_id=test_user.id, mode="keyword", limit=1
    )

    assert semantic.mode == SearchMode.SEMANTIC and semantic.results[0].title == "Tides"
    assert -1 <= semantic.results[0].score <= 1
    assert [r.title for r in keyword.results] != ["Tides"]


async def test_every_mode_leaves_archived_documents_out(service, test_user, ingestion_service) -> None:
    kb = await kb_with_notes(test_user, ingestion_service)
    pump = await kb.documents.aget(title="Pump manual")
    await ingestion_service.chunk_service.set_archived(
        kb_id=kb.id, document_id=pump.id, archived_at=pump.created_at
    )

    for mode in SearchMode:
        response = await service.asearch(query="QX-4471 pump", kb_ids=[kb.id], user_id=test_user.id, mode=mode)
        assert "Pump manual" not in [r.title for r in response.results], mode
        archived_too = await service.asearch(
            query="QX-4471 pump", kb_ids=[kb.id], user_id=test_user.id, mode=mode, include_archived=True
        )
        assert "Pump manual" in [r.title for r in archived_too.results], mode


async def test_a_bad_mode_and_a_threshold_in_keyword_mode_are_refused(service, test_user, ingestion_service) -> None:
    kb = await kb_with_notes(test_user, ingestion_service)

    with pytest.raises(InvalidSearchMode, match="hybrid, semantic, keyword"):
        await service.asearch(query="pump", kb_ids=[kb.id], user_id=test_user.id, mode="fuzzy")
    with pytest.raises(InvalidFilter, match="keyword mode"):
        await service.asearch(query="pump", kb_ids=[kb.id], user_id=test_user.id, mode="keyword", score_threshold=0.2)


async def test_a_kb_from_before_hybrid_search_takes_the_default_keywords_on_its_next_write(
    service, test_user, ingestion_service
) -> None:
    kb = await sync_to_async(make_kb)(owner=test_user, name="Old workshop")
    await KnowledgeBase.objects.filter(pk=kb.pk).aupdate(keyword_settings=None)
    document = await sync_to_async(make_document)(kb=kb, title="Pump manual", text=NOTES["Pump manual"])
    await ingestion_service.ingest_now(document_id=document.id, worker_id="tests")

    await kb.arefresh_from_db()
    assert kb.keyword_settings == KeywordSettings().as_dict()
    response = await service.asearch(query="QX-4471 impeller", kb_ids=[kb.id], user_id=test_user.id, mode="keyword")
    assert response.mode == SearchMode.KEYWORD and response.notices == []
    assert [r.title for r in response.results] == ["Pump manual"]


@pytest.mark.parametrize("mode", list(SearchMode))
async def test_a_search_across_kbs_is_one_engine_query_over_their_tenant_keys(
    test_user, ingestion_service, mode
) -> None:
    first = await kb_with_notes(test_user, ingestion_service, name="First workshop")
    second = await kb_with_notes(test_user, ingestion_service, name="Second workshop")
    chunks = CountingChunkService()
    counting = SearchService(PermissionService(), SearchAuditService(), chunk_service=chunks)

    response = await counting.asearch(
        query="pump gasket", kb_ids=[first.id, second.id], user_id=test_user.id, mode=mode, limit=8
    )

    assert [len(request.indexes) for request in chunks.requests] == [2]
    assert {r.kb_id for r in response.results} == {first.id, second.id}
    # The same notes in both: each chunk comes back once per KB, side by side. Cosine and BM25 give
    # both copies one score; fused ranks part a tie by one place, so hybrid scores differ a little.
    by_chunk: dict[tuple[str, int], list[float]] = {}
    for result in response.results:
        by_chunk.setdefault((result.title, result.chunk_index), []).append(result.score)
    assert all(len(scores) == 2 for scores in by_chunk.values())
    if mode != SearchMode.HYBRID:
        assert all(scores[0] == pytest.approx(scores[1]) for scores in by_chunk.values())


async def test_leaving_out_kb_ids_searches_every_kb_the_user_may_read_and_no_other(
    service, test_user, other_user, ingestion_service
) -> None:
    mine = await kb_with_notes(test_user, ingestion_service)
    theirs = await kb_with_notes(other_user, ingestion_service)

    response = await service.asearch(query="pump gasket", kb_ids=None, user_id=test_user.id)

    assert response.results and {r.kb_id for r in response.results} == {mine.id}
    assert theirs.id not in {r.kb_id for r in response.results}
    assert response.notices == []


async def test_every_readable_kb_is_capped_by_name_with_a_notice(
    service, test_user, ingestion_service, monkeypatch
) -> None:
    from search.services import search

    monkeypatch.setattr(search, "MAX_KNOWLEDGE_BASES", 2)
    first = await kb_with_notes(test_user, ingestion_service)
    await sync_to_async(make_kb)(owner=test_user, name="Zebra notes")
    await sync_to_async(make_kb)(owner=test_user, name="Yak notes")

    response = await service.asearch(query="pump gasket", kb_ids=None, user_id=test_user.id)

    assert {r.kb_id for r in response.results} == {first.id}
    assert any("more than 2 knowledge bases" in notice for notice in response.notices)


async def test_a_user_who_may_read_nothing_gets_no_results_and_a_notice(service, other_user) -> None:
    response = await service.asearch(query="pump", kb_ids=None, user_id=other_user.id)

    assert response.results == [] and "no knowledge base" in response.notices[0]
