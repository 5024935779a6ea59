"""Name, compute capability and CUDA version of a GPU, without torch: what a build record names and checks.

Asked in turn of NVIDIA's cuda-python (runtime API; the `tensorrt` extra installs it), NVML (nvidia-ml-py's
`pynvml`, where it is installed) and the driver library itself (`libcuda.so.1` through ctypes: every machine
with an NVIDIA driver has it, a Jetson included, where NVML is absent). The first that answers wins; when none
does, one line says what each one said. Nothing here starts a CUDA context beyond the driver's `cuInit`.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
from dataclasses import dataclass
from typing import Any, Callable

from tedloc_edge.errors import UserError, first_line

logger = logging.getLogger(__name__)

CC_MAJOR, CC_MINOR = 75, 76  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_{MAJOR,MINOR}


@dataclass(frozen=True)
class GpuFacts:
    name: str
    compute_capability: str  # "8.7"
    cuda_version: str  # the CUDA runtime's version ("12.6"), or the driver's where only it answers
    source: str  # which of cuda-python, nvml, libcuda answered


class NoAnswer(Exception):
    """One source could not tell (not installed, no driver, no device)."""


def cuda_version_text(version: int) -> str:
    """CUDA's integer version (12060) -> "12.6"."""
    return f"{version // 1000}.{(version % 1000) // 10}"


def _text(value: Any) -> str:
    return value.decode(errors="replace").rstrip("\x00") if isinstance(value, bytes) else str(value)


def from_cuda_python(device: int = 0) -> GpuFacts:
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            rt = importlib.import_module(name)
            break
        except ImportError:
            continue
    else:
        raise NoAnswer("cuda-python is not installed")

    def call(fn: Callable[..., Any], *args: Any) -> Any:
        err, *values = fn(*args)
        if int(err) != 0:
            raise NoAnswer(f"{fn.__name__}: {_text(rt.cudaGetErrorString(err)[1])}")
        return values[0]

    try:
        props = call(rt.cudaGetDeviceProperties, device)
        version = int(call(rt.cudaRuntimeGetVersion))
    except NoAnswer:
        raise
    except Exception as exc:  # noqa: BLE001 - cuda-python raises its own loader errors without a driver
        raise NoAnswer(first_line(exc)) from None
    return GpuFacts(_text(props.name), f"{int(props.major)}.{int(props.minor)}", cuda_version_text(version), "cuda-python")


def from_nvml(device: int = 0) -> GpuFacts:
    try:
        nvml = importlib.import_module("pynvml")
    except ImportError:
        raise NoAnswer("nvidia-ml-py is not installed") from None
    try:
        nvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound and friends
        raise NoAnswer(first_line(exc)) from None
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(device)
        major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
        name = _text(nvml.nvmlDeviceGetName(handle))
        version = int(nvml.nvmlSystemGetCudaDriverVersion())
    except Exception as exc:  # noqa: BLE001
        raise NoAnswer(first_line(exc)) from None
    finally:
        nvml.nvmlShutdown()
    return GpuFacts(name, f"{int(major)}.{int(minor)}", cuda_version_text(version), "nvml")


def from_libcuda(device: int = 0, library: str = "libcuda.so.1") -> GpuFacts:
    try:
        cuda = ctypes.CDLL(library)
    except OSError:
        raise NoAnswer(f"{library} does not load (no NVIDIA driver)") from None

    def call(name: str, *args: Any) -> None:
        status = int(getattr(cuda, name)(*args))
        if status != 0:
            raise NoAnswer(f"{name} returned CUDA error {status}")

    handle, major, minor, version = ctypes.c_int(), ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    name = ctypes.create_string_buffer(256)
    call("cuInit", 0)
    call("cuDeviceGet", ctypes.byref(handle), device)
    call("cuDeviceGetName", name, 256, handle)
    call("cuDeviceGetAttribute", ctypes.byref(major), CC_MAJOR, handle)
    call("cuDeviceGetAttribute", ctypes.byref(minor), CC_MINOR, handle)
    call("cuDriverGetVersion", ctypes.byref(version))
    return GpuFacts(_text(name.value), f"{major.value}.{minor.value}", cuda_version_text(version.value), "libcuda")


SOURCES: tuple[tuple[str, Callable[[int], GpuFacts]], ...] = (
    ("cuda-python", from_cuda_python), ("nvml", from_nvml), ("libcuda", from_libcuda),
)


def gpu_facts(device: int = 0) -> GpuFacts:
    """The first source that names GPU `device`; a one-line UserError with each source's answer otherwise."""
    said = []
    for label, source in SOURCES:
        try:
            facts = source(device)
        except NoAnswer as exc:
            said.append(f"{label}: {exc}")
            continue
        logger.debug("GPU %d: %s (sm %s, CUDA %s) from %s", device, facts.name, facts.compute_capability, facts.cuda_version, label)
        return facts
    raise UserError(
        f"no NVIDIA GPU answered ({'; '.join(said)}); TensorRT engines are built on the GPU that runs them: "
        "run this on the target device, with its NVIDIA driver"
    )
