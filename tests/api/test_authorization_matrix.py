"""Who may call what: every endpoint that takes a KB or document id, called by an outsider and by each role.

Alice owns KB-A, which holds a ready document in Qdrant and a reader member, Carol. Bob has no role on
KB-A and owns KB-B. Bob must meet 404 on all of KB-A, exactly as if it did not exist, learn nothing of
it and change nothing in it; members of KB-A below the role a call needs meet 403, not 404.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from uuid import uuid4

import pytest
from asgiref.sync import sync_to_async
from django.core.files.uploadedfile import SimpleUploadedFile
from ninja.testing import TestAsyncClient

from kbsite.api import api
from knowledge.models import Document, DocumentStatus, KnowledgeBase, Membership, Role
from knowledge.services.tokens import ApiTokenService
from search.models import SearchAudit
from search.services.chunks import ChunkService
from tests.factories import add_member, corpus, make_document, make_kb, make_user

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

client = TestAsyncClient(api)
RANK = {Role.READER: 1, Role.EDITOR: 2, Role.OWNER: 3}


@dataclass(frozen=True)
class Call:
    """One endpoint: `path` names `{kb}`, `{document}` and `{member}`; `ok` is its success status."""

    method: str
    path: str
    least: Role
    ok: int
    body: dict | None = None
    multipart: bool = False

    def __str__(self) -> str:
        return f"{self.method} {self.path}" + (" (file)" if self.multipart else "")

    async def send(self, headers: dict[str, str], **ids):
        path = self.path.format(**ids)
        if self.multipart:
            file = SimpleUploadedFile("planted.txt", b"Planted here by somebody else.")
            return await client.post(
                path, FILES={"file": file}, content_type="multipart/form-data", headers=headers
            )
        if self.body is not None:
            return await client.request(
                self.method, path, json=self.body, content_type="application/json", headers=headers
            )
        return await client.request(self.method, path, headers=headers)


DOCUMENT = "/kbs/{kb}/documents/{document}"

KB_CALLS = [
    Call("GET", "/kbs/{kb}", Role.READER, 200),
    Call("PATCH", "/kbs/{kb}", Role.OWNER, 200, body={"name": "Renamed by a caller"}),
    Call("DELETE", "/kbs/{kb}", Role.OWNER, 204),
    Call("GET", "/kbs/{kb}/stats", Role.READER, 200),
    Call("GET", "/kbs/{kb}/members", Role.OWNER, 200),
    Call("POST", "/kbs/{kb}/members", Role.OWNER, 201, body={"username": "bob", "role": "owner"}),
    Call("DELETE", "/kbs/{kb}/members/{member}", Role.OWNER, 204),
    Call("GET", "/kbs/{kb}/documents", Role.READER, 200),
    Call("POST", "/kbs/{kb}/documents/text", Role.EDITOR, 202, body={"title": "Planted", "text": "Planted here."}),
    Call("POST", "/kbs/{kb}/documents", Role.EDITOR, 202, multipart=True),
    Call("POST", "/kbs/{kb}/chunk-preview", Role.EDITOR, 200, multipart=True),
]
DOCUMENT_CALLS = [
    Call("GET", DOCUMENT, Role.READER, 200),
    Call("GET", DOCUMENT + "/chunks", Role.READER, 200),
    Call("POST", DOCUMENT + "/archive", Role.EDITOR, 200),
    Call("POST", DOCUMENT + "/unarchive", Role.EDITOR, 200),
    Call("POST", DOCUMENT + "/reindex", Role.EDITOR, 202),
    Call("DELETE", DOCUMENT, Role.EDITOR, 204),
]
EVERY_CALL = KB_CALLS + DOCUMENT_CALLS
MEMBER_ROLES = [Role.READER, Role.EDITOR, Role.OWNER]
TOO_WEAK = [
    pytest.param(role, call, id=f"{role.value}-{call}")
    for call in EVERY_CALL
    for role in MEMBER_ROLES
    if RANK[role] < RANK[call.least]
]
STRONG_ENOUGH = [
    pytest.param(role, call, id=f"{role.value}-{call}")
    for call in EVERY_CALL
    for role in MEMBER_ROLES
    if RANK[role] >= RANK[call.least]
]


def bearer(user) -> dict[str, str]:
    return {"Authorization": f"Bearer {ApiTokenService().create_token(user=user, name='matrix').secret}"}


# Alice's KB, Bob's KB, and Carol reading Alice's.


@pytest.fixture
def alice(test_user):
    return test_user


@pytest.fixture
def bob(other_user):
    return other_user


@pytest.fixture
def kb_a(alice):
    return make_kb(owner=alice, name="Alice's lab notebook", chunk_size=32, chunk_overlap=4)


@pytest.fixture
def kb_b(bob):
    return make_kb(owner=bob, name="Bob's scrapbook")


@pytest.fixture
def carol(kb_a):
    user = make_user(username="carol")
    add_member(kb_a, user, Role.READER)
    return user


@pytest.fixture
def bob_headers(bob):
    return bearer(bob)


@pytest.fixture
async def document_a(kb_a, ingestion_service):
    title, text = next(item for item in corpus() if "Tides" in item[0])
    document = await sync_to_async(make_document)(kb=kb_a, title="Alice's private tide tables", text=text)
    document = await ingestion_service.ingest_now(document_id=document.id, worker_id="tests")
    assert document.status == DocumentStatus.READY, document.error
    return document


@pytest.fixture
def ids(kb_a, document_a, carol) -> dict:
    """What a path template is filled with to aim at Alice's KB."""
    return {"kb": kb_a.id, "document": document_a.id, "member": carol.pk}


@pytest.fixture
async def secrets_of_a(kb_a, document_a) -> list[str]:
    """What must never reach an outsider: the KB's name, the document's title, every chunk's text."""
    chunks, _ = await ChunkService().get_chunks_by_document(
        kb_id=kb_a.id, document_id=document_a.id, limit=500
    )
    assert len(chunks) == document_a.chunk_count > 1
    return [kb_a.name, document_a.title, *(chunk.content for chunk in chunks)]


async def state_of(kb, document) -> dict:
    """Everything about the KB a refused call might have touched, in the database and in Qdrant."""
    stored_kb = await KnowledgeBase.objects.filter(pk=kb.pk).afirst()
    stored_document = await Document.objects.filter(pk=document.pk).afirst()
    chunks, _ = await ChunkService().get_chunks_by_document(kb_id=kb.id, document_id=document.id, limit=500)
    return {
        "kb": stored_kb and (stored_kb.name, stored_kb.description, stored_kb.chunk_size, stored_kb.owner_id),
        "members": sorted(
            [(m.user_id, m.role) async for m in Membership.objects.filter(knowledge_base_id=kb.pk)]
        ),
        "documents": await Document.objects.filter(knowledge_base_id=kb.pk).acount(),
        "document": stored_document
        and (
            stored_document.status,
            stored_document.chunk_count,
            stored_document.title,
            stored_document.archived_at,
        ),
        "chunks": [(c.chunk_index, c.content, c.archived_at) for c in chunks],
        "chunks_in_kb": await ChunkService().count_chunks(kb_id=kb.id),
    }


def strings_in(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.items() for part in item for s in strings_in(part)]
    if isinstance(value, list):
        return [s for item in value for s in strings_in(item)]
    return []


def assert_reveals_nothing(response, secrets: list[str]) -> None:
    said = "\n".join(strings_in(response.json())) + "\n" + json.dumps(response.json())
    for secret in secrets:
        assert secret not in said, f"the response shows {secret[:40]!r}"
    assert not response.has_header("Location")


# An outsider: 404 on everything of Alice's, as if it did not exist.


@pytest.mark.parametrize("call", EVERY_CALL, ids=str)
async def test_an_outsider_gets_404_and_nothing_of_anothers_kb(call, ids, bob_headers, secrets_of_a) -> None:
    response = await call.send(bob_headers, **ids)

    assert response.status_code == 404
    assert response.json()["code"] == "kb_not_found"
    assert_reveals_nothing(response, secrets_of_a)


@pytest.mark.parametrize("call", EVERY_CALL, ids=str)
async def test_an_outsiders_call_changes_nothing_of_anothers_kb(
    call, ids, kb_a, document_a, bob_headers
) -> None:
    before = await state_of(kb_a, document_a)

    await call.send(bob_headers, **ids)

    after = await state_of(kb_a, document_a)
    assert after == before
    assert after["document"][:2] == (DocumentStatus.READY, document_a.chunk_count)
    assert after["kb"][0] == "Alice's lab notebook"


@pytest.mark.parametrize("call", EVERY_CALL, ids=str)
async def test_anothers_kb_answers_exactly_like_a_missing_one(call, ids, bob_headers) -> None:
    missing = uuid4()

    theirs = await call.send(bob_headers, **ids)
    nowhere = await call.send(bob_headers, **{**ids, "kb": missing})

    assert theirs.status_code == nowhere.status_code == 404
    assert json.loads(theirs.content.decode().replace(str(ids["kb"]), "<kb>")) == json.loads(
        nowhere.content.decode().replace(str(missing), "<kb>")
    )


@pytest.mark.parametrize("call", DOCUMENT_CALLS, ids=str)
async def test_anothers_document_under_ones_own_kb_answers_404(
    call, ids, kb_a, kb_b, document_a, bob_headers, secrets_of_a
) -> None:
    before = await state_of(kb_a, document_a)

    response = await call.send(bob_headers, **{**ids, "kb": kb_b.id})

    assert response.status_code == 404
    assert response.json()["code"] == "document_not_found"
    assert_reveals_nothing(response, secrets_of_a)
    assert await state_of(kb_a, document_a) == before


async def test_an_outsiders_kb_list_leaves_out_anothers_kb(kb_a, kb_b, document_a, bob_headers) -> None:
    response = await client.get("/kbs", headers=bob_headers)

    assert response.status_code == 200
    assert response.json()["count"] == 1
    assert [kb["id"] for kb in response.json()["items"]] == [str(kb_b.id)]
    assert "Alice's lab notebook" not in response.content.decode()


async def test_an_outsiders_search_over_anothers_kb_fails_whole_and_leaves_no_history(
    alice, kb_a, kb_b, bob_headers, secrets_of_a
) -> None:
    response = await client.post(
        "/search",
        json={
            "query": "why is high tide later every day",
            "kb_ids": [str(kb_b.id), str(kb_a.id)],
            "limit": 50,
        },
        headers=bob_headers,
    )
    history = await client.get("/search/history", headers=bob_headers)

    assert response.status_code == 404
    assert response.json()["code"] == "kb_not_found"
    assert response.json()["detail"] == {"kb_ids": [str(kb_a.id)]}
    assert_reveals_nothing(response, secrets_of_a)
    assert history.status_code == 200 and history.json() == []
    assert not await SearchAudit.objects.aexists()


# Members of Alice's KB: 403 below the role a call needs, served at or above it.


async def _member_headers(role: Role, kb, alice) -> dict[str, str]:
    if role == Role.OWNER:
        return await sync_to_async(bearer)(alice)
    user = await sync_to_async(make_user)(username=f"{role.value}-of-a")
    await sync_to_async(add_member)(kb, user, role)
    return await sync_to_async(bearer)(user)


@pytest.mark.parametrize(("role", "call"), TOO_WEAK)
async def test_a_member_below_the_needed_role_gets_403(role, call, ids, kb_a, alice) -> None:
    headers = await _member_headers(role, kb_a, alice)

    response = await call.send(headers, **ids)

    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"
    assert call.least.value in response.json()["message"]


@pytest.mark.parametrize(("role", "call"), TOO_WEAK)
async def test_a_refused_members_call_changes_nothing(role, call, ids, kb_a, document_a, alice) -> None:
    headers = await _member_headers(role, kb_a, alice)
    before = await state_of(kb_a, document_a)

    await call.send(headers, **ids)

    assert await state_of(kb_a, document_a) == before


@pytest.mark.parametrize(("role", "call"), STRONG_ENOUGH)
async def test_a_member_with_the_needed_role_is_served(role, call, ids, kb_a, alice, bob) -> None:
    headers = await _member_headers(role, kb_a, alice)

    response = await call.send(headers, **ids)

    assert response.status_code == call.ok, response.content


async def test_a_reader_searches_the_kb_they_read(carol, kb_a, document_a) -> None:
    headers = await sync_to_async(bearer)(carol)

    response = await client.post(
        "/search",
        json={"query": "why is high tide later every day", "kb_ids": [str(kb_a.id)]},
        headers=headers,
    )

    assert response.status_code == 200
    assert {r["document_id"] for r in response.json()["results"]} == {str(document_a.id)}
