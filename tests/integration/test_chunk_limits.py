"""Chunk settings have a floor that makes sense for the model, and a document a cap on its chunks (issue 25)."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async

from knowledge.models import DocumentStatus, KnowledgeBase
from search.services.chunks import ChunkService
from tests.api.test_api import bearer, client, issue_token
from tests.factories import corpus, make_document, make_kb

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


async def test_a_document_over_the_chunk_cap_fails_saying_so_and_stores_no_chunk(
    test_user, ingestion_service, settings
) -> None:
    settings.CHUNKING = {**settings.CHUNKING, "MAX_CHUNKS_PER_DOCUMENT": 5}
    kb = await sync_to_async(make_kb)(owner=test_user, name="Capped", chunk_size=16, chunk_overlap=0)
    title, text = corpus()[0]
    document = await sync_to_async(make_document)(kb=kb, title=title, text=text)

    document = await ingestion_service.ingest_now(document_id=document.id, worker_id="tests")

    assert document.status == DocumentStatus.FAILED
    assert "more than the 5 one document may have (KBSITE_MAX_CHUNKS_PER_DOCUMENT)" in document.error
    assert document.attempts == 1  # refused for good, not retried
    assert await ChunkService().count_chunks(kb_id=kb.id) == 0


@pytest.mark.parametrize(("method", "path"), [("POST", "/kbs"), ("PATCH", "/kbs/{kb}")])
async def test_a_chunk_size_below_the_floor_answers_422(test_user, method, path) -> None:
    kb = await sync_to_async(make_kb)(owner=test_user, name="Notes", chunk_size=64, chunk_overlap=8)
    headers = bearer(await sync_to_async(issue_token)(test_user))

    response = await client.request(
        method,
        path.format(kb=kb.id),
        json={"name": "Others", "chunk_size": 15, "chunk_overlap": 0},
        headers=headers,
    )

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][-1] == "chunk_size"
    assert "greater than or equal to 16" in response.json()["detail"][0]["msg"]
    assert (await KnowledgeBase.objects.aget(pk=kb.pk)).chunk_size == 64
    assert await KnowledgeBase.objects.acount() == 1
