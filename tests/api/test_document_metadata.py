"""Tags and metadata through the API: set on upload, changed by PATCH without embedding, filtered on."""

from __future__ import annotations

import json
import re

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.http import QueryDict

from knowledge.models import Document, DocumentStatus, Role
from knowledge.services.knowledge_bases import active_index
from knowledge.services.metadata_fields import MetadataFieldService
from knowledge.services.reindex import ReindexService
from search.models import SearchAudit
from search.qdrant import qdrant_service
from search.services.chunks import ChunkService, chunk_point_id
from tests.api.test_api import BEES, SOURDOUGH, TIDES, VOLCANOES, bearer, client, issue_token
from tests.factories import add_member, make_document, make_kb, make_user

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def kb(test_user):
    return make_kb(owner=test_user, name="Field notes", slug="field-notes", chunk_size=48, chunk_overlap=8)


@pytest.fixture
def owner_headers(test_user):
    return bearer(issue_token(test_user))


@pytest.fixture
def editor_headers(kb):
    user = make_user(username="eddie")
    add_member(kb, user, Role.EDITOR)
    return bearer(issue_token(user))


@pytest.fixture
def reader_headers(kb):
    user = make_user(username="rita")
    add_member(kb, user, Role.READER)
    return bearer(issue_token(user))


LABELS = {
    BEES: (
        ["insects", "biology"],
        {"year": 2019, "status": "final", "reviewed": True, "published": "2019-04-02"},
    ),
    TIDES: (["ocean"], {"year": 2021, "status": "draft", "published": "2021-08-30T10:00:00Z"}),
    SOURDOUGH: (["food", "biology"], {"year": 2023, "status": "final", "reviewed": False, "rating": 4.5}),
    VOLCANOES: (["geology"], {"year": 2024, "status": "review", "published": "2024-01-15"}),
}
QUERY = "how living things and the earth change over time"


@pytest.fixture
async def labelled(kb, ingestion_service) -> dict[str, Document]:
    """Four corpus documents, ready, each with its tags and metadata; by title."""
    documents = {}
    for (title, text), (tags, metadata) in LABELS.items():
        document = await sync_to_async(make_document)(
            kb=kb, title=title, text=text, tags=tags, metadata=metadata
        )
        document = await ingestion_service.ingest_now(document_id=document.id, worker_id="tests")
        assert document.status == DocumentStatus.READY, document.error
        documents[title] = document
    return documents


async def titles_found(headers, kb, filter_, mode: str = "hybrid") -> set[str]:
    response = await client.post(
        "/search",
        json={"query": QUERY, "kb_ids": [str(kb.id)], "limit": 100, "mode": mode, "filter": filter_},
        headers=headers,
    )
    assert response.status_code == 200, response.json()
    return {result["title"] for result in response.json()["results"]}


@pytest.mark.parametrize("mode", ["hybrid", "semantic", "keyword"])
async def test_a_search_filter_keeps_only_the_documents_it_selects_in_every_mode(
    kb, labelled, reader_headers, mode
) -> None:
    assert await titles_found(reader_headers, kb, None, mode) == {t for t, _ in LABELS}
    cases = [
        ({"tag": {"any": ["biology"]}}, {BEES[0], SOURDOUGH[0]}),
        ({"tag": {"none": ["biology"]}}, {TIDES[0], VOLCANOES[0]}),
        ({"key": "year", "gte": 2021, "lt": 2024}, {TIDES[0], SOURDOUGH[0]}),
        ({"key": "published", "gt": "2020-01-01"}, {TIDES[0], VOLCANOES[0]}),
        ({"key": "reviewed", "exists": False}, {TIDES[0], VOLCANOES[0]}),
        (
            {
                "and": [
                    {"tag": {"any": ["biology", "geology"]}},
                    {"or": [{"key": "status", "eq": "review"}, {"key": "rating", "gt": 4}]},
                ]
            },
            {SOURDOUGH[0], VOLCANOES[0]},
        ),
    ]

    for spec, expected in cases:
        assert await titles_found(reader_headers, kb, spec, mode) == expected, spec


async def test_documents_take_tags_and_metadata_from_json_and_multipart_uploads(kb, editor_headers) -> None:
    text = await client.post(
        f"/kbs/{kb.id}/documents/text",
        json={
            "title": "Tide tables",
            "text": "High water.",
            "tags": [" ocean ", "ocean", "tables"],
            "metadata": {"year": 2024, "published": "2024-05-17", "checked": True},
        },
        headers=editor_headers,
    )
    form = QueryDict(mutable=True)  # as Django parses a multipart body: `tags` repeated
    form.setlist("tags", ["ocean", "notes"])
    form["metadata"] = json.dumps({"status": "draft", "pages": 3})
    upload = await client.post(
        f"/kbs/{kb.id}/documents",
        form,
        FILES={"file": SimpleUploadedFile("notes.txt", b"Low water comes six hours after high water.")},
        content_type="multipart/form-data",
        headers=editor_headers,
    )

    assert text.status_code == upload.status_code == 202, upload.json()
    assert (text.json()["tags"], text.json()["metadata"]) == (
        ["ocean", "tables"],
        {"year": 2024, "published": "2024-05-17", "checked": True},
    )
    assert (upload.json()["tags"], upload.json()["metadata"]) == (
        ["ocean", "notes"],
        {"status": "draft", "pages": 3},
    )
    stored = await Document.objects.aget(pk=upload.json()["id"])
    assert (stored.tags, stored.metadata) == (["ocean", "notes"], {"status": "draft", "pages": 3})


async def test_indexed_chunks_carry_their_documents_labels(kb, labelled, reader_headers) -> None:
    document = labelled[SOURDOUGH[0]]

    page, _ = await ChunkService().get_chunks_by_document(kb_id=kb.id, document_id=document.id)

    assert {(chunk.tags, tuple(sorted(chunk.metadata.items()))) for chunk in page} == {
        (tuple(LABELS[SOURDOUGH][0]), tuple(sorted(LABELS[SOURDOUGH][1].items())))
    }


async def test_patching_labels_is_seen_by_the_next_search_without_embedding_again(
    kb, labelled, editor_headers
) -> None:
    document = labelled[TIDES[0]]
    index = active_index(kb)
    ids = [chunk_point_id(index.tenant, document.id, i) for i in range(document.chunk_count)]

    async def vectors():
        points = await qdrant_service.client.retrieve(index.collection, ids=ids, with_vectors=True)
        return {str(p.id): list(p.vector["dense"]) for p in points}

    before = await vectors()
    biology = {"tag": {"any": ["biology"]}}
    assert TIDES[0] not in await titles_found(editor_headers, kb, biology)

    response = await client.patch(
        f"/kbs/{kb.id}/documents/{document.id}",
        json={"tags": ["ocean", "biology"], "metadata": {"year": 2025}},
        headers=editor_headers,
    )

    assert response.status_code == 200, response.json()
    assert (response.json()["tags"], response.json()["metadata"]) == (["ocean", "biology"], {"year": 2025})
    assert TIDES[0] in await titles_found(editor_headers, kb, biology)
    assert await titles_found(editor_headers, kb, {"key": "year", "eq": 2025}) == {TIDES[0]}
    assert TIDES[0] not in await titles_found(editor_headers, kb, {"key": "status", "exists": True})
    after = await vectors()
    assert after.keys() == before.keys() and len(after) == document.chunk_count
    for point_id, vector in before.items():
        assert after[point_id] == pytest.approx(vector, abs=1e-6)
    stored = await Document.objects.aget(pk=document.pk)
    assert (stored.status, stored.updated_at > document.updated_at) == (DocumentStatus.READY, True)
    assert (stored.tags, stored.metadata) == (["ocean", "biology"], {"year": 2025})


async def test_patching_only_the_title_keeps_the_labels(kb, labelled, editor_headers) -> None:
    document = labelled[BEES[0]]

    response = await client.patch(
        f"/kbs/{kb.id}/documents/{document.id}", json={"title": "Bees"}, headers=editor_headers
    )

    assert response.status_code == 200
    assert (response.json()["title"], response.json()["tags"]) == ("Bees", LABELS[BEES][0])
    assert await titles_found(editor_headers, kb, {"tag": {"all": ["insects"]}}) == {"Bees"}


async def test_a_reader_may_not_change_labels(kb, labelled, reader_headers) -> None:
    document = labelled[BEES[0]]

    response = await client.patch(
        f"/kbs/{kb.id}/documents/{document.id}", json={"tags": []}, headers=reader_headers
    )

    assert response.status_code == 403
    assert (await Document.objects.aget(pk=document.pk)).tags == LABELS[BEES][0]


@pytest.mark.parametrize(
    ("filter_", "path"),
    [
        ({"key": "year", "gte": "next year"}, "filter.gte"),
        (
            {"and": [{"tag": {"any": ["a"]}}, {"or": [{"key": "year", "between": [1, 2]}]}]},
            "filter.and[1].or[0].between",
        ),
        ({"key": "meta.year", "eq": 1}, "filter.key"),
        ({"tag": {"any": "biology"}}, "filter.tag.any"),
        ({}, "filter"),
    ],
)
async def test_a_search_with_an_invalid_filter_answers_422_naming_the_bad_part(
    kb, owner_headers, filter_, path
) -> None:
    await MetadataFieldService().aset_fields(kb=kb, fields={"year": "number"})

    response = await client.post(
        "/search", json={"query": "tides", "kb_ids": [str(kb.id)], "filter": filter_}, headers=owner_headers
    )

    assert response.status_code == 422, response.json()
    body = response.json()
    assert (body["code"], body["detail"]["path"]) == ("invalid_filter", path)
    assert body["message"].startswith(path)
    assert not await SearchAudit.objects.aexists()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"metadata": {"a.b": 1}}, "metadata.a.b"),
        ({"metadata": {"year": [2020, 2021]}}, "metadata.year"),
        ({"metadata": {"note": "x" * 501}}, "metadata.note"),
        ({"metadata": {f"k{i}": i for i in range(51)}}, "metadata"),
        ({"tags": ["ok", ""]}, "tags[1]"),
        ({"tags": ["t"] + [f"t{i}" for i in range(50)]}, "tags"),
    ],
)
async def test_invalid_labels_answer_422_naming_the_field(
    kb, labelled, editor_headers, change, field
) -> None:
    document = labelled[BEES[0]]

    patched = await client.patch(f"/kbs/{kb.id}/documents/{document.id}", json=change, headers=editor_headers)
    created = await client.post(
        f"/kbs/{kb.id}/documents/text",
        json={"title": "T", "text": "Some text.", **change},
        headers=editor_headers,
    )

    for response in (patched, created):
        assert response.status_code == 422, response.json()
        assert (response.json()["code"], response.json()["detail"]) == ("invalid_input", {"field": field})
    assert (await Document.objects.aget(pk=document.pk)).metadata == LABELS[BEES][1]


async def test_metadata_of_an_upload_must_be_a_json_object(kb, editor_headers) -> None:
    response = await client.post(
        f"/kbs/{kb.id}/documents",
        {"metadata": "year=2020"},
        FILES={"file": SimpleUploadedFile("notes.txt", b"Some notes.")},
        content_type="multipart/form-data",
        headers=editor_headers,
    )

    assert response.status_code == 422
    assert response.json()["detail"] == {"field": "metadata"}
    assert not await Document.objects.aexists()


async def test_a_rebuild_carries_the_labels_into_the_next_generation(kb, labelled, owner_headers) -> None:
    report = await ReindexService().rebuild(kb=kb, worker_id="tests")

    assert report.indexed == len(LABELS) and report.generation == 2
    assert await titles_found(owner_headers, kb, {"key": "status", "in": ["final"]}) == {
        BEES[0],
        SOURDOUGH[0],
    }
    assert await titles_found(owner_headers, kb, {"tag": {"any": ["ocean"]}}) == {TIDES[0]}


LEAVE_TEXT = (
    "Parents may take up to twenty-six weeks of parental leave after a birth or an adoption. "
    "The first ten weeks are paid in full, the rest at half pay. Leave may be split into at most three "
    "blocks, each announced four weeks ahead. Fathers and mothers have the same rights under this policy. "
    "Holidays are not reduced by parental leave, and the job is kept for the whole of it. "
    "Questions go to the people team, who answer within two working days."
)


def readme_combined_search() -> dict:
    """The request of the README's "All of it in one search", as the README shows it."""
    readme = (settings.BASE_DIR / "README.md").read_text()
    section = readme.split("### All of it in one search", 1)[1]
    return json.loads(re.search(r"-d '(\{.*?\})'", section, re.S).group(1))


async def test_the_readmes_combined_search_filters_groups_and_gives_context(kb, ingestion_service, reader_headers):
    request = readme_combined_search()
    assert {"filter", "group_by_document", "group_size", "context_chunks"} <= set(request)
    shelf = [
        ("Leave policy 2024", ["hr", "policy"], {"year": 2024, "status": "final"}),
        ("Leave policy draft", ["hr"], {"year": 2025, "status": "draft"}),
        ("Leave policy 2012", ["policy"], {"year": 2012, "status": "final"}),
        ("Travel expenses", ["finance"], {"year": 2024, "status": "final"}),
    ]
    for title, tags, metadata in shelf:
        document = await sync_to_async(make_document)(
            kb=kb, title=title, text=f"{title}. {LEAVE_TEXT}", tags=tags, metadata=metadata
        )
        assert (await ingestion_service.ingest_now(document_id=document.id, worker_id="t")).status == "ready"

    response = await client.post("/search", json={**request, "kb_ids": [str(kb.id)]}, headers=reader_headers)

    assert response.status_code == 200, response.json()
    body = response.json()
    assert [document["title"] for document in body["documents"]] == ["Leave policy 2024"]
    hits = body["documents"][0]["hits"]
    assert 1 <= len(hits) <= request["group_size"]
    for hit in hits:
        assert hit["page_start"] is None and hit["page_end"] is None  # typed text has no pages
        assert hit["context_start"] <= hit["char_start"] < hit["char_end"] <= hit["context_end"]
        assert f"Leave policy 2024. {LEAVE_TEXT}"[hit["context_start"]:hit["context_end"]] == hit["context"]
