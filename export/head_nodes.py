"""Find the model's head in an ONNX graph: the nodes that must stay float32 in fp16 and int8 exports.

The head is everything after the backbone's last shared tensor: the patch classifier, the sigmoid that
makes ``fg_map``, the map-weighted pooling and the anchor product that make ``logits`` (or the CAM
classifier). INT8 score collapse and fp16 saturation of the anchor product are the failures edge
toolkits report most, and the head is a tiny share of the compute, so it stays float.

It is found by structure, not by guessing module names: the head starts after the last node that every
data path from the input to the outputs goes through (the outputs' immediate dominator); when the outputs
split after a class product (CAM: class maps -> fg_map and logits), that product joins the head. Shape arithmetic
(Shape/Size and what only they feed) is not a data path: a dynamic batch makes Reshape targets depend on
the input's shape, which would otherwise make the input itself the only dominator. The result is a list
of node names, valid for the graph it was computed on (run it again after any graph rewrite).
"""

from __future__ import annotations

import logging

import onnx

from tedloc_edge.export.graph_order import node_inputs

logger = logging.getLogger(__name__)

SHAPE_OPS = frozenset({"Shape", "Size"})
PRODUCT_OPS = frozenset({"MatMul", "Gemm", "Einsum", "Conv"})
# ops a class product may be followed by before the outputs split (bias, scaling, layout)
PASS_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Cast"})
_SOURCE = -1


def _data_producers(graph: onnx.GraphProto) -> tuple[dict[str, int], set[int]]:
    """Map tensor -> index of the data node producing it, and the set of data nodes."""
    data_tensors = {i.name for i in graph.input} - {init.name for init in graph.initializer}
    producer: dict[str, int] = {}
    data_nodes: set[int] = set()
    for idx, node in enumerate(graph.node):
        if node.op_type in SHAPE_OPS or not any(t in data_tensors for t in node_inputs(node)):
            continue
        data_nodes.add(idx)
        for out in node.output:
            data_tensors.add(out)
            producer[out] = idx
    return producer, data_nodes


def _predecessors(graph: onnx.GraphProto, producer: dict[str, int], data_nodes: set[int]) -> dict[int, list[int]]:
    inputs = {i.name for i in graph.input}
    preds: dict[int, list[int]] = {}
    for idx in sorted(data_nodes):
        names = node_inputs(graph.node[idx])
        sources = {producer[t] for t in names if t in producer}
        if any(t in inputs for t in names):
            sources.add(_SOURCE)
        preds[idx] = sorted(sources)
    return preds


def _intersect(a: int, b: int, idom: dict[int, int]) -> int:
    # node indices are a topological order (ONNX requires it), so the larger index walks up first
    while a != b:
        while a > b:
            a = idom[a]
        while b > a:
            b = idom[b]
    return a


def _immediate_dominators(preds: dict[int, list[int]]) -> dict[int, int]:
    """Immediate dominators on a DAG in topological order (Cooper, Harvey and Kennedy, one pass)."""
    idom: dict[int, int] = {_SOURCE: _SOURCE}
    for node in sorted(preds):
        parents = [p for p in preds[node] if p in idom]
        if not parents:
            continue
        dom = parents[0]
        for other in parents[1:]:
            dom = _intersect(dom, other, idom)
        idom[node] = dom
    return idom


def _ancestors(targets: list[int], preds: dict[int, list[int]]) -> set[int]:
    seen: set[int] = set()
    stack = list(targets)
    while stack:
        node = stack.pop()
        if node in seen or node == _SOURCE:
            continue
        seen.add(node)
        stack.extend(preds.get(node, []))
    return seen


def _num_classes(graph: onnx.GraphProto, logits: str) -> int:
    for out in graph.output:
        if out.name == logits:
            dims = out.type.tensor_type.shape.dim
            return int(dims[-1].dim_value) if dims else 0
    return 0


def _class_product_chain(graph: onnx.GraphProto, split: int, idom: dict[int, int], num_classes: int) -> list[int]:
    """The CAM classifier case: the outputs split AFTER the class product (CAMs -> map and logits), so walk
    the dominator chain back through bias/layout ops to a product whose weight has a class-sized axis."""
    weights = {t.name: tuple(t.dims) for t in graph.initializer}
    chain: list[int] = []
    node = split
    while node != _SOURCE and num_classes > 0:
        op = graph.node[node]
        if op.op_type in PRODUCT_OPS:
            dims = [weights[t] for t in op.input if t in weights]
            class_sized = any(num_classes in (d[:1] if op.op_type == "Conv" else d) for d in dims)
            return chain + [node] if class_sized else []
        if op.op_type not in PASS_OPS:
            return []
        chain.append(node)
        node = idom[node]
    return []


def head_node_indices(model: onnx.ModelProto, outputs: tuple[str, ...] = ("fg_map", "logits")) -> tuple[int, list[int]]:
    """(index of the backbone's last shared node, sorted indices of the head nodes)."""
    graph = model.graph
    producer, data_nodes = _data_producers(graph)
    preds = _predecessors(graph, producer, data_nodes)
    missing = [name for name in outputs if name not in producer]
    if missing:
        raise ValueError(f"graph has no data path to output(s) {', '.join(missing)}")
    sinks = sorted({producer[name] for name in outputs})
    idom = _immediate_dominators(preds)
    split = sinks[0]
    for sink in sinks[1:]:
        split = _intersect(split, sink, idom)
    if split in sinks:  # one output is computed from the other: keep that output's producer in the head
        split = idom[split]
    chain = _class_product_chain(graph, split, idom, _num_classes(graph, outputs[-1]))
    if chain:
        split = idom[chain[-1]]
    head = sorted(n for n in _ancestors(sinks, preds) if n > split)
    if split == _SOURCE:
        logger.warning("no backbone/head split found in the graph: the whole model is treated as head (kept float)")
    return split, head


def head_node_names(model: onnx.ModelProto, outputs: tuple[str, ...] = ("fg_map", "logits")) -> list[str]:
    """Names of the head nodes (unnamed nodes get a stable name first, so the list can address them)."""
    graph = model.graph
    for idx, node in enumerate(graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{idx}"
    split, head = head_node_indices(model, outputs)
    names = [graph.node[i].name for i in head]
    split_name = graph.node[split].name if split != _SOURCE else "<input>"
    ops = sorted({graph.node[i].op_type for i in head})
    logger.debug("head after %s: %d nodes (%s)", split_name, len(names), ", ".join(ops))
    return names
