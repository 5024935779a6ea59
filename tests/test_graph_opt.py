"""export/graph_opt.py: onnxsim's folding (static "same" padding, zero Pad -> Conv pads) and the project's own input
normalization folded into the first Conv give the same outputs through ONNX Runtime, keep the dynamic batch, and
the normalization fold leaves a graph whose pattern it does not recognize untouched."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from exportkit import TinyTedLoc, tiny_meta
from onnx import TensorProto, helper, numpy_helper

from tedloc_edge.export.graph_opt import optimize_graph
from tedloc_edge.export.onnx_export import export_to_proto

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class _SameConvNet(torch.nn.Module):
    """The deployed model's front: uint8 NHWC -> /255 -> (x - m) / s -> timm Conv2dSame (dynamic "same" Pad)."""

    def __init__(self, size: int = 30, patchify: bool = False) -> None:
        super().__init__()
        from timm.layers import Conv2dSame

        torch.manual_seed(0)
        self.register_buffer("mean", MEAN.clone())
        self.register_buffer("std", STD.clone())
        if patchify:  # a ViT patch embedding: no padding at all
            self.stem = torch.nn.Conv2d(3, 8, 5, stride=5)
        else:
            self.stem = Conv2dSame(3, 8, 3, stride=2)
        self.dw = Conv2dSame(8, 8, 5, stride=2, groups=8)
        self.size = size

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.permute(0, 3, 1, 2).float() / 255.0
        x = (x - self.mean) / self.std
        z = self.dw(torch.nn.functional.relu6(self.stem(x)))
        return z.flatten(2).reshape(z.shape[0], -1), z.mean((2, 3))


def _export(module: torch.nn.Module, size: int) -> onnx.ModelProto:
    import io

    buf = io.BytesIO()
    x = torch.randint(0, 256, (2, size, size, 3), dtype=torch.uint8)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (x,), buf, dynamo=False, opset_version=17, input_names=["images"],
                          output_names=["fg_map", "logits"], dynamic_axes={"images": {0: "batch"}, "fg_map": {0: "batch"}, "logits": {0: "batch"}},
                          do_constant_folding=True)
    return onnx.load_from_string(buf.getvalue())


def _run(proto: onnx.ModelProto, images: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"images": images})


def _assert_same_outputs(a: onnx.ModelProto, b: onnx.ModelProto, size: int) -> None:
    rng = np.random.default_rng(0)
    for batch in (1, 5):  # the batch axis stays dynamic
        images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
        for x, y in zip(_run(a, images), _run(b, images)):
            assert x.shape == y.shape
            assert np.abs(x - y).max() < 1e-4


def _ops(proto: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in proto.graph.node if n.op_type != "Constant"]


def test_same_padding_and_normalization_fold_exactly():
    size = 30
    original = _export(_SameConvNet(size), size)
    assert _ops(original).count("Pad") == 2 and "Shape" in _ops(original)
    optimized, report = optimize_graph(original)
    onnx.checker.check_model(optimized)
    ops = _ops(optimized)
    assert "Pad" not in ops and "Ceil" not in ops  # the "same" padding is static now
    assert ops.count("Shape") < _ops(original).count("Shape")  # only the output Reshapes' batch size stays computed
    assert ops[:4] == ["Transpose", "Cast", "Sub", "Conv"] and "Div" not in ops  # one Sub is left of x/255, -m, /s
    assert report.simplifier.startswith("onnxsim ") and report.normalization_folded == "sub"
    assert report.nodes_after < report.nodes_before / 5
    convs = [n for n in optimized.graph.node if n.op_type == "Conv"]
    pads = [list(next(a.ints for a in c.attribute if a.name == "pads")) for c in convs]
    assert pads == [[0, 0, 1, 1], [2, 2, 2, 2]]  # TF "same": the odd pixel goes at the end
    assert optimized.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    _assert_same_outputs(original, optimized, size)


def test_unpadded_first_conv_takes_the_shift_into_its_bias():
    size = 30
    original = _export(_SameConvNet(size, patchify=True), size)
    optimized, report = optimize_graph(original)
    assert report.normalization_folded == "bias"
    assert _ops(optimized)[:3] == ["Transpose", "Cast", "Conv"]
    _assert_same_outputs(original, optimized, size)


def test_input_is_not_modified():
    original = _export(_SameConvNet(), 30)
    before = original.SerializeToString()
    optimize_graph(original)
    assert original.SerializeToString() == before


def _handmade(variant: str) -> onnx.ModelProto:
    """uint8 NHWC -> Transpose -> Cast -> [normalization] -> Conv; variants the normalization fold must refuse."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.float32(255.0), "c255")]
    per_w = variant == "not_per_channel"
    inits.append(numpy_helper.from_array(np.full((1, 1, 1, 8) if per_w else (1, 3, 1, 1), 0.5, np.float32), "mean"))
    nodes = [helper.make_node("Transpose", ["images"], ["t"], perm=[0, 3, 1, 2], name="transpose"),
             helper.make_node("Cast", ["t"], ["f"], to=TensorProto.FLOAT, name="cast")]
    outputs = [helper.make_tensor_value_info("fg_map", TensorProto.FLOAT, ["batch", 4, 8, 8])]
    if variant == "no_normalization":
        inits = inits[:1]
        nodes.append(helper.make_node("Conv", ["f", "w"], ["fg_map"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv"))
    else:
        nodes += [helper.make_node("Div", ["f", "c255"], ["d"], name="div"),
                  helper.make_node("Sub", ["d", "mean"], ["x"], name="sub"),
                  helper.make_node("Conv", ["x", "w"], ["fg_map"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv")]
    if variant == "two_consumers":  # the normalized tensor is also an output's input: not only the Conv's
        nodes.append(helper.make_node("ReduceMean", ["x"], ["logits"], keepdims=0, name="mean_x"))
        outputs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, []))
    if variant == "reflect_pad":
        nodes[-1].input[0] = "p"
        inits.append(numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"))
        nodes.insert(-1, helper.make_node("Pad", ["x", "pads"], ["p"], mode="reflect", name="pad"))
    image = helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", 8, 8, 3])
    graph = helper.make_graph(nodes, "g", [image], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # onnx >= 1.23 defaults to an IR version that onnxruntime 1.31 cannot read
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("variant", ["no_normalization", "two_consumers", "not_per_channel", "reflect_pad"])
def test_pattern_not_found_leaves_the_graph_unchanged(variant):
    from tedloc_edge.export.graph_opt import fold_input_normalization

    original = _handmade(variant)
    assert fold_input_normalization(original.graph) == ""
    assert original.SerializeToString() == _handmade(variant).SerializeToString()
    optimized, report = optimize_graph(original)
    assert report.normalization_folded == "" and "Sub" in _ops(optimized) or variant == "no_normalization"
    _assert_same_outputs(original, optimized, 8)


def test_without_the_simplifier_the_graph_is_exported_as_traced(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxsim", None)  # `import onnxsim` raises ImportError
    original = _export(_SameConvNet(), 30)
    optimized, report = optimize_graph(original)
    assert report.simplifier == "" and "onnxsim is not installed" in report.notes
    assert "Pad" in _ops(optimized)  # the computed padding also hides the normalization from its fold
    _assert_same_outputs(original, optimized, 30)


def test_handmade_normalization_folds():
    original = _handmade("plain")
    optimized, report = optimize_graph(original)
    assert report.normalization_folded == "sub" and _ops(optimized) == ["Transpose", "Cast", "Sub", "Conv"]
    _assert_same_outputs(original, optimized, 8)


def test_export_applies_it_and_keeps_parity():
    proto = export_to_proto(TinyTedLoc().eval(), tiny_meta())
    ops = _ops(proto)
    assert ops[:4] == ["Transpose", "Cast", "Sub", "Conv"] and "Pad" not in ops
