"""ONNX export, fp16 and int8 conversion and the torch-vs-ONNX Runtime comparator, on a contract-shaped model
and real photos (scikit-image). Fast: the model is tiny, so every path runs in a few seconds."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from exportkit import TinyTedLoc, real_photos, tiny_meta

from tedloc_edge.bundle import read_onnx_meta
from tedloc_edge.errors import UserError
from tedloc_edge.export.fp16 import convert_fp16, drop_repeated_nodes
from tedloc_edge.export.head_nodes import head_node_names
from tedloc_edge.export.int8 import check_mode, data_path_nodes, quantize_int8
from tedloc_edge.export.onnx_export import export_onnx, export_to_proto, save_model
from tedloc_edge.export.verify import VerificationError, compare_runners, require_passed, runtime_runner, verify_export
from tedloc_edge.runtime.preprocess import Preprocessor
from tedloc_edge.runtime.runner import Runner
from tedloc_edge.train.predict import TorchRunner


@pytest.fixture(scope="module")
def model():
    return TinyTedLoc().eval()


@pytest.fixture(scope="module")
def photos():
    meta = tiny_meta()
    return Preprocessor(meta.input_size, 4)(real_photos()).copy()


@pytest.fixture(scope="module")
def fp32(tmp_path_factory, model):
    return export_onnx(model, tiny_meta(), tmp_path_factory.mktemp("onnx") / "model.onnx")


def test_graph_contract_and_metadata(fp32):
    proto = onnx.load(str(fp32))
    assert proto.opset_import[0].version == 17
    assert [i.name for i in proto.graph.input] == ["images"] and [o.name for o in proto.graph.output] == ["fg_map", "logits"]
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    meta = read_onnx_meta(fp32)
    assert meta == tiny_meta().replace(precision="fp32")


def test_dynamic_batch(fp32, photos):
    session = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    for n in (1, 3):
        fg, logits = session.run(None, {"images": photos[:n]})
        assert fg.shape == (n, 8, 8) and logits.shape == (n, 4)


def test_fp32_matches_torch_on_real_photos(model, fp32, photos):
    report = verify_export(model, fp32, tiny_meta(), photos, "fp32")
    assert report.passed, report.failures
    assert all(o.max_abs < 1e-5 for o in report.outputs)
    assert report.boxes_identical == len(photos) and report.top1_agree == len(photos)


def test_head_is_found_by_structure(fp32):
    names = head_node_names(onnx.load(str(fp32)))
    assert "/Sigmoid" in names and "/head/MatMul" in names and "/MatMul" in names  # g, sigmoid, anchor product
    assert not any(n.startswith(("/backbone", "/decoder")) for n in names)


def test_fp16_keeps_io_and_head_float32(model, fp32, photos, tmp_path):
    proto = convert_fp16(onnx.load(str(fp32)), tiny_meta())
    onnx.checker.check_model(proto)
    assert [o.type.tensor_type.elem_type for o in proto.graph.output] == [onnx.TensorProto.FLOAT] * 2
    inits = {t.name: t.data_type for t in proto.graph.initializer}
    head_weight = next(n for n in proto.graph.node if n.name == "/head/MatMul").input[1]
    assert inits[head_weight] == onnx.TensorProto.FLOAT
    assert onnx.TensorProto.FLOAT16 in inits.values()  # the backbone did become fp16
    path = save_model(proto, tmp_path / "m16.onnx")
    report = verify_export(model, path, tiny_meta(), photos, "fp16")
    assert report.passed, report.failures
    assert read_onnx_meta(path).precision == "fp16"


def test_repeated_casts_from_older_converters_are_dropped():
    """onnxruntime 1.31's fp16 converter writes one identical Cast per consumer under one name (1.32: one)."""
    from onnx import TensorProto, helper

    cast = helper.make_node("Cast", ["h"], ["h32"], name="h_cast", to=TensorProto.FLOAT)
    other = helper.make_node("Cast", ["h"], ["h32b"], name="h_cast_b", to=TensorProto.FLOAT)
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16), cast, onnx.NodeProto(), other,
         helper.make_node("Add", ["h32", "h32b"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    graph.node[2].CopyFrom(cast)  # the repeat
    assert drop_repeated_nodes(graph) == 1
    assert [n.name for n in graph.node] == ["", "h_cast", "h_cast_b", ""]
    onnx.checker.check_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _float_head_checks(proto):
    """The anchor product and the sigmoid read float tensors, never a DequantizeLinear output."""
    dq_out = {o for n in proto.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    anchor_product = next(n for n in proto.graph.node if n.op_type == "MatMul" and n.output[0].startswith("/MatMul"))
    sigmoid = next(n for n in proto.graph.node if n.op_type == "Sigmoid")
    assert not (set(anchor_product.input) | set(sigmoid.input)) & dq_out


def _optimized_ops(path, tmp_path):
    """Op types of the graph ONNX Runtime's CPU session actually runs (after its QDQ fusions)."""
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # no hardware-specific layouts
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]


def test_int8_tensorrt_mode_is_symmetric_qdq_on_inputs_with_a_float_head(model, fp32, photos, tmp_path):
    proto = quantize_int8(onnx.load(str(fp32)), tiny_meta(), photos, calibration_hash="c0ffee", mode="tensorrt")
    inits = {t.name: t for t in proto.graph.initializer}
    dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    assert dq, "nothing was quantized"
    for node in dq:
        if len(node.input) > 2:
            assert not onnx.numpy_helper.to_array(inits[node.input[2]]).any(), "zero point must be 0 (TensorRT)"
            if node.input[0] not in inits:  # an activation
                assert inits[node.input[2]].data_type == onnx.TensorProto.INT8
    conv_out = {n.output[0] for n in proto.graph.node if n.op_type in ("Conv", "MatMul")}
    assert not any(n.input[0] in conv_out for n in proto.graph.node if n.op_type == "QuantizeLinear"), "Q/DQ on inputs only"
    _float_head_checks(proto)
    meta = read_onnx_meta(save_model(proto, tmp_path / "m8.onnx"))
    assert meta.precision == "int8" and meta.calibration_hash == "c0ffee" and meta.extra["int8_mode"] == "tensorrt"
    report = verify_export(model, tmp_path / "m8.onnx", tiny_meta(), photos, "int8")
    assert report.passed and report.top1_agree >= 3


def test_int8_cpu_mode_fuses_into_int8_kernels_with_a_float_head(model, fp32, photos, tmp_path):
    """The default mode: uint8 activations quantized at Conv outputs (ReLU folded), int8 symmetric
    per-channel weights; ONNX Runtime turns every backbone Conv into a QLinearConv."""
    proto = quantize_int8(onnx.load(str(fp32)), tiny_meta(), photos, calibration_hash="c0ffee")
    inits = {t.name: t for t in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    backbone_convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert len(backbone_convs) == 3 and "Relu" not in [n.op_type for n in proto.graph.node]  # folded into the Conv outputs
    for conv in backbone_convs:
        x, w = (producer[t] for t in conv.input[:2])
        assert x.op_type == w.op_type == "DequantizeLinear"
        assert inits[x.input[2]].data_type == onnx.TensorProto.UINT8  # activation
        assert inits[w.input[0]].data_type == onnx.TensorProto.INT8 and len(inits[w.input[1]].dims) == 1  # per channel
        assert not onnx.numpy_helper.to_array(inits[w.input[2]]).any()  # symmetric weights
        assert any(n.op_type == "QuantizeLinear" and n.input[0] == conv.output[0] for n in proto.graph.node), "output quantized"
    _float_head_checks(proto)
    path = save_model(proto, tmp_path / "m8.onnx")
    assert read_onnx_meta(path).extra["int8_mode"] == "cpu"
    ops = _optimized_ops(path, tmp_path)
    assert ops.count("QLinearConv") == 3 and "Conv" not in ops
    report = verify_export(model, path, tiny_meta(), photos, "int8")
    assert report.passed and report.top1_agree >= 3 and report.outputs[0].max_abs < 0.1


def _first_conv_output_scale(proto: onnx.ModelProto) -> float:
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    q = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == conv.output[0])
    return float(onnx.numpy_helper.to_array(next(t for t in proto.graph.initializer if t.name == q.input[1])))


def test_int8_calibration_ranges_are_the_mean_of_per_image_ranges(fp32, photos):
    """One extreme image among 41 moves a range by about 1/41 of the gap (plain MinMax would take its range)."""
    dim = (photos.astype(np.float32) * 0.1 + 115).astype(np.uint8)  # low contrast: small activations
    extreme = np.full_like(photos[:1], 255)
    calib = np.concatenate([np.repeat(dim, 10, axis=0), extreme])
    proto = onnx.load(str(fp32))
    normal = _first_conv_output_scale(quantize_int8(proto, tiny_meta(), calib[:-1], "a"))
    alone = _first_conv_output_scale(quantize_int8(proto, tiny_meta(), extreme, "b"))
    mixed = _first_conv_output_scale(quantize_int8(proto, tiny_meta(), calib, "c"))
    assert alone > 1.5 * normal  # the extreme image really is one
    assert mixed < normal + 0.05 * (alone - normal)


def test_int8_mode_is_checked():
    with pytest.raises(UserError, match="unknown --int8-mode 'gpu'"):
        check_mode("gpu")


def test_int8_leaves_shape_arithmetic_float():
    """Only data-path nodes are quantized: a Concat of padding sizes (timm's "same" padding) stays float."""
    x = onnx.helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, ["n", 3, 8, 8])
    nodes = [
        onnx.helper.make_node("Shape", ["images"], ["s"], name="shape"),
        onnx.helper.make_node("Cast", ["s"], ["sf"], name="cast", to=onnx.TensorProto.FLOAT),
        onnx.helper.make_node("Concat", ["sf", "sf"], ["pads_f"], name="pads", axis=0),
        onnx.helper.make_node("Concat", ["images", "images"], ["y"], name="features", axis=1),
    ]
    graph = onnx.helper.make_graph(nodes, "g", [x], [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    assert data_path_nodes(onnx.helper.make_model(graph), ["Concat"], []) == ["features"]


def test_int8_without_images_is_one_line(fp32):
    with pytest.raises(UserError, match="int8 needs calibration images"):
        quantize_int8(onnx.load(str(fp32)), tiny_meta(), np.zeros((0, 64, 64, 3), np.uint8), "x")


def test_comparator_catches_a_different_model(fp32, photos):
    other = TinyTedLoc(seed=1).eval()
    report = compare_runners(TorchRunner(other, tiny_meta()), runtime_runner(fp32, "onnxruntime", 8), photos, "fp32")
    assert not report.passed
    with pytest.raises(VerificationError, match=r"model.onnx: verification failed \(.*max abs error") as err:
        require_passed(report, "model.onnx")
    assert "\n" not in str(err.value)


class _NaNMap(Runner):
    meta, max_batch = tiny_meta(), 8

    def _infer(self, images):
        return np.full((len(images), 8, 8), np.nan, np.float32), np.zeros((len(images), 4), np.float32)


def test_nan_output_fails_validation(model, photos):
    report = compare_runners(TorchRunner(model, tiny_meta()), _NaNMap(), photos, "fp16")
    assert "fp16 fg_map has NaN or inf" in report.failures and not report.passed


def test_opset_range_and_contract_errors(model, tmp_path):
    with pytest.raises(UserError, match="--opset 13 is outside 17..20"):
        export_to_proto(model, tiny_meta(), opset=13)

    class Wrong(torch.nn.Module):
        def forward(self, images):
            x = images.float().mean((1, 2))
            return x, x

    with pytest.raises(UserError, match="expected UINT8|differs from the bundle"):
        export_to_proto(Wrong(), tiny_meta())


def test_opset_20_exports(model, photos, tmp_path):
    path = export_onnx(model, tiny_meta(), tmp_path / "m20.onnx", opset=20)
    assert onnx.load(str(path)).opset_import[0].version == 20
    assert verify_export(model, path, tiny_meta(), photos).passed


def test_unwritable_output_is_one_line(model, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="cannot write"):
        export_onnx(model, tiny_meta(), blocker / "model.onnx")


class _LayerNormTokens(TinyTedLoc):
    """The tiny model with a ViT-style token LayerNorm in its backbone."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(32)

    def forward(self, images):
        x = images.permute(0, 3, 1, 2).float() / 255.0
        tokens = self.norm(self.backbone((x - self.mean) / self.std).flatten(2).transpose(1, 2))
        m = torch.sigmoid(self.head(tokens)).squeeze(-1)
        pooled = torch.nn.functional.normalize((m.unsqueeze(-1) * tokens).sum(1), dim=-1)
        return m.reshape(-1, 8, 8), pooled @ self.anchors.T / self.temperature


def test_layernorm_is_one_op_at_opset_17(tmp_path, photos):
    model = _LayerNormTokens().eval()
    path = export_onnx(model, tiny_meta(), tmp_path / "ln.onnx")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("LayerNormalization") == 1 and "ReduceMean" not in ops
    assert verify_export(model, path, tiny_meta(), photos).passed


class _TinyCam(torch.nn.Module):
    """CAM-shaped: the outputs split after the class product (class maps -> top-1 map and mean logits)."""

    def __init__(self) -> None:
        super().__init__()
        base = TinyTedLoc()
        self.backbone, self.mean, self.std = base.backbone, base.mean, base.std
        self.classifier = torch.nn.Linear(32, 4)

    def forward(self, images):
        x = (images.permute(0, 3, 1, 2).float() / 255.0 - self.mean) / self.std
        z = self.backbone(x).flatten(2).transpose(1, 2)  # (N, P, d)
        cams = self.classifier(z)  # (N, P, C)
        logits = cams.mean(1)
        top = logits.argmax(1)
        fg = torch.gather(cams, 2, top.view(-1, 1, 1).expand(-1, cams.shape[1], 1)).squeeze(-1)
        return fg.reshape(-1, 8, 8), logits


def test_cam_classifier_joins_the_head_and_stays_float(tmp_path, photos):
    model = _TinyCam().eval()
    path = export_onnx(model, tiny_meta(), tmp_path / "cam.onnx")
    proto = onnx.load(str(path))
    names = head_node_names(proto)
    product = next(n for n in proto.graph.node if n.op_type == "MatMul")
    assert product.name in names and not any(n.startswith("/backbone") for n in names)
    int8 = quantize_int8(proto, tiny_meta(), photos, "h")
    product8 = next(n for n in int8.graph.node if n.name == product.name)
    dq_out = {o for n in int8.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    assert not set(product8.input) & dq_out


def test_over_two_gib_is_one_line(fp32, tmp_path, monkeypatch):
    from tedloc_edge.export import onnx_export

    monkeypatch.setattr(onnx_export, "PROTOBUF_LIMIT", 1000)
    with pytest.raises(UserError, match="over ONNX's 2 GiB single-file limit"):
        save_model(onnx.load(str(fp32)), tmp_path / "big.onnx")
    assert not (tmp_path / "big.onnx").exists()
