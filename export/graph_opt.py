"""Exact rewrites of the exported fp32 graph, before fp16 / int8 conversion.

1. **onnxsim** (the library, measured against onnxslim and the hand-written folding it replaced:
   `benchmarks/bench_graph.py`, docs/performance.md). The input size is fixed by the graph contract (only the
   batch is dynamic), so it folds timm's dynamic "same" padding (Shape -> Gather -> Div -> Ceil ... -> Pad)
   into constants, zero Pads into the Conv's own ``pads``, and Constant nodes into initializers, keeping the
   batch dynamic. Without these, ONNX Runtime's INT8 graph keeps 54 DequantizeLinear instead of 6. Its
   batched MatMul + Add -> Reshape/Gemm/Reshape fusion is skipped (`SKIPPED`): it adds shape-dependent Reshapes
   to every 3-D Linear (ViT blocks, the patch head) for no gain on a CPU. onnxslim 0.1.98 folds timm's
   padding wrongly at odd feature sizes (a 5x5 stride-2 "same" Conv on 15 px got pads 1 instead of 2, so
   the map came out 7x7 instead of 8x8, on the 30 px graph of tests/test_graph_opt.py), so it is not used.
2. **Input normalization -> first Conv**, project-specific (neither library folds an affine op that sits
   BEFORE a Conv; both fold the ones after it). The graph starts uint8 NHWC -> Transpose -> Cast -> x/255 ->
   (x - m) / s -> Conv. The affine chain a*x + b (per channel) feeding one Conv is rewritten as
   conv(W * a, pad0(x + b/a)): zero padding in normalized space is zero padding of x + b/a, so this holds
   for any padding. What remains is one Sub (x - 255 m); when the Conv pads nothing, that Sub goes into
   its bias too.

The normalization fold applies only where its pattern is found unambiguously; otherwise the graph is left
as it is. Without onnxsim installed (the ``export`` extra has it) the graph is exported unsimplified, with a
warning (timm's padding arithmetic then also hides the normalization from its fold).
`optimize_graph` returns a new proto and never modifies its argument.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from tedloc_edge.export.graph_utils import attr, constants, consumer_map, remove_dead_nodes, unique_name

logger = logging.getLogger(__name__)

_AFFINE_OPS = frozenset({"Add", "Sub", "Mul", "Div"})


@dataclass
class GraphOptReport:
    nodes_before: int = 0
    nodes_after: int = 0
    simplifier: str = ""  # "onnxsim <version>", or "" when it did not run
    normalization_folded: str = ""  # "", "sub" (one Sub left) or "bias" (into the Conv bias)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        norm = {"": "not folded", "sub": "folded (one Sub left)", "bias": "folded into the first Conv"}[self.normalization_folded]
        by = self.simplifier or "no simplifier"
        return f"{self.nodes_before} -> {self.nodes_after} nodes ({by}), input normalization {norm}"


def optimize_graph(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, GraphOptReport]:
    """A rewritten copy of `proto` (see the module docstring) and what was done."""
    report = GraphOptReport(nodes_before=len(proto.graph.node))
    model = simplify(proto, report)
    try:
        report.normalization_folded = fold_input_normalization(model.graph)
        remove_dead_nodes(model.graph)
    except Exception as exc:  # noqa: BLE001 - an optimization: an unforeseen graph is exported as it is
        logger.warning("input normalization not folded (%s: %s)", type(exc).__name__, exc)
        report.notes.append(f"normalization skipped: {exc}")
        model = simplify(proto, GraphOptReport())
    report.nodes_after = len(model.graph.node)
    logger.info("graph optimization: %s", report.summary())
    return model, report


SKIPPED = ["fuse_matmul_add_bias_into_gemm_batched"]  # onnxsim passes not run (module docstring)


def simplify(proto: onnx.ModelProto, report: GraphOptReport) -> onnx.ModelProto:
    """onnxsim's copy of `proto` (a plain copy when onnxsim is missing or fails), with `proto`'s IR version."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    try:
        import onnxsim
    except ImportError:
        report.notes.append("onnxsim is not installed")
        logger.warning("onnxsim is not installed (pip install 'tedloc-edge[export]'): the graph is exported unsimplified")
        return model
    try:
        simplified, ok = onnxsim.simplify(model, skipped_optimizers=SKIPPED)
    except Exception as exc:  # noqa: BLE001 - the library's own errors are many; the graph is exported as it is
        simplified, ok = None, False
        report.notes.append(f"onnxsim failed: {exc}")
    if not ok or not isinstance(simplified, onnx.ModelProto):
        logger.warning("onnxsim could not simplify the graph (%s); it is exported unsimplified", "; ".join(report.notes) or "check failed")
        return model
    simplified.ir_version = min(simplified.ir_version, proto.ir_version) or simplified.ir_version
    report.simplifier = f"onnxsim {str(getattr(onnxsim, '__version__', '')).lstrip('v')}".strip()
    return simplified


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
    known = constants(graph)
    consumers = consumer_map(graph)
    outputs = {o.name for o in graph.output}
    # uint8 input -> (Transpose | Cast)* -> the first float tensor
    tensor, node = data_inputs[0], _single_consumer(data_inputs[0], consumers, outputs)
    while node is not None and node.op_type in ("Transpose", "Cast", "Identity"):
        tensor = node.output[0]
        if node.op_type == "Cast" and attr(node, "to") == onnx.TensorProto.FLOAT:
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
        if attr(node, "mode", b"constant") not in (b"constant", "constant") or not zero or extra[3]:
            return ""
        pad, node = node, _single_consumer(node.output[0], consumers, outputs)
    conv = node
    if conv is None or conv.op_type != "Conv" or conv.input[0] != (pad.output[0] if pad else tensor) or attr(conv, "group", 1) != 1:
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
    unpadded = attr(conv, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET", b"VALID", "VALID") and not any(attr(conv, "pads", [0] * (2 * spatial)))
    no_padding = pad is None and unpadded
    bias_name = conv.input[2] if len(conv.input) > 2 else ""
    if bias_name and bias_name not in inits:
        no_padding = False  # a computed bias: keep the Sub
    new_weight = (weight.astype(np.float64) * scale.reshape(1, channels, 1, 1)).astype(weight.dtype)
    weight_name = unique_name(graph, f"{conv.input[1]}_normalized")
    graph.initializer.append(numpy_helper.from_array(new_weight, weight_name))
    conv.input[1] = weight_name
    first = chain[0][0]
    if not offset.any():
        feed, kind = start, "bias"
    elif no_padding:
        # conv(W', x + d) = conv(W', x) + sum over (c, kh, kw) of W'[o, c] * d[c]
        bias = numpy_helper.to_array(inits[bias_name]).astype(np.float64) if bias_name else np.zeros(weight.shape[0])
        bias = bias + new_weight.astype(np.float64).sum(axis=(2, 3)) @ offset
        new_bias = unique_name(graph, f"{bias_name or conv.input[1]}_normalized_bias")
        graph.initializer.append(numpy_helper.from_array(bias.astype(weight.dtype), new_bias))
        while len(conv.input) < 3:
            conv.input.append("")
        conv.input[2] = new_bias
        feed, kind = start, "bias"
    else:
        base = first.name or "input"
        const_name = unique_name(graph, f"{base}_offset")
        uniform = bool(np.all(offset == offset[0]))
        value = np.array(-offset[0], dtype=np.float32) if uniform else (-offset).astype(np.float32).reshape(1, channels, 1, 1)
        graph.initializer.append(numpy_helper.from_array(value, const_name))
        feed = unique_name(graph, f"{base}_shifted")
        sub = onnx.helper.make_node("Sub", [start, const_name], [feed], name=unique_name(graph, f"{base}_shift"))
        graph.node.insert(list(graph.node).index(first), sub)
        kind = "sub"
    if pad is not None:
        pad.input[0] = feed
    else:
        conv.input[0] = feed
    logger.debug("input normalization folded into %s (scale %s, offset %s)", conv.name, scale, offset)
    return kind


