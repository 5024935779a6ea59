"""The Triton repository: config.pbtxt parsed with Triton's own ModelConfig protobuf (tritonclient), layout,
and the bundle recoverable from the config alone."""

from __future__ import annotations

import json

import onnxruntime as ort
import pytest
from exportkit import TinyTedLoc, tiny_meta
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from tedloc_edge.bundle import BundleMeta
from tedloc_edge.console import UserError
from tedloc_edge.export.onnx_export import export_onnx
from tedloc_edge.export.triton import config_pbtxt, write_repository


def parse(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def test_config_is_a_valid_model_config():
    meta = tiny_meta()
    cfg = parse(config_pbtxt(meta, "tedloc", "onnxruntime", 16, (1, 4, 8)))
    assert cfg.name == "tedloc" and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 16
    (inp,) = cfg.input
    assert inp.name == "images" and inp.data_type == mc.TYPE_UINT8 and list(inp.dims) == [64, 64, 3]
    outs = {o.name: o for o in cfg.output}
    assert list(outs["fg_map"].dims) == [8, 8] and outs["fg_map"].data_type == mc.TYPE_FP32
    assert list(outs["logits"].dims) == [4] and outs["logits"].data_type == mc.TYPE_FP32
    assert list(cfg.dynamic_batching.preferred_batch_size) == [1, 4, 8]
    assert BundleMeta.from_json(cfg.parameters["tedloc"].string_value) == meta
    assert json.loads(cfg.parameters["class_names"].string_value) == list(meta.class_names)
    assert float(cfg.parameters["threshold"].string_value) == meta.threshold


def test_tensorrt_platform_and_awkward_names():
    meta = tiny_meta().replace(class_names=('say "hi"', "back\\slash", "é,comma", "new\nline"))
    cfg = parse(config_pbtxt(meta, "tedloc_trt", "tensorrt", 8))
    assert cfg.platform == "tensorrt_plan" and cfg.default_model_filename == "model.plan"
    assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert BundleMeta.from_json(cfg.parameters["tedloc"].string_value) == meta


def test_repository_layout(tmp_path):
    onnx_path = export_onnx(TinyTedLoc().eval(), tiny_meta(), tmp_path / "model.onnx")
    folder = write_repository(onnx_path, tmp_path / "repo", tiny_meta(), max_batch=4)
    assert folder == tmp_path / "repo" / "tedloc"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == ["1", "1/model.onnx", "config.pbtxt"]
    cfg = parse((folder / "config.pbtxt").read_text(encoding="utf-8"))
    session = ort.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [i.name for i in cfg.input]
    assert [o.name for o in session.get_outputs()] == [o.name for o in cfg.output]


def test_bad_name_and_backend(tmp_path):
    with pytest.raises(UserError, match="plain folder name"):
        write_repository(tmp_path / "m.onnx", tmp_path / "repo", tiny_meta(), name="a/b")
    with pytest.raises(UserError, match="unknown Triton backend"):
        write_repository(tmp_path / "m.onnx", tmp_path / "repo", tiny_meta(), backend="pytorch")
