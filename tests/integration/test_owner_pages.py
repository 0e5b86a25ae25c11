"""Running a knowledge base from the members' pages: create one, its documents, members and settings, the upload page.

The pages go through the API's services and PermissionService, so each test also checks the rule the
API keeps: who may do it, what happens, and what is written to the KB's history (the admin's LogEntry).
"""

from __future__ import annotations

import re

import pytest
from asgiref.sync import async_to_sync
from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.auth.models import Group
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from ninja.testing import TestAsyncClient

from kbsite.api import api
from knowledge.models import Document, DocumentStatus, KnowledgeBase, Membership, Role
from knowledge.services.tokens import ApiTokenService
from search.services.chunks import ChunkService
from tests.factories import CORPUS_DIR, add_member, corpus, make_document, make_kb, make_user

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

KBS = reverse("web:knowledge_bases")
NEW = reverse("web:kb_new")
UPLOAD = reverse("web:upload")
CORPUS_CHUNKING = {"chunk_size": 64, "chunk_overlap": 12}
BEE_TITLE = "How a Honeybee Colony Works"


def kb_url(kb, name: str = "web:kb") -> str:
    return reverse(name, args=[kb.pk])


def doc_url(document, name: str) -> str:
    return reverse(name, args=[document.knowledge_base_id, document.pk])


def history(kb) -> list[LogEntry]:
    return list(LogEntry.objects.filter(object_id=str(kb.pk)).order_by("pk"))


def html_of(response) -> str:
    return response.content.decode()


@pytest.fixture
def owner():
    return make_user(username="olga", email="olga@example.org")


@pytest.fixture
def bees(owner, ingestion_service):
    """A KB of its owner's holding the bee text, indexed; (kb, document)."""
    kb = make_kb(owner=owner, name="Nature notes", **CORPUS_CHUNKING)
    text = dict(corpus())[BEE_TITLE]
    document = make_document(kb=kb, title=BEE_TITLE, text=text, tags=["insects"], metadata={"year": 2021})
    document = async_to_sync(ingestion_service.ingest_now)(document_id=document.pk, worker_id="tests")
    assert document.status == DocumentStatus.READY, document.error
    return kb, document


class TestCreatingAKnowledgeBase:
    def test_any_signed_in_user_creates_one_with_the_default_chunk_settings_explained(self, client):
        user = make_user(username="newcomer")
        client.force_login(user)
        form = html_of(client.get(NEW))
        assert re.search(r'name="chunk_size" value="200"', form)
        assert re.search(r'name="chunk_overlap" value="40"', form)
        assert "The default, 200" in form and "At most 254" in form

        response = client.post(
            NEW,
            {"name": "Team handbook", "description": "How we work", "chunk_size": 120, "chunk_overlap": 20},
        )

        kb = KnowledgeBase.objects.get(name="Team handbook")
        assert response.status_code == 302 and response["Location"] == kb_url(kb)
        assert (kb.owner, kb.description, kb.chunk_size, kb.chunk_overlap) == (user, "How we work", 120, 20)
        assert Membership.objects.get(knowledge_base=kb, user=user).role == Role.OWNER
        assert [(e.action_flag, e.user_id) for e in history(kb)] == [(ADDITION, user.pk)]
        page = html_of(client.get(kb_url(kb)))
        assert "Team handbook is yours" in page and "you are owner" in page

    def test_two_people_may_each_have_a_kb_of_the_same_name_and_any_script_may_name_one(self, client):
        make_kb(owner=make_user(username="first"), name="Team handbook")
        client.force_login(make_user(username="second"))
        for name in ("Team handbook", "Справочник"):
            response = client.post(NEW, {"name": name, "chunk_size": 200, "chunk_overlap": 40})
            assert response.status_code == 302, html_of(response)
        slugs = set(KnowledgeBase.objects.values_list("slug", flat=True))
        assert {"team-handbook", "team-handbook-2"} <= slugs
        assert any(re.fullmatch(r"kb-[0-9a-f]{8}", slug) for slug in slugs)

    def test_chunk_settings_the_model_cannot_take_are_refused_and_nothing_is_made(self, client):
        client.force_login(make_user(username="newcomer"))
        response = client.post(NEW, {"name": "Odd", "chunk_size": 50, "chunk_overlap": 50})
        assert "Chunk overlap must be at least 0 and below the chunk size (50)" in html_of(response)
        response = client.post(NEW, {"name": "Odd", "chunk_size": 5000, "chunk_overlap": 10})
        assert 'aria-invalid="true"' in html_of(response)
        assert not KnowledgeBase.objects.filter(name="Odd").exists()

    def test_a_site_that_limits_creation_to_staff_refuses_others_here_and_in_the_api(self, client, settings):
        settings.KB_CREATORS = "staff"
        member = make_user(username="member")
        client.force_login(member)
        assert "New knowledge base" not in html_of(client.get(KBS))
        page = client.post(NEW, {"name": "Mine", "chunk_size": 200, "chunk_overlap": 40})
        assert page.status_code == 403 and "ask an administrator" in html_of(page)
        token = ApiTokenService().create_token(user=member, name="t").secret
        answer = async_to_sync(TestAsyncClient(api).post)(
            "/kbs", json={"name": "Mine"}, headers={"Authorization": f"Bearer {token}"}
        )
        assert answer.status_code == 403 and "only staff" in answer.json()["message"]
        assert not KnowledgeBase.objects.filter(name="Mine").exists()

        client.force_login(make_user(username="staffer", is_staff=True))
        assert client.post(NEW, {"name": "Mine", "chunk_size": 200, "chunk_overlap": 40}).status_code == 302

    def test_a_site_that_limits_creation_to_a_group_lets_its_members_create(self, client, settings):
        settings.KB_CREATORS = "group:kb-makers"
        maker = make_user(username="maker")
        maker.groups.add(Group.objects.create(name="kb-makers"))
        client.force_login(make_user(username="other"))
        assert client.get(NEW).status_code == 403
        client.force_login(maker)
        assert client.get(NEW).status_code == 200


class TestAKnowledgeBasesDocuments:
    def test_documents_are_filtered_by_status_and_tag_and_paged(self, client, owner):
        kb = make_kb(owner=owner, name="Many")
        for number in range(30):
            make_document(kb=kb, title=f"Note {number:02d}", tags=["odd" if number % 2 else "even", "all"])
        failed = Document.objects.get(knowledge_base=kb, title="Note 07")
        Document.objects.filter(pk=failed.pk).update(
            status=DocumentStatus.FAILED, error="The file is damaged."
        )
        client.force_login(owner)

        first = html_of(client.get(kb_url(kb)))
        assert "Documents 1–25 of 30" in first and first.count('<li class="doc">') == 25
        second = html_of(client.get(kb_url(kb), {"page": 2}))
        assert "Documents 26–30 of 30" in second and "Note 00" in second and "Note 29" not in second

        odd = html_of(client.get(kb_url(kb), {"tag": "odd"}))
        assert "of 15 matching the filter" in odd and "Note 02" not in odd
        only_failed = html_of(client.get(kb_url(kb), {"status": "failed"}))
        assert "of 1 matching" in only_failed and "The file is damaged." in only_failed
        assert "No document matches" in html_of(client.get(kb_url(kb), {"tag": "none-such"}))
        # Page links keep the filter.
        assert "?tag=all&amp;page=2" in html_of(client.get(kb_url(kb), {"tag": "all"}))

    def test_the_page_costs_as_many_queries_for_twenty_five_documents_as_for_two(self, client, owner):
        kb = make_kb(owner=owner, name="Counted")
        client.force_login(owner)
        counts = []
        for total in (2, 30):
            while Document.objects.filter(knowledge_base=kb).count() < total:
                make_document(kb=kb, tags=["a"], metadata={"n": 1})
            with CaptureQueriesContext(connection) as queries:
                assert client.get(kb_url(kb), {"tag": "a"}).status_code == 200
            counts.append(len(queries))
        assert counts[0] == counts[1] > 0

    def test_a_reader_sees_the_documents_without_actions_and_an_outsider_sees_nothing(self, client, bees):
        kb, document = bees
        reader = make_user(username="reader")
        add_member(kb, reader)
        client.force_login(reader)
        page = html_of(client.get(kb_url(kb)))
        assert BEE_TITLE in page and "insects" in page and "you are reader" in page
        assert "Edit labels" not in page and "Members" not in page
        assert client.get(doc_url(document, "web:kb_document_labels")).status_code == 403
        assert client.post(doc_url(document, "web:kb_document_archive")).status_code == 403
        assert client.post(doc_url(document, "web:kb_document_delete")).status_code == 403
        assert client.get(kb_url(kb, "web:kb_members")).status_code == 403
        assert client.get(kb_url(kb, "web:kb_settings")).status_code == 403

        client.force_login(make_user(username="outsider"))
        assert client.get(kb_url(kb)).status_code == 404
        assert client.post(doc_url(document, "web:kb_document_archive")).status_code == 404
        document.refresh_from_db()
        assert not document.is_archived

    def test_an_editor_retries_a_failed_document(self, client, owner):
        kb = make_kb(owner=owner, name="Retries")
        document = make_document(kb=kb, title="Broken")
        Document.objects.filter(pk=document.pk).update(
            status=DocumentStatus.FAILED, error="Damaged.", attempts=5
        )
        editor = make_user(username="editor")
        add_member(kb, editor, Role.EDITOR)
        client.force_login(editor)

        response = client.post(doc_url(document, "web:kb_document_retry"), {"back": "status=failed"})

        assert response["Location"] == kb_url(kb) + "?status=failed#messages"
        document.refresh_from_db()
        assert (document.status, document.error, document.attempts) == (DocumentStatus.PENDING, "", 0)
        assert "Broken is queued again" in html_of(client.get(kb_url(kb)))

    def test_an_editor_archives_restores_and_relabels_a_document_in_its_chunks_too(self, client, bees):
        kb, document = bees
        editor = make_user(username="editor")
        add_member(kb, editor, Role.EDITOR)
        client.force_login(editor)

        client.post(doc_url(document, "web:kb_document_archive"))
        document.refresh_from_db()
        assert document.is_archived
        client.post(doc_url(document, "web:kb_document_restore"))
        document.refresh_from_db()
        assert not document.is_archived

        form = html_of(client.get(doc_url(document, "web:kb_document_labels")))
        assert "insects" in form and "year=2021" in form
        response = client.post(
            doc_url(document, "web:kb_document_labels"),
            {"tags": "insects, farming", "metadata": "year=2024\nstatus=final"},
        )
        assert response.status_code == 302
        document.refresh_from_db()
        assert (document.tags, document.metadata) == (
            ["insects", "farming"],
            {"year": 2024, "status": "final"},
        )
        chunks, _ = async_to_sync(ChunkService().get_chunks_by_document)(
            kb_id=kb.pk, document_id=document.pk, limit=5
        )
        assert chunks and all(
            chunk.tags == ("insects", "farming") and chunk.metadata == {"year": 2024, "status": "final"}
            for chunk in chunks
        )

        refused = client.post(
            doc_url(document, "web:kb_document_labels"), {"tags": "", "metadata": "not a pair"}
        )
        assert "is not key=value" in html_of(refused)

    def test_deleting_a_document_says_what_is_lost_then_removes_it_and_its_chunks(self, client, bees):
        kb, document = bees
        client.force_login(kb.owner)
        confirmation = html_of(client.get(doc_url(document, "web:kb_document_delete")))
        assert f"its {document.chunk_count} indexed passages" in confirmation
        assert "cannot be undone" in confirmation and "archive it instead" in confirmation

        client.post(doc_url(document, "web:kb_document_delete"))

        assert not Document.objects.filter(pk=document.pk).exists()
        assert async_to_sync(ChunkService().count_chunks)(kb_id=kb.pk) == 0


class TestMembers:
    def test_an_owner_adds_by_user_name_or_e_mail_changes_a_role_and_removes_all_recorded(
        self, client, owner
    ):
        kb = make_kb(owner=owner, name="Team")
        make_user(username="rita")
        pat = make_user(username="pat", email="Pat@Example.org")
        client.force_login(owner)

        client.post(kb_url(kb, "web:kb_members"), {"user": "rita", "role": "reader"})
        client.post(kb_url(kb, "web:kb_members"), {"user": "pat@example.org", "role": "editor"})
        roles = dict(Membership.objects.filter(knowledge_base=kb).values_list("user__username", "role"))
        assert roles == {"olga": "owner", "rita": "reader", "pat": "editor"}

        client.post(reverse("web:kb_member_role", args=[kb.pk, pat.pk]), {"role": "owner"})
        assert Membership.objects.get(knowledge_base=kb, user=pat).role == Role.OWNER
        rita = Membership.objects.get(knowledge_base=kb, user__username="rita").user
        client.post(reverse("web:kb_member_remove", args=[kb.pk, rita.pk]))
        assert not Membership.objects.filter(knowledge_base=kb, user=rita).exists()

        entries = [entry for entry in history(kb) if entry.action_flag == CHANGE]
        assert [entry.get_change_message() for entry in entries] == [
            "Added membership “rita is reader of Team”.",
            "Added membership “pat is editor of Team”.",
            "Changed role for membership “pat is owner of Team (was editor)”.",
            "Deleted membership “rita is reader of Team”.",
        ]
        assert {entry.user_id for entry in entries} == {owner.pk}

    def test_an_unknown_user_is_refused_with_a_message(self, client, owner):
        kb = make_kb(owner=owner, name="Team")
        client.force_login(owner)
        response = client.post(kb_url(kb, "web:kb_members"), {"user": "nobody@example.org", "role": "reader"})
        assert response.status_code == 422
        assert "There is no active user &#x27;nobody@example.org&#x27;" in html_of(response)
        assert Membership.objects.filter(knowledge_base=kb).count() == 1

    def test_the_last_owner_can_neither_leave_nor_step_down(self, client):
        # A KB whose creator is gone: its one owner member is the last one.
        owner = make_user(username="solo")
        kb = make_kb(owner=None, name="Orphaned")
        add_member(kb, owner, Role.OWNER)
        client.force_login(owner)

        left = client.post(reverse("web:kb_member_remove", args=[kb.pk, owner.pk]), follow=True)
        assert "solo is the last owner of &#x27;Orphaned&#x27;: add another owner first." in html_of(left)
        client.post(reverse("web:kb_member_role", args=[kb.pk, owner.pk]), {"role": "reader"})
        assert Membership.objects.get(knowledge_base=kb, user=owner).role == Role.OWNER
        assert history(kb) == []

    def test_an_owner_who_leaves_while_another_remains_is_sent_to_their_list(self, client, owner):
        colleague = make_user(username="colleague")
        kb = make_kb(owner=colleague, name="Shared")
        add_member(kb, owner, Role.OWNER)
        client.force_login(owner)
        response = client.post(reverse("web:kb_member_remove", args=[kb.pk, owner.pk]))
        assert response["Location"] == KBS + "#messages"
        assert client.get(kb_url(kb)).status_code == 404

    def test_an_editor_may_not_manage_members(self, client, owner):
        kb = make_kb(owner=owner, name="Team")
        editor = make_user(username="editor")
        add_member(kb, editor, Role.EDITOR)
        client.force_login(editor)
        assert (
            client.post(kb_url(kb, "web:kb_members"), {"user": "editor", "role": "owner"}).status_code == 403
        )
        assert client.post(reverse("web:kb_member_remove", args=[kb.pk, owner.pk])).status_code == 403
        assert Membership.objects.get(knowledge_base=kb, user=editor).role == Role.EDITOR


class TestSettings:
    def test_new_chunk_settings_send_the_indexed_documents_back_and_show_progress(self, client, bees):
        kb, document = bees
        client.force_login(kb.owner)
        response = client.post(
            kb_url(kb, "web:kb_settings"),
            {"name": "Nature", "description": "Bees and more", "chunk_size": 48, "chunk_overlap": 8},
            follow=True,
        )
        page = html_of(response)
        assert "1 document is being chunked again" in page
        assert re.search(r'<progress id="indexing-progress" max="1" value="0">', page)
        kb.refresh_from_db()
        document.refresh_from_db()
        assert (kb.name, kb.description, kb.chunk_size, kb.chunk_overlap) == (
            "Nature",
            "Bees and more",
            48,
            8,
        )
        assert document.status == DocumentStatus.PENDING
        [entry] = [e for e in history(kb) if e.action_flag == CHANGE]
        assert entry.get_change_message() == "Changed Name, Description, Chunk size and Chunk overlap."

    def test_a_rename_alone_sends_nothing_back(self, client, bees):
        kb, document = bees
        client.force_login(kb.owner)
        client.post(kb_url(kb, "web:kb_settings"), {"name": "Renamed", "chunk_size": 64, "chunk_overlap": 12})
        document.refresh_from_db()
        assert document.status == DocumentStatus.READY
        assert KnowledgeBase.objects.get(pk=kb.pk).name == "Renamed"

    def test_deleting_needs_the_name_typed_exactly_then_removes_everything(self, client, bees):
        kb, document = bees
        client.force_login(kb.owner)
        page = html_of(client.get(kb_url(kb, "web:kb_settings")))
        assert (
            "removes its 1 document (text, labels and indexed passages)" in page and "its 1 member." in page
        )

        refused = client.post(kb_url(kb, "web:kb_delete"), {"confirm_name": "nature notes"})
        assert (
            refused.status_code == 422
            and "Type the knowledge base&#x27;s name, Nature notes, exactly" in html_of(refused)
        )
        assert KnowledgeBase.objects.filter(pk=kb.pk).exists()

        response = client.post(kb_url(kb, "web:kb_delete"), {"confirm_name": "Nature notes"})
        assert response["Location"] == KBS + "#messages"
        assert not KnowledgeBase.objects.filter(pk=kb.pk).exists()
        assert not Document.objects.filter(pk=document.pk).exists()
        assert history(kb)[-1].action_flag == DELETION


class TestTheUploadPage:
    def test_roles_shown_are_the_real_ones(self, client, owner):
        kb = make_kb(owner=owner, name="Mine")
        other = make_kb(owner=make_user(username="someone"), name="Theirs")
        add_member(other, owner, Role.EDITOR)
        client.force_login(owner)
        page = html_of(client.get(KBS))
        assert re.search(r"Mine</a> <span class=\"role\">owner</span>", page)
        assert re.search(r"Theirs</a> <span class=\"role\">editor</span>", page)
        client.force_login(make_user(username="root", superuser=True))
        assert re.search(r"Mine</a> <span class=\"role\">owner</span>", html_of(client.get(KBS)))
        assert kb.pk

    def test_the_kb_last_uploaded_to_is_chosen_again_and_a_refusal_stays_in_view(self, client, owner):
        first = make_kb(owner=owner, name="Alpha")
        second = make_kb(owner=owner, name="Beta")
        client.force_login(owner)
        note = SimpleUploadedFile("tides.md", (CORPUS_DIR / "tides.md").read_bytes())
        response = client.post(UPLOAD, {"knowledge_base": second.pk, "files": [note]})
        assert response["Location"] == KBS + "#messages"
        page = html_of(client.get(KBS))
        assert f'<option value="{second.pk}" selected>' in page
        assert f'<option value="{first.pk}" selected>' not in page

        again = SimpleUploadedFile("tides.md", (CORPUS_DIR / "tides.md").read_bytes())
        response = client.post(UPLOAD, {"knowledge_base": second.pk, "files": [again]})
        assert response["Location"] == KBS + "#messages"
        assert "it was not added again" in html_of(client.get(KBS))
        # A link from a KB's page chooses that KB.
        assert f'<option value="{first.pk}" selected>' in html_of(client.get(KBS, {"kb": first.pk}))

    def test_the_counts_table_refreshes_with_the_document_list(self, client, owner):
        kb = make_kb(owner=owner, name="Alpha")
        make_document(kb=kb)
        client.force_login(owner)
        page = html_of(client.get(KBS))
        assert 'id="kb-counts" data-refresh="on"' in page
        assert 'id="documents" data-refresh="on"' in page


class TestMetadataFields:
    def test_the_owner_sees_and_changes_the_declared_fields_on_the_settings_page(self, client, owner):
        kb = make_kb(owner=owner, name="Nature notes", **CORPUS_CHUNKING)
        make_document(kb=kb, title="Bees", metadata={"year": 2024, "code": "0042"})
        client.force_login(owner)

        page = html_of(client.get(kb_url(kb, "web:kb_settings")))
        saved = client.post(
            kb_url(kb, "web:kb_fields"), {"declared_fields": "code: text\nyear: number\nshelf: text"}
        )
        refused = client.post(kb_url(kb, "web:kb_fields"), {"declared_fields": "code: number\nyear: number"})

        assert "Metadata fields" in page and "code: text\nyear: number" in page
        assert saved.status_code == 302
        assert KnowledgeBase.objects.get(pk=kb.pk).metadata_fields == {
            "code": "text",
            "shelf": "text",
            "year": "number",
        }
        assert refused.status_code == 422
        assert "code cannot be number: 1 document value(s) are not" in html_of(refused)
        [entry] = [e for e in history(kb) if e.action_flag == CHANGE]
        assert entry.get_change_message() == "Changed Metadata fields."

    def test_an_editor_may_not_change_the_fields(self, client, owner):
        kb = make_kb(owner=owner, name="Nature notes", **CORPUS_CHUNKING)
        editor = make_user(username="eve")
        add_member(kb, editor, Role.EDITOR)
        client.force_login(editor)

        response = client.post(kb_url(kb, "web:kb_fields"), {"declared_fields": "year: number"})

        assert response.status_code == 403
        assert KnowledgeBase.objects.get(pk=kb.pk).metadata_fields == {}
