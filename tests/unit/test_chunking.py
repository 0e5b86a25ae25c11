"""Token chunking with the default embedder's tokenizer."""

from __future__ import annotations

import pytest

from search.chunking import ChunkingError, TokenChunker
from search.embedding import embedding_service
from tests.factories import corpus

pytestmark = pytest.mark.unit


def chunker(size: int, overlap: int) -> TokenChunker:
    embedder = embedding_service.embedder
    return TokenChunker(
        token_spans=embedder.token_spans, size=size, overlap=overlap, max_size=embedder.max_chunk_tokens
    )


@pytest.mark.parametrize(("size", "overlap"), [(40, 8), (64, 12), (200, 40), (254, 0)])
def test_chunks_fit_the_size_cover_the_text_and_point_at_their_text(size: int, overlap: int) -> None:
    text = corpus()[0][1]
    spans = embedding_service.embedder.token_spans(text)

    chunks = chunker(size, overlap).split(text)

    assert [chunk.index for chunk in chunks] == list(range(len(chunks)))
    assert all(0 < chunk.token_count <= size for chunk in chunks)
    assert all(chunk.content == text[chunk.char_start : chunk.char_end] for chunk in chunks)
    assert chunks[0].char_start == spans[0][0] and chunks[-1].char_end == spans[-1][1]
    for previous, following in zip(chunks, chunks[1:]):
        assert following.char_start > previous.char_start
        # Consecutive chunks touch or overlap: no token is ever left out.
        assert following.char_start <= previous.char_end + 2


def test_overlap_repeats_the_end_of_the_previous_chunk() -> None:
    text = " ".join(f"word{i}" for i in range(400))

    chunks = chunker(50, 10).split(text)

    for previous, following in zip(chunks, chunks[1:]):
        shared = previous.char_end - following.char_start
        assert shared > 0
        assert text[following.char_start : previous.char_end] in previous.content


def test_chunks_end_at_headings_and_paragraphs_where_they_can() -> None:
    paragraphs = [" ".join(["Bees gather nectar from many flowers"] * 5) + "." for _ in range(6)]
    text = "# Bees\n\n" + "\n\n".join(paragraphs[:3]) + "\n\n## Hives\n\n" + "\n\n".join(paragraphs[3:])

    chunks = chunker(70, 0).split(text)

    assert len(chunks) > 2
    for chunk in chunks[:-1]:
        following = text[chunk.char_end : chunk.char_end + 2]
        assert following == "\n\n", f"chunk {chunk.index} was cut mid-paragraph: {chunk.content[-40:]!r}"
    assert any(chunk.content.startswith("## Hives") for chunk in chunks)


def test_text_without_any_break_is_still_cut_to_size() -> None:
    text = "lorem ipsum dolor " * 300

    chunks = chunker(30, 5).split(text)

    assert len(chunks) > 1 and all(chunk.token_count <= 30 for chunk in chunks)


@pytest.mark.parametrize("text", ["", "   \n\n  "])
def test_empty_text_has_no_chunks(text: str) -> None:
    assert chunker(40, 8).split(text) == []


@pytest.mark.parametrize(("size", "overlap"), [(0, 0), (255, 10), (40, 40), (40, -1)])
def test_impossible_settings_are_refused_with_the_limits(size: int, overlap: int) -> None:
    with pytest.raises(ChunkingError, match="must be"):
        chunker(size, overlap)


def _starts_a_word(text: str, position: int) -> bool:
    return position == 0 or text[position - 1].isspace()


@pytest.mark.parametrize(("size", "overlap"), [(30, 8), (40, 12), (64, 20), (50, 0)])
def test_every_chunk_starts_at_the_start_of_a_word(size: int, overlap: int) -> None:
    # Identifiers the tokenizer splits into several word-level pieces (KB SIT E _ ING …) and long
    # words it splits into WordPiece continuations (un ##bel ##ie …), with no break to cut at.
    words = ["KBSITE_INGEST_POLL_SECONDS=5", "unbelievably", "don't", "re-run", "config.yaml", "plain"]
    text = " ".join(words[i % len(words)] for i in range(300))

    chunks = chunker(size, overlap).split(text)

    assert len(chunks) > 3
    for chunk in chunks:
        assert _starts_a_word(text, chunk.char_start), f"chunk {chunk.index} starts mid-word: {chunk.content[:30]!r}"
        assert 0 < chunk.token_count <= size
        assert chunk.content == text[chunk.char_start : chunk.char_end]
    for previous, following in zip(chunks, chunks[1:]):
        assert previous.char_start < following.char_start <= previous.char_end + 1


def test_a_run_without_whitespace_longer_than_a_chunk_is_still_cut_to_size() -> None:
    text = "start " + "_".join(f"KBSITE{i}" for i in range(200)) + " end"

    chunks = chunker(30, 6).split(text)

    assert len(chunks) > 2
    assert all(0 < chunk.token_count <= 30 for chunk in chunks)
    assert all(chunk.content == text[chunk.char_start : chunk.char_end] for chunk in chunks)
    assert chunks[-1].char_end == len(text)
