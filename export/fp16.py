"""fp32 ONNX -> fp16 ONNX with float32 I/O and a float32 head.

ONNX Runtime's transformers converter (`onnxruntime.transformers.float16`) handles ViT graphs (LayerNorm,
Gelu, attention) where onnxconverter-common breaks them. `keep_io_types` keeps the graph's ``fg_map`` and
``logits`` float32 (``images`` is uint8 anyway); the head (patch classifier, sigmoid, pooling, anchor
product: `head_nodes.head_node_names`) goes in the node block list, so the class scores, whose anchor
product divided by a temperature is where fp16 loses most, stay float32.
"""

from __future__ import annotations

import logging

import onnx

from tedloc_edge.bundle import BundleMeta
from tedloc_edge.export.graph_order import topological_sort
from tedloc_edge.export.head_nodes import head_node_names
from tedloc_edge.export.onnx_export import set_metadata

logger = logging.getLogger(__name__)


def convert_fp16(fp32: onnx.ModelProto, meta: BundleMeta) -> onnx.ModelProto:
    """An fp16 copy of `fp32` (the input proto is not modified); metadata says precision fp16."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.ModelProto()
    model.CopyFrom(fp32)
    head = head_node_names(model)
    fp16 = convert_float_to_float16(model, keep_io_types=True, node_block_list=head)
    drop_repeated_nodes(fp16.graph)
    topological_sort(fp16.graph)  # the converter appends its Cast nodes at the end
    logger.info("fp16: %d nodes, %d head nodes kept float32", len(fp16.graph.node), len(head))
    extra = dict(meta.extra, fp16_float32_nodes=len(head))
    return set_metadata(fp16, meta.replace(precision="fp16", extra=extra))


def drop_repeated_nodes(graph: onnx.GraphProto) -> int:
    """Remove exact repeats of a node (same op, inputs, outputs and attributes). ONNX Runtime 1.31's
    converter inserts one identical Cast per float32 consumer of an fp16 tensor, all writing the same name,
    which breaks the graph's single assignment; 1.32 inserts one. Keeping the first copy is exact."""
    seen: set[bytes] = set()
    keep = []
    for node in graph.node:
        key = node.SerializeToString(deterministic=True)
        if key not in seen:
            seen.add(key)
            keep.append(node)
    dropped = len(graph.node) - len(keep)
    if dropped:
        del graph.node[:]
        graph.node.extend(keep)
        logger.debug("fp16: %d repeated nodes dropped", dropped)
    return dropped
