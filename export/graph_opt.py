"""Exact rewrites of the exported fp32 graph, before fp16 / int8 conversion (what ONNX Runtime cannot do itself).

1. **Static shape arithmetic.** The input size is fixed by the graph contract (only the batch is dynamic),
   so timm's dynamic "same" padding (Shape -> Gather -> Div -> Ceil ... -> Pad) computes constants. The
   shape subgraphs are evaluated with the static dims from ONNX shape inference; a Shape's batch entry is
   never folded, so the batch axis stays dynamic (Reshape/Resize targets that use it stay computed).
2. **Zero Pad -> Conv pads.** A constant-mode Pad with constant pads and value 0 that only feeds a Conv
   becomes the Conv's own (possibly asymmetric) ``pads``: with Q/DQ around a Pad nothing fuses in int8.
3. **Input normalization -> first Conv.** The graph starts uint8 NHWC -> Transpose -> Cast -> x/255 ->
   (x - m) / s -> Conv. The affine chain a*x + b (per channel) feeding one Conv is rewritten as
   conv(W * a, pad0(x + b/a)): zero padding in normalized space is zero padding of x + b/a, so this holds
   for any padding. What remains is one Sub (x - 255 m); when the Conv pads nothing, that Sub goes into
   its bias too.

Each rewrite applies only where its pattern is found unambiguously; otherwise the graph is left as it is.
`optimize_graph` returns a new proto and never modifies its argument.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

logger = logging.getLogger(__name__)

MAX_FOLD_ELEMENTS = 4096  # shape arithmetic is tiny; never materialize a data-sized constant
_NON_DETERMINISTIC = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"})
_AFFINE_OPS = frozenset({"Add", "Sub", "Mul", "Div"})


@dataclass
class GraphOptReport:
    folded_nodes: int = 0
    pads_folded: int = 0
    normalization_folded: str = ""  # "", "sub" (one Sub left) or "bias" (into the Conv bias)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        norm = {"": "not folded", "sub": "folded (one Sub left)", "bias": "folded into the first Conv"}[self.normalization_folded]
        return f"{self.folded_nodes} shape nodes folded, {self.pads_folded} Pads into Conv pads, input normalization {norm}"


def optimize_graph(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, GraphOptReport]:
    """A rewritten copy of `proto` (see the module docstring) and what was done."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    try:
        report = _optimize(model)
    except Exception as exc:  # noqa: BLE001 - the rewrites are an optimization: an unforeseen graph is exported as it is
        logger.warning("graph optimization skipped (%s: %s); the model is exported unoptimized", type(exc).__name__, exc)
        model = onnx.ModelProto()
        model.CopyFrom(proto)
        report = GraphOptReport(notes=[f"skipped: {exc}"])
    return model, report


def _optimize(model: onnx.ModelProto) -> GraphOptReport:
    report = GraphOptReport()
    for _ in range(32):  # each round lets shape inference see through the Pads folded in the previous one
        folded = fold_shape_arithmetic(model)
        padded = fold_pads_into_convs(model.graph)
        remove_dead_nodes(model.graph)
        report.folded_nodes += folded
        report.pads_folded += padded
        if not folded and not padded:
            break
    report.normalization_folded = fold_input_normalization(model.graph)
    remove_dead_nodes(model.graph)
    logger.info("graph optimization: %s", report.summary())
    return report


# --- helpers -----------------------------------------------------------------------------------------


def _attr(node: onnx.NodeProto, name: str, default=None):  # noqa: ANN001, ANN202
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _set_ints(node: onnx.NodeProto, name: str, values: list[int]) -> None:
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(onnx.helper.make_attribute(name, [int(v) for v in values]))


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            if name:
                out.setdefault(name, []).append(node)
        for attr in node.attribute:  # tensors captured by If/Loop bodies count as uses
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                for inner in sub.node:
                    for name in inner.input:
                        out.setdefault(name, []).append(node)
    return out


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    known = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.output) == 1:
            value = _attr(node, "value")
            if isinstance(value, onnx.TensorProto):
                known[node.output[0]] = numpy_helper.to_array(value)
            for name, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64), ("value_ints", np.int64)):
                if value is None and _attr(node, name) is not None:
                    known[node.output[0]] = np.array(_attr(node, name), dtype=dtype)
    return known


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """tensor -> dims (None where symbolic), from ONNX shape inference on a copy."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # noqa: BLE001 - inference is best effort: without it nothing is folded
        logger.debug("shape inference failed (%s): no shape folding", exc)
        return {}
    shapes: dict[str, list[int | None]] = {}
    graph = inferred.graph
    for info in list(graph.input) + list(graph.value_info) + list(graph.output):
        tensor = info.type.tensor_type
        if tensor.HasField("shape"):
            shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    return shapes


def _evaluate(node: onnx.NodeProto, inputs: list[np.ndarray | None], opsets) -> list[np.ndarray]:  # noqa: ANN001
    from onnx.reference import ReferenceEvaluator

    names = [f"in{i}" if name else "" for i, name in enumerate(node.input)]
    feeds = {n: v for n, v in zip(names, inputs) if n}
    single = onnx.NodeProto()
    single.CopyFrom(node)
    del single.input[:]
    single.input.extend(names)
    del single.output[:]
    single.output.extend(f"out{i}" for i in range(len(node.output)))
    graph = onnx.helper.make_graph(
        [single], "fold",
        [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for n, v in feeds.items()],
        [onnx.helper.make_empty_tensor_value_info(o) for o in single.output],
    )
    model = onnx.helper.make_model(graph, opset_imports=list(opsets))
    return [np.asarray(v) for v in ReferenceEvaluator(model).run(None, feeds)]


# --- 1. static shape arithmetic ------------------------------------------------------------------------


def _partial_value(node: onnx.NodeProto, known: dict, partial: dict, shapes: dict) -> list[int | None] | np.ndarray | None:
    """The value of an int64 shape vector with unknown entries (None) for Shape/Gather/Slice/Concat; an
    array when the value is fully known (a Gather of one static entry), None when it is not a shape value."""
    op = node.op_type
    if op == "Shape" and node.input[0] in shapes:
        dims = shapes[node.input[0]]
        start, end = _attr(node, "start", 0), _attr(node, "end", None)
        return list(dims[start:end])
    if op == "Gather" and node.input[0] in partial and node.input[1] in known and _attr(node, "axis", 0) == 0:
        vec, idx = partial[node.input[0]], known[node.input[1]]
        if idx.ndim > 1 or not np.issubdtype(idx.dtype, np.integer) or any(not -len(vec) <= i < len(vec) for i in idx.reshape(-1)):
            return None
        picked = [vec[int(i)] for i in idx.reshape(-1)]
        if idx.ndim == 0:  # a scalar: known or not tracked
            return np.array(picked[0], dtype=np.int64) if isinstance(picked[0], int) else None
        return picked
    if op == "Slice" and node.input[0] in partial and all(t in known for t in node.input[1:] if t):
        args = [known[t] if t else None for t in node.input[1:]] + [None] * 3
        starts, ends, axes, steps = args[:4]
        if len(starts) != 1 or (axes is not None and int(axes[0]) not in (0, -1)) or (steps is not None and int(steps[0]) != 1):
            return None
        return partial[node.input[0]][int(starts[0]) : int(ends[0])]
    if op == "Concat" and _attr(node, "axis", 0) in (0, -1) and any(t in partial for t in node.input):
        out: list[int | None] = []
        for t in node.input:
            if t in partial:
                out += partial[t]
            elif t in known and known[t].ndim == 1 and np.issubdtype(known[t].dtype, np.integer):
                out += [int(v) for v in known[t]]
            else:
                return None
        return out
    return None


def fold_shape_arithmetic(model: onnx.ModelProto) -> int:
    """Replace every node whose outputs are constant at the static input size by initializers; returns
    how many nodes were folded. Shape entries that are symbolic (the batch) are never folded."""
    graph = model.graph
    shapes = _static_shapes(model)
    known = _constants(graph)
    partial: dict[str, list[int | None]] = {}
    graph_outputs = {o.name for o in graph.output}
    keep: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    for node in graph.node:
        values: list[np.ndarray] | None = None
        foldable = node.domain in ("", "ai.onnx") and not _has_subgraph(node) and node.op_type not in _NON_DETERMINISTIC
        if foldable and node.op_type != "Constant":
            vec = _partial_value(node, known, partial, shapes)
            if isinstance(vec, np.ndarray):
                values = [vec]
            elif vec is not None and all(isinstance(d, int) for d in vec):
                values = [np.array(vec, dtype=np.int64)]
            elif vec is not None:
                partial[node.output[0]] = vec
            elif node.op_type != "Shape" and all(t in known for t in node.input if t) and _small(node, known):
                try:
                    values = _evaluate(node, [known[t] if t else None for t in node.input], model.opset_import)
                except Exception as exc:  # noqa: BLE001 - an op the reference evaluator lacks stays as it is
                    logger.debug("not folded: %s %s (%s)", node.op_type, node.name, exc)
        if values is None or any(v.size > MAX_FOLD_ELEMENTS for v in values) or set(node.output) & graph_outputs:
            keep.append(node)
            continue
        for name, value in zip(node.output, values):
            known[name] = value
            if name:
                new_inits.append(numpy_helper.from_array(value, name))
    folded = len(graph.node) - len(keep)
    if folded:
        del graph.node[:]
        graph.node.extend(keep)
        graph.initializer.extend(new_inits)
    return folded


def _small(node: onnx.NodeProto, known: dict) -> bool:
    """Guard against evaluating a data-sized constant (ConstantOfShape / Expand / Tile / Range of a big shape)."""
    if node.op_type == "ConstantOfShape":
        return int(np.prod(known[node.input[0]])) <= MAX_FOLD_ELEMENTS
    if node.op_type in ("Expand", "Tile", "Range", "Resize"):
        return False
    return all(known[t].size <= MAX_FOLD_ELEMENTS for t in node.input if t)


# --- 2. zero Pad -> Conv pads ---------------------------------------------------------------------------


def fold_pads_into_convs(graph: onnx.GraphProto) -> int:
    known = _constants(graph)
    consumers = _consumers(graph)
    graph_outputs = {o.name for o in graph.output}
    removed: set[int] = set()
    for idx, pad in enumerate(graph.node):
        if pad.op_type != "Pad" or pad.domain not in ("", "ai.onnx") or _attr(pad, "mode", b"constant") not in (b"constant", "constant"):
            continue
        inputs = list(pad.input) + [""] * 4
        if inputs[1] not in known or inputs[3] or (inputs[2] and (inputs[2] not in known or np.any(known[inputs[2]] != 0))):
            continue
        users = consumers.get(pad.output[0], [])
        if pad.output[0] in graph_outputs or len(users) != 1:
            continue
        conv = users[0]
        if conv.op_type != "Conv" or list(conv.input).index(pad.output[0]) != 0 or _attr(conv, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            continue
        pads = [int(v) for v in known[inputs[1]].reshape(-1)]
        rank = len(pads) // 2
        spatial = rank - 2
        kernel = _attr(conv, "kernel_shape")
        if rank < 3 or (kernel is not None and len(kernel) != spatial) or any(p < 0 for p in pads):
            continue
        if pads[0] or pads[1] or pads[rank] or pads[rank + 1]:  # batch or channel padding: not a Conv pad
            continue
        conv_pads = list(_attr(conv, "pads", [0] * (2 * spatial)))
        begin = [conv_pads[i] + pads[2 + i] for i in range(spatial)]
        end = [conv_pads[spatial + i] + pads[rank + 2 + i] for i in range(spatial)]
        _set_ints(conv, "pads", begin + end)
        conv.input[0] = pad.input[0]
        removed.add(idx)
    if removed:
        keep = [n for i, n in enumerate(graph.node) if i not in removed]
        del graph.node[:]
        graph.node.extend(keep)
    return len(removed)


# --- 3. input normalization -> first Conv -------------------------------------------------------------


def _single_consumer(name: str, consumers: dict, graph_outputs: set[str]) -> onnx.NodeProto | None:
    users = consumers.get(name, [])
    return users[0] if len(users) == 1 and name not in graph_outputs else None


def _per_channel(value: np.ndarray, channels: int) -> np.ndarray | None:
    """`value` as a (C,) float64 vector if it broadcasts against (N, C, H, W) per channel only, else None."""
    if not np.issubdtype(value.dtype, np.floating) or value.ndim > 4:
        return None
    try:
        if np.broadcast_shapes(value.shape, (1, channels, 1, 1)) != (1, channels, 1, 1):
            return None
    except ValueError:
        return None
    return np.broadcast_to(value.astype(np.float64), (1, channels, 1, 1)).reshape(channels).copy()


def fold_input_normalization(graph: onnx.GraphProto) -> str:
    """Fold the affine normalization after the uint8 -> float Cast into the Conv it feeds; returns "" (not
    found: graph untouched), "sub" or "bias"."""
    inits = {t.name: t for t in graph.initializer}
    data_inputs = [i.name for i in graph.input if i.name not in inits]
    if len(data_inputs) != 1:
        return ""
    known = _constants(graph)
    consumers = _consumers(graph)
    outputs = {o.name for o in graph.output}
    # uint8 input -> (Transpose | Cast)* -> the first float tensor
    tensor, node = data_inputs[0], _single_consumer(data_inputs[0], consumers, outputs)
    while node is not None and node.op_type in ("Transpose", "Cast", "Identity"):
        tensor = node.output[0]
        if node.op_type == "Cast" and _attr(node, "to") == onnx.TensorProto.FLOAT:
            break
        node = _single_consumer(tensor, consumers, outputs)
    if node is None or node.op_type != "Cast":
        return ""
    start = tensor
    # the affine chain: Add/Sub/Mul/Div with a constant, each the only consumer of the previous tensor
    chain: list[tuple[onnx.NodeProto, int]] = []  # (node, index of the data input)
    node = _single_consumer(tensor, consumers, outputs)
    while node is not None and node.op_type in _AFFINE_OPS and node.domain in ("", "ai.onnx") and len(node.input) == 2:
        pos = list(node.input).index(tensor)
        other = node.input[1 - pos]
        if other not in known or (node.op_type == "Div" and pos != 0):
            break
        chain.append((node, pos))
        tensor = node.output[0]
        node = _single_consumer(tensor, consumers, outputs)
    if not chain or node is None:
        return ""
    pad = None
    if node.op_type == "Pad":  # an unfolded zero Pad between the normalization and the Conv
        extra = list(node.input) + [""] * 4
        zero = not extra[2] or (extra[2] in known and not np.any(known[extra[2]]))
        if _attr(node, "mode", b"constant") not in (b"constant", "constant") or not zero or extra[3]:
            return ""
        pad, node = node, _single_consumer(node.output[0], consumers, outputs)
    conv = node
    if conv is None or conv.op_type != "Conv" or conv.input[0] != (pad.output[0] if pad else tensor) or _attr(conv, "group", 1) != 1:
        return ""
    if conv.input[1] not in inits:
        return ""
    weight = numpy_helper.to_array(inits[conv.input[1]])
    if weight.ndim != 4:
        return ""
    channels = weight.shape[1]
    scale, shift = np.ones(channels), np.zeros(channels)
    for op, pos in chain:
        c = _per_channel(known[op.input[1 - pos]], channels)
        if c is None:
            return ""
        if op.op_type == "Mul":
            scale, shift = scale * c, shift * c
        elif op.op_type == "Div":
            scale, shift = scale / c, shift / c
        elif op.op_type == "Add":
            shift = shift + c
        elif pos == 0:  # x - c
            shift = shift - c
        else:  # c - x
            scale, shift = -scale, c - shift
    if not np.all(np.isfinite(scale)) or np.any(scale == 0) or not np.all(np.isfinite(shift)):
        return ""
    offset = shift / scale  # a*x + b = a * (x + b/a)
    spatial = weight.ndim - 2
    unpadded = _attr(conv, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET", b"VALID", "VALID") and not any(_attr(conv, "pads", [0] * (2 * spatial)))
    no_padding = pad is None and unpadded
    bias_name = conv.input[2] if len(conv.input) > 2 else ""
    if bias_name and bias_name not in inits:
        no_padding = False  # a computed bias: keep the Sub
    new_weight = (weight.astype(np.float64) * scale.reshape(1, channels, 1, 1)).astype(weight.dtype)
    weight_name = _unique(graph, f"{conv.input[1]}_normalized")
    graph.initializer.append(numpy_helper.from_array(new_weight, weight_name))
    conv.input[1] = weight_name
    first = chain[0][0]
    if not offset.any():
        feed, kind = start, "bias"
    elif no_padding:
        # conv(W', x + d) = conv(W', x) + sum over (c, kh, kw) of W'[o, c] * d[c]
        bias = numpy_helper.to_array(inits[bias_name]).astype(np.float64) if bias_name else np.zeros(weight.shape[0])
        bias = bias + new_weight.astype(np.float64).sum(axis=(2, 3)) @ offset
        new_bias = _unique(graph, f"{bias_name or conv.input[1]}_normalized_bias")
        graph.initializer.append(numpy_helper.from_array(bias.astype(weight.dtype), new_bias))
        while len(conv.input) < 3:
            conv.input.append("")
        conv.input[2] = new_bias
        feed, kind = start, "bias"
    else:
        base = first.name or "input"
        const_name = _unique(graph, f"{base}_offset")
        uniform = bool(np.all(offset == offset[0]))
        value = np.array(-offset[0], dtype=np.float32) if uniform else (-offset).astype(np.float32).reshape(1, channels, 1, 1)
        graph.initializer.append(numpy_helper.from_array(value, const_name))
        feed = _unique(graph, f"{base}_shifted")
        sub = onnx.helper.make_node("Sub", [start, const_name], [feed], name=_unique(graph, f"{base}_shift"))
        graph.node.insert(list(graph.node).index(first), sub)
        kind = "sub"
    if pad is not None:
        pad.input[0] = feed
    else:
        conv.input[0] = feed
    logger.debug("input normalization folded into %s (scale %s, offset %s)", conv.name, scale, offset)
    return kind


def _unique(graph: onnx.GraphProto, base: str) -> str:
    taken = {t.name for t in graph.initializer} | {n.name for n in graph.node}
    taken |= {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    return name


# --- clean-up ------------------------------------------------------------------------------------------


def remove_dead_nodes(graph: onnx.GraphProto) -> None:
    """Drop nodes none of whose outputs is used, unused initializers and stale value_info."""
    needed = {o.name for o in graph.output}
    keep: list[onnx.NodeProto] = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output if o):
            keep.append(node)
            needed |= set(node.input)
            for attr in node.attribute:
                for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                    needed |= {t for inner in sub.node for t in inner.input}
    keep.reverse()
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)
    inits = [t for t in graph.initializer if t.name in needed]
    if len(inits) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(inits)
    produced = {o for n in graph.node for o in n.output}
    infos = [v for v in graph.value_info if v.name in produced]
    if len(infos) != len(graph.value_info):
        del graph.value_info[:]
        graph.value_info.extend(infos)
