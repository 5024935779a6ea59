"""Restore ONNX's topological node order after a rewrite that appends nodes (fp16's Cast insertion)."""

from __future__ import annotations

from collections import deque

import onnx


def _subgraph_uses(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from its enclosing scope (ONNX If/Loop/Scan bodies capture them implicitly)."""
    local = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        used |= set(node_inputs(node))
        local |= set(node.output)
    return used - local


def node_inputs(node: onnx.NodeProto) -> list[str]:
    """Explicit inputs plus the outer-scope tensors its subgraphs capture (e.g. the branches of an If)."""
    names = [t for t in node.input if t]
    for attr in node.attribute:
        subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for sub in subgraphs:
            names += sorted(_subgraph_uses(sub) - set(names))
    return names


def _available_names(graph: onnx.GraphProto) -> set[str]:
    names = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    names |= {t.name for t in graph.sparse_initializer}
    names.add("")  # an omitted optional input
    return names


def topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder `graph.node` in place so every node comes after the producers of its inputs (stable: ties
    keep their original order). Tensors that If/Loop bodies capture from the graph count as inputs."""
    nodes = list(graph.node)
    producer = {out: idx for idx, node in enumerate(nodes) for out in node.output}
    known = _available_names(graph)
    waiting: dict[int, int] = {}
    consumers: dict[int, list[int]] = {idx: [] for idx in range(len(nodes))}
    for idx, node in enumerate(nodes):
        deps = {producer[t] for t in node_inputs(node) if t not in known and t in producer}
        waiting[idx] = len(deps)
        for dep in deps:
            consumers[dep].append(idx)
    ready = deque(idx for idx in range(len(nodes)) if waiting[idx] == 0)
    order: list[int] = []
    while ready:
        idx = ready.popleft()
        order.append(idx)
        for nxt in sorted(consumers[idx]):
            waiting[nxt] -= 1
            if waiting[nxt] == 0:
                ready.append(nxt)
    if len(order) != len(nodes):
        raise ValueError("graph has a cycle; it cannot be ordered")
    sorted_nodes = [nodes[i] for i in order]
    del graph.node[:]
    graph.node.extend(sorted_nodes)
