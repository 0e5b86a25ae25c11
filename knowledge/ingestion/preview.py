"""The chunks a file would make with a KB's (or given) chunk settings, read and cut as ingestion would."""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass

from asgiref.sync import async_to_sync
from django.conf import settings
from django.core.cache import cache

from knowledge.errors import PreviewInProgress
from knowledge.ingestion.sandbox import ExtractionBudget, run_on_extracted_text_in_sandbox
from knowledge.models import KnowledgeBase
from knowledge.services.documents import DocumentService
from knowledge.services.knowledge_bases import KnowledgeBaseService, max_chunks_per_document, too_many_chunks
from search.pages import page_label

#: How many chunks a preview shows; the count covers them all.
PREVIEW_CHUNKS = 50


@dataclass(frozen=True)
class PreviewChunk:
    index: int
    char_start: int
    char_end: int
    token_count: int
    page_start: int | None
    page_end: int | None
    text: str

    @property
    def pages(self) -> str:
        return page_label(self.page_start, self.page_end)


@dataclass(frozen=True)
class ChunkPreview:
    filename: str
    format: str
    #: The title the document would get: its own, or one from the file name.
    title: str
    chunk_size: int
    chunk_overlap: int
    characters: int
    #: Pages of a PDF, or of a Word document with explicit page breaks; None for other sources.
    page_count: int | None
    chunk_count: int
    #: The first PREVIEW_CHUNKS chunks.
    chunks: list[PreviewChunk]


class ChunkPreviewService:
    """Reads an upload in the sandbox and chunks it there as ingestion would; no Document row, no Qdrant point.

    The chunking runs in the extraction's child, within its budget of memory and time, and one preview
    at a time per member (per server process, like the rate limits).
    """

    async def apreview(
        self,
        *,
        kb: KnowledgeBase,
        user_id: int,
        filename: str,
        data: bytes,
        chunk_size: int | None = None,
        chunk_overlap: int | None = None,
    ) -> ChunkPreview:
        """The file's chunks with the KB's settings, or those given; refused files raise as uploads do."""
        chunking = KnowledgeBase(
            chunk_size=kb.chunk_size if chunk_size is None else chunk_size,
            chunk_overlap=kb.chunk_overlap if chunk_overlap is None else chunk_overlap,
        )
        KnowledgeBaseService.validate_chunking(chunking)
        name, source_format = DocumentService.check_upload(filename, data)
        async with self._one_at_a_time(user_id):
            # The same child process, budget and refusals as ingestion: a preview is no way around them.
            result = await run_on_extracted_text_in_sandbox(
                data=data,
                filename=name,
                task="knowledge.ingestion.preview_chunks.chunk_for_preview",
                arguments={
                    "backend": settings.EMBEDDING["BACKEND"],
                    "size": chunking.chunk_size,
                    "overlap": chunking.chunk_overlap,
                    "shown": PREVIEW_CHUNKS,
                },
            )
        if result["chunk_count"] > max_chunks_per_document():
            raise too_many_chunks(name, result["chunk_count"], chunking.chunk_size)
        return ChunkPreview(
            filename=name,
            format=source_format,
            title=(result["title"] or DocumentService.default_title(name))[:500],
            chunk_size=chunking.chunk_size,
            chunk_overlap=chunking.chunk_overlap,
            characters=result["characters"],
            page_count=result["page_count"],
            chunk_count=result["chunk_count"],
            chunks=[
                PreviewChunk(
                    index=chunk["index"],
                    char_start=chunk["char_start"],
                    char_end=chunk["char_end"],
                    token_count=chunk["token_count"],
                    page_start=chunk["pages"][0],
                    page_end=chunk["pages"][1],
                    text=chunk["text"],
                )
                for chunk in result["chunks"]
            ],
        )

    @staticmethod
    @asynccontextmanager
    async def _one_at_a_time(user_id: int):
        key = f"kbsite:chunk-preview:{user_id}"
        # Expires with the budget: a process killed mid-preview does not lock the member out for good.
        if not await cache.aadd(key, True, timeout=ExtractionBudget.from_settings().seconds + 30):
            raise PreviewInProgress(
                "Another chunk preview of yours is still running: wait for it to finish, then try again."
            )
        try:
            yield
        finally:
            await cache.adelete(key)

    preview = async_to_sync(apreview)
