"""Input a hostile member can send that once answered 500 (issue 25): each now answers 4xx, nothing written."""

from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import AsyncClient

from knowledge.models import Document
from knowledge.services.metadata_fields import MetadataFieldService
from search.models import SearchAudit
from tests.api.test_api import client
from tests.factories import make_kb

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

API_ROOT = "/api/v1"
SURROGATE = "\ud800"


@pytest.fixture
def kb(test_user):
    return make_kb(owner=test_user, name="Field notes", slug="field-notes")


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["code"] == code and body["message"]
    return body


@pytest.mark.parametrize(
    ("filter_", "path"),
    [
        ({"key": "year", "eq": 10**400}, "filter.eq"),
        ({"and": [{"key": "year", "gte": -(10**309)}]}, "filter.and[0].gte"),
    ],
)
async def test_a_filter_number_past_a_doubles_range_answers_422_naming_it(kb, reader_headers, filter_, path):
    await MetadataFieldService().aset_fields(kb=kb, fields={"year": "number"})
    response = await client.post(
        "/search", json={"query": "tides", "kb_ids": [str(kb.id)], "filter": filter_}, headers=reader_headers
    )

    assert assert_error(response, 422, "invalid_filter")["detail"]["path"] == path
    assert not await SearchAudit.objects.aexists()


@pytest.mark.parametrize(
    "filter_",
    [
        {"key": "status", "eq": SURROGATE},
        {"or": [{"tag": {"any": ["ok", f"a{SURROGATE}"]}}]},
        {"key": "status", "in": ["draft", SURROGATE]},
    ],
)
async def test_a_lone_surrogate_in_a_filter_answers_422(kb, reader_headers, filter_):
    response = await client.post(
        "/search", json={"query": "tides", "kb_ids": [str(kb.id)], "filter": filter_}, headers=reader_headers
    )

    detail = assert_error(response, 422, "validation_error")["detail"]
    assert detail[0]["loc"][-1] == "filter" and "surrogate" in detail[0]["msg"]
    assert not await SearchAudit.objects.aexists()


@pytest.mark.parametrize(
    ("labels", "field"),
    [
        ({"tags": ["ocean", SURROGATE]}, "tags"),
        ({"metadata": {"status": f"dr{SURROGATE}aft"}}, "metadata"),
        ({"metadata": {SURROGATE: 1}}, "metadata"),
        ({"title": f"Tides {SURROGATE}"}, "title"),
    ],
)
async def test_a_lone_surrogate_in_a_label_or_title_answers_422_and_nothing_is_written(
    kb, editor_headers, labels, field
):
    created = await client.post(
        f"/kbs/{kb.id}/documents/text",
        json={"title": "Tides", "text": "High water.", **labels},
        headers=editor_headers,
    )

    detail = assert_error(created, 422, "validation_error")["detail"]
    # Pydantic refuses a plain text field's surrogate itself; InputSchema those inside lists and objects.
    assert [error["loc"][-1] for error in detail] == [field]
    assert not await Document.objects.aexists()


async def test_a_lone_surrogate_in_a_patch_answers_422_and_keeps_the_labels(kb, editor_headers):
    created = await client.post(
        f"/kbs/{kb.id}/documents/text",
        json={"title": "Tides", "text": "High water.", "tags": ["ocean"]},
        headers=editor_headers,
    )
    document_id = created.json()["id"]

    patched = await client.patch(
        f"/kbs/{kb.id}/documents/{document_id}", json={"tags": [SURROGATE]}, headers=editor_headers
    )

    assert_error(patched, 422, "validation_error")
    assert (await Document.objects.aget(pk=document_id)).tags == ["ocean"]


def upload(**form) -> dict:
    return {"file": SimpleUploadedFile("notes.txt", b"Low water comes six hours after high water."), **form}


async def test_a_lone_surrogate_in_multipart_metadata_answers_422_naming_the_key(kb, editor_headers):
    # Multipart text is decoded with replacement characters; the JSON escape inside it is what gets through.
    response = await AsyncClient().post(
        f"{API_ROOT}/kbs/{kb.id}/documents",
        upload(metadata=json.dumps({"status": SURROGATE})),
        headers=editor_headers,
    )

    body = assert_error(response, 422, "invalid_input")
    assert body["detail"] == {"field": "metadata.status"} and "surrogate" in body["message"]
    assert not await Document.objects.aexists()


async def test_1001_multipart_tags_fields_answer_400_saying_how_many_tags_a_document_takes(
    kb, editor_headers
):
    response = await AsyncClient().post(
        f"{API_ROOT}/kbs/{kb.id}/documents",
        upload(tags=[f"tag{i}" for i in range(1001)]),
        headers=editor_headers,
    )

    assert "50 tags" in assert_error(response, 400, "too_many_fields")["message"]
    assert not await Document.objects.aexists()


async def test_multipart_metadata_nested_100_000_deep_answers_422(kb, editor_headers):
    response = await AsyncClient().post(
        f"{API_ROOT}/kbs/{kb.id}/documents",
        upload(metadata="[" * 100_000 + "]" * 100_000),
        headers=editor_headers,
    )

    assert assert_error(response, 422, "invalid_input")["detail"] == {"field": "metadata"}
    assert not await Document.objects.aexists()


async def test_metadata_numbers_qdrant_cannot_store_answer_422(kb, editor_headers):
    response = await client.post(
        f"/kbs/{kb.id}/documents/text",
        json={"title": "Tides", "text": "High water.", "metadata": {"count": 2**63}},
        headers=editor_headers,
    )

    assert assert_error(response, 422, "invalid_input")["detail"] == {"field": "metadata.count"}
    assert not await Document.objects.aexists()
