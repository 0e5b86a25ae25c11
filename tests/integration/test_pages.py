"""Page ranges end to end: a paged file through the pipeline, into Qdrant, the API, the pages, reindexing."""

from __future__ import annotations

import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from ninja.testing import TestAsyncClient

from kbsite.api import api
from knowledge.ingestion.worker import IngestionWorker
from knowledge.models import Document, DocumentStatus
from knowledge.services.reindex import ReindexService
from knowledge.services.tokens import ApiTokenService
from search.services.chunks import ChunkService, StoredChunk
from tests.factories import corpus_pages, make_kb
from tests.files import make_docx, make_pdf

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

client = TestAsyncClient(api)


# Three pages on three subjects.
PAGES = corpus_pages("Honeybee", "Tides", "Volcanoes")


def expected_pages(text: str, chunk: StoredChunk) -> tuple[int, int]:
    """The pages a chunk spans, from where each page's first words sit in the text (not from page_starts)."""
    starts = [text.index(page[:20]) for page in PAGES]
    first = sum(1 for start in starts if start <= chunk.char_start)
    last = sum(1 for start in starts if start < chunk.char_end)
    return first, last


async def all_chunks(document: Document) -> list[StoredChunk]:
    chunks, _ = await ChunkService().get_chunks_by_document(
        kb_id=document.knowledge_base_id, document_id=document.pk, limit=500
    )
    return chunks


async def upload_and_process(kb, headers, name: str, data: bytes, ingestion) -> Document:
    response = await client.post(
        f"/kbs/{kb.id}/documents",
        FILES={"file": SimpleUploadedFile(name, data)},
        content_type="multipart/form-data",
        headers=headers,
    )
    assert response.status_code == 202, response.json()
    await IngestionWorker(service=ingestion, poll_seconds=0.05).run(until_idle=True)
    document = await Document.objects.aget(pk=response.json()["id"])
    assert document.status == DocumentStatus.READY, document.error
    return document


@pytest.fixture
def kb(test_user):
    return make_kb(owner=test_user, name="Paged", chunk_size=48, chunk_overlap=8)


@pytest.fixture
def headers(test_user):
    return {"Authorization": f"Bearer {ApiTokenService().create_token(user=test_user, name='tests').secret}"}


@pytest.fixture
async def pdf_document(kb, headers, ingestion_service) -> Document:
    return await upload_and_process(kb, headers, "nature.pdf", make_pdf(PAGES), ingestion_service)


async def test_a_pdfs_chunks_in_qdrant_carry_the_pages_they_come_from(pdf_document) -> None:
    chunks = await all_chunks(pdf_document)

    assert pdf_document.page_starts is not None and len(pdf_document.page_starts) == 3
    assert [(c.page_start, c.page_end) for c in chunks] == [
        expected_pages(pdf_document.text, c) for c in chunks
    ]
    # Every page has chunks of its own, and the overlap makes some chunk run from one page onto the next.
    assert {c.page_start for c in chunks} == {1, 2, 3}
    assert any(c.page_end == c.page_start + 1 for c in chunks)


async def test_api_search_results_and_the_chunks_endpoint_show_the_page(pdf_document, kb, headers) -> None:
    searched = await client.post(
        "/search",
        json={"query": "why high tide comes later each day", "kb_ids": [str(kb.id)], "limit": 1},
        headers=headers,
    )
    listed = await client.get(f"/kbs/{kb.id}/documents/{pdf_document.pk}/chunks?limit=500", headers=headers)

    best = searched.json()["results"][0]
    assert (best["page_start"], best["page_end"]) == (2, 2)
    stored = {c.chunk_index: (c.page_start, c.page_end) for c in await all_chunks(pdf_document)}
    assert {c["chunk_index"]: (c["page_start"], c["page_end"]) for c in listed.json()["items"]} == stored


async def test_reindexing_keeps_the_pages_without_the_file(pdf_document, kb, ingestion_service) -> None:
    before = [(c.chunk_index, c.page_start, c.page_end) for c in await all_chunks(pdf_document)]
    # Smaller chunks this time: the pages are worked out again from the stored page starts.
    await kb.__class__.objects.filter(pk=kb.pk).aupdate(chunk_size=24, chunk_overlap=4)
    reindex = ReindexService(ingestion=ingestion_service)

    in_place = await reindex.reindex_in_place(document_ids=[pdf_document.pk], worker_id="tests")
    document = await Document.objects.aget(pk=pdf_document.pk)
    after = await all_chunks(document)

    assert in_place.indexed == 1 and document.page_starts == pdf_document.page_starts
    assert len(after) > len(before)
    assert [(c.page_start, c.page_end) for c in after] == [expected_pages(document.text, c) for c in after]

    rebuilt = await reindex.rebuild(kb=await kb.__class__.objects.aget(pk=kb.pk), worker_id="tests")

    assert rebuilt.indexed == 1
    assert [(c.chunk_index, c.page_start, c.page_end) for c in await all_chunks(document)] == [
        (c.chunk_index, c.page_start, c.page_end) for c in after
    ]


async def test_a_word_documents_explicit_page_break_starts_page_two(kb, headers, ingestion_service) -> None:
    bees, tides = PAGES[0].replace("\n", " "), PAGES[1].replace("\n", " ")

    def build(document) -> None:
        document.add_paragraph(bees)
        document.add_page_break()
        document.add_paragraph(tides)

    document = await upload_and_process(kb, headers, "nature.docx", make_docx(build), ingestion_service)
    chunks = await all_chunks(document)

    assert document.page_starts == [0, document.text.index(tides)]
    assert chunks[0].page_start == 1 and chunks[-1].page_end == 2
    for chunk in chunks:
        on_one = chunk.content in bees or chunk.content in tides
        assert (chunk.page_start == chunk.page_end) == on_one, chunk


async def test_a_word_document_without_page_breaks_and_a_text_file_have_no_pages(
    kb, headers, ingestion_service
) -> None:
    docx = make_docx(lambda document: document.add_paragraph(PAGES[0].replace("\n", " ")))

    for name, data in [("bees.docx", docx), ("bees.txt", PAGES[1].encode())]:
        document = await upload_and_process(kb, headers, name, data, ingestion_service)

        assert document.page_starts is None
        assert {(c.page_start, c.page_end) for c in await all_chunks(document)} == {(None, None)}


async def test_the_search_page_the_admin_and_the_document_page_name_the_pages(
    pdf_document, test_user, async_client
) -> None:
    test_user.is_staff = test_user.is_superuser = True
    await test_user.asave()
    await async_client.aforce_login(test_user)

    results = await async_client.get(
        reverse("web:search"), {"q": "why high tide comes later each day", "limit": 1}
    )
    admin = await async_client.get(reverse("admin:knowledge_document_change", args=[pdf_document.pk]))
    start, end = re.search(r'href="[^"]*\?start=(\d+)&amp;end=(\d+)&amp;', results.content.decode()).groups()
    passage = await async_client.get(reverse("web:document", args=[pdf_document.pk]), {"start": start, "end": end})

    assert '<span class="pages">p. 2</span>' in results.content.decode()
    labels = [c.pages for c in await all_chunks(pdf_document)]
    assert "pp. 1–2" in labels
    assert all(f'<td class="pages">{label}</td>' in admin.content.decode() for label in labels)
    assert f'(<span class="pages">p. 2</span>, characters {start}–{end}) is marked' in passage.content.decode()
