"""Bodies built to break a parser or the database answer 4xx in the JSON error shape, and uploads are rate-limited."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import AsyncClient
from ninja.testing import TestAsyncClient

from kbsite.api import api
from knowledge.models import Document, KnowledgeBase, Membership
from knowledge.services.tokens import ApiTokenService
from search.models import SearchAudit
from tests.factories import make_kb

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

client = TestAsyncClient(api)
API_ROOT = "/api/v1"
DEEP_JSON = b"[" * 100_000 + b"]" * 100_000


@pytest.fixture
def owner(test_user):
    return test_user


@pytest.fixture
def token(owner) -> str:
    return ApiTokenService().create_token(user=owner, name="hardening").secret


@pytest.fixture
def headers(token) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def kb(owner):
    return make_kb(owner=owner, name="Field notes", slug="field-notes")


def multipart(boundary: str, filename: str, data: bytes) -> bytes:
    return (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        f"Content-Type: text/plain\r\n\r\n".encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["code"] == code and body["message"]
    return body


# Multipart bodies Django refuses to parse: 400, not 500.


async def test_a_file_name_longer_than_multipart_headers_may_be_answers_400(kb, token) -> None:
    body = multipart("kbsite-boundary", "n" * 5000 + ".txt", b"Some words.")

    response = await AsyncClient().post(
        f"{API_ROOT}/kbs/{kb.id}/documents",
        data=body,
        content_type="multipart/form-data; boundary=kbsite-boundary",
        headers={"Authorization": f"Bearer {token}"},
    )

    assert_error(response, 400, "bad_request")
    assert not await Document.objects.aexists()


async def test_a_multipart_body_without_a_boundary_answers_400(kb, token) -> None:
    response = await AsyncClient().post(
        f"{API_ROOT}/kbs/{kb.id}/documents",
        data=multipart("kbsite-boundary", "notes.txt", b"Some words."),
        content_type="multipart/form-data",
        headers={"Authorization": f"Bearer {token}"},
    )

    assert_error(response, 400, "bad_request")


# JSON nested deeper than the parser recurses.


@pytest.mark.parametrize("path", ["/kbs", "/search", "/kbs/{kb}/documents/text", "/kbs/{kb}/members"])
async def test_json_nested_100_000_deep_answers_400(kb, headers, path) -> None:
    response = await client.post(
        path.format(kb=kb.id), data=DEEP_JSON, content_type="application/json", headers=headers
    )

    assert_error(response, 400, "bad_request")


async def test_json_sent_to_the_file_upload_answers_415_naming_the_text_endpoint(kb, headers) -> None:
    for body in (DEEP_JSON, b'{"title": "Tides", "text": "High water."}'):
        response = await client.post(
            f"/kbs/{kb.id}/documents", data=body, content_type="application/json", headers=headers
        )

        assert "/documents/text" in assert_error(response, 415, "unsupported_format")["message"]
    assert not await Document.objects.aexists()


# NUL characters, which PostgreSQL cannot store: 422 naming the field, nothing written.


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/kbs", {"name": "Field\x00notes"}, "name"),
        ("/kbs", {"name": "Notes", "description": "a\x00b"}, "description"),
        ("/kbs/{kb}", {"name": "Re\x00named"}, "name"),
        ("/kbs/{kb}/documents/text", {"title": "Ti\x00des", "text": "High water."}, "title"),
        ("/kbs/{kb}/documents/text", {"title": "Tides", "text": "High\x00water."}, "text"),
        (
            "/kbs/{kb}/documents/text",
            {"title": "Tides", "text": "High water.", "source_name": "t\x00.txt"},
            "source_name",
        ),
        ("/kbs/{kb}/members", {"username": "bo\x00b"}, "username"),
        ("/search", {"query": "high\x00tide"}, "query"),
    ],
)
async def test_a_nul_character_in_a_text_field_answers_422_naming_it(kb, headers, path, body, field) -> None:
    method = "PATCH" if path == "/kbs/{kb}" else "POST"
    kbs_before = await KnowledgeBase.objects.acount()

    response = await client.request(
        method, path.format(kb=kb.id), json=body, content_type="application/json", headers=headers
    )

    detail = assert_error(response, 422, "validation_error")["detail"]
    assert [error["loc"][-1] for error in detail] == [field]
    assert "NUL" in detail[0]["msg"]
    assert await KnowledgeBase.objects.acount() == kbs_before
    assert (await KnowledgeBase.objects.aget(pk=kb.pk)).name == "Field notes"
    assert not await Document.objects.aexists()
    assert await Membership.objects.acount() == 1
    assert not await SearchAudit.objects.aexists()


@pytest.mark.parametrize(
    ("form", "filename", "field"),
    [({"title": "Ti\x00des"}, "tides.txt", "title"), ({}, "ti\x00des.txt", "file")],
)
async def test_a_nul_character_in_an_upload_answers_422_naming_the_field(
    kb, headers, form, filename, field
) -> None:
    response = await client.post(
        f"/kbs/{kb.id}/documents",
        form,
        FILES={"file": SimpleUploadedFile(filename, b"High water comes twice a day.")},
        content_type="multipart/form-data",
        headers=headers,
    )

    detail = assert_error(response, 422, "validation_error")["detail"]
    assert [error["loc"][-1] for error in detail] == [field]
    assert not await Document.objects.aexists()


# Uploads have their own rate limit, per token.


async def test_uploads_beyond_their_rate_limit_answer_429_per_token(kb, owner, headers, settings) -> None:
    settings.SEARCH = {**settings.SEARCH, "UPLOAD_RATE_LIMIT": "3/min", "RATE_LIMIT": None}
    other = {
        "Authorization": f"Bearer {(await sync_to_async(ApiTokenService().create_token)(user=owner, name='second')).secret}"
    }

    def upload(number: int, as_headers: dict[str, str]):
        return client.post(
            f"/kbs/{kb.id}/documents",
            FILES={"file": SimpleUploadedFile(f"notes-{number}.txt", f"Notes number {number}.".encode())},
            content_type="multipart/form-data",
            headers=as_headers,
        )

    allowed = [await upload(1, headers), await upload(2, headers)]
    allowed.append(
        await client.post(
            f"/kbs/{kb.id}/documents/text", json={"title": "Three", "text": "Notes three."}, headers=headers
        )
    )
    refused = await upload(4, headers)
    searched = await client.post("/search", json={"query": "notes", "kb_ids": [str(kb.id)]}, headers=headers)
    from_other_token = await upload(5, other)

    assert [response.status_code for response in allowed] == [202, 202, 202]
    assert_error(refused, 429, "rate_limited")
    assert 0 < int(refused["Retry-After"]) <= 60
    assert searched.status_code == 200
    assert from_other_token.status_code == 202
    assert await Document.objects.acount() == 4


async def test_uploads_on_a_browser_session_are_limited_per_user(kb, owner, settings) -> None:
    settings.SEARCH = {**settings.SEARCH, "UPLOAD_RATE_LIMIT": "1/min"}
    browser = AsyncClient()
    await sync_to_async(browser.force_login)(owner)

    def text(number: int):
        return browser.post(
            f"{API_ROOT}/kbs/{kb.id}/documents/text",
            data={"title": f"Note {number}", "text": f"Session note {number}."},
            content_type="application/json",
        )

    first, second = await text(1), await text(2)

    assert first.status_code == 202, first.content
    assert_error(second, 429, "rate_limited")
