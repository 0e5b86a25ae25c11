"""Declared metadata fields on the admin pages, and the upgrade of a site whose documents carried metadata before."""

from __future__ import annotations

import asyncio
import importlib

import pytest
from django.apps import apps
from django.utils.html import escape
from qdrant_client import models

from knowledge.models import Document, DocumentStatus, KnowledgeBase
from knowledge.services.documents import DocumentService
from knowledge.services.knowledge_bases import active_index
from search.filters import SearchedFields, compile_filter
from search.qdrant import qdrant_service
from search.services.chunks import ChunkSearch, ChunkService
from search.services.collections import tenant_filter
from tests.factories import make_document, make_kb
from tests.integration.test_admin import kb_form_data, kb_page, messages_of
from tests.integration.test_transfer import run

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

migration = importlib.import_module("knowledge.migrations.0008_declared_metadata_fields")


def ready_document(kb, ingestion_service, **labels) -> Document:
    document = make_document(kb=kb, **labels)
    document = asyncio.run(ingestion_service.ingest_now(document_id=document.id, worker_id="tests"))
    assert document.status == DocumentStatus.READY, document.error
    return document


def documents_found(kb, spec) -> set:
    kb.refresh_from_db()
    hits = asyncio.run(
        ChunkService().search_chunks(
            ChunkSearch(
                indexes=(active_index(kb),),
                query_embedding=(0.1,) * 384,
                limit=50,
                metadata_filter=compile_filter(spec, fields=SearchedFields({kb.name: kb.metadata_fields})),
            )
        )
    )
    return {hit.document_id for hit in hits}


async def payload_schema(kb) -> dict:
    index = active_index(kb)
    aliases = (await qdrant_service.client.get_aliases()).aliases
    current = next(a.collection_name for a in aliases if a.alias_name == index.collection)
    return (await qdrant_service.client.get_collection(collection_name=current)).payload_schema


class TestAdmin:
    def test_the_change_form_shows_the_declared_fields(self, admin_client, admin_user) -> None:
        kb = make_kb(owner=admin_user, name="Field notes", slug="field-notes")
        make_document(kb=kb, metadata={"year": 2024, "status": "final", "published": "2024-05-17"})

        page = admin_client.get(kb_page(kb)).content.decode()

        assert "Metadata fields" in page
        assert escape("published: date\nstatus: text\nyear: number") in page

    def test_an_owner_retypes_a_field_on_the_change_form(
        self, admin_client, admin_user, ingestion_service
    ) -> None:
        kb = make_kb(owner=admin_user, name="Field notes", slug="field-notes")
        document = ready_document(kb, ingestion_service, metadata={"code": "0042", "year": 2024})
        assert documents_found(kb, {"key": "code", "eq": "0042"}) == {document.id}

        response = admin_client.post(
            kb_page(kb),
            kb_form_data(owner=admin_user.pk, declared_fields="code: text\nyear: number\nshelf: text"),
        )

        assert response.status_code == 302, response.context["adminform"].form.errors
        kb.refresh_from_db()
        assert kb.metadata_fields == {"code": "text", "shelf": "text", "year": "number"}
        assert any("declared: shelf" in message for message in messages_of(response))
        assert "meta_text.shelf" in asyncio.run(payload_schema(kb))

        response = admin_client.post(
            kb_page(kb), kb_form_data(owner=admin_user.pk, declared_fields="code: text\nyear: text")
        )

        assert response.status_code == 200
        form = response.context["adminform"].form
        assert form.errors["declared_fields"][0].startswith(
            "year cannot be text: 1 document value(s) are not, e.g. "
        )
        assert form.errors["declared_fields"][0].endswith(
            "has year=2024. Change those documents' metadata first."
        )
        kb.refresh_from_db()
        assert kb.metadata_fields["year"] == "number"

    @pytest.mark.parametrize(
        ("typed", "complaint"),
        [
            ("year = number", "is not `key: type`"),
            ("year: integer", "the type is one of text, number, date, bool, not 'integer'"),
            ("a.b: text", "a key is a letter or _"),
        ],
    )
    def test_fields_typed_wrong_are_refused_with_a_form_error(
        self, admin_client, admin_user, typed, complaint
    ):
        kb = make_kb(owner=admin_user, name="Field notes", slug="field-notes")

        response = admin_client.post(kb_page(kb), kb_form_data(owner=admin_user.pk, declared_fields=typed))

        assert response.status_code == 200
        assert complaint in response.context["adminform"].form.errors["declared_fields"][0]
        kb.refresh_from_db()
        assert kb.metadata_fields == {}

    def test_a_documents_metadata_of_another_type_is_a_form_error(self, admin_client, admin_user) -> None:
        kb = make_kb(owner=admin_user, name="Field notes", slug="field-notes")
        document = make_document(kb=kb, title="Tides", metadata={"year": 2024})

        response = admin_client.post(
            f"/admin/knowledge/document/{document.pk}/change/",
            {"title": "Tides", "tags": "", "metadata": "year=soon", "_save": "Save"},
        )

        assert response.status_code == 200
        assert response.context["adminform"].form.errors["metadata"] == [
            "year is a number field of this knowledge base, not 'soon'. Its fields: year (number)."
        ]
        document.refresh_from_db()
        assert document.metadata == {"year": 2024}


class TestUpgrade:
    def test_the_migration_declares_the_fields_existing_documents_carry_inferring_their_types(
        self, test_user
    ) -> None:
        kb = make_kb(owner=test_user)
        for metadata in (
            {"year": 2019, "status": "final", "published": "2019-04-02", "ok": True},
            {"year": 2021.5, "status": "2021-01-01", "published": "2021-08-30T10:00:00Z"},
            {"mixed": 1},
            {"mixed": "one"},
            {"mixed": 3},
        ):
            make_document(kb=kb, text=str(metadata), metadata={})
            Document.objects.filter(pk=Document.objects.latest("created_at").pk).update(metadata=metadata)
        KnowledgeBase.objects.filter(pk=kb.pk).update(metadata_fields={})
        other = make_kb(owner=test_user)

        migration.declare_carried_fields(apps, None)

        kb.refresh_from_db()
        other.refresh_from_db()
        assert kb.metadata_fields == {
            "mixed": "number",
            "ok": "bool",
            "published": "date",
            "status": "text",
            "year": "number",
        }
        assert other.metadata_fields == {}

    def test_upgrade_fields_writes_the_filter_values_old_chunks_lack_and_drops_indexes_searches_made(
        self, test_user, ingestion_service
    ) -> None:
        kb = make_kb(owner=test_user, name="Old site", slug="old-site")
        document = ready_document(kb, ingestion_service, metadata={"year": 2019, "status": "final"})
        index = active_index(kb)

        async def as_an_earlier_kbsite_left_it() -> None:
            client = qdrant_service.client
            await client.set_payload(
                collection_name=index.collection,
                payload={"meta_text": {}, "meta_number": {}, "meta_date": {}, "meta_bool": {}},
                points=models.FilterSelector(filter=models.Filter(must=[tenant_filter(index.tenant)])),
                wait=True,
            )
            current = next(
                a.collection_name
                for a in (await client.get_aliases()).aliases
                if a.alias_name == index.collection
            )
            await client.create_payload_index(
                collection_name=current,
                field_name="meta.year",
                field_schema=models.PayloadSchemaType.KEYWORD,
                wait=True,
            )

        asyncio.run(as_an_earlier_kbsite_left_it())
        assert documents_found(kb, {"key": "year", "eq": 2019}) == set()

        out = run("upgrade_fields")

        assert "old-site: 1 documents, fields status (text), year (number); dropped meta.year" in out
        assert documents_found(kb, {"key": "year", "eq": 2019}) == {document.id}
        assert documents_found(kb, {"key": "status", "eq": "final"}) == {document.id}
        schema = asyncio.run(payload_schema(kb))
        assert "meta.year" not in schema and "meta_number.year" in schema
        assert "Wrote the filter values of 1 documents." in run("upgrade_fields")


def test_an_upload_through_the_service_declares_its_keys(test_user) -> None:
    kb = make_kb(owner=test_user)

    DocumentService().add_text_document(kb=kb, title="T", text="Some text.", metadata={"when": "2024-05-17"})

    kb.refresh_from_db()
    assert kb.metadata_fields == {"when": "date"}
