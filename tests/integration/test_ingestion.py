"""The ingestion pipeline end to end: formats, failures, versions, retries, crashes, workers, archive and delete."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from knowledge.errors import DuplicateDocument, UnsupportedFormat, UploadTooLarge
from knowledge.ingestion.pipeline import IngestionService, IngestionSettings
from knowledge.ingestion.worker import (
    IngestionWorker,
    start_in_process,
    stop_in_process,
    take_back_claims_of_earlier_processes,
)
from knowledge.models import Document, DocumentSource, DocumentStatus
from knowledge.services.documents import DocumentService
from knowledge.services.knowledge_bases import KnowledgeBaseService
from knowledge.services.permissions import PermissionService
from search.embedding import embedding_service
from search.errors import VectorStoreUnavailable
from search.services.audit import SearchAuditService
from search.services.chunks import ChunkService
from search.services.search import SearchService
from tests.factories import corpus, make_document, make_kb
from tests.files import blank_pdf, encrypt_pdf, make_docx, make_pdf
from tests.support.waiting import await_until

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]



def _docx(document) -> None:
    document.core_properties.title = "Tide tables"
    document.add_heading("Reading a tide table", level=1)
    document.add_paragraph("High water comes about fifty minutes later each day as the moon moves on its orbit.")


FILES = {
    "notes.txt": b"The starter is fed with flour and water every day until it bubbles.",
    "guide.md": b"# Sourdough guide\n\nStretch and fold the dough every half hour while it rises.",
    "page.html": (
        b"<html><head><title>Volcano page</title><script>var x = 1;</script></head>"
        b"<body><h1>Eruptions</h1><p>Magma rises through cracks in the crust.</p></body></html>"
    ),
    "chain.pdf": make_pdf(["Clean the bicycle chain, then oil every link."], title="Chain care"),
    "tides.docx": make_docx(_docx),
}
EXPECTED_TITLES = {
    "notes.txt": "notes",
    "guide.md": "Sourdough guide",
    "page.html": "Volcano page",
    "chain.pdf": "Chain care",
    "tides.docx": "Tide tables",
}
QUERIES = {
    "notes.txt": "feeding a sourdough starter",
    "guide.md": "folding dough while it rises",
    "page.html": "magma and eruptions",
    "chain.pdf": "oiling a bike chain",
    "tides.docx": "why high tide is later every day",
}


@pytest.fixture
def kb(test_user):
    return make_kb(owner=test_user, name="Ingestion", chunk_size=32, chunk_overlap=4)


def upload(kb, name: str, data: bytes) -> Document:
    return DocumentService().add_upload(kb=kb, filename=name, data=data).document


def is_settled(document: Document) -> bool:
    return document.status not in (DocumentStatus.PENDING, DocumentStatus.PROCESSING)


async def search(kb, user, query: str, **options):
    service = SearchService(PermissionService(), SearchAuditService())
    return await service.semantic_search(query=query, kb_ids=[kb.id], user_id=user.id, **options)


class FlakyChunkService(ChunkService):
    """The real chunk service, except that its first `failures` upserts find Qdrant unreachable (or `error`)."""

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        super().__init__()
        self.failures = failures
        self.error = error or VectorStoreUnavailable("Qdrant server at http://qdrant:6333 did not answer (test).")
        self.upserts = 0

    async def upsert_chunks(self, **kwargs):
        self.upserts += 1
        if self.upserts <= self.failures:
            raise self.error
        return await super().upsert_chunks(**kwargs)


class SimulatedCrash(BaseException):
    """Stands for the process dying: nothing below it gets to clean up."""


@pytest.mark.parametrize("name", list(FILES))
async def test_each_format_becomes_searchable(kb, test_user, name) -> None:
    document = await sync_to_async(upload)(kb, name, FILES[name])

    ready = await IngestionService().ingest_now(document_id=document.id, worker_id="test")

    assert ready.status == DocumentStatus.READY, ready.error
    assert ready.title == EXPECTED_TITLES[name]
    assert ready.chunk_count > 0
    assert await ChunkService().count_chunks(kb_id=kb.id, document_id=document.id) == ready.chunk_count
    assert not await DocumentSource.objects.filter(document_id=document.id).aexists()
    results = await search(kb, test_user, QUERIES[name], limit=1)
    assert results[0].document_id == document.id
    assert "<script>" not in ready.text and "var x" not in ready.text


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("broken.pdf", b"%PDF-1.4 this is not really a PDF", "not a valid PDF"),
        ("secret.pdf", encrypt_pdf(make_pdf(["hidden"]), user_password="pw", owner_password="pw"), "encrypted"),
        ("scan.pdf", blank_pdf(2), "no text layer"),
        ("broken.docx", b"PK\x03\x04 nothing else", "not a valid DOCX"),
        ("binary.txt", bytes(range(256)) * 40, "does not look like text"),
        ("empty.md", b"   \n\n  ", "contains no text"),
    ],
)
async def test_a_file_that_cannot_be_read_fails_with_a_reason_and_leaves_no_points(kb, name, data, reason) -> None:
    document = await sync_to_async(upload)(kb, name, data)

    failed = await IngestionService().ingest_now(document_id=document.id, worker_id="test")

    assert failed.status == DocumentStatus.FAILED
    assert reason in failed.error and name in failed.error
    assert failed.chunk_count == 0
    assert await ChunkService().count_chunks(kb_id=kb.id) == 0


async def test_a_broken_new_version_removes_the_old_versions_chunks(kb) -> None:
    document = await sync_to_async(upload)(kb, "chain.pdf", FILES["chain.pdf"])
    await IngestionService().ingest_now(document_id=document.id, worker_id="test")

    replaced = await sync_to_async(upload)(kb, "chain.pdf", b"%PDF-1.4 damaged")
    failed = await IngestionService().ingest_now(document_id=replaced.id, worker_id="test")

    assert replaced.id == document.id and failed.status == DocumentStatus.FAILED
    assert await ChunkService().count_chunks(kb_id=kb.id) == 0


def test_unsupported_and_oversized_uploads_are_refused_before_anything_is_stored(kb, settings) -> None:
    settings.INGESTION = {**settings.INGESTION, "MAX_UPLOAD_BYTES": 100}

    with pytest.raises(UnsupportedFormat, match=r"notes\.rtf .*\.docx"):
        upload(kb, "notes.rtf", b"{\\rtf1 hello}")
    with pytest.raises(UploadTooLarge, match="KBSITE_MAX_UPLOAD_MB"):
        upload(kb, "big.txt", b"x" * 101)

    assert not Document.objects.exists()


def test_the_same_content_twice_in_a_kb_is_recognised(kb, test_user) -> None:
    first = upload(kb, "notes.txt", FILES["notes.txt"])

    with pytest.raises(DuplicateDocument) as duplicate:
        upload(kb, "copy-of-notes.txt", FILES["notes.txt"])

    assert duplicate.value.detail == {"document_id": str(first.id)}
    assert "notes" in duplicate.value.message
    other_kb = make_kb(owner=test_user, name="Elsewhere")
    assert upload(other_kb, "notes.txt", FILES["notes.txt"]).knowledge_base_id == other_kb.id


async def test_a_changed_file_replaces_its_document_and_only_it_is_indexed_again(kb, test_user) -> None:
    ingestion = IngestionService()
    notes = await sync_to_async(upload)(kb, "notes.txt", FILES["notes.txt"])
    guide = await sync_to_async(upload)(kb, "guide.md", FILES["guide.md"])
    for document in (notes, guide):
        await ingestion.ingest_now(document_id=document.id, worker_id="test")
    guide_before = await Document.objects.aget(pk=guide.pk)

    added = await sync_to_async(DocumentService().add_upload)(
        kb=kb, filename="notes.txt", data=b"Tyre pressure should be checked every week before riding."
    )

    assert not added.created and added.document.id == notes.id
    assert added.document.status == DocumentStatus.PENDING
    assert await Document.objects.filter(status=DocumentStatus.PENDING).acount() == 1
    await ingestion.ingest_now(document_id=notes.id, worker_id="test")
    results = await search(kb, test_user, "how often to check tyre pressure", limit=1)
    assert results[0].document_id == notes.id and "Tyre" in results[0].content
    assert "starter" not in " ".join(r.content for r in await search(kb, test_user, "starter", limit=10)
                                     if r.document_id == notes.id)
    assert (await Document.objects.aget(pk=guide.pk)).updated_at == guide_before.updated_at


async def test_a_transient_fault_is_retried_with_backoff(kb) -> None:
    flaky = FlakyChunkService(failures=2, error=RuntimeError("the embedder's thread died (test)"))
    ingestion = IngestionService(chunk_service=flaky, config=IngestionSettings(first_retry_seconds=0.01))
    document = await sync_to_async(upload)(kb, "guide.md", FILES["guide.md"])

    first = await ingestion.ingest_now(document_id=document.id, worker_id="test")

    assert first.status == DocumentStatus.PENDING
    assert first.error.startswith("Attempt 1 of 5 failed:") and "thread died" in first.error
    assert first.next_attempt_at > timezone.now() - timedelta(seconds=1)
    settled = await ingestion.ingest_until_settled(document_id=document.id, worker_id="test")
    assert settled.status == DocumentStatus.READY and settled.error == ""
    assert flaky.upserts == 3
    assert await ChunkService().count_chunks(kb_id=kb.id) == settled.chunk_count


async def test_a_document_that_keeps_failing_ends_failed_after_the_last_attempt(kb) -> None:
    ingestion = IngestionService(
        chunk_service=FlakyChunkService(failures=99, error=RuntimeError("the embedder's thread died (test)")),
        config=IngestionSettings(max_attempts=3, first_retry_seconds=0.01),
    )
    document = await sync_to_async(upload)(kb, "guide.md", FILES["guide.md"])

    settled = await ingestion.ingest_until_settled(document_id=document.id, worker_id="test")

    assert settled.status == DocumentStatus.FAILED
    assert "thread died" in settled.error and settled.attempts == 3


async def test_a_store_outage_longer_than_every_attempt_delays_the_document_but_never_fails_it(kb) -> None:
    flaky = FlakyChunkService(failures=7)  # more outages than attempts allowed
    ingestion = IngestionService(
        chunk_service=flaky, config=IngestionSettings(max_attempts=3, store_retry_seconds=0.01)
    )
    document = await sync_to_async(upload)(kb, "guide.md", FILES["guide.md"])

    first = await ingestion.ingest_now(document_id=document.id, worker_id="test")

    assert first.status == DocumentStatus.PENDING and first.attempts == 0
    assert first.error.startswith("Waiting for the vector store") and "did not answer" in first.error
    assert first.next_attempt_at > timezone.now() - timedelta(seconds=1)
    settled = await ingestion.ingest_until_settled(document_id=document.id, worker_id="test")
    assert settled.status == DocumentStatus.READY and settled.error == "" and flaky.upserts == 8
    assert await ChunkService().count_chunks(kb_id=kb.id) == settled.chunk_count


async def test_a_command_waiting_out_a_store_outage_leaves_the_document_pending_after_its_patience(kb) -> None:
    ingestion = IngestionService(
        chunk_service=FlakyChunkService(failures=99),
        config=IngestionSettings(store_retry_seconds=0.01, store_patience_seconds=0.2),
    )
    document = await sync_to_async(upload)(kb, "guide.md", FILES["guide.md"])

    waited = await ingestion.ingest_until_settled(document_id=document.id, worker_id="test")

    assert waited.status == DocumentStatus.PENDING and waited.attempts == 0
    assert waited.error.startswith("Waiting for the vector store")


async def test_a_crashed_worker_leaves_the_document_to_be_resumed_without_duplicates(test_user) -> None:
    kb = await sync_to_async(make_kb)(owner=test_user, name="Crash", chunk_size=16, chunk_overlap=0)
    title, text = corpus()[0]
    document = await sync_to_async(upload)(kb, "long.md", text.encode())
    ingestion = IngestionService(config=IngestionSettings(batch_size=8))

    def crash_after_first_batch(_document, done, total):
        raise SimulatedCrash(f"killed at {done}/{total}")

    claimed = await ingestion.queue.aclaim(document_id=document.id, worker_id="dead-worker")
    with pytest.raises(SimulatedCrash):
        await ingestion.process(claimed, worker_id="dead-worker", on_progress=crash_after_first_batch)

    stranded = await Document.objects.aget(pk=document.pk)
    assert stranded.status == DocumentStatus.PROCESSING and stranded.chunks_done == 8 < stranded.chunks_total
    assert await ingestion.queue.aclaim_next(worker_id="new-worker") is None  # the lease is still running
    await Document.objects.filter(pk=document.pk).aupdate(lease_expires_at=timezone.now() - timedelta(seconds=1))

    resumed = await ingestion.queue.aclaim_next(worker_id="new-worker")
    finished = await ingestion.process(resumed, worker_id="new-worker")

    assert finished.status == DocumentStatus.READY
    assert await ChunkService().count_chunks(kb_id=kb.id, document_id=document.id) == finished.chunk_count
    chunks, _ = await ChunkService().get_chunks_by_document(kb_id=kb.id, document_id=document.id, limit=500)
    assert [chunk.chunk_index for chunk in chunks] == list(range(finished.chunk_count))


class RecordingEmbeddings:
    """The site's embedding service, noting in `events` when each document batch is asked for and how it ended."""

    def __init__(self, events: list[tuple[str, int]]) -> None:
        self.events = events
        self.calls = 0
        self.asked = asyncio.Condition()

    def __getattr__(self, name: str):
        return getattr(embedding_service, name)

    async def until_asked(self, calls: int) -> None:
        """Return once `calls` batches have been asked for; fail if that has not happened within 30 s."""
        async with asyncio.timeout(30), self.asked:
            await self.asked.wait_for(lambda: self.calls >= calls)

    async def embed_documents(self, texts):
        self.calls += 1
        call = self.calls
        self.events.append(("embed", call))
        async with self.asked:
            self.asked.notify_all()
        try:
            return await embedding_service.embed_documents(texts)
        except asyncio.CancelledError:
            self.events.append(("cancelled", call))
            raise


class RecordingChunkService(FlakyChunkService):
    """The real chunk service, noting in `events` when each batch is stored."""

    def __init__(self, events: list[tuple[str, int]]) -> None:
        super().__init__(failures=0)
        self.events = events

    async def upsert_chunks(self, **kwargs):
        result = await super().upsert_chunks(**kwargs)
        self.events.append(("stored", self.upserts))
        return result


class StoreDownOnceTheNextBatchIsAsked(ChunkService):
    """A store that fails its first write, answering only once the pipeline has asked for the next batch's vectors."""

    def __init__(self, embeddings: RecordingEmbeddings) -> None:
        super().__init__()
        self.embeddings = embeddings

    async def upsert_chunks(self, **kwargs):
        await self.embeddings.until_asked(2)
        raise VectorStoreUnavailable("Qdrant server at http://qdrant:6333 did not answer (test).")


async def test_the_next_batch_is_embedded_while_one_is_stored_and_batches_land_in_order(kb) -> None:
    events: list[tuple[str, int]] = []
    ingestion = IngestionService(
        chunk_service=RecordingChunkService(events),
        embeddings=RecordingEmbeddings(events),
        config=IngestionSettings(batch_size=4),
    )
    document = await sync_to_async(upload)(kb, "long.md", corpus()[0][1].encode())

    finished = await ingestion.ingest_now(document_id=document.id, worker_id="test")

    assert finished.status == DocumentStatus.READY and finished.chunk_count > 8, finished.error
    batches = -(-finished.chunk_count // 4)
    stored = [n for kind, n in events if kind == "stored"]
    assert stored == list(range(1, batches + 1))
    # Each batch but the first was asked of the model before the one ahead of it was stored.
    for n in range(2, batches + 1):
        assert events.index(("embed", n)) < events.index(("stored", n - 1)), events
    chunks, _ = await ChunkService().get_chunks_by_document(kb_id=kb.id, document_id=document.id, limit=500)
    assert [chunk.chunk_index for chunk in chunks] == list(range(finished.chunk_count))


async def test_a_batch_the_store_refuses_drops_the_one_being_embedded_ahead(kb) -> None:
    events: list[tuple[str, int]] = []
    embeddings = RecordingEmbeddings(events)
    ingestion = IngestionService(
        chunk_service=StoreDownOnceTheNextBatchIsAsked(embeddings),
        embeddings=embeddings,
        config=IngestionSettings(batch_size=4, store_retry_seconds=30),
    )
    document = await sync_to_async(upload)(kb, "long.md", corpus()[0][1].encode())

    waiting = await ingestion.ingest_now(document_id=document.id, worker_id="test")

    assert waiting.status == DocumentStatus.PENDING and waiting.error.startswith("Waiting for the vector store")
    assert events == [("embed", 1), ("embed", 2), ("cancelled", 2)]
    assert await ChunkService().count_chunks(kb_id=kb.id, document_id=document.id) == 0


async def crash_mid_document(kb, worker_id: str) -> Document:
    """A document left processing under a live lease by a worker that died after its first batch."""
    document = await sync_to_async(upload)(kb, "long.md", corpus()[0][1].encode())
    ingestion = IngestionService(config=IngestionSettings(batch_size=8))

    def crash_after_first_batch(_document, done, total):
        raise SimulatedCrash(f"killed at {done}/{total}")

    claimed = await ingestion.queue.aclaim(document_id=document.id, worker_id=worker_id)
    with pytest.raises(SimulatedCrash):
        await ingestion.process(claimed, worker_id=worker_id, on_progress=crash_after_first_batch)
    stranded = await Document.objects.aget(pk=document.pk)
    assert stranded.status == DocumentStatus.PROCESSING and stranded.lease_expires_at > timezone.now()
    return stranded


async def test_the_embedded_server_takes_back_at_once_what_its_killed_predecessor_held(test_user, settings) -> None:
    kb = await sync_to_async(make_kb)(owner=test_user, name="Restart", chunk_size=16, chunk_overlap=0)
    stranded = await crash_mid_document(kb, "host:4242:killed")
    settings.INGESTION = {**settings.INGESTION, "IN_PROCESS_WORKER": "true", "POLL_SECONDS": 30}

    await start_in_process()
    try:
        # The lease has minutes to run: only taking the claim back finishes the document in time.
        finished = await await_until(lambda: Document.objects.aget(pk=stranded.pk), is_settled, seconds=30)
    finally:
        await stop_in_process()

    assert finished.status == DocumentStatus.READY, f"{finished.status} after 30 s: {finished.error}"
    chunks, _ = await ChunkService().get_chunks_by_document(kb_id=kb.id, document_id=finished.id, limit=500)
    assert [chunk.chunk_index for chunk in chunks] == list(range(finished.chunk_count))


async def test_releasing_stale_claims_spares_the_callers_own_and_settled_documents(kb) -> None:
    ingestion = IngestionService()
    theirs, mine, waiting = [
        await sync_to_async(upload)(kb, f"note-{n}.txt", f"Note {n} on the tides.".encode()) for n in range(3)
    ]
    await ingestion.queue.aclaim(document_id=theirs.id, worker_id="earlier")
    await ingestion.queue.aclaim(document_id=mine.id, worker_id="current")

    released = await ingestion.queue.arelease_stale_claims(keep_worker_id="current")

    states = {
        d.pk: (d.status, d.claimed_by, d.lease_expires_at is None, d.attempts)
        async for d in Document.objects.filter(knowledge_base=kb)
    }
    assert released == 1
    assert states[theirs.pk] == (DocumentStatus.PENDING, "", True, 1)
    assert states[mine.pk] == (DocumentStatus.PROCESSING, "current", False, 1)
    assert states[waiting.pk] == (DocumentStatus.PENDING, "", True, 0)


async def test_on_a_qdrant_server_a_live_lease_of_another_worker_is_left_alone(test_user, qdrant_server) -> None:
    kb = await sync_to_async(make_kb)(owner=test_user, name="Shared", chunk_size=16, chunk_overlap=0)
    stranded = await crash_mid_document(kb, "other-host:77:alive")

    released = await take_back_claims_of_earlier_processes(IngestionWorker(worker_id="this-host:1:new"))

    still = await Document.objects.aget(pk=stranded.pk)
    assert released == 0
    assert (still.status, still.claimed_by) == (DocumentStatus.PROCESSING, "other-host:77:alive")
    assert await IngestionService().queue.aclaim_next(worker_id="this-host:1:new") is None


async def test_a_worker_shut_down_mid_document_gives_it_back(kb) -> None:
    document = await sync_to_async(upload)(kb, "long.md", corpus()[2][1].encode())
    ingestion = IngestionService(config=IngestionSettings(batch_size=4))
    claimed = await ingestion.queue.aclaim(document_id=document.id, worker_id="stopping")
    started = asyncio.Event()

    def hold(_document, done, total):
        started.set()

    task = asyncio.ensure_future(ingestion.process(claimed, worker_id="stopping", on_progress=hold))
    await started.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

    returned = await Document.objects.aget(pk=document.pk)
    assert (returned.status, returned.claimed_by) == (DocumentStatus.PENDING, "")


async def test_concurrent_workers_never_process_the_same_document(test_user) -> None:
    kb = await sync_to_async(make_kb)(owner=test_user, name="Queue")
    # Given as text: the claims are under test, so no file is read (each would start a sandbox process).
    documents = [
        await sync_to_async(make_document)(kb=kb, title=f"Note {i}", text=f"Note {i} about the tides and the moon.")
        for i in range(12)
    ]
    seen: list[tuple[str, object]] = []

    class RecordingIngestion(IngestionService):
        async def process(self, document, *, worker_id, **kwargs):
            seen.append((worker_id, document.pk))
            return await super().process(document, worker_id=worker_id, **kwargs)

    workers = [IngestionWorker(service=RecordingIngestion(), worker_id=f"w{i}", poll_seconds=0.05) for i in range(3)]
    counts = await asyncio.gather(*(worker.run(until_idle=True) for worker in workers))

    assert sum(counts) == len(documents)
    assert sorted(str(pk) for _, pk in seen) == sorted(str(d.pk) for d in documents)
    assert await Document.objects.filter(status=DocumentStatus.READY).acount() == len(documents)


async def test_archiving_is_a_payload_update_without_embedding_again(kb, test_user) -> None:
    from search.embedding import embedding_service
    from tests.conftest import MemoisingEmbeddings

    class CountingEmbeddings(MemoisingEmbeddings):
        calls = 0

        async def embed_documents(self, texts):
            CountingEmbeddings.calls += 1
            return await super().embed_documents(texts)

    embeddings = CountingEmbeddings(embedding_service)
    document = await sync_to_async(upload)(kb, "guide.md", FILES["guide.md"])
    await IngestionService(embeddings=embeddings).ingest_now(document_id=document.id, worker_id="test")
    document = await Document.objects.aget(pk=document.pk)
    calls = CountingEmbeddings.calls

    await DocumentService().aset_archived(document=document, archived=True)
    hidden = await search(kb, test_user, QUERIES["guide.md"])
    shown = await search(kb, test_user, QUERIES["guide.md"], include_archived=True)
    await DocumentService().aset_archived(document=document, archived=False)
    restored = await search(kb, test_user, QUERIES["guide.md"])

    assert hidden == [] and shown and restored
    assert CountingEmbeddings.calls == calls
    assert await ChunkService().count_chunks(kb_id=kb.id) == document.chunk_count


async def test_archiving_while_indexing_still_hides_every_chunk(test_user) -> None:
    kb = await sync_to_async(make_kb)(owner=test_user, name="Race", chunk_size=16, chunk_overlap=0)
    document = await sync_to_async(upload)(kb, "long.md", corpus()[1][1].encode())
    ingestion = IngestionService(config=IngestionSettings(batch_size=8))
    archived = False

    async def archive_once():
        fresh = await Document.objects.aget(pk=document.pk)
        await DocumentService().aset_archived(document=fresh, archived=True)

    pending: list[asyncio.Task] = []

    def archive_after_first_batch(_document, done, total):
        nonlocal archived
        if not archived:
            archived = True
            pending.append(asyncio.ensure_future(archive_once()))

    await ingestion.ingest_now(document_id=document.id, worker_id="test", on_progress=archive_after_first_batch)
    await asyncio.gather(*pending)

    assert await search(kb, test_user, corpus()[1][0], limit=100) == []
    assert await search(kb, test_user, corpus()[1][0], limit=5, include_archived=True)


async def test_deleting_a_document_or_a_kb_removes_its_points(kb) -> None:
    notes = await sync_to_async(upload)(kb, "notes.txt", FILES["notes.txt"])
    guide = await sync_to_async(upload)(kb, "guide.md", FILES["guide.md"])
    for document in (notes, guide):
        await IngestionService().ingest_now(document_id=document.id, worker_id="test")
    chunks, notes_id = ChunkService(), notes.id

    await DocumentService().adelete_document(document=notes)

    assert await chunks.count_chunks(kb_id=kb.id, document_id=notes_id) == 0
    assert await chunks.count_chunks(kb_id=kb.id, document_id=guide.id) > 0
    kb_id = kb.id
    await KnowledgeBaseService().adelete_knowledge_base(kb=kb)
    assert not await chunks.collections.holds_points(kb_id=kb_id)
    assert not await Document.objects.filter(pk=guide.pk).aexists()


async def test_the_in_process_worker_indexes_what_is_uploaded(kb, test_user, settings) -> None:
    settings.INGESTION = {**settings.INGESTION, "IN_PROCESS_WORKER": "true", "POLL_SECONDS": 30}
    await start_in_process()
    try:
        document = await sync_to_async(upload)(kb, "guide.md", FILES["guide.md"])
        # The upload wakes the worker; its 30 s poll would come after this wait's 20 s.
        settled = await await_until(lambda: Document.objects.aget(pk=document.pk), is_settled, seconds=20)
    finally:
        await stop_in_process()

    assert settled.status == DocumentStatus.READY, f"{settled.status} after 20 s: {settled.error or 'not woken'}"
    assert settled.chunk_count > 0 and settled.claimed_by == ""
    assert await ChunkService().count_chunks(kb_id=kb.id, document_id=document.pk) == settled.chunk_count
    results = await search(kb, test_user, "folding dough while it rises", limit=1)
    assert results[0].document_id == document.pk


async def test_a_new_version_uploaded_while_the_old_one_is_indexed_is_indexed_next(kb, test_user) -> None:
    ingestion = IngestionService()
    old = await sync_to_async(upload)(kb, "notes.txt", FILES["notes.txt"])
    claimed = await ingestion.queue.aclaim(document_id=old.id, worker_id="busy")

    newer = await sync_to_async(upload)(kb, "notes.txt", b"Tyre pressure should be checked every week.")
    stale_run = await ingestion.process(claimed, worker_id="busy")

    assert newer.id == old.id and stale_run.status == DocumentStatus.PENDING
    assert await DocumentSource.objects.filter(document_id=old.id).aexists()
    fresh = await ingestion.ingest_now(document_id=old.id, worker_id="next")
    assert fresh.status == DocumentStatus.READY and "Tyre" in fresh.text
    results = await search(kb, test_user, "checking tyre pressure", limit=1)
    assert "Tyre" in results[0].content


async def test_a_document_deleted_while_it_is_indexed_leaves_no_points(test_user) -> None:
    kb = await sync_to_async(make_kb)(owner=test_user, name="Vanishing", chunk_size=16, chunk_overlap=0)
    document = await sync_to_async(upload)(kb, "long.md", corpus()[4][1].encode())
    ingestion = IngestionService(config=IngestionSettings(batch_size=4))
    deleted: list[asyncio.Task] = []

    def delete_after_first_batch(_document, done, total):
        if not deleted:  # as a request would: with a row of its own, not the worker's instance
            request = DocumentService().adelete_document(document=Document(pk=_document.pk, knowledge_base=kb))
            deleted.append(asyncio.ensure_future(request))

    document_id = document.id
    await ingestion.ingest_now(document_id=document_id, worker_id="test", on_progress=delete_after_first_batch)
    await asyncio.gather(*deleted)

    assert not await Document.objects.filter(pk=document_id).aexists()
    assert await ChunkService().count_chunks(kb_id=kb.id, document_id=document_id) == 0


class WorkerBetweenTheSweepAndTheRow(ChunkService):
    """The real chunk service; right after a delete's first sweep, a worker indexes the document again."""

    def __init__(self) -> None:
        super().__init__()
        self.sweeps = 0

    async def delete_document_chunks(self, **kwargs):
        await super().delete_document_chunks(**kwargs)
        self.sweeps += 1
        if self.sweeps == 1:
            document = await Document.objects.aget(pk=kwargs["document_id"])
            await DocumentService().aqueue_for_reindex(documents=[document])
            indexed = await IngestionService().ingest_now(document_id=document.pk, worker_id="between")
            assert indexed.status == DocumentStatus.READY and indexed.chunk_count > 0


async def test_batches_a_worker_stores_while_a_document_is_deleted_are_deleted_too(kb) -> None:
    document = await sync_to_async(upload)(kb, "guide.md", FILES["guide.md"])
    await IngestionService().ingest_now(document_id=document.id, worker_id="test")
    document_id, chunks = document.id, WorkerBetweenTheSweepAndTheRow()

    await DocumentService(chunk_service=chunks).adelete_document(document=document)

    assert chunks.sweeps >= 1  # the worker did index between the sweep and the row
    assert not await Document.objects.filter(pk=document_id).aexists()
    assert await ChunkService().count_chunks(kb_id=kb.id, document_id=document_id) == 0


async def test_a_rename_during_a_rebuild_reaches_the_new_collection(test_user, ingestion_service) -> None:
    from knowledge.services.reindex import ReindexService

    kb = await sync_to_async(make_kb)(owner=test_user, name="Renamed", chunk_size=32, chunk_overlap=0)
    first = await sync_to_async(upload)(kb, "tides.md", corpus()[7][1].encode())
    await sync_to_async(upload)(kb, "jazz.md", corpus()[3][1].encode())
    # The rebuild embeds the same chunks again: the shared service remembers their vectors.
    ingestion = ingestion_service
    await IngestionWorker(service=ingestion, poll_seconds=0.05).run(until_idle=True)
    renamed: list[asyncio.Task] = []

    def rename_the_first_once_indexed(document, done, total):
        if document.pk != first.pk and not renamed:
            target = Document.objects.aget(pk=first.pk)
            renamed.append(
                asyncio.ensure_future(_rename(target, "Tide tables for sailors"))
            )

    await ReindexService(ingestion=ingestion).rebuild(kb=kb, worker_id="test", on_progress=rename_the_first_once_indexed)
    await asyncio.gather(*renamed)
    await IngestionWorker(service=ingestion, poll_seconds=0.05).run(until_idle=True)

    results = await search(kb, test_user, "spring and neap tides", limit=1)
    assert results[0].document_id == first.pk and results[0].title == "Tide tables for sailors"


async def _rename(document_coroutine, title: str) -> None:
    await DocumentService().arename(document=await document_coroutine, title=title)


async def test_a_row_deleted_just_before_the_end_takes_its_points_with_it(test_user, qdrant_server) -> None:
    """On a server the tail delete yields to the loop, so a delete lands between the last batch and the end."""
    kb = await sync_to_async(make_kb)(owner=test_user, name="Late delete", chunk_size=32, chunk_overlap=0)
    document = await sync_to_async(upload)(kb, "long.md", corpus()[5][1].encode())
    deleting: list[asyncio.Task] = []

    def delete_the_row_after_the_last_batch(_document, done, total):
        if done == total:
            deleting.append(asyncio.ensure_future(Document.objects.filter(pk=_document.pk).adelete()))

    document_id = document.id
    await IngestionService().ingest_now(
        document_id=document_id, worker_id="test", on_progress=delete_the_row_after_the_last_batch
    )
    await asyncio.gather(*deleting)

    assert not await Document.objects.filter(pk=document_id).aexists()
    assert await ChunkService().count_chunks(kb_id=kb.id, document_id=document_id) == 0
