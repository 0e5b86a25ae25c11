"""Splits text into overlapping chunks measured in the embedder's tokens, cutting at paragraph and heading breaks where it can."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

TokenSpans = Callable[[str], list[tuple[int, int]]]

# How good a place to cut the gap between two tokens is; higher is better. _NO_BREAK is inside a
# run of characters without whitespace: inside a word ("un" "##bel" …) or an identifier the
# tokenizer splits at its punctuation ("KB" "SIT" "E" "_" "ING" …).
_NO_BREAK, _WORD, _SENTENCE, _LINE, _PARAGRAPH, _HEADING = range(6)
_SENTENCE_END = frozenset(".!?")


@dataclass(frozen=True)
class TextChunk:
    index: int
    content: str
    char_start: int
    char_end: int
    token_count: int


class ChunkingError(ValueError):
    pass


class TokenChunker:
    """Cuts text into chunks of at most `size` tokens, each sharing about `overlap` tokens with the last.

    A chunk ends at the best break near the end of its window: a heading (in its last three
    quarters), then a paragraph, a line, a sentence end or a space between words (in its last
    half); only a run of text without whitespace longer than half a chunk is cut inside a word.
    Each chunk starts at a word too: the overlap moves back or forward to the nearest word start.
    """

    def __init__(self, *, token_spans: TokenSpans, size: int, overlap: int, max_size: int) -> None:
        if not 1 <= size <= max_size:
            raise ChunkingError(f"Chunk size must be between 1 and {max_size} tokens, not {size}.")
        if not 0 <= overlap < size:
            raise ChunkingError(f"Chunk overlap must be at least 0 and below the size ({size}), not {overlap}.")
        self._token_spans = token_spans
        self.size = size
        self.overlap = overlap

    def split(self, text: str) -> list[TextChunk]:
        spans = self._token_spans(text)
        if not spans:
            return []
        breaks = [_NO_BREAK] + [self._break_quality(text, spans, i) for i in range(1, len(spans))]
        chunks: list[TextChunk] = []
        start = 0
        while True:
            end = self._cut(breaks, start, len(spans))
            char_start, char_end = spans[start][0], spans[end - 1][1]
            chunks.append(
                TextChunk(
                    index=len(chunks),
                    content=text[char_start:char_end],
                    char_start=char_start,
                    char_end=char_end,
                    token_count=end - start,
                )
            )
            if end == len(spans):
                return chunks
            start = self._next_start(breaks, start, end)

    def _cut(self, breaks: list[int], start: int, total: int) -> int:
        limit = start + self.size
        if limit >= total:
            return total
        best, best_quality = limit, _NO_BREAK
        for position in range(limit, start, -1):
            quality = breaks[position]
            if quality > best_quality and position - start > self._shortest_before(quality):
                best, best_quality = position, quality
        return best

    def _shortest_before(self, quality: int) -> int:
        """How many tokens a chunk needs before a break of this quality may end it."""
        return self.size // 4 if quality == _HEADING else self.size // 2

    def _next_start(self, breaks: list[int], start: int, end: int) -> int:
        """Step back `overlap` tokens, then forward to a sentence or line start if one is close,
        else to the nearest word start (backwards first, which keeps the overlap asked for; at worst
        the end of the last chunk, with no overlap)."""
        if self.overlap == 0:
            return end
        candidate = max(end - self.overlap, start + 1)
        for position in range(candidate, min(end, candidate + self.overlap // 2 + 1)):
            if breaks[position] >= _SENTENCE:
                return position
        if breaks[candidate] >= _WORD:
            return candidate
        for distance in range(1, self.overlap + 1):
            if candidate - distance > start and breaks[candidate - distance] >= _WORD:
                return candidate - distance
            if candidate + distance <= end and breaks[candidate + distance] >= _WORD:
                return candidate + distance
        return candidate

    @staticmethod
    def _break_quality(text: str, spans: list[tuple[int, int]], i: int) -> int:
        gap = text[spans[i - 1][1] : spans[i][0]]
        if "\n" in gap:
            if text.startswith("#", spans[i][0]):
                return _HEADING
            return _PARAGRAPH if gap.count("\n") >= 2 else _LINE
        if gap and text[spans[i - 1][1] - 1] in _SENTENCE_END:
            return _SENTENCE
        return _WORD if any(character.isspace() for character in gap) else _NO_BREAK
