"""Static shape arithmetic folding for a graph whose input shapes are all fixed (`static_batch`), by onnxsim.

With every input dim known, shape subgraphs (Shape -> Gather -> Concat -> Reshape, timm's "same" padding)
compute constants; onnxsim folds them (it replaced the hand-written folding this module held: measured in
`benchmarks/bench_graph.py`). Q/DQ pairs on weights are never folded by it, which `keep_ops` checks: TensorRT
builds int8 layers from them.
"""

from __future__ import annotations

import logging

import onnx

logger = logging.getLogger(__name__)


def fold_shape_arithmetic(model: onnx.ModelProto, keep_ops: frozenset[str] = frozenset()) -> int:
    """Replace, in place, every node whose outputs are constant at the graph's static input shapes by
    initializers; returns how many nodes went. If the simplifier is missing, fails, or removed a node of
    `keep_ops`, the graph is left as it was and 0 is returned."""
    from tedloc_edge.export.graph_opt import GraphOptReport, simplify

    graph = model.graph
    before = len(graph.node)
    count = lambda g: sum(1 for n in g.node if n.op_type in keep_ops)  # noqa: E731
    report = GraphOptReport()
    simplified = simplify(model, report)
    if not report.simplifier:
        return 0
    if count(simplified.graph) != count(graph):
        logger.warning("shape folding skipped: the simplifier removed %s nodes", "/".join(sorted(keep_ops)))
        return 0
    graph.CopyFrom(simplified.graph)
    return before - len(graph.node)
