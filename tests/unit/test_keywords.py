"""BM25 keyword settings, vectors and highlights, against Qdrant's own encoder."""

from __future__ import annotations

import time

import pytest
import qdrant_edge
from qdrant_client import models

from search.keywords import LANGUAGES, KeywordEncoder, KeywordSettings, keyword_encoder
from tests.factories import corpus

pytestmark = pytest.mark.unit


def highlighted(query: str, content: str, settings: KeywordSettings | None = None) -> list[str]:
    spans = keyword_encoder(settings or KeywordSettings()).highlights(query, content)
    return [content[start:end] for start, end in spans]


def test_settings_round_trip_through_a_dict() -> None:
    settings = KeywordSettings(language="french", stemming=False, stopwords=False, k=1.5, b=0.3, avg_len=120)

    assert KeywordSettings.from_dict(settings.as_dict()) == settings
    assert KeywordSettings.from_dict({}) == KeywordSettings()
    assert KeywordSettings().as_dict() == {
        "language": "english", "stemming": True, "stopwords": True, "k": 0.9, "b": 0.9, "avg_len": 100.0,
    }  # fmt: skip


def test_unknown_keys_are_refused_naming_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match=r"Unknown keyword settings 'k1'; allowed: language, stemming"):
        KeywordSettings.from_dict({"k1": 1.2})


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("language", "klingon", "use one of: arabic, "),
        ("language", "English", "use one of"),
        ("stemming", "yes", "must be true or false"),
        ("k", -0.1, "k must be a number of at least 0"),
        ("b", 1.2, "b must be a number from 0 to 1"),
        ("b", float("nan"), "b must be a number from 0 to 1"),
        ("avg_len", 0, "avg_len must be a number above 0"),
        ("avg_len", True, "avg_len must be a number above 0"),
    ],
)
def test_invalid_settings_say_what_is_allowed(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KeywordSettings(**{field: value})


def test_every_listed_language_reaches_qdrants_encoder_with_its_own_stopwords() -> None:
    # A stopword of English, of German and of French, and a word no language lists.
    text = "the und les kbsite"
    tokens = {}
    for language in LANGUAGES:
        vector = KeywordEncoder(KeywordSettings(language=language)).encode_query(text)
        assert vector.indices == qdrant_edge.Bm25(qdrant_edge.Bm25Config(language=language)).embed_query(text).indices
        tokens[language] = len(vector.indices)

    assert (tokens["english"], tokens["german"], tokens["french"], tokens["arabic"]) == (3, 3, 3, 4)


def test_the_settings_reach_the_encoder_config() -> None:
    config = KeywordSettings(k=0.9, b=0.4, avg_len=50).to_bm25_config()

    assert (config.k, config.b, config.avg_len, config.language) == (0.9, 0.4, 50.0, "english")


def test_encoding_matches_qdrant_bm25_itself() -> None:
    settings = KeywordSettings(k=1.2, b=0.75, avg_len=40)
    bm25 = qdrant_edge.Bm25(qdrant_edge.Bm25Config(language="english", k=1.2, b=0.75, avg_len=40))
    texts = [text for _, text in corpus()]

    documents = keyword_encoder(settings).encode_documents(texts)
    query = keyword_encoder(settings).encode_query("Why do the tides rise and fall?")

    for text, vector in zip(texts, documents):
        expected = bm25.embed_document(text)
        assert isinstance(vector, models.SparseVector)
        assert (vector.indices, vector.values) == (expected.indices, expected.values)
    assert query.indices == bm25.embed_query("Why do the tides rise and fall?").indices
    assert set(query.values) == {1.0}


def test_switching_off_stemming_and_stopwords_changes_the_tokens() -> None:
    plain = keyword_encoder(KeywordSettings(stemming=False, stopwords=False))

    assert len(keyword_encoder(KeywordSettings()).encode_query("the cats").indices) == 1
    assert plain.encode_query("the cats").indices != plain.encode_query("the cat").indices
    assert len(plain.encode_query("the cats").indices) == 2


def test_encoders_are_shared_per_settings() -> None:
    assert keyword_encoder(KeywordSettings()) is keyword_encoder(KeywordSettings.from_dict({}))
    assert keyword_encoder(KeywordSettings()) is not keyword_encoder(KeywordSettings(b=0.5))


def test_stemming_highlights_other_forms_of_the_query_word() -> None:
    assert highlighted("cat", "Cats chase a cat; the catalogue lists cats.") == ["Cats", "cat", "cats"]
    assert highlighted("cat", "Cats chase a cat.", KeywordSettings(stemming=False)) == ["cat"]


def test_stopwords_are_never_highlighted() -> None:
    content = "The tide is the rise of the sea, and it is high twice a day."

    assert highlighted("the tide of the sea", content) == ["tide", "sea"]
    assert highlighted("the and of it is", content) == []


def test_spans_point_at_the_words_in_order_with_their_case_kept() -> None:
    content = "Order SKU-4471X today: the SKU-4471X ships in 2 days (sku_4471x is its code)."
    spans = keyword_encoder(KeywordSettings()).highlights("sku 4471x", content)

    assert spans == sorted(spans)
    assert [content[start:end] for start, end in spans] == ["SKU", "4471X", "SKU", "4471X", "sku", "4471x"]


def test_non_ascii_words_are_found_where_they_are() -> None:
    content = "Die Katzen schlafen. Café naïve — Москва, кошки! 日本語"

    assert highlighted("café", content, KeywordSettings(language="german")) == ["Café"]
    assert highlighted("КОШКИ москва", content, KeywordSettings(language="russian")) == ["Москва", "кошки"]
    assert highlighted("katze", content, KeywordSettings(language="german")) == ["Katzen"]
    assert highlighted("日本語", content) == ["日本語"]


def test_offsets_hold_where_a_letter_lowercases_into_two() -> None:
    # "İ" lowercases to "i" and a combining dot: offsets in the lowercased text would drift by one.
    content = "İstanbul ferries — Ferry times, FERRIES at dawn"

    assert highlighted("ferry", content) == ["ferries", "Ferry", "FERRIES"]


def test_numbers_in_a_query_find_numbers_in_the_text_and_nothing_else() -> None:
    content = "Release 42 shipped in 2019; 4200 downloads and 42nd place, not release 7."

    assert highlighted("release 42", content) == ["Release", "42", "release"]
    assert highlighted("2019 downloads", content) == ["2019", "downloads"]


def test_words_with_combining_marks_are_highlighted_whole() -> None:
    content = "हिन्दी भाषा और बांग्ला"

    assert highlighted("भाषा", content, KeywordSettings(language="nepali")) == ["भाषा"]
    assert highlighted("हिन्दी", content, KeywordSettings(language="nepali")) == ["हिन्दी"]


def test_highlighting_a_long_chunk_takes_well_under_a_millisecond() -> None:
    encoder = keyword_encoder(KeywordSettings())
    # About 200 MiniLM tokens: the default chunk.
    content = corpus()[0][1][:1000]
    query = "how does the moon pull the sea"
    encoder.highlights(query, content)

    started = time.perf_counter()
    for _ in range(100):
        encoder.highlights(query, content)
    assert (time.perf_counter() - started) / 100 < 0.001


def test_a_word_is_found_where_it_starts_never_inside_another() -> None:
    encoder = keyword_encoder(KeywordSettings())
    content = "Recycled cycles, bicycle-cycle; cyclic_cycle 42cycle cycle42 x42 (42) CYCLE"
    query = "cycle 42"
    _, as_written, lowered = encoder._candidates(query)
    text = content.replace("_", " ")

    # The lowercased text's pattern finds the very words the case-blind one with `\b` finds.
    assert [m.span() for m in lowered.finditer(text.lower())] == [m.span() for m in as_written.finditer(text)]
    assert highlighted(query, content) == ["cycles", "cycle", "cycle", "42", "CYCLE"]
    # Other scripts' digits are never BM25's ASCII ones.
    assert highlighted("release 42", "release ４２, ٤٢ and 42") == ["release", "42"]
