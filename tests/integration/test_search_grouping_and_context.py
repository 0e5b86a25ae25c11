"""Search grouped one entry per document, and the passage around each chunk, on the real embedder, store and database."""

from __future__ import annotations

from uuid import uuid4

import pytest
from asgiref.sync import sync_to_async

from knowledge.models import Document, DocumentStatus
from knowledge.services.document_texts import SLICES_PER_QUERY, DocumentTextService
from knowledge.services.permissions import PermissionService
from search.errors import InvalidSearchRequest
from search.services.audit import SearchAuditService
from search.services.chunks import ChunkService
from search.services.search import SearchService
from tests.factories import corpus, make_document, make_kb

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

# Paragraphs apart, so chunks without overlap leave the blank lines between them out of every chunk.
PARAGRAPHS = "\n\n".join(text for _, text in corpus()[:2])


@pytest.fixture
def service() -> SearchService:
    return SearchService(PermissionService(), SearchAuditService())


async def kb_with_document(owner, ingestion, *, chunk_overlap: int, text: str = PARAGRAPHS):
    kb = await sync_to_async(make_kb)(owner=owner, name="Passages", chunk_size=24, chunk_overlap=chunk_overlap)
    document = await sync_to_async(make_document)(kb=kb, title="Two subjects", text=text)
    document = await ingestion.ingest_now(document_id=document.id, worker_id="tests")
    assert document.status == DocumentStatus.READY, document.error
    chunks, _ = await ChunkService().get_chunks_by_document(kb_id=kb.id, document_id=document.id, limit=500)
    return kb, document, chunks


async def test_context_of_chunks_without_overlap_keeps_the_text_between_them(
    service, test_user, ingestion_service
) -> None:
    kb, document, chunks = await kb_with_document(test_user, ingestion_service, chunk_overlap=0)
    gaps = [b.char_start - a.char_end for a, b in zip(chunks, chunks[1:])]
    assert max(gaps) > 0 and min(gaps) >= 0  # no overlap, and some text in no chunk at all

    response = await service.asearch(
        query="bees", kb_ids=[kb.id], user_id=test_user.id, mode="semantic", limit=100, context_chunks=1
    )

    assert sorted(r.chunk_index for r in response.results) == list(range(len(chunks)))
    for r in response.results:
        first, last = chunks[max(r.chunk_index - 1, 0)], chunks[min(r.chunk_index + 1, len(chunks) - 1)]
        assert (r.context_start, r.context_end) == (first.char_start, last.char_end)
        assert r.context == document.text[r.context_start : r.context_end]


async def test_a_chunk_whose_stored_text_changed_is_its_own_context(service, test_user, ingestion_service) -> None:
    kb, document, chunks = await kb_with_document(test_user, ingestion_service, chunk_overlap=4)
    # What a search sees while a document's new text waits to be indexed again.
    await Document.objects.filter(pk=document.pk).aupdate(text=document.text.upper())

    response = await service.asearch(
        query="bees", kb_ids=[kb.id], user_id=test_user.id, mode="semantic", limit=3, context_chunks=2
    )

    assert response.results
    for r in response.results:
        assert (r.context, r.context_start, r.context_end) == (r.content, r.char_start, r.char_end)


async def test_grouped_search_names_each_document_once_with_its_best_chunks_and_their_context(
    service, test_user, test_kb_with_documents
) -> None:
    kb, documents = test_kb_with_documents
    texts = {d.id: d.text for d in documents}
    query = "what makes bread rise and how do volcanoes erupt"

    ranking = await service.asearch(query=query, kb_ids=[kb.id], user_id=test_user.id, mode="semantic", limit=100)
    response = await service.asearch(
        query=query,
        kb_ids=[kb.id],
        user_id=test_user.id,
        mode="semantic",
        limit=3,
        group_by_document=True,
        group_size=2,
        context_chunks=1,
    )

    best_documents = list(dict.fromkeys(r.document_id for r in ranking.results))[:3]
    assert [d.document_id for d in response.documents] == best_documents
    for found in response.documents:
        in_ranking = [r.chunk_index for r in ranking.results if r.document_id == found.document_id][:2]
        assert [hit.chunk_index for hit in found.hits] == in_ranking
        for hit in found.hits:
            assert hit.context == texts[hit.document_id][hit.context_start : hit.context_end]
            assert hit.context_start <= hit.char_start < hit.char_end <= hit.context_end
    assert response.results == [d.hits[0] for d in response.documents]


@pytest.mark.parametrize(
    "options",
    [
        {"group_by_document": True, "group_size": 0},
        {"group_by_document": True, "group_size": 11},
        {"group_size": True},
        {"context_chunks": -1},
        {"context_chunks": 6},
        {"context_chunks": 1.0},
    ],
)
async def test_a_group_size_or_context_out_of_range_is_refused_before_searching(
    service, test_user, options
) -> None:
    kb = await sync_to_async(make_kb)(owner=test_user, name="Empty")

    with pytest.raises(InvalidSearchRequest) as refused:
        await service.asearch(query="bees", kb_ids=[kb.id], user_id=test_user.id, **options)

    assert refused.value.detail == {"field": next(name for name in options if name != "group_by_document")}


async def test_text_slices_are_read_for_many_spans_and_none_for_a_missing_document(test_user) -> None:
    kb = await sync_to_async(make_kb)(owner=test_user, name="Texts")
    first = await sync_to_async(make_document)(kb=kb, title="One", text="abcdefghij")
    second = await sync_to_async(make_document)(kb=kb, title="Two", text="0123456789")
    spans = [(first.id if i % 2 else second.id, i % 10, i % 10 + 3) for i in range(SLICES_PER_QUERY + 5)]
    spans += [(uuid4(), 0, 3), (first.id, 4, 4)]

    slices = await DocumentTextService().text_slices(spans=spans)

    texts = {first.id: first.text, second.id: second.text}
    assert slices == [texts[d][start:end] if d in texts else None for d, start, end in spans]
