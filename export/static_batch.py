"""A dynamic-batch ONNX -> the same graph at one fixed batch size.

ONNX Runtime captures a CUDA graph only when every node runs on the CUDA EP with fixed shapes. With a
dynamic batch, the batch entry of Shape -> Gather -> Concat -> Reshape chains is computed at run time and
ORT places that shape arithmetic on the CPU, so the session cannot be captured. Fixing the batch in the
graph's I/O lets ONNX shape inference know every dim, and `fold_shape_arithmetic` then turns those chains
into constants. The weights, Q/DQ nodes and fp16 casts are untouched, so this works on the fp32, fp16 and
int8 exports alike and changes no value: `tedloc-edge export --static-batch N` checks that on a seeded batch.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx

from tedloc_edge.bundle import BundleMeta
from tedloc_edge.contract import INPUT_NAME, OUTPUT_NAMES, GraphContract
from tedloc_edge.errors import UserError
from tedloc_edge.export.graph_utils import remove_dead_nodes
from tedloc_edge.export.onnx_export import add_to_extra
from tedloc_edge.export.shape_fold import fold_shape_arithmetic
from tedloc_edge.export.verify import Tolerance, compare_tensors, run_outputs, runtime_runner

logger = logging.getLogger(__name__)

# Q/DQ pairs on weights are what TensorRT builds int8 layers from; folding one would turn a weight to float.
KEEP_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
MAX_STATIC_BATCH = 4096
# Relative to an output's range (verify.compare_tensors' atol): with fixed shapes ORT may pick kernels that sum
# in another order, and in fp16 / int8 one rounding step more or less is then possible.
SAME_TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "int8": 5e-2}


def check_static_batch(batch: int) -> int:
    if not 1 <= int(batch) <= MAX_STATIC_BATCH:
        raise UserError(f"--static-batch {batch} must be between 1 and {MAX_STATIC_BATCH}; it is the batch every call will run")
    return int(batch)


def static_batch_of(model: onnx.ModelProto) -> int | None:
    """The fixed batch of the model's first input, or None when the batch is dynamic."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return dims[0].dim_value if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None


def make_static_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """A copy of `model` whose inputs and outputs have batch `batch` and whose shape arithmetic is folded."""
    batch = check_static_batch(batch)
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    graph = fixed.graph
    initializers = {t.name for t in graph.initializer}
    for info in list(graph.input) + list(graph.output):
        if info.name in initializers:
            continue
        dims = info.type.tensor_type.shape.dim
        if not dims:
            raise UserError(f"graph tensor '{info.name}' has no shape; this is not a tedloc-edge export (re-export the run)")
        if dims[0].HasField("dim_value") and dims[0].dim_value not in (0, batch):
            raise UserError(f"the model already has a fixed batch of {dims[0].dim_value}; export the run again for batch {batch}")
        dims[0].Clear()
        dims[0].dim_value = batch
    del graph.value_info[:]  # inferred with a symbolic batch: stale now
    folded = 0
    for _ in range(8):  # a folded Reshape target can make the next chain's shapes known
        step = fold_shape_arithmetic(fixed, keep_ops=KEEP_OPS)
        remove_dead_nodes(graph)
        folded += step
        if not step:
            break
    fixed = onnx.shape_inference.infer_shapes(fixed, strict_mode=True)
    add_to_extra(fixed, static_batch=batch)  # a reader of the bundle need not inspect the graph
    onnx.checker.check_model(fixed)
    logger.info("static batch %d: %d shape nodes folded, %d nodes left", batch, folded, len(fixed.graph.node))
    return fixed


def compare_with_dynamic(dynamic: str | Path, static: str | Path, batch: int, meta: BundleMeta) -> dict[str, float]:
    """Max abs difference per output between the two models' runners (ONNX Runtime CPU) on one seeded uint8
    batch. The rewrite changes no value, so anything beyond float reassociation is a bug; raises UserError then."""
    images = np.random.default_rng(0).integers(0, 256, GraphContract.of(meta).shape(INPUT_NAME, batch), dtype=np.uint8)
    with runtime_runner(dynamic, "onnxruntime", batch) as a, runtime_runner(static, "onnxruntime", batch) as b:
        ref, got = run_outputs(a, images, batch), run_outputs(b, images, batch)
    same = Tolerance(atol=SAME_TOLERANCE.get(meta.precision, SAME_TOLERANCE["fp32"]), rtol=0.0, min_box_iou=1.0, max_top1_disagree=0.0)
    diffs = [compare_tensors(ref[name], got[name], name, same) for name in OUTPUT_NAMES]
    for d in diffs:
        if not d.within:
            raise UserError(f"{static}: the static-batch graph differs from {dynamic} on '{d.name}' (max abs {d.max_abs:.3g}); "
                            "please report this model")
    return {d.name: d.max_abs for d in diffs}
