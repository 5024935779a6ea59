"""GPU facts without torch (runtime/gpu_facts.py): cuda-python, NVML and the driver library, each faked with
the calls and return shapes of the real API, and the one line when none answers (this machine: no driver)."""

from __future__ import annotations

import ctypes
import sys
import types

import pytest

from tedloc_edge.errors import UserError
from tedloc_edge.runtime import gpu_facts as gf


def fake_cudart(ok: bool = True) -> types.ModuleType:
    """cuda.bindings.runtime's face: every call returns (error, value...)."""
    mod = types.ModuleType("cuda.bindings.runtime")
    props = types.SimpleNamespace(name=b"Orin\x00\x00", major=8, minor=7)
    mod.cudaGetDeviceProperties = lambda device: (0, props) if ok else (35, None)
    mod.cudaRuntimeGetVersion = lambda: (0, 12060)
    mod.cudaGetErrorString = lambda err: (0, b"CUDA driver version is insufficient for CUDA runtime version")
    return mod


def test_cuda_python_answers(monkeypatch):
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", fake_cudart())
    assert gf.from_cuda_python() == gf.GpuFacts("Orin", "8.7", "12.6", "cuda-python")


def test_cuda_python_error_is_no_answer(monkeypatch):
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", fake_cudart(ok=False))
    with pytest.raises(gf.NoAnswer, match="insufficient"):
        gf.from_cuda_python()


def test_nvml_answers_and_shuts_down(monkeypatch):
    calls = []
    nvml = types.ModuleType("pynvml")
    nvml.nvmlInit = lambda: calls.append("init")
    nvml.nvmlShutdown = lambda: calls.append("shutdown")
    nvml.nvmlDeviceGetHandleByIndex = lambda i: f"handle{i}"
    nvml.nvmlDeviceGetCudaComputeCapability = lambda h: (9, 0)
    nvml.nvmlDeviceGetName = lambda h: "NVIDIA H200"
    nvml.nvmlSystemGetCudaDriverVersion = lambda: 12080
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    assert gf.from_nvml() == gf.GpuFacts("NVIDIA H200", "9.0", "12.8", "nvml")
    assert calls == ["init", "shutdown"]


class FakeDriver:
    """libcuda.so.1's functions as ctypes calls them (out-parameters by reference, CUresult 0 on success)."""

    def __init__(self, init_status: int = 0) -> None:
        self.init_status = init_status

    def cuInit(self, flags):
        return self.init_status

    def cuDeviceGet(self, ref, ordinal):
        ref._obj.value = ordinal
        return 0

    def cuDeviceGetName(self, buf, size, dev):
        buf.value = b"Jetson AGX Orin"
        return 0

    def cuDeviceGetAttribute(self, ref, attr, dev):
        ref._obj.value = {gf.CC_MAJOR: 8, gf.CC_MINOR: 7}[attr]
        return 0

    def cuDriverGetVersion(self, ref):
        ref._obj.value = 12060
        return 0


def test_libcuda_answers(monkeypatch):
    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeDriver())
    assert gf.from_libcuda() == gf.GpuFacts("Jetson AGX Orin", "8.7", "12.6", "libcuda")


def test_first_source_that_answers_wins(monkeypatch):
    def no(label):
        def source(device):
            raise gf.NoAnswer(f"{label} says no")
        return source

    monkeypatch.setattr(gf, "SOURCES", (("cuda-python", no("a")), ("nvml", no("b")), ("libcuda", lambda d: gf.GpuFacts("x", "8.7", "12.6", "libcuda"))))
    assert gf.gpu_facts().source == "libcuda"


def test_no_source_is_one_line_naming_each(monkeypatch):
    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeDriver(init_status=100))  # CUDA_ERROR_NO_DEVICE
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", fake_cudart(ok=False))
    monkeypatch.setitem(sys.modules, "pynvml", None)
    with pytest.raises(UserError) as err:
        gf.gpu_facts()
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("no NVIDIA GPU answered (cuda-python: ")
    assert "nvml: nvidia-ml-py is not installed" in msg and "libcuda: cuInit returned CUDA error 100" in msg
    assert "target device" in msg


def test_this_machine_has_no_gpu():
    """The real sources here (cuda-python is installed with torch; no driver): each says why, in one line."""
    try:
        ctypes.CDLL("libcuda.so.1")
        pytest.skip("this machine has an NVIDIA driver")
    except OSError:
        pass
    with pytest.raises(UserError, match="no NVIDIA GPU answered"):
        gf.gpu_facts()
