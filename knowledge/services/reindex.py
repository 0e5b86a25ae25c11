"""Re-chunking and re-embedding from the stored text: in place, or as a new generation switched in at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from knowledge.errors import RebuildSuperseded
from knowledge.ingestion.pipeline import IngestionService, ProgressCallback
from knowledge.models import Document, DocumentStatus, KnowledgeBase
from knowledge.services.document_metadata import labels_fingerprint
from knowledge.services.documents import DocumentService
from knowledge.services.knowledge_bases import active_index
from search.embedding.registry import embedders
from search.errors import EmbeddingModelMismatch
from search.keywords import KeywordSettings

# How long a rebuilt KB's old generation stays after the switch: longer than a search takes from
# reading the KB's row to querying Qdrant (its query's embedding and the query, each bounded).
RETIRED_GENERATION_GRACE_SECONDS = 5.0


@dataclass
class ReindexReport:
    indexed: int = 0
    chunks: int = 0
    failed: list[Document] = field(default_factory=list)
    #: Documents another worker was processing, left to it.
    busy: int = 0
    #: Documents that changed while a rebuild ran, queued for the workers.
    requeued: int = 0
    #: Where a rebuild wrote: its model's collection and the KB's new generation.
    collection: str | None = None
    generation: int | None = None
    seconds: float = 0.0


class ReindexService:
    def __init__(
        self,
        *,
        ingestion: IngestionService | None = None,
        documents: DocumentService | None = None,
        retire_after: float = RETIRED_GENERATION_GRACE_SECONDS,
    ) -> None:
        self.ingestion = ingestion or IngestionService()
        self.retire_after = retire_after
        self.documents = documents or DocumentService(chunk_service=self.ingestion.chunk_service)

    async def reindex_in_place(
        self, *, document_ids: Sequence[UUID], worker_id: str, on_progress: ProgressCallback | None = None
    ) -> ReindexReport:
        """Chunk and embed these documents again, one by one, into their KBs' active generations.

        KBs indexed with a model no configured embedder makes are refused: only a rebuild can move them.
        """
        self._refuse_other_models([slug async for slug in self._other_model_slugs(document_ids)])
        report, started = ReindexReport(), time.monotonic()
        for document_id in document_ids:
            document = await self.ingestion.ingest_until_settled(
                document_id=document_id, worker_id=worker_id, on_progress=on_progress
            )
            self._count(report, document)
        report.seconds = time.monotonic() - started
        return report

    def queue_in_place(self, *, document_ids: Sequence[UUID]) -> int:
        """Send these documents to the workers to be chunked and embedded again; returns how many.

        Needs no access to the store, so it works while the web server holds the embedded one.
        KBs indexed with a model no configured embedder makes are refused, as in `reindex_in_place`.
        """
        self._refuse_other_models(list(self._other_model_slugs(document_ids)))
        return self.documents.queue_for_reindex(documents=Document.objects.filter(pk__in=list(document_ids)).only("pk"))

    def _other_model_slugs(self, document_ids: Sequence[UUID]):
        return (
            KnowledgeBase.objects.filter(documents__in=list(document_ids))
            .exclude(embedding_model__in=self._configured_models())
            .values_list("slug", flat=True)
            .distinct()
        )

    def _configured_models(self) -> list[str]:
        return list(dict.fromkeys([self.ingestion.embeddings.model_id, *embedders.names()]))

    def _refuse_other_models(self, slugs: list[str]) -> None:
        if slugs:
            raise EmbeddingModelMismatch(
                f"{', '.join(slugs)} hold vectors of a model no configured embedder makes (the site has "
                f"{', '.join(self._configured_models())}); rebuild them with `manage.py reindex --recreate`."
            )

    def target_model(self, *, kb: KnowledgeBase, model: str | None = None) -> str:
        """The model a rebuild moves `kb` to: the one asked for, else its own if still configured, else the default."""
        if model is not None:
            self.ingestion.embeddings_for(model)  # raises UnknownEmbedder, naming the configured ones
            return model
        if kb.embedding_model in self._configured_models():
            return kb.embedding_model
        return self.ingestion.embeddings.model_id

    async def rebuild(
        self,
        *,
        kb: KnowledgeBase,
        worker_id: str,
        on_progress: ProgressCallback | None = None,
        model: str | None = None,
    ) -> ReindexReport:
        """Index every document of the KB as its next generation, then switch searches to it in one update.

        Searches read the active generation until the switch, so they never see a half-built index,
        and no other KB's points are touched. The KB takes `model` if given, else keeps its embedding
        model if one is still configured, else takes the site's default (see `target_model`); the next
        generation lands in that model's collection, made on first use, so two models' vectors never
        share an index. It also takes the current chunk settings, and keyword settings if it had none.
        What changed while the rebuild ran is queued again afterwards.
        """
        report, started = ReindexReport(), time.monotonic()
        chunks = self.ingestion.chunk_service
        embeddings = self.ingestion.embeddings_for(self.target_model(kb=kb, model=model))
        collections = chunks.collections
        active = active_index(kb)
        dimensions = await embeddings.adimensions()
        target = active.next_generation(model=embeddings.model_id, vector_size=dimensions)
        report.collection = target.collection
        report.generation = target.generation
        # A rebuild that died may have left points of this generation: it starts again from none.
        await collections.delete_generation(index=target)
        indexed: dict[UUID, tuple[str, datetime | None, str, str]] = {}
        try:
            async for document_id in Document.objects.filter(knowledge_base=kb).order_by("pk").values_list(
                "id", flat=True
            ):
                document = await self.ingestion.ingest_until_settled(
                    document_id=document_id, worker_id=worker_id, on_progress=on_progress, index=target
                )
                self._count(report, document)
                if document is not None and document.status == DocumentStatus.READY:
                    indexed[document.pk] = self._indexed_state(document)
        except BaseException:
            await collections.delete_generation(index=target)
            raise
        # The switch: model, size and generation in one update, taken only if no other rebuild switched first.
        # Should the update itself fail, the points written stay unsearched; the next rebuild clears them.
        switched = await KnowledgeBase.objects.filter(pk=kb.pk, index_generation=active.generation).aupdate(
            embedding_model=target.model,
            vector_size=target.vector_size,
            index_generation=target.generation,
            keyword_settings=kb.keyword_settings or KeywordSettings().as_dict(),
        )
        if not switched:
            await collections.delete_generation(index=target)
            raise RebuildSuperseded(
                f"{kb.name!r} was rebuilt or deleted by someone else while this rebuild ran: "
                "nothing of this one was kept. Run it again if you still need it."
            )
        # A search that read the old generation just before the switch queries it a moment later
        # (after embedding its query): its points go once such searches are done.
        await asyncio.sleep(self.retire_after)
        await collections.delete_generation(index=active)
        kb.embedding_model, kb.vector_size, kb.index_generation = target.model, target.vector_size, target.generation
        report.requeued = await self._catch_up(kb, indexed, failed={d.pk for d in report.failed})
        report.seconds = time.monotonic() - started
        return report

    async def _catch_up(self, kb: KnowledgeBase, indexed: dict, failed: set[UUID]) -> int:
        stale, present = [], set()
        async for document in Document.objects.filter(knowledge_base=kb).only(
            "id", "content_hash", "archived_at", "title", "tags", "metadata"
        ):
            present.add(document.pk)
            if document.pk in failed:
                continue
            if indexed.get(document.pk) != self._indexed_state(document):
                stale.append(document)
        for gone in indexed.keys() - present:
            await self.ingestion.chunk_service.delete_document_chunks(kb_id=kb.id, document_id=gone)
        return await self.documents.aqueue_for_reindex(documents=stale) if stale else 0

    @staticmethod
    def _indexed_state(document: Document) -> tuple[str, datetime | None, str, str]:
        """What a rebuilt collection holds of a document; a change while it ran sends the document back."""
        return (
            document.content_hash,
            document.archived_at,
            document.title,
            labels_fingerprint(document.tags, document.metadata),
        )

    @staticmethod
    def _count(report: ReindexReport, document: Document | None) -> None:
        if document is None:
            report.busy += 1
        elif document.status == DocumentStatus.READY:
            report.indexed += 1
            report.chunks += document.chunk_count
        else:
            report.failed.append(document)
