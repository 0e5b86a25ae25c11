"""A preview's chunking, run inside the extraction's child process (no Django project there, only settings)."""

from __future__ import annotations

from django.utils.module_loading import import_string

from knowledge.ingestion.extraction import ExtractedText
from search.chunking import TokenChunker
from search.pages import page_range


def chunk_for_preview(
    extracted: ExtractedText, *, backend: str, size: int, overlap: int, shown: int
) -> dict[str, object]:
    """The text's chunks as ingestion would cut them: how many, and the first `shown` with their pages.

    Runs where the text was read, within the extraction's budget: a large text cut small makes
    hundreds of thousands of chunks, which must cost the child, not the server.
    """
    embedder = import_string(backend)(threads=1)
    chunker = TokenChunker(
        token_spans=embedder.token_spans, size=size, overlap=overlap, max_size=embedder.max_chunk_tokens
    )
    chunks = chunker.split(extracted.text)
    page_starts = extracted.page_starts
    return {
        "title": extracted.title,
        "format": extracted.format,
        "characters": len(extracted.text),
        "page_count": len(page_starts) if page_starts else None,
        "chunk_count": len(chunks),
        "chunks": [
            {
                "index": chunk.index,
                "char_start": chunk.char_start,
                "char_end": chunk.char_end,
                "token_count": chunk.token_count,
                "pages": page_range(page_starts, char_start=chunk.char_start, char_end=chunk.char_end),
                "text": chunk.content,
            }
            for chunk in chunks[:shown]
        ],
    }
