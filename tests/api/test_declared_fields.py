"""Declared metadata fields through the API: readers filter on them only, writes declare them, owners retype them."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from django.core.files.uploadedfile import SimpleUploadedFile

from knowledge.errors import InvalidMetadataField
from knowledge.models import Document, DocumentStatus, KnowledgeBase
from knowledge.services.knowledge_bases import active_index
from knowledge.services.metadata_fields import MetadataFieldService
from search.models import SearchAudit
from search.qdrant import qdrant_service
from search.services.chunks import chunk_point_id
from tests.api.test_api import BEES, SOURDOUGH, TIDES, bearer, client, issue_token
from tests.factories import make_document, make_kb

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

LABELS = {
    BEES: {"year": 2019, "status": "final", "reviewed": True, "published": "2019-04-02"},
    TIDES: {"year": 2021, "status": "draft", "published": "2021-08-30T10:00:00Z"},
    SOURDOUGH: {"year": 2023, "status": "final", "reviewed": False},
}
DECLARED = {"published": "date", "reviewed": "bool", "status": "text", "year": "number"}


@pytest.fixture
def kb(test_user):
    return make_kb(owner=test_user, name="Field notes", slug="field-notes", chunk_size=48, chunk_overlap=8)


@pytest.fixture
def owner_headers(test_user):
    return bearer(issue_token(test_user))


@pytest.fixture
async def labelled(kb, ingestion_service) -> dict[str, Document]:
    documents = {}
    for (title, text), metadata in LABELS.items():
        document = await sync_to_async(make_document)(kb=kb, title=title, text=text, metadata=metadata)
        document = await ingestion_service.ingest_now(document_id=document.id, worker_id="tests")
        assert document.status == DocumentStatus.READY, document.error
        documents[title] = document
    await kb.arefresh_from_db()
    return documents


async def search(headers, kb, filter_):
    return await client.post(
        "/search",
        json={
            "query": "how things change over time",
            "kb_ids": [str(kb.id)],
            "limit": 100,
            "filter": filter_,
        },
        headers=headers,
    )


async def titles_found(headers, kb, filter_) -> set[str]:
    response = await search(headers, kb, filter_)
    assert response.status_code == 200, response.json()
    return {result["title"] for result in response.json()["results"]}


async def payload_schema(kb) -> dict:
    index = active_index(kb)
    aliases = (await qdrant_service.client.get_aliases()).aliases
    current = next(a.collection_name for a in aliases if a.alias_name == index.collection)
    return (await qdrant_service.client.get_collection(collection_name=current)).payload_schema


async def test_writes_declare_each_new_key_with_the_type_of_its_value(kb, labelled) -> None:
    assert kb.metadata_fields == DECLARED


async def test_a_declared_key_filters_by_its_type(kb, labelled, reader_headers) -> None:
    assert await titles_found(reader_headers, kb, {"key": "year", "gte": 2021}) == {TIDES[0], SOURDOUGH[0]}
    assert await titles_found(reader_headers, kb, {"key": "published", "lt": "2021-01-01"}) == {BEES[0]}
    assert await titles_found(reader_headers, kb, {"key": "published", "eq": "2019-04-02"}) == {BEES[0]}
    assert await titles_found(reader_headers, kb, {"key": "reviewed", "eq": False}) == {SOURDOUGH[0]}
    assert await titles_found(reader_headers, kb, {"key": "status", "in": ["draft"]}) == {TIDES[0]}


async def test_a_readers_filter_on_an_undeclared_key_answers_422_listing_the_fields_and_makes_no_index(
    kb, labelled, reader_headers
) -> None:
    before = await payload_schema(kb)

    responses = [await search(reader_headers, kb, {"key": f"probe{i}", "eq": 5}) for i in range(5)]

    for response in responses:
        assert response.status_code == 422, response.json()
        body = response.json()
        assert body["code"] == "invalid_filter"
        assert body["detail"]["fields"] == DECLARED
        assert body["message"].startswith("filter.key: 'probe")
        assert (
            "'Field notes' declares: published (date), reviewed (bool), status (text), year (number)."
            in body["message"]
        )
    assert (await payload_schema(kb)).keys() == before.keys()
    assert not any(key.startswith("meta.") or "probe" in key for key in before)
    assert not await SearchAudit.objects.aexists()


@pytest.mark.parametrize(
    ("filter_", "path"),
    [
        ({"key": "published", "eq": 5}, "filter.eq"),
        ({"key": "year", "gte": "2024-01-01"}, "filter.gte"),
        ({"key": "status", "eq": True}, "filter.eq"),
        ({"key": "reviewed", "in": ["yes"]}, "filter.in[0]"),
        ({"key": "status", "gt": "a"}, "filter.gt"),
    ],
)
async def test_a_value_of_another_type_than_the_keys_answers_422_and_indexes_nothing(
    kb, labelled, reader_headers, filter_, path
) -> None:
    before = await payload_schema(kb)

    response = await search(reader_headers, kb, filter_)

    assert response.status_code == 422, response.json()
    assert (response.json()["code"], response.json()["detail"]) == (
        "invalid_filter",
        {"path": path, "fields": DECLARED},
    )
    assert (await payload_schema(kb)).keys() == before.keys()


async def test_a_search_of_several_kbs_filters_on_keys_each_declares_with_one_type(
    kb, labelled, test_user, owner_headers
) -> None:
    other = await sync_to_async(make_kb)(owner=test_user, name="Other notes", slug="other-notes")
    await MetadataFieldService().aset_fields(kb=other, fields={"year": "number", "status": "date"})
    both = [str(kb.id), str(other.id)]

    shared = await client.post(
        "/search",
        json={"query": "tides", "kb_ids": both, "filter": {"key": "year", "gte": 2021}},
        headers=owner_headers,
    )
    clash = await client.post(
        "/search",
        json={"query": "tides", "kb_ids": both, "filter": {"key": "status", "eq": "final"}},
        headers=owner_headers,
    )

    assert shared.status_code == 200, shared.json()
    assert clash.status_code == 422
    assert "'status' is declared in 'Field notes' as text, 'Other notes' as date" in clash.json()["message"]
    assert clash.json()["detail"]["fields"] == {"year": "number"}


async def test_an_upload_with_a_value_of_another_type_than_its_keys_answers_422(
    kb, labelled, editor_headers
) -> None:
    text = await client.post(
        f"/kbs/{kb.id}/documents/text",
        json={"title": "T", "text": "Some text.", "metadata": {"year": "last year"}},
        headers=editor_headers,
    )
    upload = await client.post(
        f"/kbs/{kb.id}/documents",
        {"metadata": '{"reviewed": "yes"}'},
        FILES={"file": SimpleUploadedFile("notes.txt", b"Some notes.")},
        content_type="multipart/form-data",
        headers=editor_headers,
    )
    patch = await client.patch(
        f"/kbs/{kb.id}/documents/{labelled[BEES[0]].id}",
        json={"metadata": {"year": "2019"}},
        headers=editor_headers,
    )

    for response, field in ((text, "metadata.year"), (upload, "metadata.reviewed"), (patch, "metadata.year")):
        assert response.status_code == 422, response.json()
        body = response.json()
        assert (body["code"], body["detail"]) == (
            "invalid_metadata_field",
            {"field": field, "fields": DECLARED},
        )
        assert "'Field notes'" in body["message"] and "year (number)" in body["message"]
    assert await Document.objects.filter(knowledge_base=kb).acount() == len(LABELS)
    assert (await Document.objects.aget(pk=labelled[BEES[0]].pk)).metadata == LABELS[BEES]


async def test_an_editors_write_declares_a_new_key_and_its_index_and_a_reader_may_then_filter_on_it(
    kb, labelled, editor_headers, reader_headers
) -> None:
    response = await client.patch(
        f"/kbs/{kb.id}/documents/{labelled[TIDES[0]].id}",
        json={"metadata": {**LABELS[TIDES], "pages": 12}},
        headers=editor_headers,
    )

    assert response.status_code == 200, response.json()
    await kb.arefresh_from_db()
    assert kb.metadata_fields == {**DECLARED, "pages": "number"}
    assert "meta_number.pages" in await payload_schema(kb)
    assert await titles_found(reader_headers, kb, {"key": "pages", "gt": 10}) == {TIDES[0]}


async def test_an_owner_retyping_a_field_rewrites_its_filter_values_and_index_without_embedding(
    kb, labelled, reader_headers
) -> None:
    index = active_index(kb)
    ids = [
        chunk_point_id(index.tenant, document.id, i)
        for document in labelled.values()
        for i in range(document.chunk_count)
    ]

    async def vectors():
        points = await qdrant_service.client.retrieve(index.collection, ids=ids, with_vectors=True)
        return {str(p.id): list(p.vector["dense"]) for p in points}

    before = await vectors()
    assert await titles_found(reader_headers, kb, {"key": "published", "gte": "2020-01-01"}) == {TIDES[0]}

    change = await MetadataFieldService().aset_fields(kb=kb, fields={**DECLARED, "published": "text"})

    assert (change.retyped, change.documents_rewritten) == (["published"], 2)
    assert (await KnowledgeBase.objects.aget(pk=kb.pk)).metadata_fields["published"] == "text"
    assert (await payload_schema(kb))["meta_text.published"].data_type == "keyword"
    assert await titles_found(reader_headers, kb, {"key": "published", "eq": "2019-04-02"}) == {BEES[0]}
    date_filter = await search(reader_headers, kb, {"key": "published", "gte": "2020-01-01"})
    assert date_filter.status_code == 422
    assert (
        "'published' is a text field: it takes eq, ne, in, not_in and exists."
        in date_filter.json()["message"]
    )
    after = await vectors()
    assert after.keys() == before.keys() and len(after) == len(ids)
    for point_id, vector in before.items():
        assert after[point_id] == pytest.approx(vector, abs=1e-6)

    back = await MetadataFieldService().aset_fields(kb=kb, fields=DECLARED)
    assert back.retyped == ["published"]
    assert await titles_found(reader_headers, kb, {"key": "published", "gte": "2020-01-01"}) == {TIDES[0]}


async def test_a_type_the_documents_values_do_not_have_or_removing_a_carried_key_is_refused(
    kb, labelled
) -> None:
    service = MetadataFieldService()

    with pytest.raises(InvalidMetadataField, match=r"year cannot be date: 3 document value\(s\) are not"):
        await service.aset_fields(kb=kb, fields={**DECLARED, "year": "date"})
    with pytest.raises(InvalidMetadataField, match="status cannot be removed: documents carry it"):
        await service.aset_fields(kb=kb, fields={k: v for k, v in DECLARED.items() if k != "status"})
    with pytest.raises(InvalidMetadataField, match="the type is one of text, number, date, bool"):
        await service.aset_fields(kb=kb, fields={**DECLARED, "year": "integer"})

    assert (await KnowledgeBase.objects.aget(pk=kb.pk)).metadata_fields == DECLARED


async def test_readers_see_the_declared_fields_and_owners_alone_change_them(
    kb, labelled, owner_headers, editor_headers, reader_headers
) -> None:
    shown = await client.get(f"/kbs/{kb.id}", headers=reader_headers)
    by_editor = await client.patch(
        f"/kbs/{kb.id}", json={"metadata_fields": {**DECLARED, "pages": "number"}}, headers=editor_headers
    )
    by_owner = await client.patch(
        f"/kbs/{kb.id}", json={"metadata_fields": {**DECLARED, "pages": "number"}}, headers=owner_headers
    )
    wrong_type = await client.patch(
        f"/kbs/{kb.id}", json={"metadata_fields": {**DECLARED, "year": "date"}}, headers=owner_headers
    )
    renamed = await client.patch(f"/kbs/{kb.id}", json={"name": "Notes"}, headers=owner_headers)

    assert shown.status_code == 200 and shown.json()["metadata_fields"] == DECLARED
    assert by_editor.status_code == 403
    assert by_owner.status_code == 200, by_owner.json()
    assert by_owner.json()["metadata_fields"] == {**DECLARED, "pages": "number"}
    assert (wrong_type.status_code, wrong_type.json()["code"]) == (422, "invalid_metadata_field")
    assert renamed.json()["metadata_fields"] == {**DECLARED, "pages": "number"}
    assert "meta_number.pages" in await payload_schema(kb)
