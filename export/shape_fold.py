"""Static shape arithmetic folding: with the input size fixed by the graph contract (only the batch is
dynamic), timm's dynamic "same" padding (Shape -> Gather -> Div -> Ceil ... -> Pad) computes constants. The
shape subgraphs are evaluated with the static dims from ONNX shape inference; a Shape's batch entry is never
folded, so the batch axis stays dynamic."""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import numpy_helper

from tedloc_edge.export.graph_utils import attr, constants, has_subgraph

logger = logging.getLogger(__name__)

MAX_FOLD_ELEMENTS = 4096  # shape arithmetic is tiny; never materialize a data-sized constant
_NON_DETERMINISTIC = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"})


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
        start, end = attr(node, "start", 0), attr(node, "end", None)
        return list(dims[start:end])
    if op == "Gather" and node.input[0] in partial and node.input[1] in known and attr(node, "axis", 0) == 0:
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
    if op == "Concat" and attr(node, "axis", 0) in (0, -1) and any(t in partial for t in node.input):
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


def fold_shape_arithmetic(model: onnx.ModelProto, keep_ops: frozenset[str] = frozenset()) -> int:
    """Replace every node whose outputs are constant at the static input size by initializers; returns
    how many nodes were folded. Shape entries that are symbolic (the batch) are never folded, nor are
    nodes of `keep_ops` (an int8 graph's weight DequantizeLinear must stay: TensorRT builds int8 from it)."""
    graph = model.graph
    shapes = _static_shapes(model)
    known = constants(graph)
    partial: dict[str, list[int | None]] = {}
    graph_outputs = {o.name for o in graph.output}
    keep: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    for node in graph.node:
        values: list[np.ndarray] | None = None
        foldable = (node.domain in ("", "ai.onnx") and not has_subgraph(node) and node.op_type not in _NON_DETERMINISTIC
                    and node.op_type not in keep_ops)
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


