"""POST /kbs/{id}/chunk-preview: the chunks a file would make, read in the sandbox, with nothing stored."""

from __future__ import annotations

import asyncio
import re

import pytest
from asgiref.sync import sync_to_async
from django.core.files.uploadedfile import SimpleUploadedFile
from ninja.testing import TestAsyncClient

from kbsite.api import api
from knowledge.ingestion.preview import PREVIEW_CHUNKS
from knowledge.ingestion.worker import IngestionWorker
from knowledge.models import Document, DocumentSource, DocumentStatus, Role
from knowledge.services.tokens import ApiTokenService
from search.services.chunks import ChunkService
from search.services.collections import CollectionService
from tests.factories import add_member, corpus, corpus_pages, make_kb, make_user
from tests.files import blank_pdf, make_pdf
from tests.hostile import docx_with_a_lying_index, pdf_of_pages_sharing_one_slow_stream

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

client = TestAsyncClient(api)
NOWHERE = "0b1e2c3d-0000-4000-8000-000000000000"
PAGES = corpus_pages("Honeybee", "Tides", "Volcanoes")
LONG_TEXT = "\n\n".join(text for _, text in corpus()[:3]).encode()


def bearer(user) -> dict[str, str]:
    return {"Authorization": f"Bearer {ApiTokenService().create_token(user=user, name='tests').secret}"}


@pytest.fixture
def kb(test_user):
    return make_kb(owner=test_user, name="Preview", chunk_size=48, chunk_overlap=8)


@pytest.fixture
def editor_headers(kb):
    user = make_user(username="eddie")
    add_member(kb, user, Role.EDITOR)
    return bearer(user)


@pytest.fixture
def reader_headers(kb):
    user = make_user(username="rita")
    add_member(kb, user, Role.READER)
    return bearer(user)


@pytest.fixture
def stranger_headers(other_user):
    return bearer(other_user)


async def preview(kb_id, headers, name: str, data: bytes, **form):
    return await client.post(
        f"/kbs/{kb_id}/chunk-preview",
        {key: str(value) for key, value in form.items()},
        FILES={"file": SimpleUploadedFile(name, data)},
        content_type="multipart/form-data",
        headers=headers,
    )


async def assert_nothing_stored(kb) -> None:
    assert await Document.objects.filter(knowledge_base=kb).acount() == 0
    assert await DocumentSource.objects.acount() == 0
    assert not await CollectionService().holds_points(kb_id=kb.id)
    assert await ChunkService().count_chunks(kb_id=kb.id) == 0


async def test_an_editor_previews_a_pdfs_chunks_with_their_pages_and_nothing_is_stored(
    kb, editor_headers
) -> None:
    response = await preview(kb.id, editor_headers, "nature.pdf", make_pdf(PAGES, title="Nature notes"))

    assert response.status_code == 200, response.json()
    body = response.json()
    assert (body["filename"], body["format"], body["title"]) == ("nature.pdf", "pdf", "Nature notes")
    assert (body["chunk_size"], body["chunk_overlap"], body["page_count"]) == (48, 8, 3)
    assert body["chunk_count"] == len(body["chunks"]) > 3
    assert [chunk["index"] for chunk in body["chunks"]] == list(range(body["chunk_count"]))
    assert all(0 < chunk["token_count"] <= 48 for chunk in body["chunks"])
    assert body["chunks"][0]["page_start"] == 1 and body["chunks"][-1]["page_end"] == 3
    assert all(chunk["page_start"] <= chunk["page_end"] for chunk in body["chunks"])
    await assert_nothing_stored(kb)


async def test_the_preview_shows_the_chunks_ingestion_then_makes(
    kb, editor_headers, ingestion_service
) -> None:
    pdf = make_pdf(PAGES)
    previewed = (await preview(kb.id, editor_headers, "nature.pdf", pdf)).json()["chunks"]

    uploaded = await client.post(
        f"/kbs/{kb.id}/documents",
        FILES={"file": SimpleUploadedFile("nature.pdf", pdf)},
        content_type="multipart/form-data",
        headers=editor_headers,
    )
    await IngestionWorker(service=ingestion_service, poll_seconds=0.05).run(until_idle=True)
    document = await Document.objects.aget(pk=uploaded.json()["id"])
    stored, _ = await ChunkService().get_chunks_by_document(kb_id=kb.id, document_id=document.pk, limit=500)

    assert document.status == DocumentStatus.READY
    assert [
        (c["index"], c["char_start"], c["char_end"], c["page_start"], c["page_end"], c["text"])
        for c in previewed
    ] == [(c.chunk_index, c.char_start, c.char_end, c.page_start, c.page_end, c.content) for c in stored]


async def test_given_chunk_settings_override_the_kbs_and_at_most_fifty_chunks_come_back(
    kb, editor_headers
) -> None:
    response = await preview(kb.id, editor_headers, "corpus.md", LONG_TEXT, chunk_size=16, chunk_overlap=0)

    body = response.json()
    assert response.status_code == 200
    assert (body["chunk_size"], body["chunk_overlap"], body["page_count"]) == (16, 0, None)
    assert body["chunk_count"] > PREVIEW_CHUNKS == len(body["chunks"])
    assert all(chunk["token_count"] <= 16 for chunk in body["chunks"])
    assert {(chunk["page_start"], chunk["page_end"]) for chunk in body["chunks"]} == {(None, None)}
    # No overlap: each chunk starts where the last one ended, give or take the space between them.
    first, second = body["chunks"][:2]
    assert first["char_end"] <= second["char_start"]
    await assert_nothing_stored(kb)


async def test_a_preview_without_a_token_answers_401(kb) -> None:
    response = await preview(kb.id, {}, "notes.txt", b"Tides rise twice a day.")

    assert response.status_code == 401


async def test_a_reader_may_not_preview_and_gets_403(kb, reader_headers) -> None:
    response = await preview(kb.id, reader_headers, "notes.txt", b"Tides rise twice a day.")

    assert response.status_code == 403
    await assert_nothing_stored(kb)


@pytest.mark.parametrize("whose", ["someone else's", "no one's"])
async def test_a_kb_the_caller_cannot_read_or_that_does_not_exist_answers_404(
    kb, stranger_headers, whose
) -> None:
    kb_id = kb.id if whose == "someone else's" else NOWHERE

    response = await preview(kb_id, stranger_headers, "notes.txt", b"Tides rise twice a day.")

    assert response.status_code == 404
    assert response.json()["code"] == "kb_not_found"


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"chunk_size": 0}, "chunk_size"),
        # Fewer tokens than the model can place by meaning.
        ({"chunk_size": 15}, "chunk_size"),
        ({"chunk_size": 999}, "chunk_size"),
        ({"chunk_overlap": -1}, "chunk_overlap"),
    ],
)
async def test_chunk_settings_out_of_range_answer_422(kb, editor_headers, form, field) -> None:
    response = await preview(kb.id, editor_headers, "notes.txt", b"Tides rise twice a day.", **form)

    assert response.status_code == 422
    assert field in str(response.json())


async def test_an_overlap_not_below_the_size_answers_422_saying_so(kb, editor_headers) -> None:
    response = await preview(
        kb.id, editor_headers, "notes.txt", b"Tides rise twice a day.", chunk_size=16, chunk_overlap=16
    )

    assert response.status_code == 422
    assert (
        response.json()["message"] == "Chunk overlap must be at least 0 and below the chunk size (16), not 16."
    )


async def test_a_file_that_cannot_be_read_answers_422_as_ingestion_would_fail_it(kb, editor_headers) -> None:
    response = await preview(kb.id, editor_headers, "scan.pdf", blank_pdf(2))

    assert response.status_code == 422
    assert response.json() == {
        "code": "extraction_failed",
        "message": "scan.pdf has no text layer (is it a scanned image?): run OCR on it first.",
        "detail": None,
    }
    await assert_nothing_stored(kb)


async def test_a_file_kbsite_cannot_read_answers_415(kb, editor_headers) -> None:
    response = await preview(kb.id, editor_headers, "setup.exe", b"MZ\x90\x00")

    assert response.status_code == 415


async def test_a_json_body_answers_415_saying_a_file_goes_as_multipart(kb, editor_headers) -> None:
    response = await client.post(
        f"/kbs/{kb.id}/chunk-preview",
        json={"text": "Tides."},
        content_type="application/json",
        headers=editor_headers,
    )

    assert response.status_code == 415
    assert response.json()["message"].startswith("This endpoint takes multipart/form-data with a `file`")


async def test_hostile_files_meet_the_sandboxs_limits_and_budget(kb, editor_headers, settings) -> None:
    lying = docx_with_a_lying_index(padding=64 * 1024 * 1024)
    slow = pdf_of_pages_sharing_one_slow_stream(pages=1999, comment_bytes=10_000_000)

    unpacked = await preview(kb.id, editor_headers, "report.docx", lying)
    settings.INGESTION = {**settings.INGESTION, "EXTRACTION_SECONDS": 3.0}
    timed_out = await preview(kb.id, editor_headers, "slow.pdf", slow)

    assert unpacked.status_code == timed_out.status_code == 422
    assert "unpacks to more than the 1,000 bytes its zip index declares" in unpacked.json()["message"]
    assert timed_out.json()["message"].startswith("slow.pdf took longer than 3 seconds to read")
    await assert_nothing_stored(kb)


async def test_a_file_over_the_chunk_cap_answers_422_saying_how_many_chunks_it_makes(
    kb, editor_headers, settings
) -> None:
    settings.CHUNKING = {**settings.CHUNKING, "MAX_CHUNKS_PER_DOCUMENT": 10}

    response = await preview(kb.id, editor_headers, "corpus.md", LONG_TEXT, chunk_size=16, chunk_overlap=0)

    assert response.status_code == 422
    message = response.json()["message"]
    assert re.fullmatch(
        r"corpus\.md makes (\d+) chunks of 16 tokens, more than the 10 one document may have "
        r"\(KBSITE_MAX_CHUNKS_PER_DOCUMENT\): split it into smaller files, or use larger chunks\.",
        message,
    ), message
    await assert_nothing_stored(kb)


async def test_the_chunking_runs_within_the_extraction_budget(kb, editor_headers, settings) -> None:
    # Reading a text file is quick; cutting 4.9 MB of it into 16-token chunks is not, and must stop.
    text = (LONG_TEXT + b"\n\n") * (4_900_000 // (len(LONG_TEXT) + 2))
    settings.INGESTION = {**settings.INGESTION, "EXTRACTION_SECONDS": 2.0}

    response = await preview(kb.id, editor_headers, "big.txt", text, chunk_size=16, chunk_overlap=0)

    assert response.status_code == 422
    assert response.json()["message"].startswith("big.txt took longer than 2 seconds to read")


async def test_one_preview_at_a_time_per_member_and_others_are_not_held_up(
    kb, editor_headers, test_user
) -> None:
    other_editor = await sync_to_async(make_user)(username="otto")
    await sync_to_async(add_member)(kb, other_editor, Role.EDITOR)
    other_headers = await sync_to_async(bearer)(other_editor)

    mine, again, theirs = await asyncio.gather(
        preview(kb.id, editor_headers, "corpus.md", LONG_TEXT),
        preview(kb.id, editor_headers, "corpus.md", LONG_TEXT),
        preview(kb.id, other_headers, "corpus.md", LONG_TEXT),
    )
    after = await preview(kb.id, editor_headers, "corpus.md", LONG_TEXT)

    statuses = sorted([mine.status_code, again.status_code])
    assert statuses == [200, 409], (mine.json(), again.json())
    refused = mine if mine.status_code == 409 else again
    assert refused.json()["code"] == "preview_in_progress"
    assert "Another chunk preview of yours is still running" in refused.json()["message"]
    assert theirs.status_code == after.status_code == 200
