"""The HTTP API through ninja's test client: each endpoint's happy path and the ways a call is refused."""

from __future__ import annotations

import base64
import time
from uuid import uuid4

import pytest
from asgiref.sync import sync_to_async
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.middleware.csrf import CSRF_ALLOWED_CHARS
from django.test import AsyncClient
from django.utils.crypto import get_random_string
from ninja.testing import TestAsyncClient

from kbsite.api import api
from knowledge.ingestion.worker import IngestionWorker
from knowledge.models import Document, DocumentStatus, KnowledgeBase, Membership, Role
from knowledge.services.tokens import ApiTokenService
from search.models import SearchAudit
from search.qdrant import QdrantConfig, qdrant_service
from search.services.chunks import ChunkService
from tests.factories import add_member, corpus, make_document, make_kb, make_user
from tests.support.qdrant_grpc import LoopbackQdrantServer
from tests.support.tenants import holds_points

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

client = TestAsyncClient(api)
API_ROOT = "/api/v1"
NOWHERE = "0b1e2c3d-0000-4000-8000-000000000000"  # a KB id nobody has (fixed, so test ids are stable)


def corpus_document(word: str) -> tuple[str, str]:
    """(title, text) of the corpus document whose title has this word."""
    return next(item for item in corpus() if word in item[0])


BEES = corpus_document("Honeybee")
TIDES = corpus_document("Tides")
SOURDOUGH = corpus_document("Sourdough")
VOLCANOES = corpus_document("Volcanoes")


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def issue_token(user, name: str = "tests") -> str:
    return ApiTokenService().create_token(user=user, name=name).secret


def relative(location: str) -> str:
    """An absolute API URL (a Location header, a document's `url`) as the test client's path."""
    assert location.startswith(API_ROOT), location
    return location[len(API_ROOT) :]


# Who calls: the KB's owner, a reader, an editor, and someone with no role on it.


@pytest.fixture
def owner(test_user):
    return test_user


@pytest.fixture
def owner_headers(owner):
    return bearer(issue_token(owner))


@pytest.fixture
def kb(owner):
    return make_kb(owner=owner, name="Field notes", slug="field-notes", chunk_size=32, chunk_overlap=4)


@pytest.fixture
def reader(kb):
    user = make_user(username="rita")
    add_member(kb, user, Role.READER)
    return user


@pytest.fixture
def reader_headers(reader):
    return bearer(issue_token(reader))


@pytest.fixture
def editor(kb):
    user = make_user(username="eddie")
    add_member(kb, user, Role.EDITOR)
    return user


@pytest.fixture
def editor_headers(editor):
    return bearer(issue_token(editor))


@pytest.fixture(params=[Role.READER, Role.EDITOR], ids=["reader", "editor"])
def non_owner_headers(request, kb):
    """A member of the KB below owner: each test taking it runs once as reader, once as editor."""
    user = make_user(username=f"{request.param}-member")
    add_member(kb, user, request.param)
    return bearer(issue_token(user))


@pytest.fixture
def stranger_headers(other_user):
    return bearer(issue_token(other_user))


async def add_ready_document(kb, ingestion, title_and_text) -> Document:
    title, text = title_and_text
    document = await sync_to_async(make_document)(kb=kb, title=title, text=text)
    document = await ingestion.ingest_now(document_id=document.id, worker_id="tests")
    assert document.status == DocumentStatus.READY, document.error
    return document


@pytest.fixture
async def ready_document(kb, ingestion_service):
    """The tides text in 32-token chunks: a few dozen of them."""
    return await add_ready_document(kb, ingestion_service, TIDES)


# Authentication


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/kbs", None),
        ("POST", "/kbs", {"name": "Nope"}),
        ("GET", f"/kbs/{NOWHERE}", None),
        ("POST", "/search", {"query": "tides", "kb_ids": [NOWHERE]}),
        ("GET", "/search/history", None),
    ],
)
async def test_a_call_without_credentials_answers_401_with_a_bearer_challenge(db, method, path, body) -> None:
    response = await client.request(method, path, json=body)

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="kbsite"'
    assert response.json()["code"] == "unauthenticated"
    assert set(response.json()) == {"code", "message", "detail"}


@pytest.mark.parametrize(
    "authorization",
    ["Bearer kbs_0123456789ab_not-a-real-secret", "Bearer nonsense", "Basic YWxpY2U6cHc=", "Bearer "],
)
async def test_an_unknown_or_malformed_token_answers_401(test_user, authorization) -> None:
    response = await client.get("/kbs", headers={"Authorization": authorization})

    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")


async def test_a_token_with_the_right_prefix_but_a_wrong_secret_answers_401(test_user) -> None:
    secret = await sync_to_async(issue_token)(test_user)
    forged = secret[:-4] + ("aaaa" if not secret.endswith("aaaa") else "bbbb")

    response = await client.get("/kbs", headers=bearer(forged))

    assert response.status_code == 401


async def test_a_revoked_token_answers_401(test_user) -> None:
    issued = await sync_to_async(ApiTokenService().create_token)(user=test_user, name="laptop")
    assert (await client.get("/kbs", headers=bearer(issued.secret))).status_code == 200

    await sync_to_async(ApiTokenService().revoke)(tokens=[issued.token])

    response = await client.get("/kbs", headers=bearer(issued.secret))
    assert response.status_code == 401
    assert response.json()["code"] == "unauthenticated"


async def test_the_token_of_a_deactivated_user_answers_401(test_user) -> None:
    secret = await sync_to_async(issue_token)(test_user)
    test_user.is_active = False
    await test_user.asave(update_fields=["is_active"])

    response = await client.get("/kbs", headers=bearer(secret))

    assert response.status_code == 401


async def test_the_session_of_a_logged_in_user_works_for_reads(owner, kb) -> None:
    response = await client.get("/kbs", user=owner, COOKIES={"sessionid": "from-the-admin"})

    assert response.status_code == 200
    assert [item["slug"] for item in response.json()["items"]] == ["field-notes"]


async def test_a_session_through_the_whole_django_stack_works_for_reads(owner, kb) -> None:
    browser = AsyncClient()
    await browser.aforce_login(owner)

    response = await browser.get(f"{API_ROOT}/kbs/{kb.id}")

    assert response.status_code == 200
    assert response.json()["name"] == "Field notes"


async def test_an_unsafe_call_on_a_session_without_the_csrf_token_answers_403(owner, kb) -> None:
    response = await client.patch(
        f"/kbs/{kb.id}",
        json={"name": "Renamed"},
        user=owner,
        COOKIES={"sessionid": "from-the-admin"},
        _dont_enforce_csrf_checks=False,
    )

    assert response.status_code == 403
    assert response.json()["code"] == "forbidden"
    assert (await KnowledgeBase.objects.aget(pk=kb.pk)).name == "Field notes"


async def test_an_unsafe_call_on_a_session_with_the_csrf_token_is_allowed(owner, kb) -> None:
    csrf_secret = get_random_string(32, CSRF_ALLOWED_CHARS)

    response = await client.patch(
        f"/kbs/{kb.id}",
        json={"name": "Renamed"},
        user=owner,
        COOKIES={"sessionid": "from-the-admin", "csrftoken": csrf_secret},
        headers={"X-CSRFTOKEN": csrf_secret},  # the test client does not upper-case META keys
        _dont_enforce_csrf_checks=False,
    )

    assert response.status_code == 200
    assert response.json()["name"] == "Renamed"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer kbs_0123456789ab_revoked-or-wrong"}])
async def test_an_unsafe_call_with_no_valid_token_answers_401_through_the_whole_stack(
    test_user, headers
) -> None:
    # A real API client sends no CSRF cookie; enforce_csrf_checks makes Django's client behave like one.
    api_client = AsyncClient(enforce_csrf_checks=True)

    response = await api_client.post(
        f"{API_ROOT}/search",
        {"query": "tides", "kb_ids": [str(uuid4())]},
        content_type="application/json",
        headers=headers,
    )

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="kbsite"'


async def test_a_read_with_no_valid_token_answers_401_through_the_whole_stack(test_user) -> None:
    response = await AsyncClient(enforce_csrf_checks=True).get(f"{API_ROOT}/kbs")

    assert response.status_code == 401


# Knowledge bases


async def test_listing_knowledge_bases_shows_only_readable_ones_paginated(
    owner, owner_headers, other_user
) -> None:
    for name in ("Charlie", "Alpha", "Bravo"):
        await sync_to_async(make_kb)(owner=owner, name=name)
    await sync_to_async(make_kb)(owner=other_user, name="Not yours")

    everything = await client.get("/kbs", headers=owner_headers)
    page = await client.get("/kbs?limit=2&offset=1", headers=owner_headers)

    assert everything.status_code == 200
    assert everything.json()["count"] == 3
    assert [kb["name"] for kb in everything.json()["items"]] == ["Alpha", "Bravo", "Charlie"]
    assert page.json()["count"] == 3
    assert [kb["name"] for kb in page.json()["items"]] == ["Bravo", "Charlie"]
    assert everything.json()["items"][0]["owner"] == owner.username


@pytest.mark.parametrize("query", ["limit=0", "limit=abc", "offset=-1"])
async def test_listing_knowledge_bases_with_bad_paging_answers_422(owner_headers, query) -> None:
    response = await client.get(f"/kbs?{query}", headers=owner_headers)

    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"


async def test_a_superuser_sees_and_manages_every_knowledge_base(kb) -> None:
    admin = await sync_to_async(make_user)(username="root", superuser=True)
    headers = bearer(await sync_to_async(issue_token)(admin))

    listed = await client.get("/kbs", headers=headers)
    renamed = await client.patch(f"/kbs/{kb.id}", json={"name": "Renamed by admin"}, headers=headers)
    members = await client.get(f"/kbs/{kb.id}/members", headers=headers)

    assert [item["id"] for item in listed.json()["items"]] == [str(kb.id)]
    assert renamed.status_code == 200 and renamed.json()["name"] == "Renamed by admin"
    assert members.status_code == 200


async def test_creating_a_knowledge_base_makes_the_caller_its_owner(owner, owner_headers) -> None:
    response = await client.post(
        "/kbs",
        json={
            "name": "Tide tables",
            "description": "When the sea comes in.",
            "chunk_size": 100,
            "chunk_overlap": 10,
        },
        headers=owner_headers,
    )

    assert response.status_code == 201
    body = response.json()
    assert body["slug"] == "tide-tables"
    assert body["owner"] == owner.username
    assert (body["chunk_size"], body["chunk_overlap"]) == (100, 10)
    assert body["vector_size"] > 0 and body["embedding_model"]
    membership = await Membership.objects.aget(knowledge_base_id=body["id"])
    assert (membership.user_id, membership.role) == (owner.pk, Role.OWNER)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"name": "Notes", "slug": "not a slug!"}, "validation_error"),
        ({"name": "Notes", "slug": "x" * 101}, "validation_error"),
        ({"name": ""}, "validation_error"),
        ({"slug": "no-name"}, "validation_error"),
        ({"name": "Notes", "chunk_size": 0}, "validation_error"),
        ({"name": "Notes", "chunk_size": 255}, "validation_error"),
        ({"name": "Notes", "chunk_size": 20, "chunk_overlap": 20}, "invalid_input"),
        ({"name": "   "}, "invalid_input"),
        ({"name": "!!!"}, "invalid_input"),
    ],
)
async def test_creating_a_knowledge_base_from_a_bad_body_answers_422(owner_headers, body, code) -> None:
    response = await client.post("/kbs", json=body, headers=owner_headers)

    assert response.status_code == 422, response.json()
    assert response.json()["code"] == code
    assert not await KnowledgeBase.objects.aexists()


async def test_creating_a_knowledge_base_with_a_taken_slug_answers_409(kb, owner_headers) -> None:
    explicit = await client.post("/kbs", json={"name": "Other", "slug": "field-notes"}, headers=owner_headers)
    from_name = await client.post("/kbs", json={"name": "Field Notes"}, headers=owner_headers)

    for response in (explicit, from_name):
        assert response.status_code == 409
        assert response.json()["code"] == "duplicate_slug"
    assert await KnowledgeBase.objects.acount() == 1


async def test_a_malformed_json_body_answers_400(owner_headers) -> None:
    response = await client.post("/kbs", data='{"name": "Unclosed', headers=owner_headers)

    assert response.status_code == 400
    assert response.json()["code"] == "bad_request"


async def test_reading_a_knowledge_base(kb, reader_headers) -> None:
    response = await client.get(f"/kbs/{kb.id}", headers=reader_headers)

    assert response.status_code == 200
    assert response.json()["id"] == str(kb.id)
    assert response.json()["slug"] == "field-notes"


async def test_an_unknown_knowledge_base_answers_404(owner_headers) -> None:
    missing = uuid4()

    response = await client.get(f"/kbs/{missing}", headers=owner_headers)

    assert response.status_code == 404
    assert response.json()["code"] == "kb_not_found"
    assert str(missing) in response.json()["message"]


@pytest.mark.parametrize("path", ["/kbs/no-such-kb", "/kbs/no-such-kb/stats"])
async def test_a_slug_that_names_no_knowledge_base_answers_404_naming_it(owner_headers, path) -> None:
    response = await client.get(path, headers=owner_headers)

    assert response.status_code == 404
    assert response.json()["code"] == "kb_not_found"
    assert "no-such-kb" in response.json()["message"]


async def test_a_document_id_that_is_not_a_uuid_answers_422(owner_headers) -> None:
    response = await client.get(f"/kbs/{NOWHERE}/documents/not-a-uuid", headers=owner_headers)

    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"


async def test_the_owner_renames_and_retunes_a_knowledge_base(kb, owner_headers) -> None:
    response = await client.patch(
        f"/kbs/{kb.id}", json={"name": "Field notes 2026", "chunk_size": 48}, headers=owner_headers
    )

    assert response.status_code == 200
    assert (response.json()["name"], response.json()["chunk_size"]) == ("Field notes 2026", 48)
    assert response.json()["slug"] == "field-notes"
    stored = await KnowledgeBase.objects.aget(pk=kb.pk)
    assert (stored.name, stored.chunk_size, stored.chunk_overlap) == ("Field notes 2026", 48, 4)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"name": ""}, "validation_error"),
        ({"chunk_size": 1000}, "validation_error"),
        ({"chunk_overlap": 32}, "invalid_input"),
        ({"name": "   "}, "invalid_input"),
    ],
)
async def test_changing_a_knowledge_base_to_something_invalid_answers_422(
    kb, owner_headers, body, code
) -> None:
    response = await client.patch(f"/kbs/{kb.id}", json=body, headers=owner_headers)

    assert response.status_code == 422
    assert response.json()["code"] == code
    stored = await KnowledgeBase.objects.aget(pk=kb.pk)
    assert (stored.name, stored.chunk_size, stored.chunk_overlap) == ("Field notes", 32, 4)


async def test_only_owners_may_change_a_knowledge_base(kb, non_owner_headers) -> None:
    response = await client.patch(f"/kbs/{kb.id}", json={"name": "Mine now"}, headers=non_owner_headers)

    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"
    assert (await KnowledgeBase.objects.aget(pk=kb.pk)).name == "Field notes"


async def test_stats_count_documents_by_status_archived_and_chunks(
    kb, ready_document, owner_headers, ingestion_service
) -> None:
    archived = await add_ready_document(kb, ingestion_service, VOLCANOES)
    await client.post(f"/kbs/{kb.id}/documents/{archived.id}/archive", headers=owner_headers)
    await sync_to_async(make_document)(kb=kb, title="Still queued")

    response = await client.get(f"/kbs/{kb.id}/stats", headers=owner_headers)

    assert response.status_code == 200
    assert response.json() == {
        "documents": {"pending": 1, "processing": 0, "ready": 2, "failed": 0},
        "archived": 1,
        "chunks": ready_document.chunk_count + archived.chunk_count,
    }
    assert response.json()["chunks"] == await ChunkService().count_chunks(kb_id=kb.id)


async def test_stats_of_an_empty_knowledge_base_are_zero(kb, reader_headers) -> None:
    response = await client.get(f"/kbs/{kb.id}/stats", headers=reader_headers)

    assert response.status_code == 200
    assert response.json() == {
        "documents": {"pending": 0, "processing": 0, "ready": 0, "failed": 0},
        "archived": 0,
        "chunks": 0,
    }


async def test_deleting_a_knowledge_base_removes_its_documents_and_points(
    kb, ready_document, owner_headers
) -> None:
    assert await holds_points(kb.id)

    response = await client.delete(f"/kbs/{kb.id}", headers=owner_headers)

    assert response.status_code == 204
    assert not await holds_points(kb.id)
    assert not await Document.objects.filter(pk=ready_document.pk).aexists()
    assert (await client.get(f"/kbs/{kb.id}", headers=owner_headers)).status_code == 404


async def test_only_owners_may_delete_a_knowledge_base(kb, ready_document, non_owner_headers) -> None:
    response = await client.delete(f"/kbs/{kb.id}", headers=non_owner_headers)

    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"
    assert await KnowledgeBase.objects.filter(pk=kb.pk).aexists()
    assert await ChunkService().count_chunks(kb_id=kb.id) == ready_document.chunk_count


# Members


async def test_the_owner_lists_members(kb, owner, reader, editor, owner_headers) -> None:
    response = await client.get(f"/kbs/{kb.id}/members", headers=owner_headers)

    assert response.status_code == 200
    assert [(m["username"], m["role"]) for m in response.json()] == [
        (owner.username, "owner"),
        ("rita", "reader"),
        ("eddie", "editor"),
    ]
    assert response.json()[1]["user_id"] == reader.pk


async def test_adding_a_member_answers_201_and_changing_their_role_200(kb, other_user, owner_headers) -> None:
    added = await client.post(f"/kbs/{kb.id}/members", json={"username": "bob"}, headers=owner_headers)
    changed = await client.post(
        f"/kbs/{kb.id}/members", json={"username": "bob", "role": "editor"}, headers=owner_headers
    )

    assert added.status_code == 201
    assert (added.json()["user_id"], added.json()["username"], added.json()["role"]) == (
        other_user.pk,
        "bob",
        "reader",
    )
    assert changed.status_code == 200
    assert changed.json()["role"] == "editor"
    membership = await Membership.objects.aget(knowledge_base=kb, user=other_user)
    assert membership.role == Role.EDITOR


async def test_a_new_member_can_read_the_knowledge_base(
    kb, other_user, owner_headers, stranger_headers
) -> None:
    assert (await client.get(f"/kbs/{kb.id}", headers=stranger_headers)).status_code == 404

    await client.post(f"/kbs/{kb.id}/members", json={"username": "bob"}, headers=owner_headers)

    assert (await client.get(f"/kbs/{kb.id}", headers=stranger_headers)).status_code == 200


async def test_removing_a_member_answers_204_and_takes_their_access(
    kb, reader, owner_headers, reader_headers
) -> None:
    response = await client.delete(f"/kbs/{kb.id}/members/{reader.pk}", headers=owner_headers)

    assert response.status_code == 204
    assert not await Membership.objects.filter(knowledge_base=kb, user=reader).aexists()
    assert (await client.get(f"/kbs/{kb.id}", headers=reader_headers)).status_code == 404


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"username": "nobody-of-that-name"}, "invalid_input"),
        ({"username": "bob", "role": "admin"}, "validation_error"),
        ({"username": ""}, "validation_error"),
        ({"role": "reader"}, "validation_error"),
    ],
)
async def test_adding_an_unknown_user_or_role_answers_422(kb, other_user, owner_headers, body, code) -> None:
    response = await client.post(f"/kbs/{kb.id}/members", json=body, headers=owner_headers)

    assert response.status_code == 422
    assert response.json()["code"] == code
    assert await Membership.objects.filter(knowledge_base=kb).acount() == 1


async def test_the_unknown_username_is_named_in_the_error(kb, owner_headers) -> None:
    response = await client.post(f"/kbs/{kb.id}/members", json={"username": "ghost"}, headers=owner_headers)

    assert response.json()["detail"] == {"username": "ghost"}


async def test_an_inactive_user_cannot_be_added(kb, owner_headers) -> None:
    await sync_to_async(make_user)(username="gone", is_active=False)

    response = await client.post(f"/kbs/{kb.id}/members", json={"username": "gone"}, headers=owner_headers)

    assert response.status_code == 422
    assert response.json()["code"] == "invalid_input"


async def test_removing_someone_who_is_not_a_member_answers_404(kb, other_user, owner_headers) -> None:
    for user_id in (other_user.pk, 999_999):
        response = await client.delete(f"/kbs/{kb.id}/members/{user_id}", headers=owner_headers)

        assert response.status_code == 404
        assert response.json()["code"] == "member_not_found"


@pytest.mark.parametrize("user_id", ["0", "-3", str(2**63), "99999999999999999999999"])
async def test_a_member_id_no_database_can_hold_answers_422(kb, owner_headers, user_id) -> None:
    response = await client.delete(f"/kbs/{kb.id}/members/{user_id}", headers=owner_headers)

    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"


async def test_removing_the_last_owner_is_refused(kb, owner, owner_headers) -> None:
    response = await client.delete(f"/kbs/{kb.id}/members/{owner.pk}", headers=owner_headers)

    assert response.status_code == 422
    assert response.json()["code"] == "invalid_input"
    assert "last owner" in response.json()["message"]
    assert await Membership.objects.filter(knowledge_base=kb, user=owner, role=Role.OWNER).aexists()


async def test_an_owner_may_leave_once_another_owner_exists(kb, owner, other_user, owner_headers) -> None:
    await client.post(
        f"/kbs/{kb.id}/members", json={"username": "bob", "role": "owner"}, headers=owner_headers
    )

    response = await client.delete(f"/kbs/{kb.id}/members/{owner.pk}", headers=owner_headers)

    assert response.status_code == 204
    assert await Membership.objects.filter(knowledge_base=kb, role=Role.OWNER).acount() == 1


async def test_demoting_the_last_owner_is_refused(other_user) -> None:
    orphan_prone = await sync_to_async(make_kb)(owner=None, name="Shared")
    await sync_to_async(add_member)(orphan_prone, other_user, Role.OWNER)
    headers = bearer(await sync_to_async(issue_token)(other_user))

    response = await client.post(
        f"/kbs/{orphan_prone.id}/members", json={"username": "bob", "role": "reader"}, headers=headers
    )

    assert response.status_code == 422
    assert await Membership.objects.filter(knowledge_base=orphan_prone, role=Role.OWNER).aexists()


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/kbs/{kb}/members", None),
        ("POST", "/kbs/{kb}/members", {"username": "bob", "role": "owner"}),
        ("DELETE", "/kbs/{kb}/members/{owner}", None),
    ],
)
async def test_only_owners_may_see_or_change_members(
    kb, owner, other_user, non_owner_headers, method, path, body
) -> None:
    response = await client.request(
        method, path.format(kb=kb.id, owner=owner.pk), json=body, headers=non_owner_headers
    )

    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"
    assert await Membership.objects.filter(knowledge_base=kb).acount() == 2
    assert not await Membership.objects.filter(user=other_user).aexists()


async def test_members_of_an_unknown_knowledge_base_answer_404(owner, owner_headers) -> None:
    response = await client.delete(f"/kbs/{uuid4()}/members/{owner.pk}", headers=owner_headers)

    assert response.status_code == 404
    assert response.json()["code"] == "kb_not_found"


# Documents: upload


async def test_an_upload_is_queued_then_processed_and_polled_until_ready(
    kb, owner_headers, ingestion_service
) -> None:
    file = SimpleUploadedFile("sourdough.md", SOURDOUGH[1].encode(), content_type="text/markdown")

    queued = await client.post(
        f"/kbs/{kb.id}/documents",
        FILES={"file": file},
        content_type="multipart/form-data",
        headers=owner_headers,
    )

    assert queued.status_code == 202
    body = queued.json()
    assert queued["Location"] == body["url"] == f"{API_ROOT}/kbs/{kb.id}/documents/{body['id']}"
    assert (body["status"], body["source_name"], body["source_format"]) == ("pending", "sourdough.md", "md")
    assert body["source_size"] == len(SOURDOUGH[1].encode())
    assert body["progress"] == {"chunks_done": 0, "chunks_total": 0}
    assert body["kb_id"] == str(kb.id) and body["archived"] is False

    processed = await IngestionWorker(service=ingestion_service, poll_seconds=0.05).run(until_idle=True)
    polled = await client.get(relative(queued["Location"]), headers=owner_headers)

    assert processed == 1
    assert polled.status_code == 200
    ready = polled.json()
    assert ready["status"] == "ready" and ready["error"] == ""
    assert ready["title"] == SOURDOUGH[0]
    assert ready["chunk_count"] > 1
    assert ready["progress"] == {"chunks_done": ready["chunk_count"], "chunks_total": ready["chunk_count"]}
    assert await ChunkService().count_chunks(kb_id=kb.id, document_id=body["id"]) == ready["chunk_count"]


async def test_an_upload_keeps_the_title_given_with_it(kb, editor_headers) -> None:
    file = SimpleUploadedFile("notes.txt", b"High water comes about fifty minutes later each day.")

    response = await client.post(
        f"/kbs/{kb.id}/documents",
        {"title": "  Tide notes  "},
        FILES={"file": file},
        content_type="multipart/form-data",
        headers=editor_headers,
    )

    assert response.status_code == 202
    assert response.json()["title"] == "Tide notes"


async def test_a_text_document_is_queued_from_json(kb, owner_headers) -> None:
    response = await client.post(
        f"/kbs/{kb.id}/documents/text",
        json={
            "title": "Tide tables",
            "text": "High water comes later each day.",
            "source_name": "dir/tides.txt",
        },
        content_type="application/json",
        headers=owner_headers,
    )

    assert response.status_code == 202
    body = response.json()
    assert (body["title"], body["source_name"], body["source_format"], body["status"]) == (
        "Tide tables",
        "tides.txt",
        "text",
        "pending",
    )
    assert response["Location"] == body["url"]
    assert (await Document.objects.aget(pk=body["id"])).text == "High water comes later each day."


async def test_a_file_of_the_same_name_replaces_its_document(kb, owner_headers) -> None:
    first = await client.post(
        f"/kbs/{kb.id}/documents",
        FILES={"file": SimpleUploadedFile("notes.txt", b"First version of the notes.")},
        content_type="multipart/form-data",
        headers=owner_headers,
    )
    second = await client.post(
        f"/kbs/{kb.id}/documents",
        FILES={"file": SimpleUploadedFile("notes.txt", b"Second, longer version of the notes.")},
        content_type="multipart/form-data",
        headers=owner_headers,
    )

    assert second.status_code == 202
    assert second.json()["id"] == first.json()["id"]
    assert await Document.objects.filter(knowledge_base=kb).acount() == 1


async def test_the_same_content_twice_answers_409_naming_the_first_document(kb, owner_headers) -> None:
    data = b"The starter is fed with flour and water every day."
    first = await client.post(
        f"/kbs/{kb.id}/documents",
        FILES={"file": SimpleUploadedFile("starter.txt", data)},
        content_type="multipart/form-data",
        headers=owner_headers,
    )
    again = await client.post(
        f"/kbs/{kb.id}/documents",
        FILES={"file": SimpleUploadedFile("copy.txt", data)},
        content_type="multipart/form-data",
        headers=owner_headers,
    )
    as_text = await client.post(
        f"/kbs/{kb.id}/documents/text",
        json={"title": "Starter", "text": data.decode()},
        content_type="application/json",
        headers=owner_headers,
    )

    assert again.status_code == 409
    assert again.json()["code"] == "duplicate_document"
    assert again.json()["detail"] == {"document_id": first.json()["id"]}
    assert as_text.status_code == 409
    assert as_text.json()["detail"] == {"document_id": first.json()["id"]}
    assert await Document.objects.filter(knowledge_base=kb).acount() == 1


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"title": "No text"}, "validation_error"),
        ({"title": "Empty text", "text": ""}, "validation_error"),
        ({"text": "No title"}, "validation_error"),
        ({"title": "Blank", "text": "   \n  "}, "invalid_input"),
        ({"title": "x" * 501, "text": "Too long a title."}, "validation_error"),
        (["not", "an", "object"], "validation_error"),
    ],
)
async def test_a_json_document_without_title_or_text_answers_422(kb, owner_headers, body, code) -> None:
    response = await client.post(
        f"/kbs/{kb.id}/documents/text", json=body, content_type="application/json", headers=owner_headers
    )

    assert response.status_code == 422
    assert response.json()["code"] == code
    assert not await Document.objects.aexists()


async def test_a_json_document_error_lists_the_missing_field(kb, owner_headers) -> None:
    response = await client.post(
        f"/kbs/{kb.id}/documents/text",
        json={"title": "No text"},
        content_type="application/json",
        headers=owner_headers,
    )

    assert [error["loc"] for error in response.json()["detail"]] == [["body", "payload", "text"]]


async def test_a_malformed_json_document_answers_400(kb, owner_headers) -> None:
    response = await client.post(
        f"/kbs/{kb.id}/documents/text",
        data='{"title": "Unclosed',
        content_type="application/json",
        headers=owner_headers,
    )

    assert response.status_code == 400
    assert response.json()["code"] == "bad_request"


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_an_upload_of_another_content_type_answers_415(kb, owner_headers, content_type) -> None:
    response = await client.post(
        f"/kbs/{kb.id}/documents",
        data="title=Notes&text=hello",
        content_type=content_type,
        headers=owner_headers,
    )

    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_format"


async def test_a_multipart_upload_without_a_file_answers_422(kb, owner_headers) -> None:
    response = await client.post(
        f"/kbs/{kb.id}/documents",
        {"title": "Notes"},
        content_type="multipart/form-data",
        headers=owner_headers,
    )

    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"
    assert [error["loc"] for error in response.json()["detail"]] == [["file", "file"]]


@pytest.mark.parametrize(
    ("name", "data", "status", "code"),
    [
        ("setup.exe", b"MZ\x90\x00 not a document", 415, "unsupported_format"),
        ("notes.rtf", b"{\\rtf1 hello}", 415, "unsupported_format"),
        ("noextension", b"plain words", 415, "unsupported_format"),
        ("empty.txt", b"", 422, "invalid_input"),
    ],
)
async def test_a_file_kbsite_cannot_read_is_refused(kb, owner_headers, name, data, status, code) -> None:
    response = await client.post(
        f"/kbs/{kb.id}/documents",
        FILES={"file": SimpleUploadedFile(name, data)},
        content_type="multipart/form-data",
        headers=owner_headers,
    )

    assert response.status_code == status
    assert response.json()["code"] == code
    assert not await Document.objects.aexists()


async def test_an_oversized_file_answers_413(kb, owner_headers, settings) -> None:
    settings.INGESTION = {**settings.INGESTION, "MAX_UPLOAD_BYTES": 1000}

    response = await client.post(
        f"/kbs/{kb.id}/documents",
        FILES={"file": SimpleUploadedFile("big.txt", b"words " * 200)},
        content_type="multipart/form-data",
        headers=owner_headers,
    )

    assert response.status_code == 413
    assert response.json()["code"] == "upload_too_large"
    assert "big.txt" in response.json()["message"]
    assert not await Document.objects.aexists()


async def test_an_oversized_text_document_answers_413(kb, owner_headers, settings) -> None:
    settings.INGESTION = {**settings.INGESTION, "MAX_UPLOAD_BYTES": 1000}

    response = await client.post(
        f"/kbs/{kb.id}/documents/text",
        json={"title": "Long", "text": "words " * 200},
        content_type="application/json",
        headers=owner_headers,
    )

    assert response.status_code == 413
    assert not await Document.objects.aexists()


async def test_a_body_announced_far_over_the_limit_is_refused_before_it_is_read(
    kb, owner_headers, settings
) -> None:
    settings.INGESTION = {**settings.INGESTION, "MAX_UPLOAD_BYTES": 1000}

    response = await client.post(
        f"/kbs/{kb.id}/documents",
        FILES={"file": SimpleUploadedFile("small.txt", b"small")},
        content_type="multipart/form-data",
        headers={**owner_headers, "Content-Length": str(1000 + 64 * 1024 + 1)},
    )

    assert response.status_code == 413
    assert response.json()["code"] == "upload_too_large"


async def test_uploading_to_an_unknown_knowledge_base_answers_404(owner_headers) -> None:
    response = await client.post(
        f"/kbs/{uuid4()}/documents/text",
        json={"title": "Lost", "text": "Nowhere to go."},
        content_type="application/json",
        headers=owner_headers,
    )

    assert response.status_code == 404
    assert response.json()["code"] == "kb_not_found"


async def test_a_reader_may_not_upload(kb, reader_headers) -> None:
    response = await client.post(
        f"/kbs/{kb.id}/documents",
        FILES={"file": SimpleUploadedFile("notes.txt", b"A reader's notes.")},
        content_type="multipart/form-data",
        headers=reader_headers,
    )

    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"
    assert not await Document.objects.aexists()


# Documents: listing and reading


async def test_listing_documents_filters_by_status_and_archived_and_pages(
    kb, ready_document, owner_headers
) -> None:
    queued = [await sync_to_async(make_document)(kb=kb, title=f"Queued {n}") for n in range(3)]
    await client.post(f"/kbs/{kb.id}/documents/{ready_document.id}/archive", headers=owner_headers)
    newest_first = [str(d.id) for d in reversed(queued)] + [str(ready_document.id)]

    async def ids(query: str) -> tuple[int, list[str]]:
        response = await client.get(f"/kbs/{kb.id}/documents?{query}", headers=owner_headers)
        assert response.status_code == 200, response.json()
        return response.json()["count"], [item["id"] for item in response.json()["items"]]

    assert await ids("") == (4, newest_first)
    assert await ids("limit=2") == (4, newest_first[:2])
    assert await ids("limit=2&offset=2") == (4, newest_first[2:])
    assert await ids("status=pending") == (3, newest_first[:3])
    assert await ids("status=ready") == (1, [str(ready_document.id)])
    assert await ids("status=failed") == (0, [])
    assert await ids("archived=true") == (1, [str(ready_document.id)])
    assert await ids("archived=false") == (3, newest_first[:3])
    assert await ids("status=pending&archived=true") == (0, [])


@pytest.mark.parametrize("query", ["status=done", "archived=perhaps", "limit=0", "offset=-1"])
async def test_listing_documents_with_a_bad_filter_answers_422(kb, reader_headers, query) -> None:
    response = await client.get(f"/kbs/{kb.id}/documents?{query}", headers=reader_headers)

    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"


async def test_reading_a_document_shows_its_status_and_progress(kb, ready_document, reader_headers) -> None:
    response = await client.get(f"/kbs/{kb.id}/documents/{ready_document.id}", headers=reader_headers)

    assert response.status_code == 200
    body = response.json()
    assert (body["id"], body["title"], body["status"]) == (str(ready_document.id), TIDES[0], "ready")
    assert body["chunk_count"] == ready_document.chunk_count > 0
    assert body["url"] == f"{API_ROOT}/kbs/{kb.id}/documents/{ready_document.id}"


async def test_an_unknown_document_answers_404(kb, owner, owner_headers) -> None:
    elsewhere = await sync_to_async(make_kb)(owner=owner, name="Elsewhere")
    other_kbs_document = await sync_to_async(make_document)(kb=elsewhere)

    for document_id in (uuid4(), other_kbs_document.id):
        response = await client.get(f"/kbs/{kb.id}/documents/{document_id}", headers=owner_headers)

        assert response.status_code == 404
        assert response.json()["code"] == "document_not_found"


# Documents: chunks


async def test_chunks_are_paged_in_order_by_their_cursor(kb, ready_document, reader_headers) -> None:
    seen, cursor, pages = [], None, 0
    while True:
        query = "limit=7" + (f"&cursor={cursor}" if cursor else "")
        response = await client.get(
            f"/kbs/{kb.id}/documents/{ready_document.id}/chunks?{query}", headers=reader_headers
        )
        assert response.status_code == 200, response.json()
        page = response.json()
        pages += 1
        seen.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert len(page["items"]) == 7

    assert [chunk["chunk_index"] for chunk in seen] == list(range(ready_document.chunk_count))
    assert pages == -(-ready_document.chunk_count // 7)
    text = (await Document.objects.aget(pk=ready_document.pk)).text
    for chunk in seen:
        assert chunk["archived"] is False
        assert chunk["text"] == text[chunk["char_start"] : chunk["char_end"]]
    starts = [chunk["char_start"] for chunk in seen]
    assert starts == sorted(starts)


async def test_one_page_holds_every_chunk_when_the_limit_allows(kb, ready_document, reader_headers) -> None:
    response = await client.get(
        f"/kbs/{kb.id}/documents/{ready_document.id}/chunks?limit=500", headers=reader_headers
    )

    assert len(response.json()["items"]) == ready_document.chunk_count
    assert response.json()["next_cursor"] is None


def _cursor(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        _cursor(b"c:-1"),
        _cursor(b"x:3"),
        _cursor(b"c:three"),
        "!!!",
        "not-a-cursor",
        "a",
        _cursor(b"\xff\xfe"),
    ],
)
async def test_a_cursor_the_api_did_not_give_out_answers_422(
    kb, ready_document, reader_headers, cursor
) -> None:
    response = await client.get(
        f"/kbs/{kb.id}/documents/{ready_document.id}/chunks?cursor={cursor}", headers=reader_headers
    )

    assert response.status_code == 422
    assert response.json()["code"] == "invalid_input"


@pytest.mark.parametrize("query", ["limit=0", "limit=501", f"cursor={'a' * 101}"])
async def test_chunk_paging_out_of_bounds_answers_422(kb, ready_document, reader_headers, query) -> None:
    response = await client.get(
        f"/kbs/{kb.id}/documents/{ready_document.id}/chunks?{query}", headers=reader_headers
    )

    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"


async def test_chunks_of_an_unknown_document_answer_404(kb, reader_headers) -> None:
    response = await client.get(f"/kbs/{kb.id}/documents/{uuid4()}/chunks", headers=reader_headers)

    assert response.status_code == 404
    assert response.json()["code"] == "document_not_found"


# Documents: archive, reindex, delete


async def search_body(headers, query: str, kb_ids, **options) -> dict:
    response = await client.post(
        "/search",
        json={"query": query, "kb_ids": [str(kb_id) for kb_id in kb_ids], **options},
        headers=headers,
    )
    assert response.status_code == 200, response.json()
    return response.json()


async def test_archiving_hides_a_document_from_search_and_unarchiving_restores_it(
    kb, ready_document, editor_headers
) -> None:
    query = "why is high tide later every day"
    found = {r["document_id"] for r in (await search_body(editor_headers, query, [kb.id]))["results"]}
    assert found == {str(ready_document.id)}

    archived = await client.post(
        f"/kbs/{kb.id}/documents/{ready_document.id}/archive", headers=editor_headers
    )

    assert archived.status_code == 200
    assert archived.json()["archived"] is True and archived.json()["archived_at"]
    assert (await search_body(editor_headers, query, [kb.id]))["results"] == []
    with_archived = await search_body(editor_headers, query, [kb.id], include_archived=True)
    assert {r["document_id"] for r in with_archived["results"]} == {str(ready_document.id)}
    chunks = await client.get(f"/kbs/{kb.id}/documents/{ready_document.id}/chunks", headers=editor_headers)
    assert {chunk["archived"] for chunk in chunks.json()["items"]} == {True}

    restored = await client.post(
        f"/kbs/{kb.id}/documents/{ready_document.id}/unarchive", headers=editor_headers
    )

    assert restored.status_code == 200
    assert restored.json()["archived"] is False and restored.json()["archived_at"] is None
    found = {r["document_id"] for r in (await search_body(editor_headers, query, [kb.id]))["results"]}
    assert found == {str(ready_document.id)}


async def test_archiving_twice_changes_nothing_the_second_time(kb, ready_document, owner_headers) -> None:
    first = await client.post(f"/kbs/{kb.id}/documents/{ready_document.id}/archive", headers=owner_headers)
    second = await client.post(f"/kbs/{kb.id}/documents/{ready_document.id}/archive", headers=owner_headers)

    assert second.status_code == 200
    assert second.json()["archived_at"] == first.json()["archived_at"]


async def test_reindexing_answers_202_and_queues_the_document(
    kb, ready_document, editor_headers, ingestion_service
) -> None:
    response = await client.post(
        f"/kbs/{kb.id}/documents/{ready_document.id}/reindex", headers=editor_headers
    )

    assert response.status_code == 202
    assert response.json()["status"] == "pending"
    assert (await Document.objects.aget(pk=ready_document.pk)).status == DocumentStatus.PENDING
    # The old chunks stay searchable until the new ones replace them.
    assert await ChunkService().count_chunks(kb_id=kb.id) == ready_document.chunk_count

    await IngestionWorker(service=ingestion_service, poll_seconds=0.05).run(until_idle=True)

    polled = await client.get(f"/kbs/{kb.id}/documents/{ready_document.id}", headers=editor_headers)
    assert polled.json()["status"] == "ready"
    assert polled.json()["chunk_count"] == ready_document.chunk_count


async def test_deleting_a_document_removes_its_chunks(
    kb, ready_document, owner_headers, ingestion_service
) -> None:
    kept = await add_ready_document(kb, ingestion_service, VOLCANOES)

    response = await client.delete(f"/kbs/{kb.id}/documents/{ready_document.id}", headers=owner_headers)

    assert response.status_code == 204
    assert await ChunkService().count_chunks(kb_id=kb.id, document_id=ready_document.id) == 0
    assert await ChunkService().count_chunks(kb_id=kb.id) == kept.chunk_count
    assert not await Document.objects.filter(pk=ready_document.pk).aexists()
    gone = await client.get(f"/kbs/{kb.id}/documents/{ready_document.id}", headers=owner_headers)
    assert gone.status_code == 404


@pytest.mark.parametrize(
    ("method", "action"),
    [("POST", "archive"), ("POST", "unarchive"), ("POST", "reindex"), ("DELETE", "")],
)
async def test_a_reader_may_not_change_documents(kb, ready_document, reader_headers, method, action) -> None:
    path = f"/kbs/{kb.id}/documents/{ready_document.id}" + (f"/{action}" if action else "")

    response = await client.request(method, path, headers=reader_headers)

    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"
    stored = await Document.objects.aget(pk=ready_document.pk)
    assert (stored.status, stored.archived_at) == (DocumentStatus.READY, None)
    assert await ChunkService().count_chunks(kb_id=kb.id) == ready_document.chunk_count


@pytest.mark.parametrize(
    ("method", "action"),
    [("POST", "archive"), ("POST", "unarchive"), ("POST", "reindex"), ("DELETE", "")],
)
async def test_changing_an_unknown_document_answers_404(kb, editor_headers, method, action) -> None:
    path = f"/kbs/{kb.id}/documents/{uuid4()}" + (f"/{action}" if action else "")

    response = await client.request(method, path, headers=editor_headers)

    assert response.status_code == 404
    assert response.json()["code"] == "document_not_found"


# Search


@pytest.fixture
async def two_kbs(kb, owner, ingestion_service):
    """(kb, other kb, {name: document}): bees and sourdough in one, tides in the other."""
    other = await sync_to_async(make_kb)(owner=owner, name="Coast", chunk_size=64, chunk_overlap=8)
    documents = {
        "bees": await add_ready_document(kb, ingestion_service, BEES),
        "sourdough": await add_ready_document(kb, ingestion_service, SOURDOUGH),
        "tides": await add_ready_document(other, ingestion_service, TIDES),
    }
    return kb, other, documents


async def test_a_search_across_two_knowledge_bases_merges_their_chunks_by_score(
    two_kbs, owner_headers
) -> None:
    kb, other, documents = two_kbs
    total = sum(d.chunk_count for d in documents.values())
    query = "how the moon raises the sea and how bees find flowers"

    everything = (await search_body(owner_headers, query, [kb.id, other.id], limit=100))["results"]
    started = time.perf_counter()
    top = await search_body(owner_headers, query, [kb.id, other.id], limit=5)
    elapsed_ms = (time.perf_counter() - started) * 1000

    assert len(everything) == total
    assert {r["kb_id"] for r in everything} == {str(kb.id), str(other.id)}
    scores = [r["score"] for r in everything]
    assert scores == sorted(scores, reverse=True)
    assert [(r["document_id"], r["chunk_index"]) for r in top["results"]] == [
        (r["document_id"], r["chunk_index"]) for r in everything[:5]
    ]
    # The server's own clock of the search: some time (it embeds the query), within what the caller waited.
    assert 0 < top["took_ms"] <= elapsed_ms


def grouped_by_document(results: list[dict], *, limit: int, group_size: int) -> list[list[tuple[str, int]]]:
    """Ranked chunks grouped by document: documents by their best chunk, each with its best `group_size`."""
    groups: dict[str, list[tuple[str, int]]] = {}
    for r in results:
        hits = groups.setdefault(r["document_id"], [])
        if len(hits) < group_size:
            hits.append((r["document_id"], r["chunk_index"]))
    return list(groups.values())[:limit]


@pytest.mark.parametrize("mode", ["hybrid", "semantic", "keyword"])
async def test_a_grouped_search_counts_documents_across_two_knowledge_bases(two_kbs, owner_headers, mode) -> None:
    kb, other, documents = two_kbs
    query = "how the moon raises the sea and how bees find flowers"
    kb_ids = [kb.id, other.id]
    everything = (await search_body(owner_headers, query, kb_ids, limit=100, mode=mode))["results"]
    assert len({r["document_id"] for r in everything}) == 3

    grouped = await search_body(
        owner_headers, query, kb_ids, limit=2, mode=mode, group_by_document=True, group_size=2
    )

    # Every chunk fits in the fusion's candidates either way, so grouping is of the same full ranking.
    expected = grouped_by_document(everything, limit=2, group_size=2)
    found = grouped["documents"]
    assert [[(h["document_id"], h["chunk_index"]) for h in d["hits"]] for d in found] == expected
    assert [r["document_id"] for r in grouped["results"]] == [d["document_id"] for d in found]
    assert [r["chunk_index"] for r in grouped["results"]] == [d["hits"][0]["chunk_index"] for d in found]
    assert [d["score"] for d in found] == [d["hits"][0]["score"] for d in found]
    titles = {str(d.id): d.title for d in documents.values()}
    assert [d["title"] for d in found] == [titles[d["document_id"]] for d in found]
    audit = await SearchAudit.objects.order_by("-id").afirst()
    assert audit.result_count == 2


async def test_an_ungrouped_search_has_no_documents_list(two_kbs, owner_headers) -> None:
    kb, _, _ = two_kbs

    body = await search_body(owner_headers, "bees", [kb.id], limit=3)

    assert body["documents"] is None and len(body["results"]) == 3


async def test_context_covers_neighbouring_chunks_fewer_at_a_documents_start_and_end(
    two_kbs, owner_headers
) -> None:
    kb, _, documents = two_kbs
    bees = documents["bees"]
    chunks, _ = await ChunkService().get_chunks_by_document(kb_id=kb.id, document_id=bees.id, limit=500)
    assert len(chunks) >= 6

    # Every chunk of the document comes back, so the first, the last and those between are all checked.
    body = await search_body(
        owner_headers, "bees", [kb.id], limit=100, mode="semantic", document_ids=[str(bees.id)], context_chunks=2
    )

    results = body["results"]
    assert sorted(r["chunk_index"] for r in results) == list(range(len(chunks)))
    for r in results:
        index = r["chunk_index"]
        first, last = chunks[max(index - 2, 0)], chunks[min(index + 2, len(chunks) - 1)]
        assert (r["context_start"], r["context_end"]) == (first.char_start, last.char_end), index
        assert r["context"] == bees.text[r["context_start"] : r["context_end"]]
        assert r["context"][r["char_start"] - r["context_start"] : r["char_end"] - r["context_start"]] == r["text"]
    at_start = next(r for r in results if r["chunk_index"] == 0)
    assert at_start["context_start"] == 0 and at_start["context_end"] == chunks[2].char_end


async def test_search_results_carry_the_chunk_and_where_it_comes_from(two_kbs, reader_headers) -> None:
    kb, _, documents = two_kbs

    best = (
        await search_body(reader_headers, "how do bees tell each other where flowers are", [kb.id], limit=1)
    )["results"][0]

    bees = documents["bees"]
    assert set(best) == {
        "score",
        "text",
        "kb_id",
        "document_id",
        "title",
        "chunk_index",
        "char_start",
        "char_end",
        "page_start",
        "page_end",
        "highlights",
        "context",
        "context_start",
        "context_end",
    }
    assert (best["kb_id"], best["document_id"], best["title"]) == (str(kb.id), str(bees.id), BEES[0])
    assert 0 < best["score"] <= 1
    marked = {best["text"][h["start"] : h["end"]].lower() for h in best["highlights"]}
    # Words as BM25 sees them: stemmed, so "flowering" marks for "flowers"; stopwords ("each", "where") never.
    assert marked and marked <= {"bee", "bees", "tell", "tells", "telling", "flower", "flowers", "flowering"}
    assert 0 <= best["chunk_index"] < bees.chunk_count
    assert best["text"] and best["text"] == bees.text[best["char_start"] : best["char_end"]]
    assert (best["page_start"], best["page_end"]) == (None, None)  # typed text has no pages


async def test_a_search_may_be_limited_to_some_documents(two_kbs, owner_headers) -> None:
    kb, other, documents = two_kbs
    wanted = [str(documents["sourdough"].id), str(documents["tides"].id)]

    results = (
        await search_body(
            owner_headers,
            "how do bees tell each other where flowers are",
            [kb.id, other.id],
            limit=100,
            document_ids=wanted,
        )
    )["results"]

    assert {r["document_id"] for r in results} == set(wanted)
    assert len(results) == documents["sourdough"].chunk_count + documents["tides"].chunk_count


async def test_a_score_threshold_leaves_out_weaker_chunks(two_kbs, owner_headers) -> None:
    kb, other, _ = two_kbs
    query = "wild yeast in a sourdough starter"
    scores = [
        r["score"]
        for r in (await search_body(owner_headers, query, [kb.id, other.id], limit=100, mode="semantic"))["results"]
    ]
    threshold = (scores[4] + scores[5]) / 2

    results = (
        await search_body(
            owner_headers, query, [kb.id, other.id], limit=100, score_threshold=threshold, mode="semantic"
        )
    )["results"]

    assert [r["score"] for r in results] == scores[:5]
    assert all(r["score"] >= threshold for r in results)


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"query": ""}, "empty_query"),
        ({"query": "   "}, "empty_query"),
        ({"query": "x" * 2001}, "validation_error"),
        ({"limit": 0}, "validation_error"),
        ({"limit": 101}, "validation_error"),
        ({"kb_ids": []}, "validation_error"),
        ({"kb_ids": ["not-a-uuid"]}, "validation_error"),
        ({"document_ids": ["not-a-uuid"]}, "validation_error"),
        ({"score_threshold": 2}, "validation_error"),
        ({"score_threshold": -1.5}, "validation_error"),
        ({"query": None}, "validation_error"),
        ({"group_by_document": True, "group_size": 0}, "validation_error"),
        ({"group_by_document": True, "group_size": 11}, "validation_error"),
        ({"group_size": "three"}, "validation_error"),
        ({"context_chunks": -1}, "validation_error"),
        ({"context_chunks": 6}, "validation_error"),
        ({"context_chunks": 1.5}, "validation_error"),
    ],
)
async def test_a_search_that_can_never_succeed_answers_422(kb, owner_headers, change, code) -> None:
    body = {"query": "tides", "kb_ids": [str(kb.id)], **change}

    response = await client.post("/search", json=body, headers=owner_headers)

    assert response.status_code == 422, response.json()
    assert response.json()["code"] == code
    assert not await SearchAudit.objects.aexists()


async def test_a_malformed_search_body_answers_400(owner_headers) -> None:
    response = await client.post("/search", data="{query: tides", headers=owner_headers)

    assert response.status_code == 400
    assert response.json()["code"] == "bad_request"


async def test_a_search_including_a_knowledge_base_the_caller_may_not_read_fails_whole(
    two_kbs, other_user, owner_headers
) -> None:
    kb, _, _ = two_kbs
    theirs = await sync_to_async(make_kb)(owner=other_user, name="Private")
    missing = uuid4()

    response = await client.post(
        "/search",
        json={"query": "bees", "kb_ids": [str(kb.id), str(theirs.id), str(missing)]},
        headers=owner_headers,
    )

    assert response.status_code == 404
    assert response.json()["code"] == "kb_not_found"
    assert response.json()["detail"] == {"kb_ids": [str(theirs.id), str(missing)]}
    assert "results" not in response.json()
    assert not await SearchAudit.objects.aexists()


async def test_history_lists_only_the_callers_searches_newest_first(
    kb, owner, other_user, owner_headers
) -> None:
    stranger_kb = await sync_to_async(make_kb)(owner=other_user, name="Bob's")
    stranger_headers = bearer(await sync_to_async(issue_token)(other_user))
    for query in ("first", "second", "third"):
        await search_body(owner_headers, query, [kb.id])
    await search_body(stranger_headers, "somebody else's", [stranger_kb.id])

    mine = await client.get("/search/history", headers=owner_headers)

    assert mine.status_code == 200
    assert [row["query"] for row in mine.json()] == ["third", "second", "first"]
    row = mine.json()[0]
    assert set(row) == {"id", "query", "kb_ids", "result_count", "latency_ms", "created_at"}
    assert (row["kb_ids"], row["result_count"]) == ([str(kb.id)], 0)
    ids = [row["id"] for row in mine.json()]
    assert ids == sorted(ids, reverse=True)
    theirs = await client.get("/search/history", headers=stranger_headers)
    assert [row["query"] for row in theirs.json()] == ["somebody else's"]


async def test_history_pages_with_before(kb, owner_headers) -> None:
    for query in ("one", "two", "three", "four", "five"):
        await search_body(owner_headers, query, [kb.id])

    first = (await client.get("/search/history?limit=2", headers=owner_headers)).json()
    second = (
        await client.get(f"/search/history?limit=2&before={first[-1]['id']}", headers=owner_headers)
    ).json()
    last = (
        await client.get(f"/search/history?limit=2&before={second[-1]['id']}", headers=owner_headers)
    ).json()

    assert [row["query"] for row in first + second + last] == ["five", "four", "three", "two", "one"]
    assert len(last) == 1


@pytest.mark.parametrize("query", ["limit=0", "limit=201", "before=0", "before=abc"])
async def test_history_with_bad_paging_answers_422(owner_headers, query) -> None:
    response = await client.get(f"/search/history?{query}", headers=owner_headers)

    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"


async def test_searches_beyond_the_rate_limit_answer_429_per_token(
    kb, owner, owner_headers, settings
) -> None:
    settings.SEARCH = {**settings.SEARCH, "RATE_LIMIT": "3/min"}
    cache.clear()
    second_token = bearer(await sync_to_async(issue_token)(owner, "second"))
    body = {"query": "tides", "kb_ids": [str(kb.id)]}
    try:
        allowed = [await client.post("/search", json=body, headers=owner_headers) for _ in range(3)]
        refused = await client.post("/search", json=body, headers=owner_headers)
        other = await client.post("/search", json=body, headers=second_token)
    finally:
        cache.clear()

    assert [r.status_code for r in allowed] == [200, 200, 200]
    assert refused.status_code == 429
    assert refused.json()["code"] == "rate_limited"
    assert 0 < int(refused["Retry-After"]) <= 60
    assert other.status_code == 200
    assert await SearchAudit.objects.acount() == 4


# Health


async def test_health_answers_200_without_a_token(db) -> None:
    response = await client.get("/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "qdrant": "ok"}


async def test_health_answers_503_naming_qdrant_when_it_is_unreachable(db) -> None:
    server = LoopbackQdrantServer().start()
    qdrant_service.configure(QdrantConfig(url=server.url, grpc_port=server.grpc_port, timeout=1))
    server.stop()
    try:
        response = await client.get("/health")
    finally:
        await qdrant_service.aclose()
        qdrant_service.configure(QdrantConfig.from_settings())

    assert response.status_code == 503
    body = response.json()
    assert body["code"] == "unavailable"
    assert body["detail"] == {"database": "ok", "qdrant": "unavailable"}
    assert body["message"] == "qdrant did not answer."
    # The caller needs no token, so the reason (naming internal hosts) goes to the log only.
    assert "127.0.0.1" not in response.content.decode()


async def test_a_search_says_which_mode_ran_and_keyword_mode_scores_by_bm25(two_kbs, owner_headers) -> None:
    kb, other, _ = two_kbs

    hybrid = await search_body(owner_headers, "sourdough starter", [kb.id, other.id])
    keyword = await search_body(owner_headers, "sourdough starter", [kb.id, other.id], mode="keyword")

    assert (hybrid["mode"], hybrid["notices"]) == ("hybrid", [])
    assert keyword["mode"] == "keyword" and keyword["results"]
    assert all(r["highlights"] for r in keyword["results"])
    assert keyword["results"][0]["score"] > 1  # BM25, not a cosine similarity


@pytest.mark.parametrize(
    ("options", "status"),
    [({"mode": "fuzzy"}, 422), ({"mode": "keyword", "score_threshold": 0.3}, 422)],
)
async def test_a_bad_search_mode_answers_422(two_kbs, owner_headers, options, status) -> None:
    kb, _, _ = two_kbs
    response = await client.post(
        "/search", json={"query": "bees", "kb_ids": [str(kb.id)], **options}, headers=owner_headers
    )
    assert response.status_code == status
    assert set(response.json()) == {"code", "message", "detail"}


async def test_a_search_without_kb_ids_covers_every_kb_the_caller_may_read(two_kbs, reader_headers) -> None:
    kb, other, _ = two_kbs  # the reader is a member of `kb` only

    response = await client.post("/search", json={"query": "sourdough starter and bees"}, headers=reader_headers)

    assert response.status_code == 200
    assert {r["kb_id"] for r in response.json()["results"]} == {str(kb.id)}


@pytest.mark.parametrize("path", ["/api/v1/kbs/0f6c/documents/", "/api/v1/nothing-here", "/api/v1/kbs/x/y/z"])
def test_an_unknown_api_path_answers_the_json_error_shape(path, owner_headers) -> None:
    from django.test import Client

    response = Client().get(path, headers=owner_headers)

    assert response.status_code == 404 and response["Content-Type"] == "application/json"
    assert response.json()["code"] == "not_found" and "/api/v1/docs" in response.json()["message"]


# The first hour, as met (issue 27): a knowledge base by its slug, and errors that say what to fix.


@pytest.mark.parametrize("path", ["/kbs/{kb}", "/kbs/{kb}/documents", "/kbs/{kb}/stats"])
async def test_a_knowledge_base_is_reached_by_its_slug_as_by_its_id(kb, ready_document, reader_headers, path) -> None:
    by_id = await client.get(path.format(kb=kb.id), headers=reader_headers)
    by_slug = await client.get(path.format(kb=kb.slug), headers=reader_headers)

    assert by_id.status_code == by_slug.status_code == 200, by_slug.json()
    assert by_slug.json() == by_id.json()


async def test_a_document_and_its_chunks_are_reached_through_the_kbs_slug(kb, ready_document, reader_headers) -> None:
    document = await client.get(f"/kbs/{kb.slug}/documents/{ready_document.id}", headers=reader_headers)
    chunks = await client.get(f"/kbs/{kb.slug}/documents/{ready_document.id}/chunks", headers=reader_headers)

    assert document.status_code == 200 and document.json()["id"] == str(ready_document.id)
    assert chunks.status_code == 200
    assert len(chunks.json()["items"]) == ready_document.chunk_count > 0


async def test_an_editor_uploads_text_through_the_kbs_slug(kb, editor_headers) -> None:
    response = await client.post(
        f"/kbs/{kb.slug}/documents/text", json={"title": "Notes", "text": "Slack water."}, headers=editor_headers
    )

    assert response.status_code == 202, response.json()
    assert await Document.objects.filter(knowledge_base=kb, title="Notes").aexists()


async def test_the_slug_of_a_kb_the_caller_may_not_read_answers_404_like_one_that_does_not_exist(
    kb, stranger_headers
) -> None:
    hidden = await client.get(f"/kbs/{kb.slug}/documents", headers=stranger_headers)
    missing = await client.get("/kbs/no-such-kb/documents", headers=stranger_headers)

    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["code"] == missing.json()["code"] == "kb_not_found"
    assert hidden.json()["message"] == f"There is no knowledge base {kb.slug} you may read."


async def test_a_reader_using_the_slug_is_still_refused_an_owners_change(kb, reader_headers) -> None:
    response = await client.patch(f"/kbs/{kb.slug}", json={"name": "Mine now"}, headers=reader_headers)

    assert response.status_code == 403
    await kb.arefresh_from_db()
    assert kb.name == "Field notes"


async def test_a_kb_reference_that_is_neither_an_id_nor_a_slug_answers_422_naming_the_path(owner_headers) -> None:
    response = await client.get("/kbs/field%20notes!/documents", headers=owner_headers)

    assert response.status_code == 422
    assert "the path's kb_id" in response.json()["message"]


async def test_an_empty_query_gets_the_same_answer_as_a_query_of_spaces(kb, owner_headers) -> None:
    empty = await client.post("/search", json={"query": "", "kb_ids": [str(kb.id)]}, headers=owner_headers)
    spaces = await client.post("/search", json={"query": "   ", "kb_ids": [str(kb.id)]}, headers=owner_headers)

    assert empty.status_code == spaces.status_code == 422
    assert empty.json() == spaces.json()
    assert empty.json()["code"] == "empty_query" and "send some words" in empty.json()["message"]


async def test_malformed_json_says_what_is_wrong_and_where(owner_headers) -> None:
    sent = '{"query": "tides",\n "limit": 5,}'  # the trailing comma: a property name is due at the brace

    response = await client.post("/search", data=sent, headers=owner_headers)

    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "bad_request"
    brace = sent.rindex("}")
    column = brace - sent.index("\n")
    assert f"not valid JSON: Expecting property name enclosed in double quotes at line 2, column {column}" in body["message"]
    assert body["detail"] == {"line": 2, "column": column, "position": brace}


async def test_a_body_that_is_not_utf8_says_so(owner_headers) -> None:
    response = await client.post("/search", data=b'{"query": "caf\xe9"}', headers=owner_headers)

    assert response.status_code == 400
    assert "not UTF-8" in response.json()["message"]


@pytest.mark.parametrize(
    ("method", "path", "body", "says"),
    [
        ("post", "/search", {"query": "tides", "limit": 101}, "limit must be at most 100"),
        ("post", "/search", {"query": "tides", "group_by_document": True, "group_size": 11}, "group_size must be at most 10"),
        ("get", "/search/history?limit=500", None, "the query's limit must be at most 200"),
        ("get", "/kbs?limit=501", None, "the query's limit must be at most 500"),
    ],
)
async def test_a_number_over_its_maximum_is_answered_with_the_maximum(owner_headers, method, path, body, says) -> None:
    call = getattr(client, method)
    response = await (call(path, json=body, headers=owner_headers) if body else call(path, headers=owner_headers))

    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"
    assert says in response.json()["message"]
