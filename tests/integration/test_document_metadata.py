"""Tags and metadata from the command line and the admin, and labels changed while a document is being indexed."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import async_to_sync
from django.core.files.uploadedfile import SimpleUploadedFile

from knowledge.forms import DocumentForm
from knowledge.models import Document, DocumentStatus
from knowledge.services.document_metadata import format_metadata_pairs, parse_metadata_pairs
from knowledge.services.documents import DocumentService
from knowledge.services.knowledge_bases import active_index
from search.filters import SearchedFields, compile_filter
from search.services.chunks import ChunkSearch, ChunkService
from tests.factories import make_document, make_kb
from tests.integration.test_admin import UPLOAD, document_page, messages_of
from tests.integration.test_commands import command_error, run

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def chunk_labels(document: Document) -> set[tuple]:
    """Each distinct (tags, metadata) the document's chunks carry in Qdrant."""
    page, _ = asyncio.run(
        ChunkService().get_chunks_by_document(
            kb_id=document.knowledge_base_id, document_id=document.pk, limit=500
        )
    )
    assert page
    return {(chunk.tags, tuple(sorted(chunk.metadata.items()))) for chunk in page}


def labels(tags: list[str], metadata: dict) -> set[tuple]:
    return {(tuple(tags), tuple(sorted(metadata.items())))}


def test_metadata_pairs_read_numbers_booleans_and_text_and_write_back_the_same() -> None:
    metadata = parse_metadata_pairs(
        ["year=2024", "rating= 4.5", "reviewed=true", 'code="0042"', "status=draft", "published=2024-05-17"]
    )

    assert metadata == {
        "year": 2024,
        "rating": 4.5,
        "reviewed": True,
        "code": "0042",
        "status": "draft",
        "published": "2024-05-17",
    }
    assert parse_metadata_pairs(format_metadata_pairs(metadata).splitlines()) == metadata


class TestIngestCommand:
    def test_tag_and_meta_label_every_file_loaded_and_its_chunks(self, tmp_path, test_user) -> None:
        (tmp_path / "tides.txt").write_text("The tide rises twice a day on most coasts.", encoding="utf-8")
        (tmp_path / "bees.md").write_text(
            "# Bees\n\nA forager dances to show where flowers are.", encoding="utf-8"
        )

        output = run(
            "ingest", str(tmp_path), "--kb", "notes", "--create", "--tag", "field", "--tag", "2024",
            "--meta", "year=2024", "--meta", "source=survey", "--meta", "checked=false",
        )  # fmt: skip

        assert "2 of 2 files are ready" in output
        expected = (["field", "2024"], {"year": 2024, "source": "survey", "checked": False})
        for document in Document.objects.filter(knowledge_base__slug="notes"):
            assert document.status == DocumentStatus.READY, document.error
            assert (document.tags, document.metadata) == expected
            assert chunk_labels(document) == labels(*expected)

    @pytest.mark.parametrize(
        ("option", "value", "named"),
        [
            ("--meta", "year", "'year' is not key=value"),
            ("--meta", "a.b=1", "metadata.a.b"),
            ("--tag", " ", "tags[0]"),
            # What Python makes of a non-UTF-8 byte on the command line (surrogateescape): no text to store.
            ("--tag", "caf\udce9", "tags[0]"),
            ("--meta", "note=caf\udce9", "metadata.note"),
        ],
    )
    def test_bad_labels_stop_the_command_before_anything_is_loaded(
        self, tmp_path, option, value, named
    ) -> None:
        (tmp_path / "tides.txt").write_text("The tide rises twice a day.", encoding="utf-8")

        error = command_error("ingest", str(tmp_path), "--kb", "notes", "--create", option, value)

        assert named in error
        assert not Document.objects.exists()


class TestAdmin:
    def test_uploads_take_the_tags_and_metadata_typed_with_them(self, admin_client, admin_user) -> None:
        kb = make_kb(owner=admin_user, name="Uploads")

        response = admin_client.post(
            UPLOAD,
            {
                "knowledge_base": kb.pk,
                "files": [
                    SimpleUploadedFile("a.txt", b"First notes."),
                    SimpleUploadedFile("b.txt", b"Second."),
                ],
                "tags": "field, survey, field",
                "metadata": "year=2024\n\nstatus=draft\n",
            },
        )

        assert response.status_code == 302, response.context["form"].errors
        uploaded = Document.objects.filter(knowledge_base=kb)
        assert [(d.tags, d.metadata) for d in uploaded] == [
            (["field", "survey"], {"year": 2024, "status": "draft"})
        ] * 2

    def test_a_bad_metadata_line_is_a_form_error_and_nothing_is_uploaded(
        self, admin_client, admin_user
    ) -> None:
        kb = make_kb(owner=admin_user)

        response = admin_client.post(
            UPLOAD,
            {
                "knowledge_base": kb.pk,
                "files": [SimpleUploadedFile("a.txt", b"Notes.")],
                "metadata": "year 2024",
            },
        )

        assert response.status_code == 200
        assert "'year 2024' is not key=value" in response.context["form"].errors["metadata"][0]
        assert not Document.objects.exists()

    def test_editing_labels_changes_them_in_qdrant_and_leaves_the_document_ready(
        self, admin_client, admin_user, ingestion_service
    ) -> None:
        kb = make_kb(owner=admin_user, chunk_size=64, chunk_overlap=12)
        document = make_document(kb=kb, title="Tides", text="The tide rises twice a day.", tags=["sea"])
        document = async_to_sync(ingestion_service.ingest_now)(document_id=document.pk, worker_id="tests")
        form = admin_client.get(document_page(document)).content.decode()
        assert 'value="sea"' in form

        response = admin_client.post(
            document_page(document),
            {"title": "Tides", "tags": "sea, coast", "metadata": "year=2025\nreviewed=true", "_save": "Save"},
        )

        assert response.status_code == 302
        assert messages_of(response)
        stored = Document.objects.get(pk=document.pk)
        assert (stored.status, stored.tags, stored.metadata) == (
            DocumentStatus.READY, ["sea", "coast"], {"year": 2025, "reviewed": True},
        )  # fmt: skip
        assert chunk_labels(stored) == labels(["sea", "coast"], {"year": 2025, "reviewed": True})

    def test_labels_shown_and_sent_back_unchanged_count_as_unchanged(self, admin_client, admin_user) -> None:
        document = make_document(
            kb=make_kb(owner=admin_user), tags=["sea"], metadata={"year": 2025, "note": "1"}
        )
        shown = admin_client.get(document_page(document)).context["adminform"].form

        sent_back = DocumentForm(
            instance=document,
            data={"title": "Renamed", "tags": shown["tags"].value(), "metadata": shown["metadata"].value()},
        )

        # PostgreSQL's jsonb keeps keys in an order of its own.
        assert sorted(shown["metadata"].value().splitlines()) == [
            'note="1"',
            "year=2025",
        ]  # quoted: it stays text
        assert sent_back.is_valid() and sent_back.changed_data == ["title"]
        relabelled = DocumentForm(
            instance=Document.objects.get(pk=document.pk),
            data={"title": "Renamed", "tags": "sea", "metadata": "year=2025"},
        )
        assert relabelled.is_valid() and relabelled.changed_data == ["title", "metadata"]


def test_labels_changed_while_a_document_is_indexed_reach_its_chunks(test_user, ingestion_service) -> None:
    kb = make_kb(owner=test_user, chunk_size=64, chunk_overlap=12)
    document = make_document(kb=kb, title="Tides", text="The tide rises twice a day.", tags=["old"])
    service = DocumentService()
    claimed = ingestion_service.queue.claim(document_id=document.pk, worker_id="tests")

    # Relabelled after the claim: the run writes its chunks with the labels it read, then corrects them.
    service.set_labels(document=Document.objects.get(pk=document.pk), tags=["new"], metadata={"year": 2026})
    finished = async_to_sync(ingestion_service.process)(claimed, worker_id="tests")

    assert finished.status == DocumentStatus.READY, finished.error
    assert chunk_labels(finished) == labels(["new"], {"year": 2026})
    hits = asyncio.run(
        ChunkService().search_chunks(
            ChunkSearch(
                indexes=(active_index(kb),),
                query_embedding=(0.1,) * 384,
                metadata_filter=compile_filter(
                    {"and": [{"tag": {"any": ["new"]}}, {"key": "year", "eq": 2026}]},
                    fields=SearchedFields({kb.name: {"year": "number"}}),
                ),
            )
        )
    )
    assert {hit.document_id for hit in hits} == {document.pk}
