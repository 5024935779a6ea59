"""ORT's TensorRT execution provider as a session receives it: engine and timing caches in a per-model folder,
the optimization profile from the bundle, the precision flags from the model's precision. This machine has no
onnxruntime-gpu and no TensorRT, so ORT's `get_available_providers`, libnvinfer and `InferenceSession` are
replaced: the fake session records the providers and their options, then answers from a real CPU session."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest
from runtime_models import fixture_meta, write_model

from tedloc_edge.errors import UserError
from tedloc_edge.runtime import ort_providers as op
from tedloc_edge.runtime.backend_onnxruntime import OnnxRuntimeRunner

GPU_PROVIDERS = [op.TRT_EP, op.CUDA_EP, op.CPU_EP]


@pytest.fixture
def sessions(monkeypatch):
    """Every InferenceSession the runner makes, as (path, providers); the real work is done on the CPU."""
    made: list[tuple[str, list]] = []
    real = ort.InferenceSession

    class Session:
        def __init__(self, path, sess_options=None, providers=None):
            made.append((path, list(providers or [])))
            self._real = real(path, sess_options=sess_options, providers=[op.CPU_EP])
            self._names = [p[0] if isinstance(p, tuple) else p for p in providers or []]

        def get_providers(self):
            return self._names

        def __getattr__(self, name):
            return getattr(self._real, name)

    monkeypatch.setattr(ort, "InferenceSession", Session)
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(GPU_PROVIDERS))
    monkeypatch.setattr(op, "tensorrt_libraries_load", lambda: True)
    monkeypatch.setattr(op, "tensorrt_library_version", lambda: "100300")
    return made


def trt_options(made: list) -> dict[str, str]:
    providers = made[-1][1]
    assert [p[0] if isinstance(p, tuple) else p for p in providers] == GPU_PROVIDERS, providers
    name, options = providers[0]
    return options


@pytest.mark.parametrize("precision, fp16, int8", [("fp32", "0", "0"), ("fp16", "1", "0"), ("int8", "0", "1")])
def test_provider_options_the_session_receives(sessions, tmp_path, precision, fp16, int8):
    extra = {"int8_mode": "tensorrt"} if precision == "int8" else {}
    model = write_model(tmp_path / f"model_{precision}.onnx", size=64, grid=8, meta=fixture_meta(64, 8, precision=precision, extra=extra))
    OnnxRuntimeRunner(model, device="cuda", max_batch=4)
    options = trt_options(sessions)
    root = tmp_path / f"model_{precision}.trt-cache"
    engines = Path(options["trt_engine_cache_path"])
    assert engines.parent == root and engines.name.startswith("engine-") and engines.name.endswith(f"-ort{ort.__version__}-trt100300")
    assert options == {
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": str(engines),
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": str(root),
        "trt_fp16_enable": fp16,
        "trt_int8_enable": int8,
        "trt_profile_min_shapes": "images:1x64x64x3",
        "trt_profile_opt_shapes": "images:4x64x64x3",
        "trt_profile_max_shapes": "images:4x64x64x3",
    }
    print(f"{precision}: {options}")


def test_static_batch_model_has_no_profile(sessions, tmp_path):
    model = write_model(tmp_path / "model_b2.onnx", static_batch=2)
    OnnxRuntimeRunner(model, device="cuda")
    options = trt_options(sessions)
    assert not any(k.startswith("trt_profile") for k in options) and options["trt_engine_cache_enable"] == "1"


def test_trt_cache_folder_and_engine_key(sessions, tmp_path):
    """--trt-cache DIR holds <model>.trt-cache; a changed model file gets a new engine folder and the stale one goes."""
    model = write_model(tmp_path / "m.onnx")
    OnnxRuntimeRunner(model, device="cuda", trt_cache=tmp_path / "cache")
    first = Path(trt_options(sessions)["trt_engine_cache_path"])
    assert first.parent == tmp_path / "cache" / "m.trt-cache" and first.is_dir()
    OnnxRuntimeRunner(model, device="cuda", trt_cache=tmp_path / "cache")
    assert Path(trt_options(sessions)["trt_engine_cache_path"]) == first  # same file: same engines
    write_model(model, size=32, grid=4)  # retrained / re-exported at the same path
    OnnxRuntimeRunner(model, device="cuda", trt_cache=tmp_path / "cache")
    second = Path(trt_options(sessions)["trt_engine_cache_path"])
    assert second != first and second.is_dir() and not first.exists()
    assert trt_options(sessions)["trt_profile_max_shapes"] == "images:8x32x32x3"


def test_read_only_model_folder_falls_back_to_user_cache(sessions, tmp_path, monkeypatch):
    model = write_model(tmp_path / "ro" / "m.onnx")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    writable = op._writable
    monkeypatch.setattr(op, "_writable", lambda folder: "ro" not in folder.parts and writable(folder))  # root writes anywhere
    OnnxRuntimeRunner(model, device="cuda")
    assert Path(trt_options(sessions)["trt_engine_cache_path"]).parent.parent == tmp_path / "xdg" / "tedloc-edge" / "trt"
    assert not (tmp_path / "ro" / "m.trt-cache").exists()


def test_unwritable_trt_cache_is_one_line(sessions, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match=r"^--trt-cache .*file: cannot write TensorRT's caches there"):
        OnnxRuntimeRunner(write_model(tmp_path / "m.onnx"), device="cuda", trt_cache=tmp_path / "file")


def test_cpu_mode_int8_does_not_ask_for_tensorrt(sessions, tmp_path):
    meta = fixture_meta(precision="int8", extra={"int8_mode": "cpu"})
    OnnxRuntimeRunner(write_model(tmp_path / "m_int8.onnx", meta=meta), device="cuda")
    assert sessions[-1][1] == [op.CUDA_EP, op.CPU_EP]
    assert not (tmp_path / "m_int8.trt-cache").exists()


def test_cpu_device_makes_no_cache(sessions, tmp_path):
    OnnxRuntimeRunner(write_model(tmp_path / "m.onnx"), device="cpu")
    assert sessions[-1][1] == [op.CPU_EP] and not (tmp_path / "m.trt-cache").exists()


def test_infer_cli_passes_trt_cache(sessions, tmp_path):
    """`tedloc-edge infer IMG --model M.onnx --device cuda --trt-cache DIR` reaches the session's options."""
    import cv2
    import numpy as np
    from typer.testing import CliRunner

    from tedloc_edge.app.cli import app

    cv2.imwrite(str(tmp_path / "frame.png"), np.full((48, 64, 3), 127, np.uint8))
    model = write_model(tmp_path / "m.onnx")
    # the fake session has no CUDA memory: the run itself fails after the session is made; the options are the point
    CliRunner().invoke(app, ["infer", str(tmp_path / "frame.png"), "--model", str(model), "--device", "cuda",
                             "--trt-cache", str(tmp_path / "c"), "--out", str(tmp_path / "out")])
    assert Path(trt_options(sessions)["trt_engine_cache_path"]).parent == tmp_path / "c" / "m.trt-cache"
