"""Story tests 2.5, 2.6, 3.4, 3.5 and what the story missed, on the real database, embedded Qdrant and embedder."""

from __future__ import annotations

import asyncio
import threading
from uuid import uuid4

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from knowledge.models import Document, KnowledgeBase, Role
from knowledge.services.permissions import PermissionService
from search.errors import (
    EmbeddingModelMismatch,
    EmptyQuery,
    InvalidFilter,
    InvalidKnowledgeBaseIds,
    InvalidLimit,
    KnowledgeBaseNotFound,
    QueryTooLong,
    UnknownUser,
)
from search.models import SearchAudit
from search.services.audit import SearchAuditService
from search.services.chunks import ChunkSearch, ChunkService
from search.services.collections import CollectionService, KbIndex
from search.services.search import SearchService
from tests.factories import add_member, make_user

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

BEE_QUERY = "how does a forager tell the others where the flowers are"
VOLCANO_QUERY = "what happens when magma rises and a volcano erupts"


class CountingChunkService(ChunkService):
    """The real chunk service, counting the searches it sends to Qdrant."""

    def __init__(self) -> None:
        super().__init__()
        self.searched: list[ChunkSearch] = []

    async def search_chunks(self, request):
        self.searched.append(request)
        return await super().search_chunks(request)


def search_service(chunk_service: ChunkService | None = None) -> SearchService:
    return SearchService(PermissionService(), SearchAuditService(), chunk_service=chunk_service)


def by_title(documents, word: str) -> Document:
    return next(document for document in documents if word.lower() in document.title.lower())


async def audit_count() -> int:
    return await SearchAudit.objects.acount()


class TestChunkServiceAsyncIntegration:
    async def test_scroll_chunks_returns_the_documents_chunks_in_order(self, test_kb_with_documents) -> None:
        """2.5"""
        kb, documents = test_kb_with_documents
        document = documents[0]

        chunks, next_offset = await ChunkService().get_chunks_by_document(
            kb_id=str(kb.id), document_id=str(document.id), limit=500
        )

        assert next_offset is None
        assert len(chunks) == document.chunk_count > 1
        assert [chunk.chunk_index for chunk in chunks] == list(range(document.chunk_count))
        for chunk in chunks:
            assert chunk.document_id == document.id and chunk.kb_id == kb.id
            assert chunk.content == document.text[chunk.char_start : chunk.char_end]

    async def test_concurrent_chunk_operations_agree(self, test_kb_with_documents) -> None:
        """2.6"""
        kb, documents = test_kb_with_documents
        service = ChunkService()

        results = await asyncio.gather(
            *(service.get_chunks_by_document(kb_id=str(kb.id), document_id=str(documents[0].id)) for _ in range(10))
        )

        assert len(results) == 10
        assert all(result == results[0] for result in results)
        assert results[0][0]

    async def test_pages_walk_every_chunk_once(self, test_kb_with_documents) -> None:
        kb, documents = test_kb_with_documents
        document = max(documents, key=lambda d: d.chunk_count)
        service, seen, offset = ChunkService(), [], None

        while True:
            page, offset = await service.get_chunks_by_document(
                kb_id=kb.id, document_id=document.id, offset=offset, limit=4
            )
            assert len(page) <= 4
            seen.extend(chunk.chunk_index for chunk in page)
            if offset is None:
                break

        assert seen == list(range(document.chunk_count))

    async def test_counts_match_the_documents(self, test_kb_with_documents) -> None:
        kb, documents = test_kb_with_documents
        service = ChunkService()

        assert await service.count_chunks(kb_id=kb.id) == sum(d.chunk_count for d in documents)
        assert await service.count_chunks(kb_id=kb.id, document_id=documents[1].id) == documents[1].chunk_count

    async def test_a_kb_that_is_not_there_or_has_no_collection_reads_as_empty(self, test_user) -> None:
        kb_id, service = uuid4(), ChunkService()
        index = KbIndex(kb_id=kb_id, model="no-such-model", vector_size=384)

        assert await service.count_chunks(kb_id=kb_id) == 0
        assert await service.get_chunks_by_document(kb_id=kb_id, document_id=uuid4()) == ([], None)
        assert await service.count_chunks(kb_id=kb_id, index=index) == 0
        assert await service.search_chunks(ChunkSearch(indexes=(index,), query_embedding=(0.1,) * 384)) == []

    async def test_indexing_again_replaces_chunks_instead_of_adding(
        self, test_kb_with_documents, ingestion_service
    ) -> None:
        kb, documents = test_kb_with_documents
        before = await ChunkService().count_chunks(kb_id=kb.id)

        await ingestion_service.ingest_now(document_id=documents[2].id, worker_id="tests")

        assert await ChunkService().count_chunks(kb_id=kb.id) == before

    async def test_a_shorter_text_leaves_no_old_chunks_behind(self, test_kb_with_documents, ingestion_service) -> None:
        kb, documents = test_kb_with_documents
        document = documents[3]
        await Document.objects.filter(pk=document.pk).aupdate(text=document.text[:300])

        shorter = await ingestion_service.ingest_now(document_id=document.id, worker_id="tests")

        assert 0 < shorter.chunk_count < document.chunk_count
        assert await ChunkService().count_chunks(kb_id=kb.id, document_id=document.id) == shorter.chunk_count

    async def test_threads_with_their_own_loops_share_the_embedded_store_safely(self, test_kb_with_documents) -> None:
        kb, documents = test_kb_with_documents
        service, errors, counts = ChunkService(), [], []

        def hammer() -> None:
            async def run() -> None:
                for document in documents:
                    chunks, _ = await service.get_chunks_by_document(kb_id=kb.id, document_id=document.id, limit=500)
                    counts.append(len(chunks) == document.chunk_count)

            try:
                asyncio.run(run())
            except Exception as exc:  # collected for the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert errors == []
        assert counts == [True] * (4 * len(documents))


class TestSearchServiceAsyncIntegration:
    async def test_semantic_search_finds_the_relevant_document(self, test_kb_with_indexed_chunks, test_user) -> None:
        """3.4"""
        kb = test_kb_with_indexed_chunks

        results = await search_service().semantic_search(
            query=BEE_QUERY, kb_ids=[str(kb.id)], user_id=test_user.id, limit=5
        )

        assert len(results) == 5
        assert "bee" in results[0].title.lower()
        assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)
        document = await Document.objects.aget(pk=results[0].document_id)
        assert results[0].content == document.text[results[0].char_start : results[0].char_end]
        assert results[0].kb_id == kb.id

    async def test_concurrent_searches_return_what_each_would_alone(
        self, test_kb_with_indexed_chunks, test_user
    ) -> None:
        """3.5: fifty searches at once, micro-batched, each get their own answer."""
        kb, service = test_kb_with_indexed_chunks, search_service()
        topics = ["bees", "bread", "volcanoes", "networks", "plants", "music", "bicycles", "tides", "sun", "rain"]
        queries = [f"{topics[i % len(topics)]} question number {i}" for i in range(50)]

        alone = [
            await service.semantic_search(query=query, kb_ids=[kb.id], user_id=test_user.id, limit=3)
            for query in queries[:10]
        ]
        together = await asyncio.gather(
            *(service.semantic_search(query=query, kb_ids=[kb.id], user_id=test_user.id, limit=3) for query in queries)
        )

        assert len(together) == 50 and all(len(results) == 3 for results in together)
        for one, other in zip(alone, together[:10]):
            assert [(r.document_id, r.chunk_index) for r in one] == [(r.document_id, r.chunk_index) for r in other]
            assert [r.score for r in one] == pytest.approx([r.score for r in other], abs=1e-4)
        assert await audit_count() == 60

    async def test_archived_chunks_are_excluded_by_default_and_included_on_request(
        self, test_kb_with_documents, test_user
    ) -> None:
        kb, documents = test_kb_with_documents
        bees = by_title(documents, "bee")
        await ChunkService().set_archived(kb_id=kb.id, document_id=bees.id, archived_at=timezone.now())
        service = search_service()

        default = await service.semantic_search(query=BEE_QUERY, kb_ids=[kb.id], user_id=test_user.id, limit=10)
        everything = await service.semantic_search(
            query=BEE_QUERY, kb_ids=[kb.id], user_id=test_user.id, limit=10, include_archived=True
        )

        assert bees.id not in {r.document_id for r in default}
        assert everything[0].document_id == bees.id

        await ChunkService().set_archived(kb_id=kb.id, document_id=bees.id, archived_at=None)
        restored = await service.semantic_search(query=BEE_QUERY, kb_ids=[kb.id], user_id=test_user.id, limit=10)
        assert restored[0].document_id == bees.id

    async def test_a_user_without_membership_is_refused_and_nothing_is_searched(
        self, test_kb_with_documents, other_user
    ) -> None:
        kb, _ = test_kb_with_documents
        counting = CountingChunkService()

        with pytest.raises(KnowledgeBaseNotFound) as refused:
            await search_service(counting).semantic_search(query=BEE_QUERY, kb_ids=[kb.id], user_id=other_user.id)

        assert str(kb.id) in refused.value.message
        assert counting.searched == []
        assert await audit_count() == 0

    async def test_one_unreadable_kb_fails_the_whole_search(self, test_kb_with_documents, test_user, other_user) -> None:
        kb, _ = test_kb_with_documents
        foreign = await sync_to_async(KnowledgeBase.objects.create)(
            name="Bob's", slug="bobs", owner=other_user, embedding_model=kb.embedding_model, vector_size=384
        )
        counting = CountingChunkService()

        with pytest.raises(KnowledgeBaseNotFound) as refused:
            await search_service(counting).semantic_search(
                query=BEE_QUERY, kb_ids=[kb.id, foreign.id, uuid4()], user_id=test_user.id
            )

        assert len(refused.value.detail["kb_ids"]) == 2 and str(foreign.id) in refused.value.detail["kb_ids"]
        assert counting.searched == []
        assert await audit_count() == 0

    async def test_members_and_superusers_may_search(self, test_kb_with_documents) -> None:
        kb, _ = test_kb_with_documents
        reader = await sync_to_async(make_user)(username="reader")
        await sync_to_async(add_member)(kb, reader, Role.READER)
        admin = await sync_to_async(make_user)(username="root", superuser=True)

        for user in (reader, admin):
            results = await search_service().semantic_search(query=BEE_QUERY, kb_ids=[kb.id], user_id=user.id)
            assert results

    async def test_each_search_writes_one_audit_row(self, test_kb_with_documents, test_user) -> None:
        kb, _ = test_kb_with_documents

        results = await search_service().semantic_search(
            query=f"  {VOLCANO_QUERY}  ", kb_ids=[str(kb.id)], user_id=test_user.id, limit=7
        )

        rows = [row async for row in SearchAudit.objects.all()]
        assert len(rows) == 1
        row = rows[0]
        assert (row.user_id, row.query, row.kb_ids, row.result_count) == (
            test_user.id,
            VOLCANO_QUERY,
            [str(kb.id)],
            len(results),
        )
        assert row.latency_ms > 0

    async def test_results_from_several_kbs_are_merged_by_score(self, test_user, ingestion_service) -> None:
        from tests.conftest import index_corpus

        first, _ = await index_corpus(owner=test_user, ingestion=ingestion_service, chunk_size=64, chunk_overlap=12)
        second = await sync_to_async(KnowledgeBase.objects.create)(
            name="Copy", slug="copy", owner=test_user, embedding_model=first.embedding_model, vector_size=384,
            chunk_size=100, chunk_overlap=0,
        )
        for document in [d async for d in Document.objects.filter(knowledge_base=first)]:
            copy = await Document.objects.acreate(
                knowledge_base=second, title=document.title, text=document.text, content_hash=document.content_hash
            )
            await ingestion_service.ingest_now(document_id=copy.id, worker_id="tests")

        results = await search_service().semantic_search(
            query=VOLCANO_QUERY, kb_ids=[first.id, second.id], user_id=test_user.id, limit=12
        )

        assert {r.kb_id for r in results} == {first.id, second.id}
        assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)
        assert all("volcano" in r.title.lower() for r in results[:4])
        for kb in (first, second):
            await CollectionService().delete_knowledge_base(kb_id=kb.id)

    async def test_document_and_score_filters_narrow_the_results(self, test_kb_with_documents, test_user) -> None:
        kb, documents = test_kb_with_documents
        tides = by_title(documents, "tide")
        service = search_service()

        only_tides = await service.semantic_search(
            query=BEE_QUERY, kb_ids=[kb.id], user_id=test_user.id, document_ids=[str(tides.id)]
        )
        confident = await service.semantic_search(
            query=BEE_QUERY, kb_ids=[kb.id], user_id=test_user.id, limit=100, score_threshold=0.4
        )

        assert only_tides and {r.document_id for r in only_tides} == {tides.id}
        assert confident and all(r.score >= 0.4 for r in confident)
        assert len(confident) < await ChunkService().count_chunks(kb_id=kb.id)

    async def test_a_kb_indexed_with_another_model_asks_for_a_reindex(self, test_kb_with_documents, test_user) -> None:
        kb, _ = test_kb_with_documents
        await KnowledgeBase.objects.filter(pk=kb.pk).aupdate(embedding_model="some-older-model")

        with pytest.raises(EmbeddingModelMismatch) as stale:
            await search_service().semantic_search(query=BEE_QUERY, kb_ids=[kb.id], user_id=test_user.id)

        assert "reindex" in stale.value.message and "--recreate" in stale.value.message


class TestSearchInputErrors:
    @pytest.mark.parametrize(
        ("arguments", "error"),
        [
            ({"query": ""}, EmptyQuery),
            ({"query": "   \n"}, EmptyQuery),
            ({"query": None}, EmptyQuery),
            ({"query": "x" * 2001}, QueryTooLong),
            ({"limit": 0}, InvalidLimit),
            ({"limit": 101}, InvalidLimit),
            ({"limit": "10"}, InvalidLimit),
            ({"limit": True}, InvalidLimit),
            ({"kb_ids": []}, InvalidKnowledgeBaseIds),
            ({"kb_ids": "3f0e…"}, InvalidKnowledgeBaseIds),
            ({"kb_ids": ["not-a-uuid"]}, InvalidKnowledgeBaseIds),
            ({"document_ids": ["nope"]}, InvalidFilter),
            ({"score_threshold": 1.5}, InvalidFilter),
            ({"user_id": 987654}, UnknownUser),
            ({"user_id": "alice"}, UnknownUser),
        ],
    )
    async def test_bad_input_raises_a_clear_error_and_is_not_audited(
        self, test_kb_with_documents, test_user, arguments, error
    ) -> None:
        kb, _ = test_kb_with_documents
        call = {"query": BEE_QUERY, "kb_ids": [kb.id], "user_id": test_user.id, "limit": 5, **arguments}

        with pytest.raises(error) as raised:
            await search_service().semantic_search(**call)

        assert raised.value.message
        assert await audit_count() == 0

    async def test_an_inactive_user_is_unknown(self, test_kb_with_documents, test_user) -> None:
        kb, _ = test_kb_with_documents
        test_user.is_active = False
        await test_user.asave()

        with pytest.raises(UnknownUser):
            await search_service().semantic_search(query=BEE_QUERY, kb_ids=[kb.id], user_id=test_user.id)
