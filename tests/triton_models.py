"""Fixture models for the real Triton server: a tiny ONNX model obeying the graph contract, and a Python stand-in."""

from __future__ import annotations

from pathlib import Path

# --- a small real model obeying the graph contract (docs/architecture.md), built with onnx.helper ---------

TINY_CLASSES = ("astronaut", "cat", "coffee", "rocket")


def tiny_onnx(path: Path, size: int = 64, patch: int = 8):
    """Write a small ONNX model (uint8 NHWC RGB in -> fg_map (N, gh, gw), logits (N, C)) with its bundle.

    Pixels are normalized in the graph; per-patch colour statistics go through a fixed 1x1 "head" and a
    sigmoid, so the map (and its boxes) really depends on the picture. Returns the BundleMeta it carries.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from tedloc_edge.bundle import METADATA_KEY, BundleMeta, Preprocess

    grid = size // patch
    meta = BundleMeta(
        class_names=TINY_CLASSES, input_size=(size, size), patch_grid=(grid, grid),
        preprocess=Preprocess(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)), threshold=0.3,
        backbone="tiny-onnx-helper", anchor_source="fixed", run_id="triton-test",
    )
    rng = np.random.default_rng(0)
    consts = {
        "k255": np.array(255.0, np.float32),
        "mean": np.array(meta.preprocess.mean, np.float32).reshape(1, 1, 1, 3),
        "std": np.array(meta.preprocess.std, np.float32).reshape(1, 1, 1, 3),
        "head_w": np.array([1.5, -2.0, 1.0], np.float32).reshape(1, 3, 1, 1),
        "head_b": np.array([0.2], np.float32),
        "cls_w": rng.normal(size=(6, len(TINY_CLASSES))).astype(np.float32),
        "map_shape": np.array([0, grid, grid], np.int64),
        "axes_hw": np.array([2, 3], np.int64),
    }
    nodes = [
        helper.make_node("Cast", ["images"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["xf", "k255"], ["x01"]),
        helper.make_node("Sub", ["x01", "mean"], ["xc"]),
        helper.make_node("Div", ["xc", "std"], ["xn"]),
        helper.make_node("Transpose", ["xn"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("AveragePool", ["nchw"], ["pooled"], kernel_shape=[patch, patch], strides=[patch, patch]),
        helper.make_node("Conv", ["pooled", "head_w", "head_b"], ["score"]),
        helper.make_node("Sigmoid", ["score"], ["prob"]),
        helper.make_node("Reshape", ["prob", "map_shape"], ["fg_map"]),
        helper.make_node("ReduceMean", ["nchw", "axes_hw"], ["gmean"], keepdims=0),
        helper.make_node("ReduceMax", ["pooled", "axes_hw"], ["gmax"], keepdims=0),
        helper.make_node("Concat", ["gmean", "gmax"], ["feat"], axis=1),
        helper.make_node("MatMul", ["feat", "cls_w"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_tedloc",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", size, size, 3])],
        [helper.make_tensor_value_info("fg_map", TensorProto.FLOAT, ["N", grid, grid]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", len(TINY_CLASSES)])],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.helper.set_model_props(model, {METADATA_KEY: meta.to_json()})
    onnx.checker.check_model(model)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return meta


# --- a Python-backend stand-in for tedloc_model (this server has no onnxruntime backend) ------------------

STANDIN_MODEL_PY = '''"""Test stand-in for Triton's onnxruntime backend: runs model.onnx as-is with ONNX Runtime."""
import json, os
import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        # like the onnxruntime backend: the dynamic batcher's requests run as one batch
        arrays = [pb_utils.get_input_tensor_by_name(r, "images").as_numpy() for r in requests]
        fg_map, logits = self.session.run(["fg_map", "logits"], {"images": np.concatenate(arrays)})
        out, start = [], 0
        for a in arrays:
            end = start + len(a)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("fg_map", np.ascontiguousarray(fg_map[start:end])),
                                                   pb_utils.Tensor("logits", np.ascontiguousarray(logits[start:end]))]))
            start = end
        return out
'''


def python_standin(model_folder: Path) -> None:
    """Serve an exported ``tedloc_model`` folder (config and model.onnx unchanged but for the two lines
    naming the backend and the device) through the Python backend."""
    config = model_folder / "config.pbtxt"
    text = config.read_text(encoding="utf-8")
    assert 'platform: "onnxruntime_onnx"' in text, "the stand-in replaces the onnxruntime backend only"
    text = text.replace('platform: "onnxruntime_onnx"', 'backend: "python"').replace("KIND_GPU", "KIND_CPU").replace("KIND_AUTO", "KIND_CPU")
    config.write_text(text, encoding="utf-8")
    (model_folder / "1" / "model.py").write_text(STANDIN_MODEL_PY, encoding="utf-8")
