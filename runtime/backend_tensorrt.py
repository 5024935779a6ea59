"""Native TensorRT runner (TensorRT 10 and 11): a serialized plan plus its sidecar ``<plan>.json``.

Order of checks, each a one-line error naming the fix: TensorRT importable; sidecar readable; a TensorRT
runtime can be created (it cannot without a usable GPU); CUDA bindings present; the build record matches
this TensorRT version and this GPU (`tedloc_edge.build_record.check_build_record`, which names the rebuild
command); the plan deserializes. Inference uses the name-based tensor API: `set_input_shape`,
`set_tensor_address` and `execute_async_v3` on one stream, with device buffers allocated once at the
profile's largest batch and pinned host buffers on both ends.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tedloc_edge.build_record import plan_bundle
from tedloc_edge.contract import INPUT_NAME, OUTPUT_NAMES
from tedloc_edge.errors import UserError
from tedloc_edge.runtime.cuda_memory import open_cuda, same_buffer
from tedloc_edge.runtime.runner import Runner

if TYPE_CHECKING:  # the real module is imported lazily, so the CPU-only install never needs it
    import tensorrt as trt

logger = logging.getLogger(__name__)

NO_TENSORRT = (
    "{path}: running a TensorRT engine needs TensorRT and an NVIDIA GPU (pip install tensorrt cuda-python); "
    "without them run the .onnx with --backend onnxruntime"
)


def require_tensorrt(path: Path) -> None:
    """A one-line error naming what to install when the `tensorrt` module is absent."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        raise UserError(NO_TENSORRT.format(path=path)) from None


def numpy_dtype(dtype: "trt.DataType") -> str:
    """numpy type of a TensorRT I/O tensor (the contract: uint8 in, float out; fp16 outputs are widened)."""
    import tensorrt as trt

    table: dict[trt.DataType, str] = {
        trt.DataType.FLOAT: "float32",
        trt.DataType.HALF: "float16",
        trt.DataType.UINT8: "uint8",
        trt.DataType.INT32: "int32",
    }
    if dtype not in table:
        raise UserError(f"TensorRT I/O type {dtype} is not one the runtime reads (float32, float16, uint8, int32); rebuild the engine")
    return table[dtype]


def dims_list(dims: "trt.Dims") -> list[int]:
    return [int(dims[i]) for i in range(len(dims))]


class TensorRTRunner(Runner):
    """One engine, one execution context, one stream. `infer` is serialized by a lock (an execution context
    is not re-entrant); with pycuda the CUDA context is the device's primary one, pushed at load."""

    def __init__(self, path: str | Path, max_batch: int = 8, metadata: str | Path | None = None) -> None:
        self.path = Path(path)
        self.source = str(self.path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: no such engine file; build one with `tedloc-edge export RUN --format engine`")
        require_tensorrt(self.path)
        import tensorrt as trt

        self.meta, self.build = plan_bundle(self.path, metadata)  # no build record: a plan built elsewhere
        self._trt_logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = self._create_runtime()
        self.cuda = open_cuda()
        self._check_build(str(trt.__version__))
        self.engine = self._deserialize()
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise UserError(f"{self.path}: TensorRT could not create an execution context (out of GPU memory?)")
        self.name = "tensorrt"
        self._closed = False
        self._lock = threading.Lock()
        self._shape_set: int | None = None
        self.max_batch, self.fixed_batch = self._batch_range(max_batch)
        self._dtypes = {name: numpy_dtype(self.engine.get_tensor_dtype(name)) for name in (INPUT_NAME, *OUTPUT_NAMES)}
        self._host: dict[str, np.ndarray] = {}
        self._device: dict[str, int] = {}
        self._allocate()

    def _create_runtime(self) -> "trt.Runtime":
        import tensorrt as trt

        try:
            return trt.Runtime(self._trt_logger)
        except (TypeError, RuntimeError):  # pybind11 "factory function returned nullptr": no usable GPU
            raise UserError(
                f"{self.path}: TensorRT cannot start here (no usable NVIDIA GPU or driver); engines run only on the GPU "
                "they were built for, so run the .onnx with --backend onnxruntime on this machine"
            ) from None

    def _check_build(self, trt_version: str) -> None:
        from tedloc_edge.build_record import check_build_record

        if self.build is None:
            logger.warning("%s: built elsewhere (no build record): the TensorRT version and GPU checks are skipped, so a "
                           "mismatch shows as TensorRT's own error; `tedloc-edge export MODEL.onnx --format engine` "
                           "builds one that is checked", self.path)
            return
        capability = self.cuda.compute_capability()
        check_build_record(self.build, trt_version, capability, source=str(self.path))
        logger.debug("%s: TensorRT %s on %s (sm %d.%d)", self.path, trt_version, self.cuda.device_name(), *capability)

    def _deserialize(self) -> "trt.ICudaEngine":
        import tensorrt as trt

        if self.build is not None and self.build.get("dla_core") is not None:
            self._runtime.DLA_core = int(self.build["dla_core"])  # the DLA core the plan was built for
        engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            raise UserError(f"{self.path}: TensorRT could not deserialize this plan (corrupt, or from another build); rebuild the engine")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        shapes = {name: dims_list(engine.get_tensor_shape(name)) for name in names}
        inputs = {n: (numpy_dtype(engine.get_tensor_dtype(n)), shapes[n]) for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT}
        outputs = {n: shapes[n] for n in names if n not in inputs}
        self.contract.check_graph(inputs, outputs, str(self.path), "rebuild it from the exported .onnx")
        return engine

    def _batch_range(self, requested: int) -> tuple[int, int | None]:
        """(largest batch, static batch or None) from the engine's input shape and optimization profile 0."""
        shape = dims_list(self.engine.get_tensor_shape(INPUT_NAME))
        if shape[0] > 0:
            return shape[0], shape[0]
        profile_max = dims_list(self.engine.get_tensor_profile_shape(INPUT_NAME, 0)[2])
        return max(1, min(int(requested), profile_max[0])), None

    def _allocate(self) -> None:
        for name in (INPUT_NAME, *OUTPUT_NAMES):
            self._host[name] = self.cuda.pinned(self.contract.shape(name, self.max_batch), self._dtypes[name])
            self._device[name] = self.cuda.alloc_like(self._host[name])
            if not self.context.set_tensor_address(name, self._device[name]):
                raise UserError(f"{self.path}: TensorRT refused the buffer of '{name}'; rebuild the engine from the exported .onnx")

    def host_input(self, max_batch: int) -> np.ndarray:
        if max_batch > self.max_batch:
            raise ValueError(f"{self.path}: the engine's profile takes at most {self.max_batch} images per batch")
        return self._host[INPUT_NAME][:max_batch]

    def _set_batch(self, n: int) -> None:
        import tensorrt as trt

        if self._shape_set != n:
            if not self.context.set_input_shape(INPUT_NAME, trt.Dims(list(self.contract.shape(INPUT_NAME, n)))):
                raise ValueError(f"{self.path}: the engine's profile does not take a batch of {n}")
            self._shape_set = n

    def _infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = images.shape[0]
        with self._lock:
            host_in = self._host[INPUT_NAME][:n]
            if not same_buffer(images, host_in):
                np.copyto(host_in, images)
            self._set_batch(n)
            self.cuda.htod(self._device[INPUT_NAME], host_in)
            if not self.context.execute_async_v3(self.cuda.stream_handle):
                raise RuntimeError(f"{self.path}: TensorRT execution failed (see the TensorRT log above)")
            fg_map, logits = self._host["fg_map"][:n], self._host["logits"][:n]
            self.cuda.dtoh(fg_map, self._device["fg_map"])
            self.cuda.dtoh(logits, self._device["logits"])
            self.cuda.synchronize()
        return fg_map, logits

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        del self.context, self.engine  # TensorRT objects go before the memory they point at
        self.cuda.close()
