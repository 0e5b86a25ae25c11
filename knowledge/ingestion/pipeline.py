"""The ingestion queue and pipeline: claim a document, extract its text, chunk, embed, store, record the outcome.

The document rows are the queue. A worker claims one with a lease it keeps renewing; a worker that
dies stops renewing, and once the lease runs out any worker may claim the document again. Point
ids are derived from (document, chunk index), so doing a document again never duplicates chunks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import PurePath
from uuid import UUID

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import Case, F, Q, When
from django.utils import timezone

from knowledge.errors import InvalidInput
from knowledge.ingestion.extraction import ExtractionError
from knowledge.ingestion.sandbox import extract_text_in_sandbox
from knowledge.models import Document, DocumentSource, DocumentStatus, KnowledgeBase
from knowledge.services.document_metadata import labels_fingerprint
from knowledge.services.documents import DocumentService
from search import metrics
from search.chunking import ChunkingError, TextChunk, TokenChunker
from search.embedding import EmbeddingService, embedding_service
from search.errors import EmbeddingModelMismatch, VectorStoreUnavailable
from search.keywords import KeywordEncoder, KeywordSettings, keyword_encoder
from search.services.chunks import ChunkService

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[Document, int, int], None]

# Retrying cannot help these: the file or the settings must change first.
PERMANENT_ERRORS = (ExtractionError, InvalidInput, ChunkingError)
STORE_WAIT = "Waiting for the vector store"


class LostClaim(Exception):
    """The document is no longer this worker's: deleted, queued again, or reclaimed after a lapse."""


@dataclass(frozen=True)
class IngestionSettings:
    max_attempts: int = 5
    lease_seconds: float = 60.0
    batch_size: int = 64
    first_retry_seconds: float = 2.0
    longest_retry_seconds: float = 300.0
    #: How soon a document is tried again while the vector store is unreachable: such a try is not counted
    #: among its attempts, since the store being down says nothing about the document.
    store_retry_seconds: float = 5.0
    #: How long `ingest_until_settled` (a command's caller) waits out a store outage before leaving the
    #: document pending for a worker and returning.
    store_patience_seconds: float = 120.0
    #: How often a document whose file is being read is looked up, to stop the work once it is deleted or archived.
    withdrawal_check_seconds: float = 1.0

    @classmethod
    def from_settings(cls, **overrides) -> IngestionSettings:
        conf = settings.INGESTION
        values = {
            "max_attempts": int(conf.get("MAX_ATTEMPTS", cls.max_attempts)),
            "lease_seconds": float(conf.get("LEASE_SECONDS", cls.lease_seconds)),
        }
        return cls(**{**values, **overrides})

    def retry_delay(self, attempts: int) -> float:
        return min(self.first_retry_seconds * 2 ** max(attempts - 1, 0), self.longest_retry_seconds)


class IngestionService:
    def __init__(
        self,
        *,
        chunk_service: ChunkService | None = None,
        embeddings: EmbeddingService | None = None,
        config: IngestionSettings | None = None,
    ) -> None:
        self.chunk_service = chunk_service or ChunkService()
        self.embeddings = embeddings or embedding_service
        self.config = config or IngestionSettings.from_settings()

    def chunker_for(self, kb: KnowledgeBase) -> TokenChunker:
        embedder = self.embeddings.embedder
        return TokenChunker(
            token_spans=embedder.token_spans,
            size=kb.chunk_size,
            overlap=kb.chunk_overlap,
            max_size=embedder.max_chunk_tokens,
        )

    async def ingest_now(
        self,
        *,
        document_id: UUID,
        worker_id: str,
        on_progress: ProgressCallback | None = None,
        collection_name: str | None = None,
    ) -> Document | None:
        """Claim one document and process it here and now; None if another worker holds it."""
        document = await self.aclaim(document_id=document_id, worker_id=worker_id)
        if document is None:
            return None
        return await self.process(
            document, worker_id=worker_id, on_progress=on_progress, collection_name=collection_name
        )

    async def ingest_until_settled(self, **ingest_now_arguments) -> Document | None:
        """Like ingest_now, but wait out and retry transient failures until the document is ready or failed.

        A store outage is waited out for `store_patience_seconds`; then the document is returned still
        pending, its error saying it waits for the store (a worker takes it up once the store is back).
        """
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self.config.store_patience_seconds
        while True:
            document = await self.ingest_now(**ingest_now_arguments)
            if document is None or document.status != DocumentStatus.PENDING or document.next_attempt_at is None:
                return document
            if document.error.startswith(STORE_WAIT) and loop.time() >= give_up_at:
                return document
            await asyncio.sleep(max((document.next_attempt_at - timezone.now()).total_seconds(), 0))

    # The queue. Each is one short transaction in sync code, wrapped once for async callers.

    def claim_next(
        self,
        *,
        worker_id: str,
        knowledge_base_ids: Sequence[UUID] | None = None,
        busy_knowledge_base_ids: Collection[UUID] = (),
    ) -> Document | None:
        """Claim the oldest document that is due: pending, or processing under a lapsed lease.

        Documents of knowledge bases not in `busy_knowledge_base_ids` (those the worker has in
        work) come first, so one KB's big upload does not hold up the others.
        """
        now = timezone.now()
        due = Q(status=DocumentStatus.PENDING) & (Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
        lapsed = Q(status=DocumentStatus.PROCESSING, lease_expires_at__lt=now)
        candidates = Document.objects.filter(due | lapsed)
        if knowledge_base_ids is not None:
            candidates = candidates.filter(knowledge_base_id__in=list(knowledge_base_ids))
        with transaction.atomic():
            if connection.features.has_select_for_update_skip_locked:
                # Workers pass over rows another worker is claiming instead of queueing behind it.
                candidates = candidates.select_for_update(skip_locked=True)
            order = ["created_at"]
            if busy_knowledge_base_ids:
                busy = Case(When(knowledge_base_id__in=list(busy_knowledge_base_ids), then=1), default=0)
                candidates, order = candidates.annotate(busy=busy), ["busy", "created_at"]
            for document_id in candidates.order_by(*order).values_list("id", flat=True)[:5]:
                if self._take(document_id, worker_id, due | lapsed):
                    return self._claimed(document_id)
        return None

    def claim(self, *, document_id: UUID, worker_id: str) -> Document | None:
        """Claim one given document unless another worker holds it under a live lease."""
        free = ~Q(status=DocumentStatus.PROCESSING) | Q(lease_expires_at__lt=timezone.now())
        with transaction.atomic():
            if self._take(document_id, worker_id, free):
                return self._claimed(document_id)
        return None

    def _take(self, document_id: UUID, worker_id: str, condition: Q) -> bool:
        # The conditional UPDATE is what makes a claim exclusive, on SQLite as on PostgreSQL.
        taken = Document.objects.filter(condition, pk=document_id).update(
            status=DocumentStatus.PROCESSING,
            claimed_by=worker_id,
            lease_expires_at=timezone.now() + timedelta(seconds=self.config.lease_seconds),
            attempts=F("attempts") + 1,
            chunks_done=0,
            chunks_total=0,
            updated_at=timezone.now(),
        )
        return taken == 1

    @staticmethod
    def _claimed(document_id: UUID) -> Document:
        return Document.objects.select_related("knowledge_base").get(pk=document_id)

    def release(self, *, document_id: UUID, worker_id: str) -> None:
        """Give a claimed document back to the queue untouched (a worker shutting down)."""
        Document.objects.filter(pk=document_id, claimed_by=worker_id).update(
            status=DocumentStatus.PENDING, claimed_by="", lease_expires_at=None, attempts=0, updated_at=timezone.now()
        )

    def release_stale_claims(self, *, keep_worker_id: str) -> int:
        """Give every document claimed by another worker back to the queue at once, whatever its lease says.

        Only for a process that alone may work on the queue: the holder of the embedded store's
        folder lock, whose predecessor was killed before it could give its documents back. Where
        several workers share the queue (a Qdrant server), a live lease belongs to a live worker:
        there, only lapsed leases may be taken, which `claim_next` does. The interrupted attempt
        still counts, as it does when a lease lapses. Returns how many documents were released.
        """
        return (
            Document.objects.filter(status=DocumentStatus.PROCESSING)
            .exclude(claimed_by=keep_worker_id)
            .update(
                status=DocumentStatus.PENDING,
                claimed_by="",
                lease_expires_at=None,
                next_attempt_at=None,
                chunks_done=0,
                chunks_total=0,
                updated_at=timezone.now(),
            )
        )

    aclaim_next = sync_to_async(claim_next)
    aclaim = sync_to_async(claim)
    arelease = sync_to_async(release)
    arelease_stale_claims = sync_to_async(release_stale_claims)

    # The pipeline.

    async def process(
        self,
        document: Document,
        *,
        worker_id: str,
        on_progress: ProgressCallback | None = None,
        collection_name: str | None = None,
    ) -> Document:
        """Index a claimed document and record how it went: ready, failed, or pending a retry."""
        keeper = asyncio.ensure_future(self._keep_lease(document, worker_id))
        try:
            chunk_count = await self._index(document, worker_id, on_progress, collection_name)
            await self._finish(document, worker_id, chunk_count, collection_name)
        except LostClaim:
            logger.info("Gave up %s: it is no longer claimed by %s", document.pk, worker_id)
            # Deleted while this run wrote its chunks: whatever it wrote after the delete must go.
            await self._drop_points_if_deleted(document, collection_name)
        except asyncio.CancelledError:
            await asyncio.shield(self.arelease(document_id=document.pk, worker_id=worker_id))
            raise
        except EmbeddingModelMismatch as exc:
            # The document is fine; the KB needs rebuilding. Its chunks stay for that rebuild to replace.
            await self._fail(document, worker_id, exc, collection_name, keep_chunks=True)
        except PERMANENT_ERRORS as exc:
            await self._fail(document, worker_id, exc, collection_name)
        except VectorStoreUnavailable as exc:
            # However long the outage, the document waits for the store rather than failing.
            await self._retry_later(document, worker_id, exc, store_down=True)
        except Exception as exc:
            if document.attempts >= self.config.max_attempts:
                await self._fail(document, worker_id, exc, collection_name)
            else:
                await self._retry_later(document, worker_id, exc)
        finally:
            keeper.cancel()
        return await Document.objects.select_related("knowledge_base").filter(pk=document.pk).afirst() or document

    async def _index(
        self, document: Document, worker_id: str, on_progress: ProgressCallback | None, collection_name: str | None
    ) -> int:
        kb = document.knowledge_base
        embeddings = self.embeddings
        # A rebuild writes into a new collection made for the current model: the KB's model may differ.
        if collection_name is None and kb.embedding_model != embeddings.model_id:
            raise EmbeddingModelMismatch(
                f"{kb.name!r} holds vectors of {kb.embedding_model}, but the site embeds with "
                f"{embeddings.model_id}: run `manage.py reindex --kb {kb.slug} --recreate`."
            )
        await self._extract_if_needed(document, worker_id)
        chunker = self.chunker_for(kb)
        chunks: list[TextChunk] = await sync_to_async(chunker.split, thread_sensitive=False)(document.text)
        if not chunks:
            raise ExtractionError(f"{document.source_name or document.title} contains no text.")
        await self._record_progress(document, worker_id, 0, len(chunks))
        keywords = await self._keyword_encoder(kb, collection_name)
        done = 0
        for start in range(0, len(chunks), self.config.batch_size):
            batch = chunks[start : start + self.config.batch_size]
            texts = [chunk.content for chunk in batch]
            vectors = await embeddings.embed_documents(texts)
            await self.chunk_service.upsert_chunks(
                kb_id=kb.id,
                document_id=document.id,
                title=document.title,
                chunks=batch,
                vectors=vectors,
                keyword_vectors=keywords.encode_documents(texts) if keywords is not None else None,
                archived_at=document.archived_at,
                tags=document.tags,
                metadata=document.metadata,
                collection_name=collection_name,
                page_starts=document.page_starts,
            )
            metrics.count_ingested_chunks(len(batch))
            done += len(batch)
            await self._record_progress(document, worker_id, done, len(chunks))
            if on_progress is not None:
                on_progress(document, done, len(chunks))
        # A shorter new version leaves the old version's tail behind.
        await self.chunk_service.delete_document_chunks(
            kb_id=kb.id, document_id=document.id, from_index=len(chunks), collection_name=collection_name
        )
        return len(chunks)

    async def _keyword_encoder(self, kb: KnowledgeBase, collection_name: str | None) -> KeywordEncoder | None:
        """The BM25 encoder of the collection written to, or None for one made before hybrid search.

        A rebuild's new collection always has the keyword vector. A KB whose setting is empty
        (created before hybrid search) takes the defaults when it has no collection yet.
        """
        if kb.keyword_settings is None:
            if collection_name is None:
                if await self.chunk_service.collections.current_collection(kb_id=kb.id) is not None:
                    return None
                kb.keyword_settings = KeywordSettings().as_dict()
                await KnowledgeBase.objects.filter(pk=kb.pk, keyword_settings__isnull=True).aupdate(
                    keyword_settings=kb.keyword_settings
                )
            return keyword_encoder(KeywordSettings())
        return keyword_encoder(KeywordSettings.from_dict(kb.keyword_settings))

    async def _extract_if_needed(self, document: Document, worker_id: str) -> None:
        source = await DocumentSource.objects.filter(document_id=document.pk).afirst()
        if source is None:
            return
        # The file is read in a child process with its own budget of memory and time; the event
        # loop stays free meanwhile, and a document withdrawn under it has the child killed.
        reading = asyncio.ensure_future(
            extract_text_in_sandbox(data=bytes(source.data), filename=PurePath(document.source_name).name)
        )
        watching = asyncio.ensure_future(self._stop_when_withdrawn(document, worker_id))
        try:
            done, _ = await asyncio.wait((reading, watching), return_when=asyncio.FIRST_COMPLETED)
        finally:
            reading.cancel()
            watching.cancel()
            await asyncio.gather(reading, watching, return_exceptions=True)
        if reading not in done:
            watching.result()  # Raises: the document was withdrawn.
        extracted = reading.result()
        if extracted.title and document.title == DocumentService.default_title(document.source_name):
            document.title = extracted.title[:500]
        document.text, document.page_starts = extracted.text, extracted.page_starts
        await self._store_text(document, worker_id)

    async def _stop_when_withdrawn(self, document: Document, worker_id: str) -> None:
        """Raise once the document is deleted, queued again or archived; until then, wait."""
        while True:
            await asyncio.sleep(self.config.withdrawal_check_seconds)
            try:
                state = await Document.objects.filter(pk=document.pk).values("claimed_by", "archived_at").afirst()
            except DatabaseError:
                logger.warning("Could not look up %s while reading its file; will try again", document.pk)
                continue
            if state is None or state["claimed_by"] != worker_id:
                raise LostClaim(document.pk)
            if state["archived_at"] is not None and document.archived_at is None:
                raise ExtractionError(
                    f"{document.source_name or document.title} was archived while its text was being extracted, "
                    "so kbsite stopped reading it: restore it and index it again to make it searchable."
                )

    @sync_to_async
    def _store_text(self, document: Document, worker_id: str) -> None:
        with transaction.atomic():
            stored = Document.objects.filter(pk=document.pk, claimed_by=worker_id).update(
                text=document.text,
                title=document.title,
                page_starts=document.page_starts,
                updated_at=timezone.now(),
            )
            if not stored:
                raise LostClaim(document.pk)
            DocumentSource.objects.filter(document_id=document.pk).delete()

    async def _record_progress(self, document: Document, worker_id: str, done: int, total: int) -> None:
        updated = await Document.objects.filter(pk=document.pk, claimed_by=worker_id).aupdate(
            chunks_done=done,
            chunks_total=total,
            lease_expires_at=timezone.now() + timedelta(seconds=self.config.lease_seconds),
        )
        if not updated:
            raise LostClaim(document.pk)

    async def _keep_lease(self, document: Document, worker_id: str) -> None:
        """Renew the lease while long steps (extraction, chunking) run between progress records."""
        while True:
            await asyncio.sleep(self.config.lease_seconds / 3)
            try:
                await Document.objects.filter(pk=document.pk, claimed_by=worker_id).aupdate(
                    lease_expires_at=timezone.now() + timedelta(seconds=self.config.lease_seconds)
                )
            except DatabaseError:
                logger.warning("Could not renew the lease on %s; will try again", document.pk)

    async def _finish(
        self, document: Document, worker_id: str, chunk_count: int, collection_name: str | None
    ) -> None:
        archived_at, title, tags, metadata = await self._mark_ready(document, worker_id, chunk_count)
        # Archived, restored, renamed or relabelled while it was being indexed: later batches carry the
        # old state.
        where = {"kb_id": document.knowledge_base_id, "document_id": document.id, "collection_name": collection_name}
        if archived_at != document.archived_at:
            await self.chunk_service.set_archived(archived_at=archived_at, **where)
        if title != document.title:
            await self.chunk_service.set_title(title=title, **where)
        if labels_fingerprint(tags, metadata) != labels_fingerprint(document.tags, document.metadata):
            await self.chunk_service.set_labels(tags=tags, metadata=metadata, **where)

    @sync_to_async
    def _mark_ready(self, document: Document, worker_id: str, chunk_count: int):
        with transaction.atomic():
            finished = Document.objects.filter(pk=document.pk, claimed_by=worker_id).update(
                status=DocumentStatus.READY,
                chunk_count=chunk_count,
                chunks_done=chunk_count,
                chunks_total=chunk_count,
                error="",
                attempts=0,
                next_attempt_at=None,
                claimed_by="",
                lease_expires_at=None,
                updated_at=timezone.now(),
            )
            if not finished:
                raise LostClaim(document.pk)
            fields = ("archived_at", "title", "tags", "metadata")
            return Document.objects.filter(pk=document.pk).values_list(*fields).get()

    async def _fail(
        self,
        document: Document,
        worker_id: str,
        error: BaseException,
        collection_name: str | None,
        *,
        keep_chunks: bool = False,
    ) -> None:
        message = getattr(error, "message", None) or f"{type(error).__name__}: {error}"
        logger.warning("Ingestion of %s failed: %s", document.pk, message)
        if not keep_chunks:
            try:
                # Nothing of a failed document stays searchable.
                await self.chunk_service.delete_document_chunks(
                    kb_id=document.knowledge_base_id, document_id=document.id, collection_name=collection_name
                )
            except Exception:
                logger.exception("Could not remove the chunks of failed document %s", document.pk)
                message += " (Its earlier chunks could not be removed from Qdrant; reindex or delete it.)"
        await Document.objects.filter(pk=document.pk, claimed_by=worker_id).aupdate(
            **({} if keep_chunks else {"chunk_count": 0}),
            status=DocumentStatus.FAILED,
            error=message,
            claimed_by="",
            lease_expires_at=None,
            next_attempt_at=None,
            updated_at=timezone.now(),
        )

    async def _retry_later(
        self, document: Document, worker_id: str, error: BaseException, *, store_down: bool = False
    ) -> None:
        message = getattr(error, "message", None) or f"{type(error).__name__}: {error}"
        if store_down:
            delay, attempts = self.config.store_retry_seconds, F("attempts") - 1
            recorded = f"{STORE_WAIT}, tried again every {delay:.0f}s: {message}"
        else:
            delay, attempts = self.config.retry_delay(document.attempts), F("attempts")
            recorded = f"Attempt {document.attempts} of {self.config.max_attempts} failed: {message}"
        logger.warning("Indexing %s did not finish, retrying in %.0fs: %s", document.pk, delay, message)
        try:
            await Document.objects.filter(pk=document.pk, claimed_by=worker_id).aupdate(
                status=DocumentStatus.PENDING,
                error=recorded,
                attempts=attempts,
                next_attempt_at=timezone.now() + timedelta(seconds=delay),
                claimed_by="",
                lease_expires_at=None,
                updated_at=timezone.now(),
            )
        except DatabaseError:
            logger.exception("Could not record the failed attempt on %s; its lease will lapse", document.pk)

    async def _drop_points_if_deleted(self, document: Document, collection_name: str | None) -> None:
        if not await Document.objects.filter(pk=document.pk).aexists():
            await self.chunk_service.delete_document_chunks(
                kb_id=document.knowledge_base_id, document_id=document.id, collection_name=collection_name
            )
