"""Device buffers, pinned host arrays and a stream for the TensorRT runner, through whichever CUDA Python
binding imports: NVIDIA's cuda-python (`cuda.bindings.runtime`, or the older `cuda.cudart`) or pycuda.

Both give the same small face: `alloc`, `pinned`, `htod`, `dtoh`, `synchronize`, `stream_handle`,
`compute_capability`, `device_name`, `close`. Failures become one-line `UserError`s saying what to install.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
from types import ModuleType
from typing import Any

import numpy as np

from tedloc_edge.errors import UserError

logger = logging.getLogger(__name__)

NO_BINDINGS = (
    "TensorRT engines need CUDA Python bindings: pip install cuda-python (or pycuda); "
    "on a machine without an NVIDIA GPU run the .onnx with --backend onnxruntime"
)


def same_buffer(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two arrays start at the same address (the preprocessor wrote into the pinned buffer)."""
    return bool(a.ctypes.data == b.ctypes.data)


def _import_cudart() -> ModuleType | None:
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


class CudaRuntimeMemory:
    """cuda-python's runtime API (calls return ``(err, value...)`` tuples)."""

    binding = "cuda-python"

    def __init__(self, cudart: ModuleType) -> None:
        self.rt = cudart
        count = self._check(self.rt.cudaGetDeviceCount(), "cudaGetDeviceCount")
        if int(count) < 1:
            raise UserError("no NVIDIA GPU is visible (cudaGetDeviceCount = 0); run the .onnx with --backend onnxruntime")
        self.device = int(self._check(self.rt.cudaGetDevice(), "cudaGetDevice"))
        self._props = self._check(self.rt.cudaGetDeviceProperties(self.device), "cudaGetDeviceProperties")
        self._stream = self._check(self.rt.cudaStreamCreate(), "cudaStreamCreate")
        self._device_ptrs: list[int] = []
        self._host_ptrs: list[int] = []

    def _check(self, result: Any, what: str) -> Any:
        err, *values = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            _, text = self.rt.cudaGetErrorString(err)
            message = text.decode() if isinstance(text, bytes) else str(text)
            raise UserError(f"CUDA {what} failed: {message}; check the NVIDIA driver (nvidia-smi) or run the .onnx on CPU")
        return values[0] if len(values) == 1 else (tuple(values) if values else None)

    @property
    def stream_handle(self) -> int:
        return int(self._stream)

    def compute_capability(self) -> tuple[int, int]:
        return int(self._props.major), int(self._props.minor)

    def device_name(self) -> str:
        name = self._props.name
        return name.decode(errors="replace").rstrip("\x00") if isinstance(name, bytes) else str(name)

    def alloc(self, nbytes: int) -> int:
        ptr = int(self._check(self.rt.cudaMalloc(max(1, int(nbytes))), "cudaMalloc"))
        self._device_ptrs.append(ptr)
        return ptr

    def alloc_like(self, host: np.ndarray) -> int:
        """Device memory of the same byte size as `host`."""
        return self.alloc(host.nbytes)

    def pinned(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        dt = np.dtype(dtype)
        nbytes = max(1, int(np.prod(shape)) * dt.itemsize)
        ptr = int(self._check(self.rt.cudaMallocHost(nbytes), "cudaMallocHost"))
        self._host_ptrs.append(ptr)
        raw = (ctypes.c_uint8 * nbytes).from_address(ptr)
        return np.frombuffer(raw, dtype=dt, count=int(np.prod(shape))).reshape(shape)

    def htod(self, dst: int, src: np.ndarray) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes, kind, self._stream), "cudaMemcpyAsync")

    def dtoh(self, dst: np.ndarray, src: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes, kind, self._stream), "cudaMemcpyAsync")

    def synchronize(self) -> None:
        self._check(self.rt.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def close(self) -> None:
        for ptr in self._device_ptrs:
            self.rt.cudaFree(ptr)
        for ptr in self._host_ptrs:
            self.rt.cudaFreeHost(ptr)
        self._device_ptrs, self._host_ptrs = [], []


class PyCudaMemory:
    """pycuda's driver API on the device's primary context (pushed while this object works)."""

    binding = "pycuda"

    def __init__(self, driver: ModuleType) -> None:
        self.drv = driver
        try:
            driver.init()
            if driver.Device.count() < 1:
                raise UserError("no NVIDIA GPU is visible to pycuda; run the .onnx with --backend onnxruntime")
            self._device = driver.Device(0)
            self._context = self._device.retain_primary_context()
            self._context.push()
            self._stream = driver.Stream()
        except driver.Error as exc:
            raise UserError(f"CUDA initialisation failed ({exc}); check the NVIDIA driver (nvidia-smi) or run the .onnx on CPU") from None
        self._allocations: list[Any] = []

    @property
    def stream_handle(self) -> int:
        return int(self._stream.handle)

    def compute_capability(self) -> tuple[int, int]:
        major, minor = self._device.compute_capability()
        return int(major), int(minor)

    def device_name(self) -> str:
        return str(self._device.name())

    def alloc(self, nbytes: int) -> int:
        allocation = self.drv.mem_alloc(max(1, int(nbytes)))
        self._allocations.append(allocation)
        return int(allocation)

    def alloc_like(self, host: np.ndarray) -> int:
        return self.alloc(host.nbytes)

    def pinned(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return self.drv.pagelocked_empty(shape, dtype)

    def htod(self, dst: int, src: np.ndarray) -> None:
        self.drv.memcpy_htod_async(dst, src, self._stream)

    def dtoh(self, dst: np.ndarray, src: int) -> None:
        self.drv.memcpy_dtoh_async(dst, src, self._stream)

    def synchronize(self) -> None:
        self._stream.synchronize()

    def close(self) -> None:
        for allocation in self._allocations:
            allocation.free()
        self._allocations = []
        self._context.pop()


def open_cuda() -> CudaRuntimeMemory | PyCudaMemory:
    """The first CUDA binding that imports and finds a GPU; a one-line UserError when none does."""
    cudart = _import_cudart()
    if cudart is not None:
        return CudaRuntimeMemory(cudart)
    try:
        driver = importlib.import_module("pycuda.driver")
    except ImportError:
        raise UserError(NO_BINDINGS) from None
    return PyCudaMemory(driver)
