"""Plans built elsewhere (trtexec) run with --metadata (the .onnx they came from, or a bundle JSON): the build
record's checks are skipped with a warning. And a DLA plan is deserialized on the DLA core it was built for.
TensorRT and CUDA are stand-ins here (the name-based API the runner calls, no GPU); the real TensorRT 10/11 API
of the same code is checked by tests/test_tensorrt_api.py."""

from __future__ import annotations

import json
import logging
import sys
import types

import numpy as np
import pytest
from runtime_models import fixture_meta, write_model

from tedloc_edge.build_record import make_build_record, plan_bundle
from tedloc_edge.bundle import BundleError, write_plan_sidecar
from tedloc_edge.runtime import backend_tensorrt as bt

VERSION = "10.3.0.30"


class Engine:
    shapes = {"images": [-1, 64, 64, 3], "fg_map": [-1, 8, 8], "logits": [-1, 3]}

    num_io_tensors = 3

    def get_tensor_name(self, i):
        return list(self.shapes)[i]

    def get_tensor_shape(self, name):
        return self.shapes[name]

    def get_tensor_profile_shape(self, name, profile):
        return [1, 64, 64, 3], [1, 64, 64, 3], [4, 64, 64, 3]

    def get_tensor_dtype(self, name):
        return "UINT8" if name == "images" else "FLOAT"

    def get_tensor_mode(self, name):
        return "INPUT" if name == "images" else "OUTPUT"

    def create_execution_context(self):
        return types.SimpleNamespace(set_tensor_address=lambda n, p: True, set_input_shape=lambda n, d: True,
                                     execute_async_v3=lambda s: True)


class Runtime:
    made: list["Runtime"] = []

    def __init__(self, logger):
        self.DLA_core = -1
        Runtime.made.append(self)

    def deserialize_cuda_engine(self, data):
        return Engine()


class Cuda:
    stream_handle = 0

    def compute_capability(self):
        return 8, 7

    def device_name(self):
        return "Jetson AGX Orin"

    def pinned(self, shape, dtype):
        return np.zeros(shape, dtype)

    def alloc_like(self, host):
        return 1

    def htod(self, dst, src): ...
    def dtoh(self, dst, src): ...
    def synchronize(self): ...
    def close(self): ...


@pytest.fixture
def fake_trt(monkeypatch):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = VERSION
    trt.Logger = type("Logger", (), {"WARNING": 0, "__init__": lambda self, s=0: None})
    trt.Runtime = Runtime
    trt.DataType = types.SimpleNamespace(FLOAT="FLOAT", HALF="HALF", UINT8="UINT8", INT32="INT32")
    trt.Dims = list
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(bt, "open_cuda", Cuda)
    Runtime.made.clear()
    return trt


def plan_file(path, **record):
    path.write_bytes(b"a serialized plan")
    if record:
        write_plan_sidecar(path, fixture_meta(precision="fp16"), make_build_record(
            tensorrt_version=VERSION, gpu_name="Orin", compute_capability="8.7", cuda_version="12.6", precision="fp16",
            input_shapes={}, onnx_sha256="0" * 64, workspace_bytes=1, rebuild="tedloc-edge export m.onnx --format engine",
            built_at="2026-01-01T00:00:00+00:00", **record))
    return path


def test_plan_without_sidecar_names_metadata(tmp_path):
    with pytest.raises(BundleError) as err:
        plan_bundle(plan_file(tmp_path / "trtexec.plan"))
    assert "--metadata MODEL.onnx" in str(err.value) and "\n" not in str(err.value)


def test_foreign_plan_with_onnx_metadata_runs_with_a_warning(fake_trt, tmp_path, caplog):
    onnx_path = write_model(tmp_path / "m.onnx", meta=fixture_meta(precision="fp16", threshold=0.3))
    with caplog.at_level(logging.WARNING):
        runner = bt.TensorRTRunner(plan_file(tmp_path / "trtexec.plan"), metadata=onnx_path)
    assert runner.build is None and runner.meta.threshold == 0.3 and runner.max_batch == 4
    assert "built elsewhere (no build record): the TensorRT version and GPU checks are skipped" in caplog.text
    fg_map, logits = runner.infer(np.zeros((2, 64, 64, 3), np.uint8))
    assert fg_map.shape == (2, 8, 8) and logits.shape == (2, 3)
    assert Runtime.made[-1].DLA_core == -1


def test_foreign_plan_with_json_metadata_drops_the_other_plans_record(fake_trt, tmp_path):
    other = plan_file(tmp_path / "other.plan", dla_core=None)
    meta, build = plan_bundle(plan_file(tmp_path / "trtexec.plan"), str(other) + ".json")
    assert build is None and meta.precision == "fp16"
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(BundleError, match="not a JSON bundle"):
        plan_bundle(tmp_path / "trtexec.plan", tmp_path / "bad.json")
    with pytest.raises(BundleError, match="no such metadata file"):
        plan_bundle(tmp_path / "trtexec.plan", tmp_path / "none.onnx")


def test_dla_plan_is_deserialized_on_its_core(fake_trt, tmp_path):
    runner = bt.TensorRTRunner(plan_file(tmp_path / "dla.plan", dla_core=1, gpu_fallback=True))
    assert runner.build["dla_core"] == 1 and Runtime.made[-1].DLA_core == 1
    record = json.loads((tmp_path / "dla.plan.json").read_text())["build"]
    assert record["gpu_fallback"] is True


def test_metadata_with_an_onnx_model_is_refused(tmp_path):
    from tedloc_edge.errors import UserError
    from tedloc_edge.runtime.backends import load_runner

    model = write_model(tmp_path / "m.onnx")
    with pytest.raises(UserError, match="--metadata is for a TensorRT plan built elsewhere"):
        load_runner(model, metadata=model)


def test_infer_cli_runs_a_foreign_plan(fake_trt, tmp_path):
    import cv2
    from typer.testing import CliRunner

    from tedloc_edge.app.cli import app

    cv2.imwrite(str(tmp_path / "frame.png"), np.full((48, 64, 3), 127, np.uint8))
    onnx_path = write_model(tmp_path / "m.onnx")
    plan = plan_file(tmp_path / "trtexec.plan")
    args = ["infer", str(tmp_path / "frame.png"), "--model", str(plan), "--out", str(tmp_path / "out")]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2 and "--metadata MODEL.onnx" in refused.output
    ran = CliRunner().invoke(app, [*args, "--metadata", str(onnx_path), "--exist-ok"])
    assert ran.exit_code == 0, ran.output
    assert "built elsewhere (no build record)" in ran.output
    assert (tmp_path / "out" / "predictions.jsonl").read_text().count("\n") == 1
