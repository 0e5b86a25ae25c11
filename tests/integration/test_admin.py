"""The admin as its users drive it: KB list and search, uploads, document actions and pages, who sees what."""

from __future__ import annotations

import re

import pytest
from asgiref.sync import async_to_sync
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.contrib.staticfiles import finders
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.template.defaultfilters import floatformat
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils.html import escape, strip_tags
from qdrant_client import models

from knowledge.admin import CHUNKS_PER_PAGE
from knowledge.highlighting import readable_parts
from knowledge.ingestion.worker import IngestionWorker
from knowledge.models import Document, DocumentStatus, KnowledgeBase, Membership, Role
from knowledge.services.documents import DocumentService, content_hash
from knowledge.services.knowledge_bases import active_index
from search.embedding import embedding_service
from search.qdrant import qdrant_service
from search.services.chunks import ChunkService
from search.services.search import MAX_QUERY_CHARS
from tests.factories import add_member, corpus, make_document, make_kb, make_user
from tests.files import blank_pdf
from tests.support.tenants import holds_points, kb_points

pytestmark = [pytest.mark.integration, pytest.mark.django_db]

BEE_QUERY = "how does a forager tell the others where the flowers are"
BEE_TITLE = "How a Honeybee Colony Works"
# The corpus is chunked as in conftest's fixtures, so the session's memoised vectors serve every test.
CORPUS_CHUNKING = {"chunk_size": 64, "chunk_overlap": 12}

KB_LIST = reverse("admin:knowledge_knowledgebase_changelist")
KB_ADD = reverse("admin:knowledge_knowledgebase_add")
DOCUMENT_LIST = reverse("admin:knowledge_document_changelist")
UPLOAD = reverse("admin:knowledge_document_upload")


def kb_page(kb: KnowledgeBase) -> str:
    return reverse("admin:knowledge_knowledgebase_change", args=[kb.pk])


def document_page(document: Document) -> str:
    return reverse("admin:knowledge_document_change", args=[document.pk])


def make_staff(username: str):
    """A staff user holding every model permission of the knowledge app: only memberships limit them."""
    user = make_user(username=username, is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="knowledge"))
    return user


@pytest.fixture
def staff_client(client):
    def log_in(user):
        client.force_login(user)
        return client

    return log_in


def process_queue(ingestion) -> int:
    """Run an ingestion worker over the queue until nothing is due; returns how many it processed."""
    return async_to_sync(IngestionWorker(service=ingestion, worker_id="tests").run)(until_idle=True)


def ingest(ingestion, document: Document) -> Document:
    document = async_to_sync(ingestion.ingest_now)(document_id=document.pk, worker_id="tests")
    assert document.status == DocumentStatus.READY, document.error
    return document


def corpus_kb(owner, ingestion) -> tuple[KnowledgeBase, dict[str, Document]]:
    """A KB holding the test corpus, indexed; its documents by title."""
    kb = make_kb(owner=owner, name="Corpus", **CORPUS_CHUNKING)
    for title, text in corpus():
        make_document(kb=kb, title=title, text=text)
    assert process_queue(ingestion) == len(corpus())
    return kb, {document.title: document for document in Document.objects.filter(knowledge_base=kb)}


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def stylesheet() -> str:
    """kbsite's own stylesheet for the admin, as the static files finders serve it."""
    return open(finders.find("kbsite/admin.css"), encoding="utf-8").read()


def run_action(client, action: str, *documents: Document):
    return client.post(
        DOCUMENT_LIST, {"action": action, ACTION_CHECKBOX_NAME: [str(d.pk) for d in documents]}
    )


def changelist_row(html: str, link_text: str) -> dict[str, str]:
    """The cells of the changelist row whose link reads `link_text`, by list_display name."""
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", html, re.DOTALL):
        if f">{escape(link_text)}</a>" in row:
            cells = re.findall(r'class="field-(\w+)[^"]*"[^>]*>(.*?)</t[dh]>', row, re.DOTALL)
            return {name: strip_tags(content).strip() for name, content in cells}
    raise AssertionError(f"No row for {link_text!r} in the change list")


def search_titles(client, kb: KnowledgeBase, query: str, **params) -> list[str]:
    response = client.get(kb_page(kb), {"q": query, **params})
    assert response.status_code == 200
    return [result.title for result in response.context["search_results"]]


def document_points(document: Document) -> list[models.Record]:
    points = async_to_sync(kb_points)(document.knowledge_base_id)
    return [point for point in points if point.payload["document_id"] == str(document.pk)]


def kb_form_data(**fields) -> dict:
    return {
        "name": "Field notes",
        "slug": "field-notes",
        "description": "",
        "chunk_size": 120,
        "chunk_overlap": 20,
        "memberships-TOTAL_FORMS": 0,
        "memberships-INITIAL_FORMS": 0,
        "memberships-MIN_NUM_FORMS": 0,
        "memberships-MAX_NUM_FORMS": 1000,
        "_save": "Save",
        **fields,
    }


@pytest.mark.parametrize(
    ("content", "words", "shown"),
    [
        ("# Title\n\nSome **bold** text", ["Title", "bold"], "Title\n\nSome bold text"),
        ("| a | b |\n|---|:-:|\n| c | d |", ["b", "c"], "a · b\nc · d"),
        ("> see [the guide](https://example.org) and `manage.py`", ["guide", "manage.py"], "see the guide and manage.py"),
        ("snake_case and 2 * 3 * 4 stay", ["snake_case", "3"], "snake_case and 2 * 3 * 4 stay"),
    ],
)
def test_readable_parts_take_markdown_markers_out_and_keep_the_marks_on_their_words(content, words, shown):
    spans = [(content.index(word), content.index(word) + len(word)) for word in words]

    parts = readable_parts(content, spans)

    assert "".join(text for text, _ in parts) == shown
    assert [text for text, matched in parts if matched] == words


class TestBranding:
    def test_admin_pages_are_titled_and_headed_kbsite(self, client, admin_client):
        for page in (client.get(reverse("admin:login")), admin_client.get(reverse("admin:index"))):
            html = page.content.decode()
            assert re.search(r"<title>[^<]*\| kbsite</title>", html)
            assert ">kbsite administration</a>" in html
            assert "Django" not in re.search(r"<title>.*?</title>", html, re.DOTALL).group(0)
            assert "Django administration" not in html

    def test_admin_pages_link_the_favicon_kbsite_serves(self, client, admin_client):
        for page in (client.get(reverse("admin:login")), admin_client.get(DOCUMENT_LIST)):
            assert '<link rel="icon" href="/static/kbsite/favicon.svg" type="image/svg+xml">' in page.content.decode()
        favicon = finders.find("kbsite/favicon.svg")
        assert favicon and open(favicon, encoding="utf-8").read().startswith("<svg")


class TestKnowledgeBaseList:
    def test_each_kb_shows_its_document_count_chunks_in_qdrant_and_status(
        self, admin_client, admin_user, ingestion_service
    ):
        kb = make_kb(owner=admin_user, name="Mixed", **CORPUS_CHUNKING)
        (bees_title, bees), (_, tcp) = corpus()[1], corpus()[5]
        ready = ingest(ingestion_service, make_document(kb=kb, title=bees_title, text=bees))
        archived = ingest(ingestion_service, make_document(kb=kb, title="TCP", text=tcp))
        DocumentService().set_archived(document=archived, archived=True)
        make_document(kb=kb, title="Still waiting")
        failing = DocumentService().add_upload(kb=kb, filename="scan.pdf", data=blank_pdf(1)).document
        assert async_to_sync(ingestion_service.ingest_now)(
            document_id=failing.pk, worker_id="tests"
        ).status == (DocumentStatus.FAILED)
        make_kb(owner=admin_user, name="Untouched")

        response = admin_client.get(KB_LIST)

        assert response.status_code == 200
        row = changelist_row(response.content.decode(), "Mixed")
        assert row["document_count"] == "4"
        assert row["chunk_count"] == str(ready.chunk_count + archived.chunk_count)
        assert int(row["chunk_count"]) == async_to_sync(ChunkService().count_chunks)(kb_id=kb.pk) > 0
        assert row["status"] == "1 pending, 2 ready, 1 failed, 1 archived"
        empty = changelist_row(response.content.decode(), "Untouched")
        assert (empty["document_count"], empty["chunk_count"], empty["status"]) == ("0", "0", "empty")

    @pytest.mark.parametrize("superuser", [True, False], ids=["superuser", "staff-owner"])
    def test_kb_list_queries_do_not_grow_with_the_number_of_kbs(self, client, superuser):
        user = make_user(username="lister", superuser=True) if superuser else make_staff("lister")
        client.force_login(user)

        def add_kbs(count: int) -> None:
            for _ in range(count):
                make_document(kb=make_kb(owner=user))

        add_kbs(3)
        client.get(KB_LIST)  # Warms the caches a first request fills (content types, session).
        with CaptureQueriesContext(connection) as few:
            assert client.get(KB_LIST).status_code == 200
        add_kbs(27)
        with CaptureQueriesContext(connection) as many:
            response = client.get(KB_LIST)

        assert len(response.context["cl"].result_list) == 30
        assert len(many) == len(few), [query["sql"] for query in many]

    @pytest.mark.parametrize("superuser", [True, False], ids=["superuser", "staff-owner"])
    def test_document_list_queries_do_not_grow_with_the_number_of_documents(self, client, superuser):
        user = make_user(username="lister", superuser=True) if superuser else make_staff("lister")
        client.force_login(user)
        kbs = [make_kb(owner=user) for _ in range(3)]

        def add_documents(count: int) -> None:
            for number in range(count):
                make_document(kb=kbs[number % len(kbs)])

        add_documents(3)
        client.get(DOCUMENT_LIST)
        with CaptureQueriesContext(connection) as few:
            assert client.get(DOCUMENT_LIST).status_code == 200
        add_documents(27)
        with CaptureQueriesContext(connection) as many:
            response = client.get(DOCUMENT_LIST)

        assert len(response.context["cl"].result_list) == 30
        assert len(many) == len(few), [query["sql"] for query in many]


WHY_CHUNK_SIZE = "fewer carry too little meaning for the model, more do not fit its input."


class TestKnowledgeBaseForm:
    def test_creating_a_kb_makes_the_creator_an_owner_member_and_records_the_embedding_model(
        self, staff_client
    ):
        creator, colleague = make_staff("creator"), make_user(username="colleague")
        client = staff_client(creator)
        data = kb_form_data(
            owner=creator.pk,
            **{
                "memberships-TOTAL_FORMS": 1,
                "memberships-0-user": colleague.pk,
                "memberships-0-role": Role.READER,
            },
        )

        response = client.post(KB_ADD, data)

        assert response.status_code == 302, response.context["adminform"].form.errors
        kb = KnowledgeBase.objects.get(slug="field-notes")
        assert (kb.chunk_size, kb.chunk_overlap) == (120, 20)
        assert (kb.embedding_model, kb.vector_size) == (
            embedding_service.model_id,
            embedding_service.dimensions,
        )
        roles = dict(Membership.objects.filter(knowledge_base=kb).values_list("user__username", "role"))
        assert roles == {"creator": Role.OWNER, "colleague": Role.READER}

    def test_the_add_form_proposes_the_creator_as_owner(self, admin_client, admin_user):
        response = admin_client.get(KB_ADD)

        assert response.context["adminform"].form.initial["owner"] == admin_user.pk

    @pytest.mark.parametrize(
        ("chunk_size", "chunk_overlap", "complaint"),
        [
            (50, 50, "Chunk overlap must be at least 0 and below the chunk size (50), not 50."),
            (50, 80, "Chunk overlap must be at least 0 and below the chunk size (50), not 80."),
            (255, 10, f"Chunk size must be from 16 to 254 tokens, not 255: {WHY_CHUNK_SIZE}"),
            (300, 40, f"Chunk size must be from 16 to 254 tokens, not 300: {WHY_CHUNK_SIZE}"),
            (8, 0, f"Chunk size must be from 16 to 254 tokens, not 8: {WHY_CHUNK_SIZE}"),
        ],
    )
    def test_chunk_settings_the_model_cannot_use_are_refused_with_a_form_error(
        self, admin_client, admin_user, chunk_size, chunk_overlap, complaint
    ):
        response = admin_client.post(
            KB_ADD, kb_form_data(owner=admin_user.pk, chunk_size=chunk_size, chunk_overlap=chunk_overlap)
        )

        assert response.status_code == 200
        assert response.context["adminform"].form.non_field_errors() == [complaint]
        assert escape(complaint) in response.content.decode()
        assert not KnowledgeBase.objects.exists()

    def test_changing_the_chunk_settings_of_a_kb_keeps_them_valid(self, admin_client, admin_user):
        kb = make_kb(owner=admin_user, name="Field notes", slug="field-notes")

        refused = admin_client.post(
            kb_page(kb), kb_form_data(owner=admin_user.pk, chunk_size=40, chunk_overlap=40)
        )
        accepted = admin_client.post(
            kb_page(kb), kb_form_data(owner=admin_user.pk, chunk_size=40, chunk_overlap=8)
        )

        assert refused.status_code == 200 and refused.context["adminform"].form.non_field_errors()
        assert accepted.status_code == 302
        kb.refresh_from_db()
        assert (kb.chunk_size, kb.chunk_overlap) == (40, 8)
        assert any("apply to documents indexed from now on" in message for message in messages_of(accepted))


    def test_giving_a_members_row_to_another_user_takes_it_from_the_first(self, admin_client, admin_user):
        kb = make_kb(owner=admin_user, name="Field notes", slug="field-notes")
        alice, bob = make_user(username="alice"), make_user(username="bob")
        owner_row = Membership.objects.get(knowledge_base=kb, user=admin_user)
        alices = add_member(kb, alice, Role.READER)

        response = admin_client.post(
            kb_page(kb),
            kb_form_data(
                owner=admin_user.pk,
                chunk_size=kb.chunk_size,
                chunk_overlap=kb.chunk_overlap,
                **{
                    "memberships-TOTAL_FORMS": 2,
                    "memberships-INITIAL_FORMS": 2,
                    "memberships-0-id": owner_row.pk,
                    "memberships-0-knowledge_base": kb.pk,
                    "memberships-0-user": admin_user.pk,
                    "memberships-0-role": Role.OWNER,
                    "memberships-1-id": alices.pk,
                    "memberships-1-knowledge_base": kb.pk,
                    "memberships-1-user": bob.pk,
                    "memberships-1-role": Role.READER,
                },
            ),
        )

        assert response.status_code == 302
        members = dict(Membership.objects.filter(knowledge_base=kb).values_list("user__username", "role"))
        assert members == {admin_user.username: Role.OWNER, "bob": Role.READER}

    def test_the_last_owner_cannot_be_removed_in_the_members_inline(self, admin_client):
        kb = KnowledgeBase.objects.create(
            name="Ownerless",
            slug="ownerless",
            owner=None,
            embedding_model=embedding_service.model_id,
            vector_size=embedding_service.dimensions,
        )
        only_owner = add_member(kb, make_user(username="olga"), Role.OWNER)

        response = admin_client.post(
            kb_page(kb),
            kb_form_data(
                name="Ownerless",
                slug="ownerless",
                chunk_size=kb.chunk_size,
                chunk_overlap=kb.chunk_overlap,
                **{
                    "memberships-TOTAL_FORMS": 1,
                    "memberships-INITIAL_FORMS": 1,
                    "memberships-0-id": only_owner.pk,
                    "memberships-0-knowledge_base": kb.pk,
                    "memberships-0-user": only_owner.user_id,
                    "memberships-0-role": Role.OWNER,
                    "memberships-0-DELETE": "on",
                },
            ),
            follow=True,
        )

        assert response.redirect_chain, response.context["adminform"].form.errors
        assert Membership.objects.filter(pk=only_owner.pk, role=Role.OWNER).exists()
        assert any("last owner" in message for message in messages_of(response))

    def test_only_superusers_see_the_search_audit(self, staff_client, admin_client):
        audit = reverse("admin:search_searchaudit_changelist")
        staff = make_staff("auditor")
        staff.user_permissions.add(*Permission.objects.filter(content_type__app_label="search"))

        assert admin_client.get(audit).status_code == 200
        assert staff_client(staff).get(audit).status_code == 403


class TestUpload:
    def test_uploading_a_markdown_and_a_text_file_queues_two_pending_documents(
        self, admin_client, admin_user
    ):
        kb = make_kb(owner=admin_user, name="Uploads")

        response = admin_client.post(
            UPLOAD,
            {
                "knowledge_base": kb.pk,
                "files": [
                    SimpleUploadedFile("guide.md", b"# Sourdough guide\n\nFold the dough every half hour."),
                    SimpleUploadedFile("notes.txt", b"Feed the starter with flour and water every day."),
                ],
            },
        )

        assert response.status_code == 302
        assert response.url == f"{DOCUMENT_LIST}?knowledge_base__id__exact={kb.pk}"
        documents = Document.objects.filter(knowledge_base=kb)
        assert sorted(documents.values_list("source_name", "source_format", "status")) == [
            ("guide.md", "md", DocumentStatus.PENDING),
            ("notes.txt", "txt", DocumentStatus.PENDING),
        ]
        assert messages_of(response) == ["Queued 2 documents in Uploads; watch them become ready here."]

    def test_the_upload_page_preselects_the_kb_it_was_opened_from(self, admin_client, admin_user):
        kb = make_kb(owner=admin_user)

        response = admin_client.get(UPLOAD, {"kb": kb.pk})

        assert response.status_code == 200
        assert response.context["form"]["knowledge_base"].value() == str(kb.pk)

    @pytest.mark.parametrize("second_name", ["notes.txt", "copy-of-notes.txt"])
    def test_the_same_content_again_is_reported_as_a_duplicate_and_not_stored_twice(
        self, admin_client, admin_user, second_name
    ):
        kb = make_kb(owner=admin_user, name="Uploads")
        content = b"Feed the starter with flour and water every day."
        first = {"knowledge_base": kb.pk, "files": [SimpleUploadedFile("notes.txt", content)]}
        admin_client.post(UPLOAD, first, follow=True)  # Following shows, and so clears, its messages.

        response = admin_client.post(
            UPLOAD, {"knowledge_base": kb.pk, "files": [SimpleUploadedFile(second_name, content)]}
        )

        assert response.status_code == 302
        assert Document.objects.filter(knowledge_base=kb).count() == 1
        assert messages_of(response) == [
            f"{second_name} is already in 'Uploads' as 'notes'; it was not added again."
        ]

    def test_a_file_of_the_same_name_with_new_content_replaces_the_earlier_version(
        self, admin_client, admin_user
    ):
        kb = make_kb(owner=admin_user)
        first = {"knowledge_base": kb.pk, "files": [SimpleUploadedFile("notes.txt", b"The first version.")]}
        admin_client.post(UPLOAD, first, follow=True)
        earlier = Document.objects.get(knowledge_base=kb)

        response = admin_client.post(
            UPLOAD,
            {"knowledge_base": kb.pk, "files": [SimpleUploadedFile("notes.txt", b"The second version.")]},
        )

        assert list(
            Document.objects.filter(knowledge_base=kb).values_list("pk", "status", "content_hash")
        ) == [(earlier.pk, DocumentStatus.PENDING, content_hash(b"The second version."))]
        assert "notes.txt replaced the earlier version; only it is indexed again." in messages_of(response)

    def test_an_unsupported_file_is_refused_with_a_message_and_the_others_are_kept(
        self, admin_client, admin_user
    ):
        kb = make_kb(owner=admin_user)

        response = admin_client.post(
            UPLOAD,
            {
                "knowledge_base": kb.pk,
                "files": [
                    SimpleUploadedFile("photo.png", b"\x89PNG\r\n"),
                    SimpleUploadedFile("a.txt", b"Some text."),
                ],
            },
        )

        assert list(Document.objects.filter(knowledge_base=kb).values_list("source_name", flat=True)) == [
            "a.txt"
        ]
        refusal, queued = messages_of(response)
        assert refusal.startswith("photo.png is not a file kbsite can read; it reads ")
        assert queued.startswith("Queued 1 document in ")

    def test_a_file_over_the_size_limit_is_refused_with_a_message(self, admin_client, admin_user, settings):
        settings.INGESTION = {**settings.INGESTION, "MAX_UPLOAD_BYTES": 1000}
        kb = make_kb(owner=admin_user)

        response = admin_client.post(
            UPLOAD, {"knowledge_base": kb.pk, "files": [SimpleUploadedFile("long.txt", b"word " * 400)]}
        )

        assert response.status_code == 200
        # The sizes read in the unit that fits them (with non-breaking spaces), not as "0 MB".
        assert response.context["form"].errors["files"] == [
            "Files may be at most 1000\xa0bytes each; these are larger: long.txt (2.0\xa0KB)."
        ]
        assert "At most 1000\xa0bytes a file." in response.content.decode()
        assert not Document.objects.exists()

    def test_a_reader_with_model_permissions_cannot_reach_the_upload_page(self, staff_client, admin_user):
        reader = make_staff("reader")
        kb = make_kb(owner=admin_user)
        add_member(kb, reader, Role.READER)
        client = staff_client(reader)

        page = client.get(UPLOAD, {"kb": kb.pk})
        post = client.post(
            UPLOAD, {"knowledge_base": kb.pk, "files": [SimpleUploadedFile("a.txt", b"Some text.")]}
        )
        add = client.get(reverse("admin:knowledge_document_add"), follow=True)

        assert page.status_code == 403
        assert post.status_code == 403
        assert add.status_code == 403
        assert not Document.objects.exists()

    def test_an_editor_elsewhere_cannot_upload_into_a_kb_they_only_read(self, staff_client, admin_user):
        user = make_staff("mixed")
        readable, editable = (
            make_kb(owner=admin_user, name="Read only"),
            make_kb(owner=admin_user, name="Editable"),
        )
        add_member(readable, user, Role.READER)
        add_member(editable, user, Role.EDITOR)
        client = staff_client(user)

        page = client.get(UPLOAD, {"kb": readable.pk})
        post = client.post(
            UPLOAD, {"knowledge_base": readable.pk, "files": [SimpleUploadedFile("a.txt", b"Some text.")]}
        )

        assert list(page.context["form"].fields["knowledge_base"].queryset) == [editable]
        assert post.status_code == 200
        assert "knowledge_base" in post.context["form"].errors
        assert not Document.objects.exists()


class TestKnowledgeBaseSearch:
    def test_a_relevant_query_shows_ranked_results_with_scores(
        self, admin_client, admin_user, ingestion_service
    ):
        kb, _ = corpus_kb(admin_user, ingestion_service)

        response = admin_client.get(kb_page(kb), {"q": BEE_QUERY})

        results = response.context["search_results"]
        assert results[0].title == BEE_TITLE
        scores = [result.score for result in results]
        assert scores == sorted(scores, reverse=True) and 0 < scores[-1] <= scores[0] <= 1
        table = response.content.decode().split('id="search-results"')[1].split("</table>")[0]
        first_row = table.split("<tbody>")[1].split("</tr>")[0]
        assert f"<td>{floatformat(results[0].score, 3)}</td>" in first_row
        assert BEE_TITLE in first_row

    def test_archived_documents_are_hidden_unless_include_archived_is_ticked(
        self, admin_client, admin_user, ingestion_service
    ):
        kb, documents = corpus_kb(admin_user, ingestion_service)
        run_action(admin_client, "archive", documents[BEE_TITLE])

        assert BEE_TITLE not in search_titles(admin_client, kb, BEE_QUERY)
        assert search_titles(admin_client, kb, BEE_QUERY, include_archived="on")[0] == BEE_TITLE

    def test_the_search_opens_at_its_results_below_the_kb_form(self, admin_client, admin_user, ingestion_service):
        kb, _ = corpus_kb(admin_user, ingestion_service)

        html = admin_client.get(kb_page(kb), {"q": BEE_QUERY}).content.decode()

        target = re.search(r'<form method="get" action="#([\w-]+)"', html).group(1)
        results_block = html.split(f'id="{target}"')[1]
        assert results_block.index('id="search-results"') < results_block.index("</table>")
        # The KB form floats: blocks after it must clear it, or they (and their anchors) start at its top.
        assert "kbsite/admin.css" in html
        assert re.search(r"#kb-search,\s*#chunks\s*\{\s*clear: both;", stylesheet())

    def test_results_read_as_text_without_markdown_markers_and_marks_stay_on_the_words(
        self, admin_client, admin_user, ingestion_service
    ):
        kb = make_kb(owner=admin_user, **CORPUS_CHUNKING)
        text = (
            "## Who does what\n\n| Bee | Job |\n|-----|-----|\n| Worker | gathers **nectar** |\n"
            "| Drone | mates with a queen |\n"
        )
        ingest(ingestion_service, make_document(kb=kb, title="Hive jobs", text=text))

        response = admin_client.get(kb_page(kb), {"q": "nectar", "mode": "keyword"})

        [row] = response.context["search_rows"]
        assert row["marked"].startswith(
            "Who does what\n\nBee · Job\nWorker · gathers <mark>nectar</mark>\nDrone · mates with a queen"
        )
        assert row["marked"].count("<mark>") == 1
        assert "Worker · gathers <mark>nectar</mark>" in response.content.decode()

    def test_a_query_over_the_limit_is_refused_with_a_message(self, admin_client, admin_user):
        kb = make_kb(owner=admin_user)

        response = admin_client.get(kb_page(kb), {"q": "bee " * (MAX_QUERY_CHARS // 4) + "s"})

        assert response.context["search_results"] is None
        complaint = f"The query has {MAX_QUERY_CHARS + 1} characters; the most is {MAX_QUERY_CHARS}. Shorten it."
        assert f'<p class="errornote">{complaint}</p>' in response.content.decode()

    def test_a_kb_page_opened_from_a_filtered_list_shows_no_search_complaint(self, admin_client, admin_user):
        kb = make_kb(owner=admin_user)

        response = admin_client.get(kb_page(kb), {"_changelist_filters": "q=notes"})

        assert not response.context["search_form"].is_bound
        assert "errornote" not in response.content.decode()

    def test_a_kb_without_indexed_documents_says_nothing_matches_yet(self, admin_client, admin_user):
        kb = make_kb(owner=admin_user)
        make_document(kb=kb)

        response = admin_client.get(kb_page(kb), {"q": BEE_QUERY})

        assert response.context["search_results"] == []
        assert "Nothing in this knowledge base matches yet" in response.content.decode()


class TestDocumentActions:
    def test_archive_and_unarchive_change_search_visibility_without_embedding_again(
        self, admin_client, admin_user, ingestion_service
    ):
        kb, documents = corpus_kb(admin_user, ingestion_service)
        bees = documents[BEE_TITLE]
        # An upsert replaces a point's whole payload: a mark that survives proves no point was written again.
        async_to_sync(qdrant_service.client.set_payload)(
            collection_name=active_index(kb).collection,
            payload={"probe": "untouched"},
            points=[point.id for point in document_points(bees)],
            wait=True,
        )
        chunks_before = async_to_sync(ChunkService().count_chunks)(kb_id=kb.pk)

        archived = run_action(admin_client, "archive", bees)

        assert messages_of(archived) == ["Archived 1 document; nothing was embedded again."]
        bees.refresh_from_db()
        assert bees.is_archived and bees.status == DocumentStatus.READY
        points = document_points(bees)
        assert len(points) == bees.chunk_count
        assert all(p.payload["probe"] == "untouched" and p.payload["archived_at"] for p in points)
        assert BEE_TITLE not in search_titles(admin_client, kb, BEE_QUERY)

        unarchived = run_action(admin_client, "unarchive", bees)

        assert messages_of(unarchived) == ["Unarchived 1 document; nothing was embedded again."]
        bees.refresh_from_db()
        assert not bees.is_archived and bees.status == DocumentStatus.READY
        assert all(
            p.payload["probe"] == "untouched" and p.payload.get("archived_at") is None
            for p in document_points(bees)
        )
        assert search_titles(admin_client, kb, BEE_QUERY)[0] == BEE_TITLE
        assert async_to_sync(ChunkService().count_chunks)(kb_id=kb.pk) == chunks_before
        assert process_queue(ingestion_service) == 0

    def test_the_document_list_shows_status_progress_and_archived(
        self, admin_client, admin_user, ingestion_service
    ):
        kb = make_kb(owner=admin_user, **CORPUS_CHUNKING)
        title, text = corpus()[0]
        ready = ingest(ingestion_service, make_document(kb=kb, title=title, text=text))
        DocumentService().set_archived(document=ready, archived=True)
        make_document(kb=kb, title="Waiting")

        response = admin_client.get(DOCUMENT_LIST)

        html = response.content.decode()
        assert changelist_row(html, title)["status_label"] == "Ready"
        assert changelist_row(html, title)["progress"] == f"{ready.chunk_count} chunks"
        assert 'alt="True"' in re.search(rf"{re.escape(title)}.*?</tr>", html, re.DOTALL).group(0)
        assert changelist_row(html, "Waiting")["status_label"] == "Pending"
        # Work still pending: the page reloads itself.
        assert '<meta http-equiv="refresh" content="3">' in html

    def test_counts_of_one_read_in_the_singular(self, admin_client, admin_user, ingestion_service):
        kb = make_kb(owner=admin_user, **CORPUS_CHUNKING)
        ingest(ingestion_service, make_document(kb=kb, title="Short", text="One short line about bees."))

        html = admin_client.get(DOCUMENT_LIST).content.decode()

        assert changelist_row(html, "Short")["progress"] == "1 chunk"

    def test_a_failed_documents_problem_shows_under_its_status(self, admin_client, admin_user, ingestion_service):
        kb = make_kb(owner=admin_user)
        failing = DocumentService().add_upload(kb=kb, filename="scan.pdf", data=blank_pdf(1)).document
        failed = async_to_sync(ingestion_service.ingest_now)(document_id=failing.pk, worker_id="tests")

        html = admin_client.get(DOCUMENT_LIST).content.decode()

        row = changelist_row(html, failed.title)
        assert row["status_label"].startswith("Failed") and failed.error[:40] in row["status_label"]
        # Fits beside the filters at 1280 px: no column for a problem most rows do not have.
        assert set(row) == {"title", "knowledge_base", "status_label", "progress", "archived", "file_format", "created"}
        assert "kbsite/admin.css" in html

    def test_the_document_list_stops_reloading_once_nothing_is_pending(
        self, admin_client, admin_user, ingestion_service
    ):
        kb = make_kb(owner=admin_user, **CORPUS_CHUNKING)
        title, text = corpus()[0]
        ingest(ingestion_service, make_document(kb=kb, title=title, text=text))

        response = admin_client.get(DOCUMENT_LIST)

        assert 'http-equiv="refresh"' not in response.content.decode()

    def test_reindex_sends_documents_back_to_pending_and_the_worker_makes_them_ready(
        self, admin_client, admin_user, ingestion_service
    ):
        kb = make_kb(owner=admin_user, **CORPUS_CHUNKING)
        ready = [ingest(ingestion_service, make_document(kb=kb, title=t, text=x)) for t, x in corpus()[:2]]

        response = run_action(admin_client, "reindex", *ready)

        assert messages_of(response) == [
            "Queued 2 documents; the worker indexes them again in the background."
        ]
        assert messages_of(run_action(admin_client, "reindex", ready[0]))[-1] == (
            "Queued 1 document; the worker indexes it again in the background."
        )
        assert set(Document.objects.filter(knowledge_base=kb).values_list("status", flat=True)) == {
            DocumentStatus.PENDING
        }
        assert process_queue(ingestion_service) == 2
        assert set(Document.objects.filter(knowledge_base=kb).values_list("status", flat=True)) == {
            DocumentStatus.READY
        }


class TestDocumentPage:
    def test_the_chunks_are_listed_by_index_and_text_page_by_page(
        self, admin_client, admin_user, ingestion_service
    ):
        kb = make_kb(owner=admin_user, chunk_size=16, chunk_overlap=0)
        title, text = corpus()[1]
        document = ingest(ingestion_service, make_document(kb=kb, title=title, text=text))
        assert document.chunk_count > 2 * CHUNKS_PER_PAGE

        seen, offset, pages = [], 0, 0
        while offset is not None:
            response = admin_client.get(document_page(document), {"chunk_offset": offset} if offset else {})
            assert response.status_code == 200
            chunks = response.context["chunks"]
            html = response.content.decode()
            assert len(chunks) == min(CHUNKS_PER_PAGE, document.chunk_count - offset)
            assert chunks[0].chunk_index == offset
            assert f"<tr><td>{chunks[0].chunk_index}</td>" in html
            assert escape(chunks[0].content) in html
            if offset:
                assert f'href="?chunk_offset={max(offset - CHUNKS_PER_PAGE, 0)}#chunks">previous' in html
            offset = response.context["next_chunk_offset"]
            if offset is not None:
                assert f'href="?chunk_offset={offset}#chunks">next' in html
            seen.extend(chunk.chunk_index for chunk in chunks)
            pages += 1

        assert seen == list(range(document.chunk_count))
        assert pages == -(-document.chunk_count // CHUNKS_PER_PAGE)

    def test_a_bad_chunk_offset_shows_the_first_page(self, admin_client, admin_user, ingestion_service):
        kb = make_kb(owner=admin_user, chunk_size=16, chunk_overlap=0)
        title, text = corpus()[1]
        document = ingest(ingestion_service, make_document(kb=kb, title=title, text=text))

        response = admin_client.get(document_page(document), {"chunk_offset": "nonsense"})

        assert response.context["chunks"][0].chunk_index == 0

    def test_a_pending_document_says_it_has_no_chunks_yet(self, admin_client, admin_user):
        document = make_document(kb=make_kb(owner=admin_user))

        response = admin_client.get(document_page(document))

        assert "No chunks yet: the document is pending." in response.content.decode()

    def test_renaming_a_document_renames_it_in_search_results(
        self, admin_client, admin_user, ingestion_service
    ):
        kb = make_kb(owner=admin_user, **CORPUS_CHUNKING)
        title, text = corpus()[1]
        document = ingest(ingestion_service, make_document(kb=kb, title=title, text=text))

        response = admin_client.post(document_page(document), {"title": "Life in a beehive", "_save": "Save"})

        assert response.status_code == 302
        assert search_titles(admin_client, kb, BEE_QUERY)[0] == "Life in a beehive"


class TestDeletion:
    def test_deleting_a_document_removes_its_chunks_from_qdrant(
        self, admin_client, admin_user, ingestion_service
    ):
        kb, documents = corpus_kb(admin_user, ingestion_service)
        bees = documents[BEE_TITLE]
        others = async_to_sync(ChunkService().count_chunks)(kb_id=kb.pk) - bees.chunk_count

        response = admin_client.post(
            reverse("admin:knowledge_document_delete", args=[bees.pk]), {"post": "yes"}
        )

        assert response.status_code == 302
        assert not Document.objects.filter(pk=bees.pk).exists()
        assert async_to_sync(ChunkService().count_chunks)(kb_id=kb.pk, document_id=bees.pk) == 0
        assert async_to_sync(ChunkService().count_chunks)(kb_id=kb.pk) == others
        assert BEE_TITLE not in search_titles(admin_client, kb, BEE_QUERY, include_archived="on")

    def test_deleting_documents_with_the_bulk_action_removes_their_chunks(
        self, admin_client, admin_user, ingestion_service
    ):
        kb, documents = corpus_kb(admin_user, ingestion_service)
        chosen = list(documents.values())[:3]

        response = admin_client.post(
            DOCUMENT_LIST,
            {"action": "delete_selected", "post": "yes", ACTION_CHECKBOX_NAME: [str(d.pk) for d in chosen]},
        )

        assert response.status_code == 302
        for document in chosen:
            assert async_to_sync(ChunkService().count_chunks)(kb_id=kb.pk, document_id=document.pk) == 0
        assert Document.objects.filter(knowledge_base=kb).count() == len(documents) - 3
        assert async_to_sync(ChunkService().count_chunks)(kb_id=kb.pk) == sum(
            d.chunk_count for d in list(documents.values())[3:]
        )

    def test_deleting_a_kb_removes_its_collection(self, admin_client, admin_user, ingestion_service):
        kb = make_kb(owner=admin_user, **CORPUS_CHUNKING)
        title, text = corpus()[0]
        ingest(ingestion_service, make_document(kb=kb, title=title, text=text))
        kept = make_kb(owner=admin_user, **CORPUS_CHUNKING)
        title, text = corpus()[1]
        ingest(ingestion_service, make_document(kb=kept, title=title, text=text))
        assert async_to_sync(holds_points)(kb.pk)

        response = admin_client.post(
            reverse("admin:knowledge_knowledgebase_delete", args=[kb.pk]), {"post": "yes"}
        )

        assert response.status_code == 302
        assert not KnowledgeBase.objects.filter(pk=kb.pk).exists()
        assert not Document.objects.filter(knowledge_base_id=kb.pk).exists()
        assert not async_to_sync(holds_points)(kb.pk)
        assert async_to_sync(ChunkService().count_chunks)(kb_id=kept.pk) > 0


class TestWhoSeesWhat:
    @pytest.fixture
    def setting(self, staff_client, admin_user, ingestion_service):
        """A staff reader of KB A who is nothing of KB B, each KB holding one indexed document."""
        reader = make_staff("reader")
        kb_a = make_kb(owner=admin_user, name="Alpha notes", **CORPUS_CHUNKING)
        kb_b = make_kb(owner=admin_user, name="Bravo secrets", **CORPUS_CHUNKING)
        add_member(kb_a, reader, Role.READER)
        (title_a, text_a), (title_b, text_b) = corpus()[1], corpus()[7]
        doc_a = ingest(ingestion_service, make_document(kb=kb_a, title=title_a, text=text_a))
        doc_b = ingest(ingestion_service, make_document(kb=kb_b, title=title_b, text=text_b))
        return staff_client(reader), kb_a, kb_b, doc_a, doc_b

    def test_a_reader_sees_their_kb_and_not_the_other_in_the_lists(self, setting):
        client, kb_a, kb_b, doc_a, doc_b = setting

        kb_list = client.get(KB_LIST).content.decode()
        document_list = client.get(DOCUMENT_LIST).content.decode()
        filtered_to_b = client.get(DOCUMENT_LIST, {"knowledge_base__id__exact": kb_b.pk}).content.decode()

        assert kb_a.name in kb_list and kb_b.name not in kb_list
        assert doc_a.title in document_list
        # Not even in the list filter's choices: a KB's name is not to leak to those who may not read it.
        assert doc_b.title not in document_list and kb_b.name not in document_list
        assert doc_b.title not in filtered_to_b

    def test_the_other_kbs_pages_are_refused_as_if_it_did_not_exist(self, setting):
        client, _, kb_b, _, doc_b = setting
        pages = [
            reverse("admin:knowledge_knowledgebase_change", args=[kb_b.pk]),
            reverse("admin:knowledge_knowledgebase_delete", args=[kb_b.pk]),
            reverse("admin:knowledge_knowledgebase_history", args=[kb_b.pk]),
            reverse("admin:knowledge_document_change", args=[doc_b.pk]),
            reverse("admin:knowledge_document_delete", args=[doc_b.pk]),
        ]

        for page in pages:
            response = client.get(page, {"q": "volcano"})
            assert response.status_code == 302 and response.url == reverse("admin:index"), page
            assert kb_b.name not in " ".join(messages_of(response))

        deleted = client.post(reverse("admin:knowledge_document_delete", args=[doc_b.pk]), {"post": "yes"})
        assert deleted.status_code == 302 and Document.objects.filter(pk=doc_b.pk).exists()

    def test_a_reader_may_search_their_kb_but_not_change_it(self, setting):
        client, kb_a, _, doc_a, _ = setting

        page = client.get(kb_page(kb_a), {"q": BEE_QUERY})
        change = client.post(
            kb_page(kb_a), kb_form_data(name="Renamed", slug="alpha-notes", owner=kb_a.owner_id)
        )
        delete = client.post(reverse("admin:knowledge_knowledgebase_delete", args=[kb_a.pk]), {"post": "yes"})

        assert page.status_code == 200
        assert page.context["has_change_permission"] is False
        assert page.context["search_results"][0].title == doc_a.title
        assert change.status_code == 403
        assert delete.status_code == 403
        kb_a.refresh_from_db()
        assert kb_a.name == "Alpha notes"
        assert async_to_sync(ChunkService().count_chunks)(kb_id=kb_a.pk) == doc_a.chunk_count

    def test_a_reader_cannot_change_archive_reindex_or_delete_documents(self, setting, ingestion_service):
        client, _, _, doc_a, _ = setting

        edit = client.post(document_page(doc_a), {"title": "Renamed"})
        archive = run_action(client, "archive", doc_a)
        reindex = run_action(client, "reindex", doc_a)
        bulk_delete = client.post(
            DOCUMENT_LIST, {"action": "delete_selected", "post": "yes", ACTION_CHECKBOX_NAME: [str(doc_a.pk)]}
        )

        assert edit.status_code == 403
        assert any("you may only read" in message for message in messages_of(archive))
        assert any("you may only read" in message for message in messages_of(reindex))
        assert bulk_delete.status_code == 403
        doc_a.refresh_from_db()
        assert (doc_a.title, doc_a.is_archived, doc_a.status) == (BEE_TITLE, False, DocumentStatus.READY)
        assert async_to_sync(ChunkService().count_chunks)(
            kb_id=doc_a.knowledge_base_id, document_id=doc_a.pk
        ) == (doc_a.chunk_count)


def test_a_staff_user_who_is_not_a_superuser_can_open_the_add_token_page_for_themselves_only(staff_client):
    staff = make_staff("carol")
    make_user(username="dave")

    page = staff_client(staff).get(reverse("admin:knowledge_apitoken_add"))

    assert page.status_code == 200
    assert list(page.context["adminform"].form.fields["user"].queryset) == [staff]

