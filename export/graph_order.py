"""Restore ONNX's topological node order after a rewrite that appends nodes (fp16's Cast insertion)."""

from __future__ import annotations

from collections import deque

import onnx


def _available_names(graph: onnx.GraphProto) -> set[str]:
    names = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    names |= {t.name for t in graph.sparse_initializer}
    names.add("")  # an omitted optional input
    return names


def topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder `graph.node` in place so every node comes after the producers of its inputs (stable: ties
    keep their original order). Inputs of subgraphs are not followed; this project's graphs have none."""
    nodes = list(graph.node)
    producer = {out: idx for idx, node in enumerate(nodes) for out in node.output}
    known = _available_names(graph)
    waiting: dict[int, int] = {}
    consumers: dict[int, list[int]] = {idx: [] for idx in range(len(nodes))}
    for idx, node in enumerate(nodes):
        deps = {producer[t] for t in node.input if t not in known and t in producer}
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
