"""The TensorRT engine build. Without TensorRT or a GPU: the one-line refusals (DLA's too) and the parser-error line.
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


class FakeConfig:
    def __init__(self) -> None:
        self.flags: list[str] = []
        self.default_device_type = "GPU"
        self.DLA_core = -1

    def set_flag(self, flag: str) -> None:
        self.flags.append(flag)


def tensorrt_with_dla(cores: int) -> types.ModuleType:
    """A stand-in whose Builder starts (a GPU is there) and reports `cores` DLA cores."""
    mod = fake_tensorrt(TypeError())
    mod.Builder = lambda logger: types.SimpleNamespace(num_DLA_cores=cores)
    mod.DeviceType = types.SimpleNamespace(DLA="DLA", GPU="GPU")
    mod.BuilderFlag = types.SimpleNamespace(GPU_FALLBACK="GPU_FALLBACK")
    return mod


@pytest.fixture
def a_gpu(monkeypatch):
    monkeypatch.setattr(tb, "gpu_facts", lambda: tb.GpuFacts("Jetson AGX Orin", "8.7", "12.6", "libcuda"))


@pytest.mark.parametrize("spec, precision, expected", [
    (tb.EngineSpec(gpu_fallback=True), "fp16", "--gpu-fallback applies to DLA builds; add --dla-core N or drop it"),
    (tb.EngineSpec(1, 1, 1, dla_core=-1), "fp16", "--dla-core -1: DLA cores are numbered from 0"),
    (tb.EngineSpec(1, 1, 1, dla_core=0), "fp32", "DLA runs fp16 and int8 layers only"),
    (tb.EngineSpec(1, 1, 8, dla_core=0), "int8", "DLA takes one batch size, not 1..8"),
])
def test_dla_refusals_before_any_work(spec, precision, expected):
    with pytest.raises(UserError) as err:
        tb.preflight(spec, precision)
    assert str(err.value).startswith(expected) and "\n" not in str(err.value)


def test_no_dla_on_this_device_is_one_line(monkeypatch, a_gpu):
    monkeypatch.setitem(sys.modules, "tensorrt", tensorrt_with_dla(0))
    with pytest.raises(UserError) as err:
        tb.preflight(tb.EngineSpec(4, 4, 4, dla_core=0), "int8")
    assert str(err.value).startswith("--dla-core 0: this device has no DLA (TensorRT reports 0 DLA cores")
    monkeypatch.setitem(sys.modules, "tensorrt", tensorrt_with_dla(2))
    with pytest.raises(UserError, match=r"--dla-core 2: this device has 2 DLA core\(s\), numbered 0..1"):
        tb.preflight(tb.EngineSpec(1, 1, 1, dla_core=2), "fp16")
    assert tb.preflight(tb.EngineSpec(1, 1, 1, dla_core=1), "fp16").name == "Jetson AGX Orin"


def test_dla_config(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", tensorrt_with_dla(2))
    builder, config = sys.modules["tensorrt"].Builder(None), FakeConfig()
    tb._use_dla(builder, config, tb.EngineSpec(1, 1, 1, dla_core=1, gpu_fallback=True))
    assert (config.default_device_type, config.DLA_core, config.flags) == ("DLA", 1, ["GPU_FALLBACK"])
    config = FakeConfig()
    tb._use_dla(builder, config, tb.EngineSpec())
    assert (config.default_device_type, config.DLA_core, config.flags) == ("GPU", -1, [])


def test_exporter_dla_options(tmp_path):
    """--dla-core defaults the batch range to 1 and goes into the rebuild command; other formats refuse it."""
    from tedloc_edge.export.exporter import ExportOptions, engine_spec
    from tedloc_edge.export.exporter import export as run_export

    spec = engine_spec(ExportOptions(format="engine", dla_core=0, gpu_fallback=True), Path("m_fp16.onnx"), tmp_path / "m.plan")
    assert (spec.batch_min, spec.batch_opt, spec.batch_max, spec.dla_core, spec.gpu_fallback) == (1, 1, 1, 0, True)
    assert spec.rebuild_command.endswith("--batch-max 1 --dla-core 0 --gpu-fallback")
    assert engine_spec(ExportOptions(format="engine")).batch_max == 8
    with pytest.raises(UserError, match="option --dla-core does not apply to --format onnx"):
        run_export(tmp_path / "m.onnx", ExportOptions(format="onnx", dla_core=0))


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
    assert record["dla_core"] is None and record["gpu_facts_from"] in ("cuda-python", "nvml", "libcuda")
    assert record["compute_capability"] == "{}.{}".format(*torch.cuda.get_device_capability(0))
    assert (tmp_path / "timing.cache").stat().st_size > 0
    check_build_record(record, trt.__version__, record["compute_capability"])
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(Path(plan).read_bytes())
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    assert names == ["images", "fg_map", "logits"]
