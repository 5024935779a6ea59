"""Fixture ONNX models for the runtime tests, built with `onnx.helper` (no torch), obeying the graph contract:
input ``images`` uint8 (N, H, W, 3) RGB; outputs ``fg_map`` (N, gh, gw) and ``logits`` (N, C); the bundle
in metadata_props["tedloc"].

`tiny`: fg_map = sigmoid of each patch's brightness (a bright object on a dark ground gets its box),
logits = mean colour times a fixed matrix (a red picture scores "red"). `vit_cost`: the same outputs after a
ViT-S-sized stack of MLP blocks on 16x16 patch tokens (about 3.5 GFLOPs), for timing the runtime against a
model that costs what a deployed one does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tedloc_edge.bundle import BundleMeta

CLASSES = ("red", "green", "blue")
OPSET = 17


def fixture_meta(size: int = 64, grid: int = 8, **changes: Any) -> BundleMeta:
    meta = BundleMeta(class_names=CLASSES, input_size=(size, size), patch_grid=(grid, grid), threshold=0.5, backbone="fixture")
    return meta.replace(**changes) if changes else meta


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(array), name)


def _vit_cost_nodes(depth: int, dim: int, rng: np.random.Generator) -> tuple[list, list]:
    """Patch-embedding conv + `depth` MLP blocks on the tokens, reduced to a ~0 bias 'tok_bias' (N, 1, 1, 1)
    that the map adds, so the runtime cannot prune the cost away."""
    nodes, inits = [], []
    inits.append(_init("pe_w", (rng.standard_normal((dim, 3, 16, 16)) * 0.01).astype(np.float32)))
    nodes.append(helper.make_node("Conv", ["x_nchw", "pe_w"], ["pe"], kernel_shape=[16, 16], strides=[16, 16]))
    inits.append(_init("tok_shape", np.array([0, dim, -1], dtype=np.int64)))
    nodes.append(helper.make_node("Reshape", ["pe", "tok_shape"], ["tok_cf"]))
    nodes.append(helper.make_node("Transpose", ["tok_cf"], ["t0"], perm=[0, 2, 1]))  # (N, P, dim)
    for b in range(depth):
        w1 = (rng.standard_normal((dim, 4 * dim)) * 0.02).astype(np.float32)
        w2 = (rng.standard_normal((4 * dim, dim)) * 0.02).astype(np.float32)
        inits += [_init(f"w1_{b}", w1), _init(f"w2_{b}", w2)]
        nodes += [
            helper.make_node("MatMul", [f"t{b}", f"w1_{b}"], [f"h{b}"]),
            helper.make_node("Relu", [f"h{b}"], [f"r{b}"]),
            helper.make_node("MatMul", [f"r{b}", f"w2_{b}"], [f"m{b}"]),
            helper.make_node("Add", [f"t{b}", f"m{b}"], [f"t{b + 1}"]),
        ]
    nodes.append(helper.make_node("ReduceMean", [f"t{depth}"], ["tok_mean"], axes=[1, 2], keepdims=1))
    inits.append(_init("tiny_scale", np.array(1e-6, dtype=np.float32)))
    nodes.append(helper.make_node("Mul", ["tok_mean", "tiny_scale"], ["tok_bias3"]))  # (N,1,1), ~0
    inits.append(_init("bias_shape", np.array([-1, 1, 1, 1], dtype=np.int64)))
    nodes.append(helper.make_node("Reshape", ["tok_bias3", "bias_shape"], ["tok_bias"]))
    return nodes, inits


def make_model(
    size: int = 64,
    grid: int = 8,
    meta: BundleMeta | None = None,
    static_batch: int | None = None,
    metadata: str | None | bool = True,
    vit_depth: int = 0,
    vit_dim: int = 384,
) -> onnx.ModelProto:
    """The fixture model. metadata=True writes `meta`'s JSON; a str writes that text; False/None writes none."""
    meta = meta or fixture_meta(size, grid)
    rng = np.random.default_rng(0)
    pool = size // grid
    nodes = [
        helper.make_node("Cast", ["images"], ["x_f"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["x_f"], ["x_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("ReduceMean", ["x_nchw"], ["gray"], axes=[1], keepdims=1),
    ]
    inits = [
        _init("scale", np.array(8.0 / 255.0, dtype=np.float32)),
        _init("shift", np.array(-4.0, dtype=np.float32)),
        _init("sq_axes", np.array([1], dtype=np.int64)),
        _init("cls_w", np.eye(3, len(meta.class_names), dtype=np.float32) * 0.05),
    ]
    gray = "gray"
    if vit_depth:
        more_nodes, more_inits = _vit_cost_nodes(vit_depth, vit_dim, rng)
        nodes += more_nodes
        inits += more_inits
        nodes.append(helper.make_node("Add", ["gray", "tok_bias"], ["gray_dep"]))
        gray = "gray_dep"
    nodes += [
        helper.make_node("AveragePool", [gray], ["pooled"], kernel_shape=[pool, pool], strides=[pool, pool]),
        helper.make_node("Mul", ["pooled", "scale"], ["z0"]),
        helper.make_node("Add", ["z0", "shift"], ["z1"]),
        helper.make_node("Sigmoid", ["z1"], ["fg4"]),
        helper.make_node("Squeeze", ["fg4", "sq_axes"], ["fg_map"]),
        helper.make_node("GlobalAveragePool", ["x_nchw"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["rgb_mean"], axis=1),
        helper.make_node("MatMul", ["rgb_mean", "cls_w"], ["logits"]),
    ]
    batch: int | str = static_batch if static_batch else "N"
    gh, gw = meta.patch_grid
    graph = helper.make_graph(
        nodes,
        "tedloc_fixture",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, [batch, size, size, 3])],
        [
            helper.make_tensor_value_info("fg_map", TensorProto.FLOAT, [batch, gh, gw]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, len(meta.class_names)]),
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tedloc-tests")
    model.ir_version = 8
    if metadata is True:
        helper.set_model_props(model, {"tedloc": meta.to_json()})
    elif isinstance(metadata, str):
        helper.set_model_props(model, {"tedloc": metadata})
    onnx.checker.check_model(model)
    return model


def write_model(path: str | Path, **kwargs: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(make_model(**kwargs), str(path))
    return path


def newer_format_metadata(meta: BundleMeta | None = None) -> str:
    doc = json.loads((meta or fixture_meta()).to_json())
    doc["format_version"] = doc["format_version"] + 1
    return json.dumps(doc)
