"""The members' pages as their users drive them: sign in, search several KBs, read a passage, upload, archive."""

from __future__ import annotations

import re

import pytest
from asgiref.sync import async_to_sync
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from knowledge.models import Document, DocumentStatus, Role
from tests.factories import CORPUS_DIR, add_member, corpus, make_document, make_kb, make_user

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SEARCH = reverse("web:search")
KBS = reverse("web:knowledge_bases")
UPLOAD = reverse("web:upload")
# Words of the bee text and of the sourdough text, so that each KB has something to answer.
TWO_KB_QUERY = "honeybee colony sourdough starter"
# Chunked as in conftest's fixtures, so the session's memoised vectors serve every test.
CORPUS_CHUNKING = {"chunk_size": 64, "chunk_overlap": 12}
BEE_TITLE = "How a Honeybee Colony Works"
VOLCANO_TITLE = "How Volcanoes Form and Erupt"
SOURDOUGH_TITLE = "Baking Sourdough Bread at Home"


def document_url(document: Document) -> str:
    return reverse("web:document", args=[document.pk])


def archive_url(document: Document) -> str:
    return reverse("web:archive_document", args=[document.pk])


@pytest.fixture
def two_kbs(ingestion_service):
    """(owner, nature KB, kitchen KB, {title: document}): corpus texts in two KBs, indexed."""
    owner = make_user(username="owner")
    texts = dict(corpus())
    nature = make_kb(owner=owner, name="Nature notes", **CORPUS_CHUNKING)
    kitchen = make_kb(owner=owner, name="Kitchen notes", **CORPUS_CHUNKING)
    documents = {}
    for kb, title in ((nature, BEE_TITLE), (nature, VOLCANO_TITLE), (kitchen, SOURDOUGH_TITLE)):
        document = make_document(kb=kb, title=title, text=texts[title])
        documents[title] = async_to_sync(ingestion_service.ingest_now)(
            document_id=document.pk, worker_id="tests"
        )
        assert documents[title].status == DocumentStatus.READY, documents[title].error
    return owner, nature, kitchen, documents


def signed_in(client, user):
    client.force_login(user)
    return client


class TestSigningIn:
    @pytest.mark.parametrize("url", ["/search/", "/kbs/", "/documents/7d3f8a43-8bcb-4dd6-9a0b-2b1f38c9b1a6/"])
    def test_every_page_sends_an_anonymous_visitor_to_the_login_page(self, client, url):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/?next=")

    def test_the_root_leads_to_login_or_search(self, client):
        assert client.get("/")["Location"] == reverse("web:login")
        client.force_login(make_user(username="carol"))
        assert client.get("/")["Location"] == SEARCH

    def test_a_member_signs_in_with_their_password_and_out_with_a_post(self, client):
        make_user(username="dora")
        page = client.get(reverse("web:login"))
        assert b'<label for="id_username">' in page.content
        response = client.post(reverse("web:login"), {"username": "dora", "password": "pw-dora"})
        assert response["Location"] == SEARCH
        assert client.get(SEARCH).status_code == 200
        assert client.get(reverse("web:logout")).status_code == 405
        client.post(reverse("web:logout"))
        assert client.get(SEARCH).status_code == 302


class TestSearching:
    def test_a_reader_searches_two_kbs_at_once_and_sees_the_matched_words_marked(self, client, two_kbs):
        _, nature, kitchen, _ = two_kbs
        reader = make_user(username="reader")
        add_member(nature, reader)
        add_member(kitchen, reader)
        response = signed_in(client, reader).get(
            SEARCH, {"q": TWO_KB_QUERY, "kb": [nature.pk, kitchen.pk], "mode": "hybrid"}
        )
        html = response.content.decode()
        assert response.status_code == 200
        results = re.findall(r'<li class="result".*?</li>', html, re.S)
        assert results
        assert any("Nature notes" in result for result in results)
        assert any("Kitchen notes" in result for result in results)
        assert re.search(r"<mark>(?i:honeybee|colony|sourdough|starter)\w*</mark>", html)
        assert re.search(r'href="/documents/[0-9a-f-]+/\?start=\d+&amp;end=\d+&amp;back=[^"]*#hit"', html)

    def test_a_result_line_keeps_scores_passage_numbers_and_offsets_in_its_details(self, client, two_kbs):
        owner, *_ = two_kbs
        html = signed_in(client, owner).get(SEARCH, {"q": TWO_KB_QUERY, "per_document": "on"}).content.decode()

        results = re.findall(r'<li class="result".*?</li>', html, re.S)
        assert results
        for result in results:
            shown = re.sub(r'<details class="result-details">.*?</details>', "", result, flags=re.S)
            assert "characters" not in shown and "passage " not in shown.lower().replace('class="passage"', "")
            assert "score" not in shown.lower()
            details = re.search(r'<details class="result-details"><summary>Details</summary>(.*?)</details>', result, re.S)
            assert re.search(r"Score <span class=\"score\">\d\.\d{3}</span>, passage \d+, characters \d+–\d+", details.group(1))

    def test_every_members_page_names_its_icon_and_favicon_ico_leads_to_it(self, client, two_kbs):
        owner, _, _, documents = two_kbs
        icon = '<link rel="icon" href="/static/kbsite/favicon.svg" type="image/svg+xml">'
        assert icon in client.get(reverse("web:login")).content.decode()
        signed_in(client, owner)
        for url in (SEARCH, KBS, document_url(documents[BEE_TITLE])):
            assert icon in client.get(url).content.decode(), url

        response = client.get("/favicon.ico")

        assert response.status_code == 301 and response["Location"] == "/static/kbsite/favicon.svg"

    def test_one_result_per_document_names_each_document_once_with_its_further_passages(self, client, two_kbs):
        owner, *_ = two_kbs
        page = signed_in(client, owner).get(SEARCH, {"q": TWO_KB_QUERY, "per_document": "on", "limit": 10})
        html = page.content.decode()

        titles = re.findall(r'<li class="result" id="result-\d+">\s*<h3><a [^>]*>([^<]*)</a>', html)
        assert sorted(titles) == sorted([BEE_TITLE, VOLCANO_TITLE, SOURDOUGH_TITLE])
        assert "3 documents" in html
        assert "2 more passages from this document" in html
        assert re.search(r'<input[^>]*name="per_document"[^>]*checked', html)

    def test_show_more_asks_for_ten_more_results(self, client, two_kbs):
        owner, *_ = two_kbs
        html = signed_in(client, owner).get(SEARCH, {"q": "how", "limit": 3}).content.decode()
        assert "limit=13#result-4" in html

    def test_a_request_the_search_cannot_answer_is_explained(self, client, two_kbs):
        owner, *_ = two_kbs
        response = signed_in(client, owner).get(SEARCH, {"q": "bees", "limit": 500})
        assert response.status_code == 200
        assert re.search(r'role="alert">Number of results: [^<]*100', response.content.decode())

    def test_the_document_page_marks_the_passage_found(self, client, two_kbs):
        owner, _, _, documents = two_kbs
        bees = documents[BEE_TITLE]
        start, end = 40, 120
        response = signed_in(client, owner).get(
            document_url(bees), {"start": start, "end": end, "back": "q=bees"}
        )
        html = response.content.decode()
        assert response.status_code == 200
        passage = re.search(r'<span class="hit" id="hit" tabindex="-1">(.*?)</span>', html, re.S).group(1)
        assert re.sub(r"</?mark>", "", passage) == bees.text[start:end].replace("&", "&amp;").replace(
            "'", "&#x27;"
        ).replace('"', "&quot;")
        assert "<mark>" in passage
        assert f"characters {start}–{end}) is marked" in html
        assert 'href="/search/?q=bees"' in html
        assert "Nature notes" in html and "Ready" in html

    def test_blank_lines_in_the_passage_found_are_not_marked(self, client, two_kbs):
        owner, nature, _, _ = two_kbs
        text = "Intro.\n\nFirst paragraph of the hit.\n\n   \nSecond one,\nwith a second line.\n\nOutro."
        document = make_document(kb=nature, title="Paragraphs", text=text)
        start, end = text.index("First"), text.index("Outro")

        html = signed_in(client, owner).get(document_url(document), {"start": start, "end": end}).content.decode()

        passage = re.search(r'<span class="hit" id="hit" tabindex="-1">(.*?)</span>', html, re.S).group(1)
        assert re.findall(r"<mark>(.*?)</mark>", passage, re.S) == [
            "First paragraph of the hit.", "Second one,", "with a second line."
        ]
        assert re.sub(r"</?mark>", "", passage) == text[start:end]


class TestWhoSeesWhat:
    def test_an_outsider_gets_404_for_a_document_and_sees_no_other_kb(self, client, two_kbs):
        _, nature, kitchen, documents = two_kbs
        outsider = make_user(username="outsider")
        signed_in(client, outsider)
        assert client.get(document_url(documents[BEE_TITLE])).status_code == 404
        for url in (SEARCH, KBS, SEARCH + "?q=honeybee"):
            html = client.get(url).content.decode()
            assert "Nature notes" not in html and "Kitchen notes" not in html
            assert "Honeybee" not in html

    def test_a_reader_of_one_kb_is_refused_the_other_kbs_documents(self, client, two_kbs):
        _, nature, _, documents = two_kbs
        reader = make_user(username="reader")
        add_member(nature, reader)
        signed_in(client, reader)
        assert client.get(document_url(documents[BEE_TITLE])).status_code == 200
        assert client.get(document_url(documents[SOURDOUGH_TITLE])).status_code == 404
        assert "Kitchen notes" not in client.get(SEARCH + "?q=sourdough").content.decode()


class TestUploadingAndArchiving:
    def test_an_editor_uploads_two_files_and_archives_one(self, client, two_kbs, ingestion_service):
        _, nature, _, _ = two_kbs
        editor = make_user(username="editor")
        add_member(nature, editor, Role.EDITOR)
        signed_in(client, editor)
        files = [
            SimpleUploadedFile(name, (CORPUS_DIR / name).read_bytes(), content_type="text/markdown")
            for name in ("tides.md", "jazz.md")
        ]
        response = client.post(UPLOAD, {"knowledge_base": nature.pk, "files": files})
        assert response.status_code == 302
        page = client.get(KBS).content.decode()
        assert "Queued 2 documents in Nature notes" in page
        assert 'data-refresh="on"' in page
        uploaded = list(
            Document.objects.filter(knowledge_base=nature, source_name__in=["tides.md", "jazz.md"])
        )
        assert len(uploaded) == 2
        for document in uploaded:
            ready = async_to_sync(ingestion_service.ingest_now)(document_id=document.pk, worker_id="tests")
            assert ready.status == DocumentStatus.READY, ready.error
        assert 'data-refresh="on"' not in client.get(KBS).content.decode()

        response = client.post(archive_url(uploaded[0]), {"archived": "1"})
        assert response.status_code == 302
        uploaded[0].refresh_from_db()
        assert uploaded[0].is_archived
        assert "is archived" in client.get(KBS).content.decode()

    def test_a_reader_can_neither_upload_nor_archive(self, client, two_kbs):
        _, nature, kitchen, documents = two_kbs
        reader = make_user(username="reader")
        add_member(nature, reader)
        signed_in(client, reader)
        upload = SimpleUploadedFile("note.txt", b"A note.", content_type="text/plain")
        assert client.post(UPLOAD, {"knowledge_base": nature.pk, "files": [upload]}).status_code == 403
        assert client.post(UPLOAD, {"knowledge_base": kitchen.pk, "files": [upload]}).status_code == 404
        bees = documents[BEE_TITLE]
        assert client.post(archive_url(bees), {"archived": "1"}).status_code == 403
        bees.refresh_from_db()
        assert not bees.is_archived
        assert 'id="upload"' not in client.get(KBS).content.decode()
        assert not Document.objects.filter(source_name="note.txt").exists()
