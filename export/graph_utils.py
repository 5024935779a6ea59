"""Small ONNX graph helpers of the export graph rewrites (`graph_opt`'s normalization fold, `static_batch`, `int8`)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


def attr(node: onnx.NodeProto, name: str, default=None):  # noqa: ANN001, ANN202
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def consumer_map(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
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


def constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    known = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.output) == 1:
            value = attr(node, "value")
            if isinstance(value, onnx.TensorProto):
                known[node.output[0]] = numpy_helper.to_array(value)
            for name, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64), ("value_ints", np.int64)):
                if value is None and attr(node, name) is not None:
                    known[node.output[0]] = np.array(attr(node, name), dtype=dtype)
    return known


def unique_name(graph: onnx.GraphProto, base: str) -> str:
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
