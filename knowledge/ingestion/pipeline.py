"""The ingestion pipeline: extract a claimed document's text, chunk, embed, store, and record the outcome.

The queue it takes documents from and records outcomes in is `knowledge.ingestion.queue`. Point
ids are derived from (document, chunk index), so doing a document again never duplicates chunks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePath
from uuid import UUID

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from knowledge.errors import InvalidInput
from knowledge.ingestion.extraction import ExtractionError
from knowledge.ingestion.queue import DocumentQueue, LostClaim
from knowledge.ingestion.sandbox import extract_text_in_sandbox
from knowledge.models import Document, DocumentSource, DocumentStatus, KnowledgeBase
from knowledge.services.document_metadata import labels_fingerprint
from knowledge.services.documents import DocumentService
from knowledge.services.knowledge_bases import max_chunks_per_document, too_many_chunks
from search import metrics
from search.chunking import ChunkingError, TextChunk, TokenChunker
from search.embedding import EmbeddingService, embedding_service
from search.embedding.registry import embedders
from search.errors import (
    EmbedderResponseInvalid,
    EmbedderUnavailable,
    EmbeddingModelMismatch,
    UnknownEmbedder,
    VectorStoreUnavailable,
)
from search.keywords import KeywordEncoder, KeywordSettings, keyword_encoder
from search.services.chunks import ChunkService
from search.services.collections import KbIndex

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[Document, int, int], None]

# Retrying cannot help these: the file or the settings must change first.
PERMANENT_ERRORS = (ExtractionError, InvalidInput, ChunkingError, EmbedderResponseInvalid)
STORE_WAIT = "Waiting for the vector store"
EMBEDDER_WAIT = "Waiting for the embedder"


def check_vector_sizes(vectors: list[list[float]], *, model: str, expected: int) -> None:
    """Refuse vectors of another size than the index holds: an endpoint now serving another model, say."""
    sizes = sorted({len(vector) for vector in vectors} - {expected})
    if sizes:
        raise EmbedderResponseInvalid(
            f"The embedder {model!r} sent vectors of {', '.join(map(str, sizes))} dimensions, not {expected}: "
            "check the model its endpoint serves, or rebuild the knowledge base with `manage.py reindex --recreate`.",
            detail={"embedder": model, "expected": expected, "received": sizes},
        )


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
        self.queue = DocumentQueue(lease_seconds=self.config.lease_seconds)

    def embeddings_for(self, model: str) -> EmbeddingService:
        """The service embedding for `model`: this service's own for its model, else the registry's."""
        return embedders.service(model, default=self.embeddings)

    def chunker_for(self, kb: KnowledgeBase, *, model: str | None = None) -> TokenChunker:
        """Chunks measured by the tokenizer of `model` (the KB's own unless a rebuild moves it to another)."""
        embedder = self.embeddings_for(model or kb.embedding_model).embedder
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
        index: KbIndex | None = None,
    ) -> Document | None:
        """Claim one document and process it here and now; None if another worker holds it."""
        document = await self.queue.aclaim(document_id=document_id, worker_id=worker_id)
        if document is None:
            return None
        return await self.process(document, worker_id=worker_id, on_progress=on_progress, index=index)

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
            if document.error.startswith((STORE_WAIT, EMBEDDER_WAIT)) and loop.time() >= give_up_at:
                return document
            await asyncio.sleep(max((document.next_attempt_at - timezone.now()).total_seconds(), 0))

    async def process(
        self,
        document: Document,
        *,
        worker_id: str,
        on_progress: ProgressCallback | None = None,
        index: KbIndex | None = None,
    ) -> Document:
        """Index a claimed document and record how it went: ready, failed, or pending a retry."""
        keeper = asyncio.ensure_future(self._keep_lease(document, worker_id))
        try:
            chunk_count = await self._index(document, worker_id, on_progress, index)
            await self._finish(document, worker_id, chunk_count, index)
        except LostClaim:
            logger.info("Gave up %s: it is no longer claimed by %s", document.pk, worker_id)
            # Deleted while this run wrote its chunks: whatever it wrote after the delete must go.
            await self._drop_points_if_deleted(document, index)
        except asyncio.CancelledError:
            await asyncio.shield(self.queue.arelease(document_id=document.pk, worker_id=worker_id))
            raise
        except EmbeddingModelMismatch as exc:
            # The document is fine; the KB needs rebuilding. Its chunks stay for that rebuild to replace.
            await self._fail(document, worker_id, exc, index, keep_chunks=True)
        except PERMANENT_ERRORS as exc:
            await self._fail(document, worker_id, exc, index)
        except VectorStoreUnavailable as exc:
            # However long the outage, the document waits for the store rather than failing.
            await self._retry_later(document, worker_id, exc, store_down=True)
        except EmbedderUnavailable as exc:
            # An embeddings endpoint down, rate limiting past patience, or refusing the key: as for the store,
            # the document waits without spending an attempt.
            await self._retry_later(document, worker_id, exc, waiting_for=EMBEDDER_WAIT)
        except Exception as exc:
            if document.attempts >= self.config.max_attempts:
                await self._fail(document, worker_id, exc, index)
            else:
                await self._retry_later(document, worker_id, exc)
        finally:
            keeper.cancel()
        return await Document.objects.select_related("knowledge_base").filter(pk=document.pk).afirst() or document

    async def _index(
        self, document: Document, worker_id: str, on_progress: ProgressCallback | None, index: KbIndex | None
    ) -> int:
        kb = document.knowledge_base
        # A rebuild writes a new generation, perhaps of another model than the KB's until it switches.
        model = index.model if index is not None else kb.embedding_model
        try:
            embeddings = self.embeddings_for(model)
        except UnknownEmbedder:
            raise EmbeddingModelMismatch(
                f"{kb.name!r} holds vectors of {model}, which no configured embedder makes (the site has "
                f"{', '.join(embedders.names())}): run `manage.py reindex --kb {kb.slug} --recreate`."
            ) from None
        await self._extract_if_needed(document, worker_id)
        chunker = self.chunker_for(kb, model=model)
        chunks: list[TextChunk] = await sync_to_async(chunker.split, thread_sensitive=False)(document.text)
        if not chunks:
            raise ExtractionError(f"{document.source_name or document.title} contains no text.")
        if len(chunks) > max_chunks_per_document():
            raise too_many_chunks(document.source_name or document.title, len(chunks), kb.chunk_size)
        await self.queue.arecord_progress(document_id=document.pk, worker_id=worker_id, done=0, total=len(chunks))
        keywords = await self._keyword_encoder(kb)
        batches = [chunks[start : start + self.config.batch_size] for start in range(0, len(chunks), self.config.batch_size)]

        async def encoded(batch: list[TextChunk]) -> tuple[list[list[float]], list]:
            texts = [chunk.content for chunk in batch]
            # BM25 is pure Python: it runs in a thread of its own while the model embeds, never on the
            # event loop that searches need.
            vectors, keyword_vectors = await asyncio.gather(
                embeddings.embed_documents(texts),
                sync_to_async(keywords.encode_documents, thread_sensitive=False)(texts),
            )
            return vectors, keyword_vectors

        # The next batch is embedded while this one is stored: the model is never idle waiting for the
        # store and the database, and a batch still lands only after every batch before it.
        upcoming = asyncio.ensure_future(encoded(batches[0]))
        done = 0
        try:
            for position, batch in enumerate(batches):
                vectors, keyword_vectors = await upcoming
                if position + 1 < len(batches):
                    upcoming = asyncio.ensure_future(encoded(batches[position + 1]))
                check_vector_sizes(vectors, model=model, expected=index.vector_size if index else kb.vector_size)
                await self.chunk_service.upsert_chunks(
                    kb_id=kb.id,
                    document_id=document.id,
                    title=document.title,
                    chunks=batch,
                    vectors=vectors,
                    keyword_vectors=keyword_vectors,
                    archived_at=document.archived_at,
                    tags=document.tags,
                    metadata=document.metadata,
                    fields=kb.metadata_fields,
                    index=index,
                    page_starts=document.page_starts,
                )
                metrics.count_ingested_chunks(len(batch))
                done += len(batch)
                await self.queue.arecord_progress(
                    document_id=document.pk, worker_id=worker_id, done=done, total=len(chunks)
                )
                if on_progress is not None:
                    on_progress(document, done, len(chunks))
        finally:
            # Failed or cancelled midway: the batch being embedded ahead is dropped, not left running
            # (and its own failure, if it had one, is not reported as never retrieved).
            upcoming.cancel()
            await asyncio.gather(upcoming, return_exceptions=True)
        # A shorter new version leaves the old version's tail behind.
        await self.chunk_service.delete_document_chunks(
            kb_id=kb.id, document_id=document.id, from_index=len(chunks), index=index
        )
        return len(chunks)

    async def _keyword_encoder(self, kb: KnowledgeBase) -> KeywordEncoder:
        """The KB's BM25 encoder; a KB made before hybrid search (its setting empty) takes the defaults."""
        if kb.keyword_settings is None:
            kb.keyword_settings = KeywordSettings().as_dict()
            await KnowledgeBase.objects.filter(pk=kb.pk, keyword_settings__isnull=True).aupdate(
                keyword_settings=kb.keyword_settings
            )
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
        await self.queue.astore_text(document=document, worker_id=worker_id)

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

    async def _keep_lease(self, document: Document, worker_id: str) -> None:
        """Renew the lease while long steps (extraction, chunking) run between progress records."""
        while True:
            await asyncio.sleep(self.config.lease_seconds / 3)
            try:
                await self.queue.arenew(document_id=document.pk, worker_id=worker_id)
            except DatabaseError:
                logger.warning("Could not renew the lease on %s; will try again", document.pk)

    async def _finish(
        self, document: Document, worker_id: str, chunk_count: int, index: KbIndex | None
    ) -> None:
        archived_at, title, tags, metadata = await self.queue.amark_ready(
            document_id=document.pk, worker_id=worker_id, chunk_count=chunk_count
        )
        # Archived, restored, renamed or relabelled while it was being indexed: later batches carry the
        # old state.
        where = {"kb_id": document.knowledge_base_id, "document_id": document.id, "index": index}
        if archived_at != document.archived_at:
            await self.chunk_service.set_archived(archived_at=archived_at, **where)
        if title != document.title:
            await self.chunk_service.set_title(title=title, **where)
        if labels_fingerprint(tags, metadata) != labels_fingerprint(document.tags, document.metadata):
            # Relabelling declared any new key meanwhile: the fields are read as they are now.
            fields = await KnowledgeBase.objects.filter(pk=document.knowledge_base_id).values_list(
                "metadata_fields", flat=True
            ).afirst()
            await self.chunk_service.set_labels(tags=tags, metadata=metadata, fields=fields or {}, **where)

    async def _fail(
        self,
        document: Document,
        worker_id: str,
        error: BaseException,
        index: KbIndex | None,
        *,
        keep_chunks: bool = False,
    ) -> None:
        message = getattr(error, "message", None) or f"{type(error).__name__}: {error}"
        logger.warning("Ingestion of %s failed: %s", document.pk, message)
        if not keep_chunks:
            try:
                # Nothing of a failed document stays searchable.
                await self.chunk_service.delete_document_chunks(
                    kb_id=document.knowledge_base_id, document_id=document.id, index=index
                )
            except Exception:
                logger.exception("Could not remove the chunks of failed document %s", document.pk)
                message += " (Its earlier chunks could not be removed from Qdrant; reindex or delete it.)"
        await self.queue.afail(
            document_id=document.pk, worker_id=worker_id, error=message, chunks_removed=not keep_chunks
        )

    async def _retry_later(
        self,
        document: Document,
        worker_id: str,
        error: BaseException,
        *,
        store_down: bool = False,
        waiting_for: str | None = None,
    ) -> None:
        message = getattr(error, "message", None) or f"{type(error).__name__}: {error}"
        if store_down:
            waiting_for = STORE_WAIT
        if waiting_for is not None:
            delay = self.config.store_retry_seconds
            recorded = f"{waiting_for}, tried again every {delay:.0f}s: {message}"
        else:
            delay = self.config.retry_delay(document.attempts)
            recorded = f"Attempt {document.attempts} of {self.config.max_attempts} failed: {message}"
        logger.warning("Indexing %s did not finish, retrying in %.0fs: %s", document.pk, delay, message)
        try:
            await self.queue.aretry_later(
                document_id=document.pk,
                worker_id=worker_id,
                error=recorded,
                delay_seconds=delay,
                count_attempt=waiting_for is None,
            )
        except DatabaseError:
            logger.exception("Could not record the failed attempt on %s; its lease will lapse", document.pk)

    async def _drop_points_if_deleted(self, document: Document, index: KbIndex | None) -> None:
        if not await Document.objects.filter(pk=document.pk).aexists():
            await self.chunk_service.delete_document_chunks(
                kb_id=document.knowledge_base_id, document_id=document.id, index=index
            )
