"""import_kb trusts nothing in an archive (issue 25): it refuses, saying why, and writes nothing; export_kb never crashes."""

from __future__ import annotations

import asyncio
import json
import zipfile
from pathlib import Path

import pytest
from django.db import connection

from knowledge.models import Document, DocumentStatus, KnowledgeBase, Role
from knowledge.services.documents import DocumentService
from knowledge.transfer.archive import CHUNKS, DOCUMENTS, MANIFEST, MAX_MEMBERSHIPS_BYTES, MEMBERSHIPS
from tests.factories import add_member, make_document, make_kb
from tests.integration.test_transfer import command_error, rewrite_archive, run, stored_points
from tests.support.tenants import kb_points

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

TIDES = "High water comes about fifty minutes later each day. " * 6
BEES = "A honeybee dances in a figure of eight to show where the flowers are. " * 6


@pytest.fixture
def archive(test_user, other_user, ingestion_service, tmp_path) -> Path:
    """An export of two ready documents (one archived, one labelled) with bob a reader."""
    kb = make_kb(owner=test_user, name="Field notes", slug="field-notes", chunk_size=24, chunk_overlap=4)
    add_member(kb, other_user, Role.READER)
    for title, text, labels in (
        ("Tides", TIDES, {"tags": ["ocean"], "metadata": {"year": 2024}}),
        ("Bees", BEES, {}),
    ):
        document = make_document(kb=kb, title=title, text=text, **labels)
        document = asyncio.run(ingestion_service.ingest_now(document_id=document.id, worker_id="tests"))
        assert document.status == DocumentStatus.READY, document.error
    DocumentService().set_archived(document=Document.objects.get(title="Bees"), archived=True)
    path = tmp_path / "kb.zip"
    run("export_kb", kb.slug, "--output", str(path))
    return path


def lines(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.splitlines()]


def jsonl(rows: list[dict]) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def change_chunks(change):
    def rewrite(members: dict[str, bytes]) -> None:
        chunks = lines(members[CHUNKS])
        change(chunks)
        members[CHUNKS] = jsonl(chunks)

    return rewrite


def change_documents(change):
    def rewrite(members: dict[str, bytes]) -> None:
        documents = lines(members[DOCUMENTS])
        change(documents)
        members[DOCUMENTS] = jsonl(documents)

    return rewrite


def change_manifest(change):
    def rewrite(members: dict[str, bytes]) -> None:
        manifest = json.loads(members[MANIFEST])
        change(manifest)
        members[MANIFEST] = json.dumps(manifest).encode()

    return rewrite


def spoof_payloads(chunks: list[dict]) -> None:
    for chunk in chunks:
        chunk["payload"].update(
            title="Spoofed", archived=False, archived_at=None, tags=["spoof"], meta={"x": 1}
        )


def assert_refused(path: Path, expected: str) -> None:
    points, documents, kbs = stored_points(), Document.objects.count(), KnowledgeBase.objects.count()

    message = command_error("import_kb", str(path), "--slug", "restored")

    assert expected in message and "nothing was imported" in message.lower(), message
    assert KnowledgeBase.objects.count() == kbs and Document.objects.count() == documents
    assert stored_points() == points


def test_an_archive_from_before_declared_fields_declares_those_its_documents_carry(archive) -> None:
    rewrite_archive(archive, change_manifest(lambda manifest: manifest.pop("metadata_fields")))

    run("import_kb", str(archive), "--slug", "restored")

    assert KnowledgeBase.objects.get(slug="restored").metadata_fields == {"year": "number"}


def test_chunk_payloads_are_made_again_from_documents_jsonl(archive) -> None:
    rewrite_archive(archive, change_chunks(spoof_payloads))

    run("import_kb", str(archive), "--slug", "restored")

    restored = KnowledgeBase.objects.get(slug="restored")

    documents = {str(d.pk): d for d in Document.objects.filter(knowledge_base=restored)}
    found = [point.payload for point in asyncio.run(kb_points(restored.pk))]
    assert found
    for payload in found:
        document = documents[payload["document_id"]]
        assert payload["title"] == document.title and payload["tags"] == document.tags
        assert payload["archived"] == (document.archived_at is not None)
        assert payload["meta"] == document.metadata
        assert payload["meta_number"] == {
            k: v for k, v in document.metadata.items() if k in restored.metadata_fields
        }
        assert payload["content"] == document.text[payload["char_start"] : payload["char_end"]]


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (
            change_chunks(lambda chunks: chunks[0]["payload"].update(char_start="abc")),
            "char_start: 'abc' is not int",
        ),
        (change_chunks(lambda chunks: chunks[0]["payload"].update(char_end=10**9)), "outside the document"),
        (
            change_chunks(lambda chunks: chunks[0]["payload"].update(content="Buy now.")),
            "not the document's text",
        ),
        (change_documents(lambda documents: documents[0].update(tags=["\ud800"])), "tags[0]"),
        (change_documents(lambda documents: documents[0].update(tags="ocean")), "tags: 'ocean' is not list"),
        (change_documents(lambda documents: documents[0].update(metadata={"a.b": 1})), "metadata.a.b"),
        (change_documents(lambda documents: documents[0].update(title="t" * 501)), "Document.title"),
        (change_documents(lambda documents: documents[0].update(page_starts=[5, 0])), "page_starts"),
        (change_documents(lambda documents: documents[0].update(status="done")), "unknown status"),
        (
            change_manifest(lambda manifest: manifest["knowledge_base"].update(name="n" * 100_000)),
            "KnowledgeBase.name has 100000 characters",
        ),
        (
            change_manifest(lambda manifest: manifest.update(metadata_fields={"year": "integer"})),
            "metadata_fields: year: the type is one of text, number, date, bool, not 'integer'",
        ),
        (
            change_manifest(lambda manifest: manifest.update(metadata_fields={"year": "date"})),
            "metadata.year is 2024, not of the type date manifest.json declares",
        ),
        (
            lambda members: members.update(
                {MEMBERSHIPS: json.dumps([{"username": "bob", "role": "reader"}] * 2).encode()}
            ),
            "'bob' is listed twice",
        ),
    ],
)
def test_an_archive_that_does_not_hold_together_is_refused_naming_what_is_wrong(
    archive, damage, expected
) -> None:
    rewrite_archive(archive, damage)

    assert_refused(archive, expected)


def test_a_member_larger_than_its_cap_is_refused_before_it_is_read(archive) -> None:
    # Spaces deflate about a thousandfold: a few kilobytes of archive, more than the cap unpacked.
    rewrite_archive(
        archive, lambda members: members.update({MEMBERSHIPS: b" " * (MAX_MEMBERSHIPS_BYTES + 1)})
    )
    with zipfile.ZipFile(archive) as stored:
        members = {name: stored.read(name) for name in stored.namelist()}
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as deflated:
        for name, data in members.items():
            deflated.writestr(name, data)
    assert archive.stat().st_size < 1_000_000
    with zipfile.ZipFile(archive) as opened:
        assert opened.getinfo(MEMBERSHIPS).file_size > MAX_MEMBERSHIPS_BYTES

    assert_refused(archive, f"{MEMBERSHIPS}: it unpacks to {MAX_MEMBERSHIPS_BYTES + 1} bytes")


def test_export_writes_a_label_utf8_cannot_encode_escaped_and_import_refuses_it(archive, test_user, tmp_path):
    # A tag stored before lone surrogates were refused at the door: SQLite's JSON text keeps it escaped.
    if connection.vendor == "postgresql":
        pytest.skip("PostgreSQL's jsonb refuses a lone surrogate: no such row can exist there")
    kb = KnowledgeBase.objects.get(slug="field-notes")
    Document.objects.filter(knowledge_base=kb, title="Tides").update(tags=["\ud800"])
    path = tmp_path / "escaped.zip"

    run("export_kb", kb.slug, "--output", str(path))

    with zipfile.ZipFile(path) as exported:
        assert b'"tags":["\\ud800"]' in exported.read(DOCUMENTS)
    assert_refused(path, "a tag may not hold a lone surrogate")
