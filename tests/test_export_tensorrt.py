"""The TensorRT engine build. Without TensorRT or a GPU: the one-line refusals and the parser-error line.
With both (`-m gpu` on a GPU machine): a real strongly typed build from fp32/fp16/int8 ONNX, the plan and its
build record, and the record check against the running TensorRT. The real TensorRT 10/11 API surface is
checked without a GPU by tests/test_tensorrt_api.py."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
from exportkit import TinyTedLoc, real_photos, tiny_meta

from tedloc_edge.errors import UserError
from tedloc_edge.export import tensorrt_build as tb


def fake_tensorrt(builder_error: Exception) -> types.ModuleType:
    """A stand-in with the two names preflight touches; the Builder fails as on a host without a GPU."""
    mod = types.ModuleType("tensorrt")
    mod.__version__ = "10.13.3.9"

    class Logger:
        ERROR = WARNING = 0

        def __init__(self, severity: int = 0) -> None:
            self.severity = severity

    def builder(logger: Logger) -> None:
        raise builder_error

    mod.Logger = Logger
    mod.Builder = builder
    return mod


def test_without_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    assert not tb.tensorrt_available()
    with pytest.raises(UserError) as err:
        tb.preflight()
    assert str(err.value) == tb.NO_TENSORRT and "target device" in tb.NO_TENSORRT


def test_tensorrt_without_gpu_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(TypeError("pybind11::init(): factory function returned nullptr")))
    with pytest.raises(UserError) as err:
        tb.preflight()
    msg = str(err.value)
    assert msg.startswith("TensorRT 10.13.3.9 is installed but cannot create a builder") and "target device" in msg
    assert "pybind11" not in msg and "\n" not in msg


def test_parser_errors_become_one_line(tmp_path):
    class Parser:
        num_errors = 2

        def parse_from_file(self, path: str) -> bool:
            return False

        def get_error(self, i: int) -> str:
            return f"In node 7 (importResize): UNSUPPORTED_NODE: mode {i}\nmore detail"

    with pytest.raises(UserError) as err:
        tb._parse(Parser(), tmp_path / "m.onnx")
    msg = str(err.value)
    assert "TensorRT's ONNX parser refused the model: In node 7 (importResize): UNSUPPORTED_NODE: mode 0 (+1 more)" in msg
    assert "\n" not in msg


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engine_build_on_gpu(precision, tmp_path):
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA GPU")
    import onnx

    from tedloc_edge.build_record import check_build_record
    from tedloc_edge.bundle import read_plan_sidecar
    from tedloc_edge.export.fp16 import convert_fp16
    from tedloc_edge.export.int8 import quantize_int8
    from tedloc_edge.export.onnx_export import export_onnx, save_model
    from tedloc_edge.runtime.preprocess import Preprocessor

    meta = tiny_meta()
    path = export_onnx(TinyTedLoc().eval(), meta, tmp_path / "model.onnx")
    if precision == "fp16":
        path = save_model(convert_fp16(onnx.load(str(path)), meta), tmp_path / "model_fp16.onnx")
    elif precision == "int8":
        photos = Preprocessor(meta.input_size, 4)(real_photos()).copy()
        path = save_model(quantize_int8(onnx.load(str(path)), meta, photos, "h", mode="tensorrt"), tmp_path / "model_int8.onnx")
    plan = tb.build_engine(path, tmp_path / f"model_{precision}.plan", tb.EngineSpec(1, 2, 4, 1.0, tmp_path / "timing.cache"))
    meta2, record = read_plan_sidecar(plan)
    assert meta2.precision == precision and record["precision"] == precision
    assert record["input_shapes"]["images"]["max"] == [4, 64, 64, 3]
    assert (tmp_path / "timing.cache").stat().st_size > 0
    check_build_record(record, trt.__version__, record["compute_capability"])
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(Path(plan).read_bytes())
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    assert names == ["images", "fg_map", "logits"]
