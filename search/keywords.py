"""BM25 keyword vectors and the words they match, computed in process with Qdrant's own encoder."""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import qdrant_edge
from qdrant_client import models

#: The languages `qdrant_edge.Bm25` accepts (its stopword lists; the stemmer follows where Snowball has one).
LANGUAGES = (
    "arabic", "azerbaijani", "basque", "bengali", "catalan", "chinese", "danish", "dutch", "english",
    "finnish", "french", "german", "greek", "hebrew", "hinglish", "hungarian", "indonesian", "italian",
    "japanese", "kazakh", "nepali", "norwegian", "portuguese", "romanian", "russian", "slovene", "spanish",
    "swedish", "tajik", "turkish",
)  # fmt: skip

# Words seen per encoder, each mapped to its tokens: a chunk's words repeat across chunks and queries.
_WORD_CACHE_SIZE = 1 << 16
# For a query in ASCII, a content word is checked only when it starts with the first letters of a
# query word: stemmers rewrite endings ("using", "used" -> "use"), never the first two letters.
PREFIX_LETTERS = 2


@dataclass(frozen=True)
class KeywordSettings:
    """How a knowledge base's text becomes BM25 tokens and weights; stored with its index settings."""

    language: str = "english"
    stemming: bool = True
    stopwords: bool = True
    # k, b and avg_len were chosen on SciFact's train split (2,101 abstracts cut as ingestion cuts them,
    # 200 MiniLM tokens with overlap 40: 5,879 chunks of 71.8 BM25 tokens on average after stopwords,
    # median 75): over 36 settings (k 0.9-2.0, b 0.5-0.9, avg_len 72/100/256) these gave the best
    # keyword nDCG@10 (0.787 against 0.772 for the textbook 1.2/0.75/mean length) and, fused with the
    # dense side, the best hybrid. Chunks are short and their words rarely repeat: a gentler TF
    # saturation (k 0.9) and stronger length normalisation (b 0.9) suit them.
    k: float = 0.9
    b: float = 0.9
    avg_len: float = 100.0

    def __post_init__(self) -> None:
        if not isinstance(self.language, str) or self.language not in LANGUAGES:
            raise ValueError(
                f"Keyword language {self.language!r} is not one BM25 supports; use one of: {', '.join(LANGUAGES)}."
            )
        for name in ("stemming", "stopwords"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"Keyword {name} must be true or false, not {getattr(self, name)!r}.")
        for name, allowed, ok in (
            ("k", "a number of at least 0 (1.2 is usual)", lambda v: v >= 0),
            ("b", "a number from 0 to 1 (0.75 is usual)", lambda v: 0 <= v <= 1),
            ("avg_len", "a number above 0: the mean chunk length in tokens", lambda v: v > 0),
        ):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or not ok(value)
            ):
                raise ValueError(f"Keyword setting {name} must be {allowed}, not {value!r}.")
            object.__setattr__(self, name, float(value))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KeywordSettings:
        """Settings from `as_dict()` output; keys left out take their defaults, unknown keys are refused."""
        if not isinstance(data, Mapping):
            raise ValueError(f"Keyword settings must be a mapping, not {type(data).__name__}.")
        known = [field.name for field in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(
                f"Unknown keyword settings {', '.join(map(repr, unknown))}; allowed: {', '.join(known)}."
            )
        return cls(**data)

    def to_bm25_config(self) -> qdrant_edge.Bm25Config:
        """The encoder's configuration; its fields mirror the server's `Bm25Config`."""
        return qdrant_edge.Bm25Config(
            k=self.k,
            b=self.b,
            avg_len=self.avg_len,
            language=self.language,
            # None keeps the language's own stopword list and stemmer; these two switch them off.
            stopwords=None if self.stopwords else qdrant_edge.StopwordsSet(languages=set(), custom=set()),
            stemmer=None if self.stemming else qdrant_edge.DisabledStemmer(),
        )


@functools.cache
def _word_pattern() -> re.Pattern[str]:
    return re.compile(f"[{_word_class()}]+")


@functools.cache
def _word_class() -> str:
    """Letters, digits, underscores and combining marks: a word is a run of them; callers blank out underscores.

    Bm25 splits text at every char that is not alphanumeric to Rust, which counts the vowel signs of
    Indic and Arabic scripts as letters where Python's `\\w` does not; so marks join words here, and a
    word Bm25 cuts in two (at a virama, say) is one word that matches when either token does. One
    character class, not an alternation, keeps a chunk's scan near 70 µs; building it scans Unicode
    once (a tenth of a second), on first use.
    """
    ranges: list[list[int]] = []
    for code in range(0x110000):
        if unicodedata.category(chr(code)) in ("Mn", "Mc", "Me"):
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1][1] = code
            else:
                ranges.append([code, code])
    marks = "".join(f"{re.escape(chr(first))}-{re.escape(chr(last))}" for first, last in ranges)
    return f"\\w{marks}"


def _sparse(vector: qdrant_edge.SparseVector) -> models.SparseVector:
    return models.SparseVector(indices=vector.indices, values=vector.values)


class KeywordEncoder:
    """BM25 document and query vectors for a `bm25` sparse vector with `Modifier.IDF`, and query-word highlights."""

    def __init__(self, settings: KeywordSettings) -> None:
        self.settings = settings
        self._bm25 = qdrant_edge.Bm25(settings.to_bm25_config())
        self._word = _word_pattern()
        self._word_tokens = functools.lru_cache(maxsize=_WORD_CACHE_SIZE)(self._tokens_of_word)
        self._candidates = functools.lru_cache(maxsize=1024)(self._candidate_words)

    def encode_documents(self, texts: Iterable[str]) -> list[models.SparseVector]:
        """Term-frequency weights saturated by k and normalised by length (b, avg_len); Qdrant adds the IDF."""
        return [_sparse(self._bm25.embed_document(text)) for text in texts]

    def encode_query(self, text: str) -> models.SparseVector:
        """Weight 1 for each distinct token of the query; an all-stopword query gives an empty vector."""
        return _sparse(self._bm25.embed_query(text))

    def highlights(self, query: str, content: str) -> list[tuple[int, int]]:
        """(start, end) in `content` of each word whose BM25 token is among the query's, in order.

        A word matches as the encoder sees it: lowercased, stemmed, stopwords never ("cats" for "cat").
        Only words starting like a query word are looked at (a stemmer changes endings, not starts),
        each distinct one encoded once per process: a third of the time of looking at every word.
        """
        wanted, candidates, lowered_candidates = self._candidates(query)
        if not wanted:
            return []
        tokens = self._word_tokens
        # Underscores separate words for Bm25; a space in their place keeps every offset.
        text = content.replace("_", " ")
        lowered = text.lower()
        if len(lowered) == len(text):
            # No character lowercased into two (as "İ" does), so every offset holds in the lowercased
            # text, and a case-sensitive scan of it is a third faster than an IGNORECASE one.
            words = lowered_candidates.finditer(lowered)
            return [match.span() for match in words if not wanted.isdisjoint(tokens(text[match.start() : match.end()]))]
        words = candidates.finditer(text)
        return [match.span() for match in words if not wanted.isdisjoint(tokens(match[0]))]

    def _candidate_words(self, query: str) -> tuple[frozenset[int], re.Pattern[str], re.Pattern[str]]:
        """The query's tokens, and patterns for the words of a chunk (as written, and lowercased) that may share one."""
        wanted = frozenset(self._bm25.embed_query(query).indices)
        if not query.isascii():
            # Scripts whose words \b does not delimit: look at every word.
            return wanted, self._word, self._word
        starts = {
            word.lower()[:PREFIX_LETTERS]
            for word in self._word.findall(query.replace("_", " "))
            if not wanted.isdisjoint(self._word_tokens(word))
        }
        # Any word starting with a digit is a candidate: numbers make most queries' starts unique, and
        # a pattern of letters alone repeats from query to query, so `re`'s cache spares compiling it.
        letters = sorted((start for start in starts if not start[0].isdigit()), key=lambda start: (-len(start), start))
        any_digit = len(letters) < len(starts)
        alternatives = "|".join([*map(re.escape, letters), *(["\\d"] if any_digit else [])]) or "(?!)"
        pattern = f"\\b(?:{alternatives})\\w*"
        # The same words in lowercased text, each alternative starting with its first character and
        # checking the word boundary once past it (`(?<!\w.)`: no word character before that one): `re`
        # then skips along the text to the next of those first characters instead of trying `\b` and
        # every alternative at each position. Digits too are listed one by one: a `\d` alternative stops
        # that skipping. Only ASCII ones: a query here is ASCII, and BM25 reads no other digit as one of
        # them ("٤٢" and "４２" are not "42"). The highlights of ten 1,000-character chunks of prose for
        # the load tests' queries: 247-250 µs against 393-424 µs with `\b` (the pattern's compiling,
        # once per query: 46-50 µs against 30-32).
        firsts = [*((start[0], start[1:]) for start in letters), *((digit, "") for digit in "0123456789" if any_digit)]
        lowered = "|".join(f"{re.escape(first)}(?<!\\w.){re.escape(rest)}" for first, rest in firsts)
        return wanted, re.compile(pattern, re.IGNORECASE), re.compile(f"(?:{lowered or '(?!)'})\\w*")

    def _tokens_of_word(self, word: str) -> tuple[int, ...]:
        return tuple(self._bm25.embed_query(word).indices)


@functools.lru_cache(maxsize=32)
def keyword_encoder(settings: KeywordSettings) -> KeywordEncoder:
    """The encoder for these settings, built once per process: knowledge bases mostly share settings."""
    return KeywordEncoder(settings)
