"""ONNX (fp32, fp16 or Q/DQ int8) -> TensorRT plan + ``<plan>.json`` build record, with the TensorRT 10/11 API.

- Strongly typed network (`NetworkDefinitionCreationFlag.STRONGLY_TYPED`): the precision lives in the ONNX
  (fp16 casts, Q/DQ scales), so no FP16/INT8 builder flags and no calibrator, which TensorRT 11 removed.
  TensorRT 11 is always strongly typed and ignores the flag; 10.x needs it. Same code for both.
- One optimization profile for the batch range; workspace limit by `set_memory_pool_limit`; a persistent
  timing cache file (faster rebuilds on the same device); `build_serialized_network`.
- The plan is written as is (trtexec, Triton and DeepStream load it), atomically; the bundle and the build
  record (`tedloc_edge.build_record`) go in the sidecar JSON that the runtime checks before loading.
Without TensorRT, or with TensorRT but no usable GPU, the build stops with one line saying what to do.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from tedloc_edge.build_record import make_build_record
from tedloc_edge.bundle import BundleMeta, read_onnx_meta, write_plan_sidecar
from tedloc_edge.files import atomic_write_bytes
from tedloc_edge.errors import UserError
from tedloc_edge.export.onnx_export import INPUT_NAME, file_sha256

if TYPE_CHECKING:
    import tensorrt as trt

logger = logging.getLogger(__name__)

NO_TENSORRT = (
    "TensorRT is not installed here: engines are specific to the GPU and TensorRT version, so build on the "
    "target device (pip install tensorrt, or JetPack's), or export --format onnx here and build there"
)


@dataclass(frozen=True)
class EngineSpec:
    batch_min: int = 1
    batch_opt: int = 1
    batch_max: int = 8
    workspace_gib: float = 2.0
    timing_cache: Path | None = None
    rebuild_command: str = ""


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str
    cuda_version: str


def tensorrt_available() -> bool:
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def require_tensorrt() -> str:
    """The installed TensorRT version, or the one-line UserError saying where engines are built."""
    try:
        import tensorrt
    except (ImportError, OSError):
        raise UserError(NO_TENSORRT) from None
    return str(getattr(tensorrt, "__version__", "unknown"))


def gpu_info() -> GpuInfo:
    """Name, compute capability and CUDA version of GPU 0 (through torch, which export already needs)."""
    import torch

    if not torch.cuda.is_available():
        raise UserError(
            "TensorRT is installed but torch sees no CUDA GPU (CPU-only torch or no driver): install a CUDA build "
            "of torch on this device so the build record can name the GPU, or build with trtexec"
        )
    major, minor = torch.cuda.get_device_capability(0)
    return GpuInfo(torch.cuda.get_device_name(0), f"{major}.{minor}", str(torch.version.cuda or "unknown"))


def _make_builder(trt_logger: "trt.ILogger", version: str) -> "trt.Builder":
    import tensorrt as trt

    try:
        return trt.Builder(trt_logger)
    except (TypeError, RuntimeError):  # pybind11: "factory function returned nullptr" without a usable GPU
        raise UserError(
            f"TensorRT {version} is installed but cannot create a builder (no usable CUDA GPU or driver here); "
            "engines are built on the GPU that runs them: run this export on the target device"
        ) from None


def preflight() -> GpuInfo:
    """Fail fast, before any ONNX work, when this machine cannot build engines (no TensorRT, GPU or CUDA torch)."""
    version = require_tensorrt()
    import tensorrt as trt

    _make_builder(trt.Logger(trt.Logger.ERROR), version)
    return gpu_info()


def _parse(parser: "trt.OnnxParser", onnx_path: Path) -> None:
    if parser.parse_from_file(str(onnx_path)):
        return
    errors = [str(parser.get_error(i)).strip() for i in range(parser.num_errors)]
    first = errors[0].splitlines()[0] if errors else "no error reported"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    raise UserError(
        f"{onnx_path}: TensorRT's ONNX parser refused the model: {first}{more}; "
        "re-export with --opset 17 or check the TensorRT version supports these ops"
    )


def _profile(builder: "trt.Builder", meta: BundleMeta, spec: EngineSpec) -> "trt.IOptimizationProfile":
    import tensorrt as trt

    h, w = meta.input_size
    profile = builder.create_optimization_profile()
    shapes = [trt.Dims([b, h, w, 3]) for b in (spec.batch_min, spec.batch_opt, spec.batch_max)]
    profile.set_shape(INPUT_NAME, shapes[0], shapes[1], shapes[2])
    return profile


def _load_timing_cache(config: "trt.IBuilderConfig", path: Path | None) -> None:
    data = b""
    if path is not None and path.is_file():
        data = path.read_bytes()
        logger.info("timing cache: %s (%d bytes)", path, len(data))
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, False)


def _host_bytes(memory: Any) -> bytes:
    # IHostMemory implements the buffer protocol; the generated stubs do not declare it.
    return bytes(cast(Any, memory))


def _save_timing_cache(config: "trt.IBuilderConfig", path: Path | None) -> None:
    if path is None:
        return
    cache = config.get_timing_cache()
    if cache is not None:
        atomic_write_bytes(path, _host_bytes(cache.serialize()))


def _input_shapes(meta: BundleMeta, spec: EngineSpec) -> dict[str, dict[str, list[int]]]:
    h, w = meta.input_size
    return {INPUT_NAME: {k: [b, h, w, 3] for k, b in (("min", spec.batch_min), ("opt", spec.batch_opt), ("max", spec.batch_max))}}


def build_engine(onnx_path: str | os.PathLike, plan_path: str | os.PathLike, spec: EngineSpec = EngineSpec()) -> Path:
    """Build a plan from a tedloc ONNX file; writes `plan_path` and `<plan_path>.json`. Needs TensorRT + GPU."""
    version = require_tensorrt()
    import tensorrt as trt

    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    meta = read_onnx_meta(onnx_path)
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = _make_builder(trt_logger, version)
    gpu = gpu_info()
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, trt_logger)
    _parse(parser, onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(spec.workspace_gib * (1 << 30)))
    config.add_optimization_profile(_profile(builder, meta, spec))
    _load_timing_cache(config, spec.timing_cache)
    logger.info("building a %s TensorRT %s engine for %s (sm %s); this takes minutes", meta.precision, version, gpu.name, gpu.compute_capability)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(f"{onnx_path}: TensorRT could not build an engine (see its log above); try a larger --workspace-gib")
    _save_timing_cache(config, spec.timing_cache)
    record = make_build_record(
        tensorrt_version=version,
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        cuda_version=gpu.cuda_version,
        precision=meta.precision,
        input_shapes=_input_shapes(meta, spec),
        onnx_sha256=file_sha256(onnx_path),
        workspace_bytes=int(spec.workspace_gib * (1 << 30)),
        rebuild=spec.rebuild_command or f"tedloc-edge export {onnx_path} --format engine",
        built_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )
    try:
        atomic_write_bytes(plan_path, _host_bytes(serialized))
    except OSError as exc:
        raise UserError(f"{plan_path}: cannot write ({exc.strerror}); choose a writable --output") from None
    write_plan_sidecar(plan_path, meta, record)
    logger.info("wrote %s (%.1f MB) and %s.json", plan_path, plan_path.stat().st_size / 1e6, plan_path.name)
    return plan_path
