"""The commands ingest, ingest_worker, reindex and bootstrap, run on real files, the database and Qdrant."""

from __future__ import annotations

import asyncio
import io
import stat
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

from knowledge.ingestion.pipeline import IngestionService
from knowledge.models import Document, DocumentStatus, KnowledgeBase, Membership, Role
from knowledge.services.knowledge_bases import active_index
from knowledge.services.permissions import PermissionService
from knowledge.services.reindex import ReindexService
from knowledge.services.site import DEMO_SLUG
from search.embedding import embedding_service
from search.errors import EmbeddingModelMismatch
from search.qdrant import QdrantConfig, QdrantService, qdrant_service
from search.services.audit import SearchAuditService
from search.services.chunks import ChunkService
from search.services.collections import CollectionService
from search.services.search import SearchService
from tests.conftest import index_corpus
from tests.factories import make_document, make_kb, make_user
from tests.files import make_docx, make_pdf

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

TIDE_QUERY = "why does the sea rise and fall twice a day"

PASSAGES = {
    "tides.txt": "Tides are the rise and fall of the sea caused by the pull of the Moon and the Sun. "
    "Most coasts see two high tides and two low tides every lunar day.",
    "honeybees.md": "# Honeybees\n\nA forager returning to the hive dances to tell her sisters where the "
    "flowers are: the angle of the waggle run points the way and its length tells the distance.",
    "volcanoes.html": "<html><head><title>Volcanoes</title></head><body><h1>Volcanoes</h1>"
    "<p>Magma rises through the crust, gathers in a chamber and erupts as lava, ash and gas.</p>"
    "</body></html>",
}
PDF_NAME, DOCX_NAME = "bicycles.pdf", "sourdough.docx"
EVERY_FORMAT = [*PASSAGES, PDF_NAME, DOCX_NAME]


def write_every_format(folder: Path) -> Path:
    """One small file of each format kbsite reads, each on its own subject."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in PASSAGES.items():
        (folder / name).write_text(text, encoding="utf-8")
    (folder / PDF_NAME).write_bytes(
        make_pdf(["Bicycle maintenance\nKeep the chain clean and oiled, and check the brake pads monthly."])
    )

    def sourdough(document) -> None:
        document.add_heading("Sourdough", level=1)
        document.add_paragraph("A sourdough starter is flour and water fermented by wild yeast and bacteria.")

    (folder / DOCX_NAME).write_bytes(make_docx(sourdough))
    return folder


def long_text(subject: str, sentences: int) -> str:
    return " ".join(f"Sentence {n} of the notes on {subject} adds a plain fact." for n in range(sentences))


def run(command: str, *args: str, stdout: io.StringIO | None = None, **options) -> str:
    out = stdout if stdout is not None else io.StringIO()
    call_command(command, *args, stdout=out, stderr=io.StringIO(), **options)
    return out.getvalue()


def command_error(command: str, *args: str, **options) -> str:
    with pytest.raises(CommandError) as error:
        run(command, *args, **options)
    return str(error.value)


def qdrant_count(kb_id, document_id=None, index=None) -> int:
    return asyncio.run(ChunkService().count_chunks(kb_id=kb_id, document_id=document_id, index=index))


def active_generation(kb_id) -> int:
    return KnowledgeBase.objects.values_list("index_generation", flat=True).get(pk=kb_id)


def search(kb, user, query: str = TIDE_QUERY) -> list:
    service = SearchService(PermissionService(), SearchAuditService())
    return asyncio.run(service.semantic_search(query=query, kb_ids=[kb.id], user_id=user.id, limit=5))


def documents_by_file(kb) -> dict[str, Document]:
    return {d.source_name: d for d in Document.objects.filter(knowledge_base=kb)}


def assert_indexed(document: Document) -> None:
    assert document.status == DocumentStatus.READY, document.error
    assert document.chunk_count > 0
    assert qdrant_count(document.knowledge_base_id, document.id) == document.chunk_count


@pytest.fixture
def corpus_kb(test_user, ingestion_service):
    """(kb, documents): the eight corpus documents, ready, in chunks of 64 tokens."""
    return asyncio.run(
        index_corpus(owner=test_user, ingestion=ingestion_service, chunk_size=64, chunk_overlap=12)
    )


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


class TestIngest:
    def test_a_folder_of_every_format_becomes_ready_in_a_new_kb_owned_by_the_given_user(
        self, tmp_path, test_user
    ):
        folder = write_every_format(tmp_path / "docs")

        output = run(
            "ingest", str(folder), "--kb", "handbook", "--create", "--name", "Handbook", "--owner", "alice"
        )

        kb = KnowledgeBase.objects.get(slug="handbook")
        assert kb.name == "Handbook" and kb.owner == test_user
        assert Membership.objects.get(knowledge_base=kb, user=test_user).role == Role.OWNER
        documents = documents_by_file(kb)
        assert sorted(documents) == sorted(EVERY_FORMAT)
        for document in documents.values():
            assert_indexed(document)
        assert {d.source_format for d in documents.values()} == {"txt", "md", "html", "pdf", "docx"}
        assert qdrant_count(kb.id) == sum(d.chunk_count for d in documents.values())
        for name in EVERY_FORMAT:
            assert name in output
        assert "5 of 5 files are ready in 'handbook'" in output

    def test_sub_folders_are_loaded_only_with_recursive(self, tmp_path, test_user):
        folder = tmp_path / "docs"
        (folder / "sub").mkdir(parents=True)
        (folder / "top.txt").write_text(PASSAGES["tides.txt"], encoding="utf-8")
        (folder / "sub" / "inner.md").write_text(PASSAGES["honeybees.md"], encoding="utf-8")

        run("ingest", str(folder), "--kb", "docs", "--create")
        kb = KnowledgeBase.objects.get(slug="docs")
        assert sorted(documents_by_file(kb)) == ["top.txt"]

        output = run("ingest", str(folder), "--kb", "docs", "--recursive")

        documents = documents_by_file(kb)
        assert sorted(documents) == ["sub/inner.md", "top.txt"]
        assert_indexed(documents["sub/inner.md"])
        assert "1 of 2 files are ready" in output and "1 was already there" in output

    def test_hidden_files_and_folders_are_passed_over(self, tmp_path, test_user):
        folder = tmp_path / "docs"
        (folder / ".drafts").mkdir(parents=True)
        (folder / "visible.txt").write_text(PASSAGES["tides.txt"], encoding="utf-8")
        (folder / ".secret.txt").write_text("A hidden note, kept out of the index.", encoding="utf-8")
        (folder / ".drafts" / "draft.md").write_text("# Draft\n\nAn unfinished draft.", encoding="utf-8")

        output = run("ingest", str(folder), "--kb", "docs", "--create", "--recursive")

        assert sorted(documents_by_file(KnowledgeBase.objects.get(slug="docs"))) == ["visible.txt"]
        assert ".secret.txt" not in output and "draft.md" not in output

    def test_a_corrupt_and_an_unsupported_file_are_listed_with_reasons_and_the_good_files_are_ready(
        self, tmp_path
    ):
        folder = tmp_path / "docs"
        folder.mkdir()
        (folder / "tides.txt").write_text(PASSAGES["tides.txt"], encoding="utf-8")
        (folder / "honeybees.md").write_text(PASSAGES["honeybees.md"], encoding="utf-8")
        (folder / "broken.pdf").write_bytes(b"These bytes were never a PDF, whatever the name says.\n" * 20)
        rtf = tmp_path / "notes.rtf"
        rtf.write_text(r"{\rtf1\ansi Some notes in rich text.}", encoding="utf-8")

        message = command_error("ingest", str(folder), str(rtf), "--kb", "docs", "--create")

        assert "2 of 4 files failed" in message
        broken_line = next(line for line in message.splitlines() if "broken.pdf:" in line)
        rtf_line = next(line for line in message.splitlines() if "notes.rtf:" in line)
        assert "not a valid PDF" in broken_line
        assert "not a file kbsite can read" in rtf_line
        kb = KnowledgeBase.objects.get(slug="docs")
        documents = documents_by_file(kb)
        assert sorted(documents) == ["broken.pdf", "honeybees.md", "tides.txt"]
        assert_indexed(documents["tides.txt"])
        assert_indexed(documents["honeybees.md"])
        broken = documents["broken.pdf"]
        assert broken.status == DocumentStatus.FAILED and "not a valid PDF" in broken.error
        assert broken.chunk_count == 0 and qdrant_count(kb.id, broken.id) == 0

    def test_a_program_renamed_to_a_document_is_refused_saying_what_it_is(self, tmp_path):
        program = tmp_path / "manual.pdf"
        program.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(300))

        message = command_error("ingest", str(program), "--kb", "docs", "--create")

        assert "manual.pdf is a Linux or Unix program (ELF), not a PDF" in message
        assert not Document.objects.exists()

    def test_an_unsupported_file_is_named_as_the_user_gave_it(self, tmp_path):
        # A link stands in for what resolving the path does on Windows: give the name on disk.
        target = tmp_path / "store" / "setup-1.2.3-win64.bin"
        target.parent.mkdir()
        target.write_bytes(b"MZ\x90\x00" + bytes(300))
        given = tmp_path / "Setup.exe"
        given.symlink_to(target)

        message = command_error("ingest", str(given), "--kb", "docs", "--create")

        assert f"{given}: Setup.exe is not a file kbsite can read" in message
        assert "setup-1.2.3" not in message

    def test_the_same_file_twice_is_reported_as_already_there_and_does_not_fail(self, tmp_path):
        path = tmp_path / "tides.txt"
        path.write_text(PASSAGES["tides.txt"], encoding="utf-8")
        run("ingest", str(path), "--kb", "docs", "--create")
        kb = KnowledgeBase.objects.get(slug="docs")
        first = Document.objects.get(knowledge_base=kb)

        output = run("ingest", str(path), "--kb", "docs")

        assert "duplicate: tides.txt is already in" in output
        assert "0 of 1 file is ready in 'docs'; 1 was already there" in output
        again = Document.objects.get(knowledge_base=kb)
        assert again.pk == first.pk and again.updated_at == first.updated_at
        assert_indexed(again)

    def test_a_changed_file_of_the_same_name_replaces_its_document_and_only_it_is_indexed_again(
        self, tmp_path
    ):
        folder = tmp_path / "docs"
        folder.mkdir()
        changing, steady = folder / "notes.txt", folder / "tides.txt"
        changing.write_text(long_text("lighthouses", 60), encoding="utf-8")
        steady.write_text(PASSAGES["tides.txt"], encoding="utf-8")
        run("ingest", str(folder), "--kb", "docs", "--create")
        kb = KnowledgeBase.objects.get(slug="docs")
        before = documents_by_file(kb)
        assert before["notes.txt"].chunk_count > 1

        changing.write_text("Lighthouses now run on solar power and need no keeper.", encoding="utf-8")
        output = run("ingest", str(folder), "--kb", "docs")

        after = documents_by_file(kb)
        assert after["notes.txt"].pk == before["notes.txt"].pk
        assert after["notes.txt"].text == "Lighthouses now run on solar power and need no keeper."
        # The old version's longer tail is gone from Qdrant too.
        assert after["notes.txt"].chunk_count == 1
        assert_indexed(after["notes.txt"])
        assert after["tides.txt"].updated_at == before["tides.txt"].updated_at
        assert_indexed(after["tides.txt"])
        assert "notes.txt: ready" in output and "tides.txt: ready" not in output
        assert "1 of 2 files are ready in 'docs'; 1 was already there" in output

    def test_enqueue_records_pending_documents_and_indexes_nothing(self, tmp_path):
        folder = write_every_format(tmp_path / "docs")

        output = run("ingest", str(folder), "--kb", "docs", "--create", "--enqueue")

        kb = KnowledgeBase.objects.get(slug="docs")
        documents = documents_by_file(kb)
        assert sorted(documents) == sorted(EVERY_FORMAT)
        assert {d.status for d in documents.values()} == {DocumentStatus.PENDING}
        assert not asyncio.run(CollectionService().holds_points(kb_id=kb.id))
        assert "Queued 5 documents in 'docs' for the workers" in output

    def test_enqueue_works_while_another_client_holds_the_embedded_store(
        self, tmp_path, store_held_elsewhere
    ):
        folder = write_every_format(tmp_path / "docs")

        output = run("ingest", str(folder), "--kb", "docs", "--create", "--enqueue")

        documents = documents_by_file(KnowledgeBase.objects.get(slug="docs"))
        assert sorted(documents) == sorted(EVERY_FORMAT)
        assert {d.status for d in documents.values()} == {DocumentStatus.PENDING}
        assert "Queued 5 documents" in output

    def test_ingest_while_another_client_holds_the_store_says_to_enqueue_and_records_no_document(
        self, tmp_path, store_held_elsewhere
    ):
        kb = make_kb(name="Docs", slug="docs")
        folder = write_every_format(tmp_path / "docs")

        message = command_error("ingest", str(folder), "--kb", "docs")

        assert "--enqueue" in message and store_held_elsewhere in message
        assert not Document.objects.filter(knowledge_base=kb).exists()

    def test_ingest_with_create_while_the_store_is_held_creates_no_knowledge_base(
        self, tmp_path, store_held_elsewhere
    ):
        folder = write_every_format(tmp_path / "docs")

        message = command_error("ingest", str(folder), "--kb", "docs", "--create")

        assert "--enqueue" in message
        assert not KnowledgeBase.objects.filter(slug="docs").exists()

    def test_an_unknown_kb_without_create_is_refused_with_a_hint_to_add_create(self, tmp_path):
        path = tmp_path / "tides.txt"
        path.write_text(PASSAGES["tides.txt"], encoding="utf-8")

        message = command_error("ingest", str(path), "--kb", "nowhere")

        assert "'nowhere'" in message and "--create" in message
        assert not KnowledgeBase.objects.exists()

    def test_a_path_that_does_not_exist_is_refused(self, tmp_path):
        make_kb(name="Docs", slug="docs")
        missing = tmp_path / "missing.txt"

        message = command_error("ingest", str(missing), "--kb", "docs")

        assert f"{missing} does not exist" in message
        assert not Document.objects.exists()

    def test_a_folder_without_readable_files_is_refused(self, tmp_path):
        make_kb(name="Docs", slug="docs")
        folder = tmp_path / "docs"
        folder.mkdir()
        (folder / "picture.png").write_bytes(b"\x89PNG\r\n\x1a\n")
        (folder / "notes.rtf").write_text(r"{\rtf1 notes}", encoding="utf-8")
        out = io.StringIO()

        with pytest.raises(CommandError, match="Found no files to load"):
            call_command("ingest", str(folder), "--kb", "docs", stdout=out)

        assert "Passed over 2 files kbsite cannot read" in out.getvalue()
        assert not Document.objects.exists()

    def test_an_owner_who_is_not_a_user_is_refused_and_no_kb_is_made(self, tmp_path):
        path = tmp_path / "tides.txt"
        path.write_text(PASSAGES["tides.txt"], encoding="utf-8")

        message = command_error("ingest", str(path), "--kb", "docs", "--create", "--owner", "nobody")

        assert "There is no user 'nobody'" in message
        assert not KnowledgeBase.objects.exists()

    def test_files_of_the_same_name_in_different_sub_folders_are_both_kept(self, tmp_path):
        folder = tmp_path / "docs"
        (folder / "a").mkdir(parents=True)
        (folder / "b").mkdir()
        (folder / "a" / "notes.txt").write_text(PASSAGES["tides.txt"], encoding="utf-8")
        (folder / "b" / "notes.txt").write_text(long_text("bees", 5), encoding="utf-8")

        output = run("ingest", str(folder), "--kb", "docs", "--create", "--recursive")

        assert "2 of 2 files are ready" in output
        documents = Document.objects.filter(knowledge_base__slug="docs")
        assert documents.count() == 2
        for document in documents:
            assert_indexed(document)

    def test_without_a_terminal_each_file_gets_one_plain_line_and_no_carriage_return(self, tmp_path):
        folder = write_every_format(tmp_path / "docs")
        out = io.StringIO()
        assert not out.isatty()

        run("ingest", str(folder), "--kb", "docs", "--create", stdout=out)

        output = out.getvalue()
        assert "\r" not in output
        lines = output.splitlines()
        for name in EVERY_FORMAT:
            assert [line for line in lines if line.startswith(f"{name}:")] == [
                next(line for line in lines if line.startswith(f"{name}: ready, "))
            ]
        assert len([line for line in lines if ": ready, " in line]) == len(EVERY_FORMAT)


class TestIngestWorker:
    def test_until_idle_processes_the_queued_documents_and_says_how_many(self, tmp_path):
        folder = write_every_format(tmp_path / "docs")
        run("ingest", str(folder), "--kb", "docs", "--create", "--enqueue")

        output = run("ingest_worker", "--until-idle", "--poll", "0.1")

        documents = documents_by_file(KnowledgeBase.objects.get(slug="docs"))
        for document in documents.values():
            assert_indexed(document)
        assert f"processed {len(EVERY_FORMAT)} documents" in output

    def test_until_idle_with_an_empty_queue_processes_none(self):
        output = run("ingest_worker", "--until-idle", "--poll", "0.1")

        assert "processed 0 documents" in output


class TestReindex:
    def test_in_place_rechunks_every_document_to_the_kbs_new_chunk_size(self, corpus_kb):
        kb, documents = corpus_kb
        before = {d.pk: d.chunk_count for d in documents}
        KnowledgeBase.objects.filter(pk=kb.pk).update(chunk_size=32)
        kb.refresh_from_db()
        chunker = IngestionService().chunker_for(kb)

        output = run("reindex", "--kb", kb.slug, "--no-input")

        for document in Document.objects.filter(knowledge_base=kb):
            assert document.chunk_count == len(chunker.split(document.text)) > before[document.pk]
            assert_indexed(document)
        assert qdrant_count(kb.id) == sum(
            Document.objects.filter(knowledge_base=kb).values_list("chunk_count", flat=True)
        )
        assert active_generation(kb.id) == 1
        assert f"Reindexed {len(documents)} documents" in output

    def test_one_document_is_reindexed_and_the_others_are_left_alone(self, corpus_kb):
        kb, documents = corpus_kb
        chosen, others = documents[0], documents[1:]
        KnowledgeBase.objects.filter(pk=kb.pk).update(chunk_size=32)
        kb.refresh_from_db()

        output = run("reindex", "--document", str(chosen.pk), "--no-input")

        chosen.refresh_from_db()
        assert chosen.chunk_count == len(IngestionService().chunker_for(kb).split(chosen.text))
        assert_indexed(chosen)
        for other in others:
            unchanged = Document.objects.get(pk=other.pk)
            assert (unchanged.chunk_count, unchanged.updated_at) == (other.chunk_count, other.updated_at)
            assert_indexed(unchanged)
        assert "Reindexed 1 document (" in output

    def test_an_unknown_kb_is_refused_with_the_known_slugs(self, corpus_kb):
        kb, _ = corpus_kb
        make_kb(name="Another one", slug="another-one")

        message = command_error("reindex", "--kb", "nowhere", "--no-input")

        assert "No knowledge base nowhere" in message
        assert "another-one" in message and kb.slug in message

    def test_document_together_with_recreate_is_refused(self, corpus_kb):
        kb, documents = corpus_kb

        message = command_error("reindex", "--document", str(documents[0].pk), "--recreate", "--no-input")

        assert "--document" in message and "--recreate" in message
        assert active_generation(kb.id) == 1

    def test_declining_the_prompt_does_nothing(self, corpus_kb, monkeypatch):
        kb, documents = corpus_kb
        KnowledgeBase.objects.filter(pk=kb.pk).update(chunk_size=32)
        prompts: list[str] = []
        monkeypatch.setattr("builtins.input", lambda prompt="": prompts.append(prompt) or "n")

        message = command_error("reindex", "--kb", kb.slug, "--recreate")

        assert message == "Nothing was done."
        assert prompts and f"({len(documents)} documents)" in prompts[0]
        assert active_generation(kb.id) == 1
        for document in documents:
            unchanged = Document.objects.get(pk=document.pk)
            assert unchanged.chunk_count == document.chunk_count
            assert unchanged.updated_at == document.updated_at

    def test_without_a_terminal_to_answer_on_it_says_to_use_no_input_and_does_nothing(self, corpus_kb, monkeypatch):
        kb, documents = corpus_kb
        # As under cron or `docker run` without -it: stdin gives end of file at once.
        monkeypatch.setattr("sys.stdin", io.StringIO(""))

        message = command_error("reindex", "--kb", kb.slug, "--recreate")

        assert "--no-input" in message
        assert active_generation(kb.id) == 1
        assert all(Document.objects.get(pk=d.pk).updated_at == d.updated_at for d in documents)

    def test_recreate_switches_the_kb_to_its_next_generation_and_drops_the_old_one(
        self, corpus_kb, test_user, other_user
    ):
        kb, documents = corpus_kb
        neighbour = make_kb(owner=other_user, name="Neighbour", slug="neighbour")
        neighbour_document = make_document(kb=neighbour, title="Tides next door", text="The tide rises twice a day.")
        asyncio.run(IngestionService().ingest_now(document_id=neighbour_document.id, worker_id="t"))
        first = active_index(KnowledgeBase.objects.get(pk=kb.pk))
        top_before = search(kb, test_user)[0]

        output = run("reindex", "--kb", kb.slug, "--recreate", "--no-input")

        assert active_generation(kb.id) == 2
        assert qdrant_count(kb.id, index=first) == 0
        assert qdrant_count(neighbour.id) == 1 and active_generation(neighbour.id) == 1  # nobody else's rebuilt
        for document in Document.objects.filter(knowledge_base=kb):
            assert_indexed(document)
        assert qdrant_count(kb.id) == sum(d.chunk_count for d in documents)
        top_after = search(kb, test_user)[0]
        assert top_after.document_id == top_before.document_id and "tide" in top_after.title.lower()
        assert f"switched to generation 2 in {first.collection}, {len(documents)} documents" in output

    def test_recreate_brings_a_kb_indexed_with_another_model_back_to_the_current_one(
        self, corpus_kb, test_user
    ):
        kb, _ = corpus_kb
        KnowledgeBase.objects.filter(pk=kb.pk).update(embedding_model="old-model")
        with pytest.raises(EmbeddingModelMismatch):
            search(kb, test_user)

        run("reindex", "--kb", kb.slug, "--recreate", "--no-input")

        kb.refresh_from_db()
        assert kb.embedding_model == embedding_service.model_id
        assert kb.vector_size == embedding_service.dimensions
        results = search(kb, test_user)
        assert results and "tide" in results[0].title.lower()

    def test_in_place_on_a_kb_of_another_model_is_refused_and_leaves_its_documents_alone(self, corpus_kb):
        kb, documents = corpus_kb
        indexed = active_index(kb)  # where the points stay: the KB's row now names another model
        KnowledgeBase.objects.filter(pk=kb.pk).update(embedding_model="old-model")

        message = command_error("reindex", "--kb", kb.slug, "--no-input")

        assert "--recreate" in message
        for document in documents:
            unchanged = Document.objects.get(pk=document.pk)
            assert (unchanged.status, unchanged.updated_at) == (DocumentStatus.READY, document.updated_at)
            assert qdrant_count(kb.id, document.id, index=indexed) == document.chunk_count

    def test_while_the_store_is_held_elsewhere_it_says_to_enqueue_and_changes_nothing(
        self, corpus_kb, store_held_elsewhere
    ):
        kb, documents = corpus_kb

        message = command_error("reindex", "--kb", kb.slug, "--no-input")

        assert store_held_elsewhere in message and "`manage.py reindex --enqueue`" in message
        assert all(Document.objects.get(pk=d.pk).updated_at == d.updated_at for d in documents)

    def test_enqueue_queues_the_documents_for_the_workers_without_the_store(self, corpus_kb, store_held_elsewhere):
        kb, documents = corpus_kb

        output = run("reindex", "--kb", kb.slug, "--enqueue", "--no-input")

        assert {d.status for d in Document.objects.filter(knowledge_base=kb)} == {DocumentStatus.PENDING}
        assert f"Queued {len(documents)} documents;" in output

    def test_enqueue_of_one_document_queues_only_it_and_says_document(self, corpus_kb):
        kb, documents = corpus_kb

        output = run("reindex", "--document", str(documents[0].pk), "--enqueue", "--no-input")

        statuses = {d.pk: d.status for d in Document.objects.filter(knowledge_base=kb)}
        assert statuses.pop(documents[0].pk) == DocumentStatus.PENDING
        assert set(statuses.values()) == {DocumentStatus.READY}
        assert "Queued 1 document;" in output

    def test_enqueue_with_recreate_is_refused_saying_the_store_is_needed(self, corpus_kb):
        kb, _ = corpus_kb

        message = command_error("reindex", "--kb", kb.slug, "--enqueue", "--recreate", "--no-input")

        assert "stop the server" in message
        assert {d.status for d in Document.objects.filter(knowledge_base=kb)} == {DocumentStatus.READY}
        assert active_generation(kb.id) == 1

    def test_enqueue_on_a_kb_of_another_model_is_refused_and_queues_nothing(self, corpus_kb):
        kb, _ = corpus_kb
        KnowledgeBase.objects.filter(pk=kb.pk).update(embedding_model="old-model")

        message = command_error("reindex", "--kb", kb.slug, "--enqueue", "--no-input")

        assert "--recreate" in message
        assert {d.status for d in Document.objects.filter(knowledge_base=kb)} == {DocumentStatus.READY}

    async def test_searches_keep_answering_while_a_kb_is_rebuilt(self, test_user, ingestion_service):
        kb, documents = await index_corpus(
            owner=test_user, ingestion=ingestion_service, chunk_size=32, chunk_overlap=0
        )
        chunks = ChunkService()
        first = active_index(kb)
        searcher = SearchService(PermissionService(), SearchAuditService())

        async def search_tides() -> list:
            return await searcher.semantic_search(
                query=TIDE_QUERY, kb_ids=[kb.id], user_id=test_user.id, limit=5
            )

        rebuild = asyncio.create_task(ReindexService().rebuild(kb=kb, worker_id="t"))
        answers = []
        while not rebuild.done():
            answers.append(await search_tides())
            await asyncio.sleep(0)
        report = await rebuild

        assert len(answers) >= 3, "the rebuild finished before several searches could overlap it"
        assert all(answers) and all("tide" in answer[0].title.lower() for answer in answers)
        assert report.indexed == len(documents) and not report.failed
        assert await chunks.indexes.active_index(kb_id=kb.id) == first.next_generation(
            model=first.model, vector_size=first.vector_size
        )
        assert report.collection == first.collection and report.generation == 2
        assert await chunks.count_chunks(kb_id=kb.id, index=first) == 0
        assert await chunks.count_chunks(kb_id=kb.id) == report.chunks
        assert report.chunks == sum(d.chunk_count for d in documents)
        after = await search_tides()
        assert after and after[0].document_id == answers[0][0].document_id


class TestOneEventLoopPerCommand:
    """Each command reaches Qdrant from one event loop, and so through one client, however many steps it takes."""

    @pytest.fixture
    def loops(self, monkeypatch) -> list:
        seen: list = []
        client = QdrantService.client

        def recording(service):
            try:
                seen.append(asyncio.get_running_loop())
            except RuntimeError:
                seen.append(None)
            return client.fget(service)

        monkeypatch.setattr(QdrantService, "client", property(recording))
        return seen

    def test_reindex(self, corpus_kb, loops):
        kb, _ = corpus_kb

        run("reindex", "--kb", kb.slug, "--no-input")

        assert len(loops) > 1 and len(set(loops)) == 1 and None not in loops

    def test_reindex_recreate(self, corpus_kb, loops):
        kb, _ = corpus_kb

        run("reindex", "--kb", kb.slug, "--recreate", "--no-input")

        assert len(loops) > 1 and len(set(loops)) == 1 and None not in loops

    def test_export_and_import(self, corpus_kb, loops, tmp_path):
        kb, _ = corpus_kb
        archive = tmp_path / "kb.zip"

        run("export_kb", kb.slug, "--output", str(archive), "--no-input")
        exporting, loops[:] = list(loops), []
        run("import_kb", str(archive), "--slug", "copy")

        for seen in (exporting, loops):
            assert len(seen) > 1 and len(set(seen)) == 1 and None not in seen


class TestBootstrap:
    @pytest.fixture(autouse=True)
    def var_dir(self, settings, tmp_path, monkeypatch):
        settings.VAR_DIR = tmp_path
        monkeypatch.delenv("KBSITE_ADMIN_PASSWORD", raising=False)
        return tmp_path

    def test_first_run_creates_the_superuser_with_the_password_from_the_environment_and_queues_the_demo(
        self, monkeypatch, var_dir
    ):
        monkeypatch.setenv("KBSITE_ADMIN_PASSWORD", "correct horse battery staple")

        output = run("bootstrap")

        admin = get_user_model().objects.get(username="admin")
        assert admin.is_superuser and admin.check_password("correct horse battery staple")
        assert "password from $KBSITE_ADMIN_PASSWORD" in output
        assert not (var_dir / "admin-password.txt").exists()
        demo = KnowledgeBase.objects.get(slug=DEMO_SLUG)
        assert demo.owner == admin
        readme = Document.objects.get(knowledge_base=demo)
        assert readme.source_name == "README.md" and readme.status == DocumentStatus.PENDING
        assert readme.title == "kbsite README"
        assert "Queued the demo knowledge base" in output

    @pytest.mark.parametrize("args", [(), ("--no-demo",)])
    def test_the_output_ends_with_one_next_step_at_the_url_given(self, var_dir, args):
        output = run("bootstrap", "--url", "http://127.0.0.1:9000/", *args)

        steps = [line for line in output.splitlines() if "http://" in line or line.startswith("Next")]
        assert steps == [output.splitlines()[-1]]
        assert steps[0].startswith("Next: open http://127.0.0.1:9000/ and sign in as admin to search")
        assert steps[0].endswith("the admin is at http://127.0.0.1:9000/admin/.")
        assert ("'kbsite documentation'" in steps[0]) == (not args)

    def test_without_a_url_the_next_step_names_the_port_in_port(self, var_dir, monkeypatch):
        monkeypatch.setenv("PORT", "9123")

        output = run("bootstrap", "--no-demo")

        assert "Next: open http://127.0.0.1:9123/ and sign in" in output.splitlines()[-1]

    def test_first_run_without_a_password_generates_one_saved_for_the_owner_only(self, var_dir):
        output = run("bootstrap", "--username", "root")

        saved = var_dir / "admin-password.txt"
        [password] = saved.read_text(encoding="utf-8").splitlines()
        assert password in output
        assert stat.S_IMODE(saved.stat().st_mode) == 0o600
        assert get_user_model().objects.get(username="root").check_password(password)

    def test_the_output_names_the_user_and_the_file_that_holds_only_the_password(self, var_dir):
        output = run("bootstrap", "--no-demo")

        password = (var_dir / "admin-password.txt").read_text(encoding="utf-8").strip()
        assert "log in as admin with the password" in output
        assert f"\n  {password}\n" in output
        assert f"saved, alone, in {var_dir / 'admin-password.txt'}" in output

    def test_a_password_file_of_an_earlier_version_keeps_only_the_password(self, var_dir):
        make_user(username="admin", superuser=True)
        saved = var_dir / "admin-password.txt"
        saved.write_text("admin\ns3cret-from-before\n", encoding="utf-8")

        output = run("bootstrap")

        assert saved.read_text(encoding="utf-8") == "s3cret-from-before\n"
        assert stat.S_IMODE(saved.stat().st_mode) == 0o600
        assert f"log in as admin with the password saved in {saved}" in output

    def test_second_run_creates_nothing_and_says_the_superuser_exists(self, var_dir):
        run("bootstrap")
        def counts() -> tuple[int, int, int]:
            return get_user_model().objects.count(), KnowledgeBase.objects.count(), Document.objects.count()

        before = counts()

        output = run("bootstrap", "--username", "someone-else")

        assert "Superuser 'admin' exists" in output and str(var_dir / "admin-password.txt") in output
        assert not get_user_model().objects.filter(username="someone-else").exists()
        assert counts() == before

    def test_no_demo_creates_the_superuser_but_loads_no_demo(self, var_dir):
        output = run("bootstrap", "--no-demo")

        assert get_user_model().objects.filter(username="admin", is_superuser=True).exists()
        assert not KnowledgeBase.objects.exists()
        assert "Queued the demo" not in output

    def test_a_plain_user_holding_the_admin_name_gets_a_command_error(self, var_dir):
        make_user(username="admin")

        message = command_error("bootstrap")

        assert "'admin'" in message
        assert not get_user_model().objects.filter(is_superuser=True).exists()

    def test_a_fresh_install_gets_a_secret_key_of_its_own_written_once(self, settings, var_dir):
        settings.SECRET_KEY = settings.DEFAULT_SECRET_KEY
        settings.SECRET_KEY_FILE = var_dir / "secret_key"

        output = run("bootstrap", "--no-demo")
        key = settings.SECRET_KEY_FILE.read_text(encoding="utf-8")
        again = run("bootstrap", "--no-demo")

        assert f"Wrote a secret key of this install's own to {settings.SECRET_KEY_FILE}" in output
        assert stat.S_IMODE(settings.SECRET_KEY_FILE.stat().st_mode) == 0o600
        assert "secret key" not in again and settings.SECRET_KEY_FILE.read_text(encoding="utf-8") == key

    def test_a_key_from_the_environment_means_no_key_file(self, settings, var_dir):
        settings.SECRET_KEY = "from-DJANGO_SECRET_KEY-" + "x" * 40
        settings.SECRET_KEY_FILE = var_dir / "secret_key"

        output = run("bootstrap", "--no-demo")

        assert not settings.SECRET_KEY_FILE.exists() and "secret key" not in output

    def test_an_existing_superuser_means_no_new_account_and_no_demo(self, var_dir):
        make_user(username="boss", superuser=True)

        output = run("bootstrap")

        assert "Superuser 'boss' exists" in output
        assert get_user_model().objects.count() == 1 and not KnowledgeBase.objects.exists()

