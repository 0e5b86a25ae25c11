"""manage.py sync_folder and its service on real folders, the database, the embedded Qdrant and the real embedder.

Whether anything was embedded is read from the embedder's own Prometheus counter (texts per model
call, by kind), which production exposes on /metrics: no part of the embedder is replaced.
"""

from __future__ import annotations

import asyncio
import io
import os
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from prometheus_client import REGISTRY

from knowledge.ingestion.pipeline import IngestionService
from knowledge.models import Document, DocumentStatus, KnowledgeBase
from knowledge.services.folder_sync import Change, FolderSync, FolderSyncService, SyncEvent, WhenGone
from search.qdrant import QdrantConfig, QdrantService, qdrant_service
from search.services.chunks import ChunkService
from search.services.collections import CollectionService
from tests.factories import make_kb

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

NOTES = {
    "tides.txt": "Tides are the rise and fall of the sea, pulled by the Moon and the Sun.",
    "bees.md": "# Honeybees\n\nA forager dances to tell her sisters where the flowers are.",
    "guides/bread.txt": "Sourdough rises slowly: the starter is fed with flour and water each day.",
}


def write(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return folder


def long_text(subject: str, sentences: int) -> str:
    return " ".join(f"Sentence {n} of the notes on {subject} adds a plain fact." for n in range(sentences))


def sync(folder: Path, *args: str, kb: str = "docs") -> str:
    out = io.StringIO()
    call_command("sync_folder", str(folder), "--kb", kb, *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def document_texts_embedded() -> float:
    """Document texts the embedding model has been given in this process so far (its /metrics counter)."""
    return REGISTRY.get_sample_value("kbsite_embedding_batch_texts_sum", {"kind": "document"}) or 0.0


def by_name(kb: KnowledgeBase) -> dict[str, Document]:
    return {document.source_name: document for document in Document.objects.filter(knowledge_base=kb)}


def stored_chunks(document: Document) -> list[tuple[int, str, tuple[float, ...]]]:
    """The document's chunks as Qdrant holds them: index, text and dense vector."""
    records = asyncio.run(
        ChunkService().get_document_chunk_records(kb_id=document.knowledge_base_id, document_id=document.pk)
    )
    return [(record.chunk_index, record.payload["content"], tuple(record.dense)) for record in records]


def qdrant_count(document: Document) -> int:
    return asyncio.run(ChunkService().count_chunks(kb_id=document.knowledge_base_id, document_id=document.pk))


def assert_indexed(document: Document) -> None:
    assert document.status == DocumentStatus.READY, document.error
    assert document.chunk_count > 0
    assert qdrant_count(document) == document.chunk_count


def snapshot(kb: KnowledgeBase) -> dict[str, tuple]:
    """Every row a sync could change, and every chunk it could write, by source name."""
    return {
        name: (
            document.pk,
            document.content_hash,
            document.status,
            document.archived_at,
            document.updated_at,
            document.source_folder,
            stored_chunks(document),
        )
        for name, document in by_name(kb).items()
    }


@pytest.fixture
def kb(test_user):
    return make_kb(owner=test_user, name="Docs", slug="docs", chunk_size=32, chunk_overlap=4)


@pytest.fixture
def folder(tmp_path) -> Path:
    return write(tmp_path / "docs", NOTES)


@pytest.fixture
def store_held_elsewhere(tmp_path):
    """The process's embedded store pointed at a folder another client has already opened (and so locked)."""
    path = str(tmp_path / "store")
    holder = QdrantService(QdrantConfig(path=path))
    asyncio.run(holder.client.get_collections())
    qdrant_service.configure(QdrantConfig(path=path))
    try:
        yield path
    finally:
        qdrant_service.configure(QdrantConfig.from_settings())
        holder.close()


def bury_past_path_max(folder: Path, name: str, text: str) -> str:
    """Write a file whose full path is longer than the kernel opens (PATH_MAX), through relative steps.

    The walk lists it (its folder's path is short enough), but opening it fails for any user, root
    included: an honest unreadable file where tests run as root and chmod 000 stops nothing.
    Returns its path within the folder.
    """
    parts: list[str] = []
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        while len(str(folder)) + sum(len(part) + 1 for part in parts) < os.pathconf("/", "PC_PATH_MAX") - 300:
            parts.append(f"{len(parts):02d}" + "d" * 200)
            os.mkdir(parts[-1], dir_fd=descriptor)
            inner = os.open(parts[-1], os.O_RDONLY | os.O_DIRECTORY, dir_fd=descriptor)
            os.close(descriptor)
            descriptor = inner
        file = os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=descriptor)
        os.write(file, text.encode())
        os.close(file)
    finally:
        os.close(descriptor)
    return "/".join([*parts, name])


class TestSyncFolder:
    def test_new_files_come_in_indexed_and_known_by_their_path_in_the_folder(self, kb, folder):
        output = sync(folder)

        documents = by_name(kb)
        assert sorted(documents) == sorted(NOTES)
        for document in documents.values():
            assert_indexed(document)
            assert document.source_folder == str(folder.resolve())
        assert "guides/bread.txt: new" in output
        assert "Compared 3 files: 3 new, 3 ready;" in output

    def test_a_changed_file_is_indexed_again_in_place_and_its_old_chunks_are_gone(self, kb, tmp_path):
        folder = write(tmp_path / "docs", {"lighthouses.txt": long_text("lighthouses", 12), **NOTES})
        sync(folder)
        before = by_name(kb)
        old_chunks = stored_chunks(before["lighthouses.txt"])
        assert len(old_chunks) > 1
        steady_chunks = stored_chunks(before["tides.txt"])

        (folder / "lighthouses.txt").write_text("Lighthouses now run on solar power.", encoding="utf-8")
        output = sync(folder)

        after = by_name(kb)
        changed = after["lighthouses.txt"]
        assert changed.pk == before["lighthouses.txt"].pk
        assert changed.content_hash != before["lighthouses.txt"].content_hash
        assert changed.chunk_count == 1
        assert_indexed(changed)
        assert [content for _, content, _ in stored_chunks(changed)] == [
            "Lighthouses now run on solar power."
        ]
        # Its neighbours were neither written again nor re-embedded.
        assert after["tides.txt"].updated_at == before["tides.txt"].updated_at
        assert stored_chunks(after["tides.txt"]) == steady_chunks
        assert "lighthouses.txt: changed" in output
        assert "1 changed, 3 unchanged, 1 ready; 1 chunk embedded" in output

    def test_a_second_sync_of_an_unchanged_folder_changes_and_embeds_nothing(self, kb, folder):
        sync(folder)
        before = snapshot(kb)
        embedded = document_texts_embedded()

        output = sync(folder)

        assert document_texts_embedded() == embedded
        assert snapshot(kb) == before
        assert "Compared 3 files: 3 unchanged; nothing embedded" in output
        assert "tides.txt" not in output

    def test_a_file_gone_is_archived_by_default_and_restored_unembedded_when_it_comes_back(self, kb, folder):
        sync(folder)
        gone = by_name(kb)["bees.md"]
        chunks = stored_chunks(gone)

        (folder / "bees.md").unlink()
        output = sync(folder)

        archived = Document.objects.get(pk=gone.pk)
        assert archived.archived_at is not None
        assert qdrant_count(archived) == archived.chunk_count
        assert "bees.md: archived" in output
        assert "1 archived, 2 unchanged" in output

        write(folder, {"bees.md": NOTES["bees.md"]})
        embedded = document_texts_embedded()
        output = sync(folder)

        restored = Document.objects.get(pk=gone.pk)
        assert restored.archived_at is None
        assert_indexed(restored)
        assert [(index, content) for index, content, _ in stored_chunks(restored)] == [
            (index, content) for index, content, _ in chunks
        ]
        assert document_texts_embedded() == embedded
        assert "bees.md: restored" in output

    def test_when_gone_delete_removes_the_document_and_its_chunks(self, kb, folder):
        sync(folder)
        gone = by_name(kb)["bees.md"]

        (folder / "bees.md").unlink()
        output = sync(folder, "--when-gone", "delete")

        assert not Document.objects.filter(pk=gone.pk).exists()
        assert qdrant_count(gone) == 0
        assert sorted(by_name(kb)) == sorted(set(NOTES) - {"bees.md"})
        assert "bees.md: deleted" in output

    def test_an_emptied_folder_changes_nothing_unless_allowed(self, kb, folder):
        sync(folder)
        for name in NOTES:
            (folder / name).unlink()

        with pytest.raises(CommandError, match="--allow-empty"):
            sync(folder)

        assert all(document.archived_at is None for document in by_name(kb).values())
        sync(folder, "--allow-empty")
        assert all(document.archived_at is not None for document in by_name(kb).values())

    def test_dry_run_says_what_would_change_and_changes_nothing(self, kb, folder):
        sync(folder)
        before = snapshot(kb)
        (folder / "tides.txt").write_text("Spring tides come at new and full moon.", encoding="utf-8")
        (folder / "bees.md").unlink()
        write(folder, {"volcanoes.txt": "Magma rises through the crust and erupts as lava."})
        embedded = document_texts_embedded()

        output = sync(folder, "--dry-run")

        assert snapshot(kb) == before
        assert document_texts_embedded() == embedded
        assert "tides.txt: would be changed" in output
        assert "bees.md: would be archived" in output
        assert "volcanoes.txt: would be new" in output
        assert "a sync would make: 1 new, 1 changed, 1 archived, 1 unchanged" in output

    def test_a_file_moved_within_the_folder_keeps_its_document_and_chunks(self, kb, folder):
        sync(folder)
        moved = by_name(kb)["tides.txt"]
        chunks = stored_chunks(moved)
        (folder / "archive").mkdir()
        (folder / "tides.txt").rename(folder / "archive" / "tides.txt")
        embedded = document_texts_embedded()

        dry_run = sync(folder, "--dry-run")
        output = sync(folder)

        assert "archive/tides.txt: would be moved (from tides.txt)" in dry_run
        assert "would be archived" not in dry_run
        assert "archive/tides.txt: moved (from tides.txt)" in output
        after = Document.objects.get(pk=moved.pk)
        assert (after.source_name, after.archived_at) == ("archive/tides.txt", None)
        assert stored_chunks(after) == chunks
        assert document_texts_embedded() == embedded
        assert sorted(by_name(kb)) == sorted({*NOTES, "archive/tides.txt"} - {"tides.txt"})

    def test_dry_run_of_a_folder_never_synced_adds_nothing(self, kb, folder):
        output = sync(folder, "--dry-run")

        assert not Document.objects.filter(knowledge_base=kb).exists()
        assert "a sync would make: 3 new" in output

    def test_a_sync_interrupted_midway_is_finished_by_the_next(self, kb, tmp_path):
        files = {f"note-{n}.txt": f"Note {n} is about the harbour ferry number {n}." for n in range(6)}
        folder = write(tmp_path / "docs", files)

        class Interrupted(Exception):
            pass

        def stop_at_the_second_new_file(event: SyncEvent) -> None:
            if event.change == Change.NEW and event.source_name == "note-1.txt":
                raise Interrupted

        with pytest.raises(Interrupted):
            FolderSyncService().sync_folder(
                request=FolderSync(folder=folder, kb=kb), on_event=stop_at_the_second_new_file
            )
        assert any(d.status != DocumentStatus.READY for d in by_name(kb).values())

        output = sync(folder)

        documents = by_name(kb)
        assert sorted(documents) == sorted(files)
        for document in documents.values():
            assert_indexed(document)
        assert "6 ready" in output
        assert "Compared 6 files: 6 unchanged; nothing embedded" in sync(folder)

    def test_a_sync_killed_midway_is_finished_by_the_next_without_waiting_out_its_claims(self, kb, folder):
        sync(folder, "--enqueue")
        held = by_name(kb)["tides.txt"]
        # What a sync killed while indexing leaves: a document claimed by a process that is gone.
        assert IngestionService().queue.claim(document_id=held.pk, worker_id="a-killed-sync") is not None

        output = sync(folder)

        for document in by_name(kb).values():
            assert_indexed(document)
        assert "3 ready" in output

    def test_symlinks_hidden_files_and_unsupported_types_are_reported_and_the_rest_synced(
        self, kb, folder, tmp_path
    ):
        outside = write(tmp_path / "outside", {"secret.txt": "Nothing outside the folder is read."})
        (folder / "link.txt").symlink_to(outside / "secret.txt")
        (folder / "linked-folder").symlink_to(outside, target_is_directory=True)
        write(folder, {".hidden.txt": "A hidden note.", ".git/config.txt": "Hidden folder."})
        (folder / "picture.png").write_bytes(b"\x89PNG\r\n\x1a\n")

        output = sync(folder)

        assert sorted(by_name(kb)) == sorted(NOTES)
        assert "Passed over 2 entries (hidden)" in output
        assert "Passed over 2 entries (symbolic link)" in output
        assert "Passed over 1 entry (unsupported type)" in output
        assert "Compared 3 files: 3 new, 3 ready;" in output

    def test_a_file_the_system_will_not_open_is_reported_and_the_rest_synced(self, kb, folder):
        name = bury_past_path_max(folder, "n" * 250 + ".txt", "Too deep to open.")

        output = sync(folder)

        assert sorted(by_name(kb)) == sorted(NOTES)
        assert f"{name}: unreadable (File name too long)" in output
        assert "Could not read 1 file" in output
        assert "Compared 4 files: 3 new, 1 unreadable, 3 ready;" in output

    def test_a_file_that_fails_to_index_fails_the_run_after_the_rest_and_is_left_alone_until_it_changes(
        self, kb, folder
    ):
        (folder / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a PDF")

        with pytest.raises(CommandError, match="1 file failed:\n  broken.pdf: .*not a valid PDF"):
            sync(folder)

        documents = by_name(kb)
        assert documents["broken.pdf"].status == DocumentStatus.FAILED
        for name in NOTES:
            assert_indexed(documents[name])
        assert "broken.pdf: still failed" in sync(folder)

    @pytest.mark.skipif(
        os.geteuid() == 0, reason="root reads a file whatever its mode (the test above runs as root)"
    )
    def test_an_unreadable_file_is_reported_and_the_rest_synced(self, kb, folder):
        locked = folder / "locked.txt"
        locked.write_text("Nobody may read this.", encoding="utf-8")
        locked.chmod(0)
        try:
            output = sync(folder)
        finally:
            locked.chmod(0o644)

        assert sorted(by_name(kb)) == sorted(NOTES)
        assert "locked.txt: unreadable" in output
        assert "Could not read 1 file: check their permissions." in output

    def test_enqueue_records_the_changes_for_the_workers_and_touches_no_qdrant(self, kb, folder):
        output = sync(folder, "--enqueue")

        documents = by_name(kb)
        assert sorted(documents) == sorted(NOTES)
        assert {document.status for document in documents.values()} == {DocumentStatus.PENDING}
        assert not asyncio.run(CollectionService().holds_points(kb_id=kb.id))
        assert "Compared 3 files: 3 new; nothing embedded" in output

        (folder / "tides.txt").write_text("Spring tides come at new and full moon.", encoding="utf-8")
        output = sync(folder, "--enqueue")

        tides = by_name(kb)["tides.txt"]
        assert tides.pk == documents["tides.txt"].pk
        assert tides.status == DocumentStatus.PENDING
        assert "1 changed, 2 resumed" in output
        assert not asyncio.run(CollectionService().holds_points(kb_id=kb.id))

    def test_enqueue_works_while_another_client_holds_the_store_and_leaves_gone_files_for_a_full_sync(
        self, kb, folder, store_held_elsewhere
    ):
        sync(folder, "--enqueue")
        (folder / "bees.md").unlink()

        output = sync(folder, "--enqueue")

        documents = by_name(kb)
        assert sorted(documents) == sorted(NOTES)
        assert documents["bees.md"].archived_at is None
        assert "bees.md: postponed (gone from the folder: archiving it changes Qdrant" in output
        assert "2 resumed, 1 postponed" in output

    def test_the_service_archives_or_deletes_as_asked(self, kb, folder):
        service = FolderSyncService()
        service.sync_folder(request=FolderSync(folder=folder, kb=kb))
        (folder / "tides.txt").unlink()

        report = service.sync_folder(request=FolderSync(folder=folder, kb=kb, when_gone=WhenGone.DELETE))

        assert report.changes[Change.DELETED] == 1
        assert "tides.txt" not in by_name(kb)

    def test_an_unknown_kb_or_a_missing_folder_is_refused_with_what_to_do(self, kb, tmp_path):
        with pytest.raises(CommandError, match="There is no knowledge base 'nowhere'"):
            sync(tmp_path, kb="nowhere")
        with pytest.raises(CommandError, match="is not a folder"):
            sync(tmp_path / "missing")
