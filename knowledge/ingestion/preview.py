"""The chunks a file would make with a KB's (or given) chunk settings, read as ingestion reads it."""

from __future__ import annotations

from dataclasses import dataclass

from asgiref.sync import async_to_sync, sync_to_async

from knowledge.ingestion.pipeline import IngestionService
from knowledge.ingestion.sandbox import extract_text_in_sandbox
from knowledge.models import KnowledgeBase
from knowledge.services.documents import DocumentService
from knowledge.services.knowledge_bases import KnowledgeBaseService
from search.chunking import TextChunk
from search.pages import page_label, page_range

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
    """Reads an upload in the sandbox and chunks it as ingestion would; no Document row, no Qdrant point."""

    def __init__(self, *, ingestion: IngestionService | None = None) -> None:
        self.ingestion = ingestion or IngestionService()

    async def apreview(
        self,
        *,
        kb: KnowledgeBase,
        filename: str,
        data: bytes,
        chunk_size: int | None = None,
        chunk_overlap: int | None = None,
    ) -> ChunkPreview:
        """The file's chunks with the KB's settings, or those given; refused files raise as uploads do."""
        settings = KnowledgeBase(
            chunk_size=kb.chunk_size if chunk_size is None else chunk_size,
            chunk_overlap=kb.chunk_overlap if chunk_overlap is None else chunk_overlap,
        )
        KnowledgeBaseService.validate_chunking(settings)
        name, source_format = DocumentService.check_upload(filename, data)
        # The same child process, budget and refusals as ingestion: a preview is no way around them.
        extracted = await extract_text_in_sandbox(data=data, filename=name)
        chunker = self.ingestion.chunker_for(settings)
        chunks = await sync_to_async(chunker.split, thread_sensitive=False)(extracted.text)
        return ChunkPreview(
            filename=name,
            format=source_format,
            title=(extracted.title or DocumentService.default_title(name))[:500],
            chunk_size=settings.chunk_size,
            chunk_overlap=settings.chunk_overlap,
            characters=len(extracted.text),
            page_count=len(extracted.page_starts) if extracted.page_starts else None,
            chunk_count=len(chunks),
            chunks=[self._shown(chunk, extracted.page_starts) for chunk in chunks[:PREVIEW_CHUNKS]],
        )

    @staticmethod
    def _shown(chunk: TextChunk, page_starts: list[int] | None) -> PreviewChunk:
        first, last = page_range(page_starts, char_start=chunk.char_start, char_end=chunk.char_end)
        return PreviewChunk(
            index=chunk.index,
            char_start=chunk.char_start,
            char_end=chunk.char_end,
            token_count=chunk.token_count,
            page_start=first,
            page_end=last,
            text=chunk.content,
        )

    preview = async_to_sync(apreview)
