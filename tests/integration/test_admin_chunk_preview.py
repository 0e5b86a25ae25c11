"""The admin upload page's "Preview chunks" button: each file's chunks shown, nothing stored."""

from __future__ import annotations

import re

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils.html import escape

from knowledge.ingestion.preview import PREVIEW_CHUNKS
from knowledge.models import Document, DocumentSource, Role
from search.services.collections import CollectionService
from tests.factories import add_member, corpus, corpus_pages, make_kb, make_user
from tests.files import blank_pdf, make_pdf

pytestmark = [pytest.mark.integration, pytest.mark.django_db]

UPLOAD = reverse("admin:knowledge_document_upload")
PAGES = corpus_pages("Honeybee", "Tides")


def nothing_stored(kb) -> bool:
    return (
        not Document.objects.exists()
        and not DocumentSource.objects.exists()
        and not async_to_sync(CollectionService().holds_points)(kb_id=kb.id)
    )


def shown_rows(html: str) -> list[tuple[str, str, str, str]]:
    """(index, characters, tokens, pages) of each chunk row the preview shows."""
    return re.findall(
        r"<tr><td>(\d+)</td><td>(\d+–\d+)</td><td>(\d+)</td><td class=\"pages\">([^<]*)</td>", html
    )


def test_the_upload_page_offers_a_preview_button(admin_client, admin_user):
    kb = make_kb(owner=admin_user)

    page = admin_client.get(UPLOAD, {"kb": kb.pk}).content.decode()

    assert '<input type="submit" name="preview" value="Preview chunks" id="preview-button">' in page


def test_previewing_a_pdf_shows_its_chunks_with_pages_and_stores_nothing(admin_client, admin_user):
    kb = make_kb(owner=admin_user, name="Nature", chunk_size=48, chunk_overlap=8)

    response = admin_client.post(
        UPLOAD,
        {
            "knowledge_base": kb.pk,
            "files": [SimpleUploadedFile("nature.pdf", make_pdf(PAGES))],
            "preview": "1",
        },
    )

    assert response.status_code == 200
    [row] = response.context["previews"]
    preview = row["preview"]
    html = response.content.decode()
    assert (preview.chunk_size, preview.chunk_overlap, preview.page_count) == (48, 8, 2)
    assert shown_rows(html) == [
        (str(c.index), f"{c.char_start}–{c.char_end}", str(c.token_count), c.pages) for c in preview.chunks
    ]
    assert {c.pages for c in preview.chunks} >= {"p. 1", "pp. 1–2", "p. 2"}
    assert escape(preview.chunks[0].text) in html
    assert f"{preview.chunk_count} chunks of at most 48 tokens" in html
    assert not list(get_messages(response.wsgi_request))
    assert nothing_stored(kb)


def test_preview_chunk_settings_replace_the_kbs_and_long_files_show_the_first_fifty(admin_client, admin_user):
    kb = make_kb(owner=admin_user, name="Corpus", chunk_size=200, chunk_overlap=20)
    text = "\n\n".join(text for _, text in corpus()[:3]).encode()

    response = admin_client.post(
        UPLOAD,
        {
            "knowledge_base": kb.pk,
            "files": [SimpleUploadedFile("corpus.md", text)],
            "preview_chunk_size": 16,
            "preview_chunk_overlap": 0,
            "preview": "1",
        },
    )

    preview = response.context["previews"][0]["preview"]
    assert (preview.chunk_size, preview.chunk_overlap) == (16, 0)
    assert preview.chunk_count > PREVIEW_CHUNKS == len(shown_rows(response.content.decode()))
    assert f"The first {PREVIEW_CHUNKS} are shown." in response.content.decode()
    assert nothing_stored(kb)


def test_a_file_that_cannot_be_read_shows_why_beside_the_others_preview(admin_client, admin_user):
    kb = make_kb(owner=admin_user, name="Mixed")

    response = admin_client.post(
        UPLOAD,
        {
            "knowledge_base": kb.pk,
            "files": [
                SimpleUploadedFile("scan.pdf", blank_pdf(1)),
                SimpleUploadedFile("notes.txt", b"Feed the starter with flour and water every day."),
            ],
            "preview": "1",
        },
    )

    scan, notes = response.context["previews"]
    assert scan == {
        "filename": "scan.pdf",
        "error": "scan.pdf has no text layer (is it a scanned image?): run OCR on it first.",
    }
    assert notes["preview"].chunk_count == 1
    assert escape(scan["error"]) in response.content.decode()
    assert nothing_stored(kb)


def test_preview_settings_the_chunker_cannot_take_are_shown_as_the_files_error(admin_client, admin_user):
    kb = make_kb(owner=admin_user, name="Notes", chunk_size=64, chunk_overlap=20)

    response = admin_client.post(
        UPLOAD,
        {
            "knowledge_base": kb.pk,
            "files": [SimpleUploadedFile("notes.txt", b"Feed the starter every day.")],
            "preview_chunk_size": 16,
            "preview": "1",
        },
    )

    assert response.context["previews"][0]["error"] == (
        "Chunk overlap must be at least 0 and below the chunk size (16), not 20."
    )
    assert nothing_stored(kb)


def test_a_reader_cannot_preview_into_a_kb_they_only_read(client, admin_user):
    user = make_user(username="mixed", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="knowledge"))
    readable, editable = (
        make_kb(owner=admin_user, name="Read only"),
        make_kb(owner=admin_user, name="Editable"),
    )
    add_member(readable, user, Role.READER)
    add_member(editable, user, Role.EDITOR)
    client.force_login(user)

    response = client.post(
        UPLOAD,
        {
            "knowledge_base": readable.pk,
            "files": [SimpleUploadedFile("a.txt", b"Some text.")],
            "preview": "1",
        },
    )

    assert "knowledge_base" in response.context["form"].errors
    assert response.context["previews"] is None
    assert nothing_stored(readable)
