"""Turns a document's stored text into chunks and vectors in Qdrant."""

from __future__ import annotations

from uuid import UUID

from knowledge.models import Document, DocumentStatus, KnowledgeBase
from search.chunking import TextChunk, TokenChunker
from search.embedding import EmbeddingService, embedding_service
from search.errors import EmbeddingModelMismatch
from search.services.chunks import ChunkService


class IndexingService:
    def __init__(self, *, chunk_service: ChunkService | None = None, embeddings: EmbeddingService | None = None) -> None:
        self.chunk_service = chunk_service or ChunkService()
        self.embeddings = embeddings or embedding_service

    def chunker_for(self, kb: KnowledgeBase) -> TokenChunker:
        embedder = self.embeddings.embedder
        return TokenChunker(
            token_spans=embedder.token_spans,
            size=kb.chunk_size,
            overlap=kb.chunk_overlap,
            max_size=embedder.max_chunk_tokens,
        )

    def split(self, document: Document) -> list[TextChunk]:
        return self.chunker_for(document.knowledge_base).split(document.text)

    async def index_document(self, *, document_id: UUID) -> Document:
        """Chunk, embed and store the document's text; it ends `ready`, or `failed` with the reason."""
        document = await Document.objects.select_related("knowledge_base").aget(pk=document_id)
        kb = document.knowledge_base
        if kb.embedding_model != self.embeddings.model_id:
            raise EmbeddingModelMismatch(
                f"{kb.name!r} holds vectors of {kb.embedding_model}, but the site embeds with "
                f"{self.embeddings.model_id}: run `manage.py reindex --kb {kb.slug} --recreate` first."
            )
        try:
            chunks = self.split(document)
            vectors = await self.embeddings.embed_documents([chunk.content for chunk in chunks])
            await self.chunk_service.upsert_chunks(
                kb_id=kb.id,
                document_id=document.id,
                title=document.title,
                chunks=chunks,
                vectors=vectors,
                archived_at=document.archived_at,
            )
            # A shorter new version leaves the old version's tail behind: drop it.
            await self.chunk_service.delete_document_chunks(
                kb_id=kb.id, document_id=document.id, from_index=len(chunks)
            )
        except Exception as exc:
            await Document.objects.filter(pk=document.pk).aupdate(status=DocumentStatus.FAILED, error=str(exc))
            raise
        document.status = DocumentStatus.READY
        document.chunk_count = len(chunks)
        document.error = ""
        await document.asave(update_fields=["status", "chunk_count", "error", "updated_at"])
        return document
