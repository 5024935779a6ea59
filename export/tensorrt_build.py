"""ONNX (fp32, fp16 or Q/DQ int8) -> TensorRT plan + ``<plan>.json`` build record, with the TensorRT 10/11 API.

- Strongly typed network (`NetworkDefinitionCreationFlag.STRONGLY_TYPED`): the precision lives in the ONNX
  (fp16 casts, Q/DQ scales), so no FP16/INT8 builder flags and no calibrator, which TensorRT 11 removed.
  TensorRT 11 is always strongly typed and ignores the flag; 10.x needs it. Same code for both.
- One optimization profile for the batch range; workspace limit by `set_memory_pool_limit`; a persistent
  timing cache file (faster rebuilds on the same device); `build_serialized_network`.
- DLA (`EngineSpec.dla_core`, Jetson AGX/NX Orin and Xavier): the DLA is the default device, with GPU fallback
  for the layers it cannot run when asked; DLA takes fp16/int8 only and one batch size (min = opt = max).
- The plan is written as is (trtexec, Triton and DeepStream load it), atomically; the bundle and the build
  record (`tedloc_edge.build_record`) go in the sidecar JSON that the runtime checks before loading.
- No torch and no onnx package: this is what `pip install tedloc-edge[tensorrt]` runs on a device. The GPU is
  named by `tedloc_edge.runtime.gpu_facts` (cuda-python, NVML or the driver library).
Without TensorRT, or with TensorRT but no usable GPU (or no DLA), the build stops with one line saying what to do.
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
from tedloc_edge.errors import UserError
from tedloc_edge.files import atomic_write_bytes, file_sha256
from tedloc_edge.runtime.gpu_facts import GpuFacts, gpu_facts
from tedloc_edge.runtime.runner import INPUT_NAME

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
    dla_core: int | None = None  # build for this DLA core (None: the GPU)
    gpu_fallback: bool = False  # DLA: layers the DLA cannot run go to the GPU instead of failing the build

    def check_dla(self, precision: str) -> None:
        """What DLA cannot take, refused before any work: fp32, a batch range, a negative core."""
        if self.dla_core is None:
            if self.gpu_fallback:
                raise UserError("--gpu-fallback applies to DLA builds; add --dla-core N or drop it")
            return
        if self.dla_core < 0:
            raise UserError(f"--dla-core {self.dla_core}: DLA cores are numbered from 0")
        if precision == "fp32":
            raise UserError("DLA runs fp16 and int8 layers only and this network is strongly typed fp32; "
                            "build from the fp16 or int8 ONNX (--precision fp16 | int8)")
        if not self.batch_min == self.batch_opt == self.batch_max:
            raise UserError(f"DLA takes one batch size, not {self.batch_min}..{self.batch_max}; pass the same N to "
                            "--batch-min, --batch-opt and --batch-max")


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


def _make_builder(trt_logger: "trt.ILogger", version: str) -> "trt.Builder":
    import tensorrt as trt

    try:
        return trt.Builder(trt_logger)
    except (TypeError, RuntimeError):  # pybind11: "factory function returned nullptr" without a usable GPU
        raise UserError(
            f"TensorRT {version} is installed but cannot create a builder (no usable CUDA GPU or driver here); "
            "engines are built on the GPU that runs them: run this export on the target device"
        ) from None


def _use_dla(builder: "trt.Builder", config: "trt.IBuilderConfig | None", spec: EngineSpec) -> None:
    """Check the DLA core exists here; with a config, make it the default device (and allow GPU fallback)."""
    import tensorrt as trt

    if spec.dla_core is None:
        return
    cores = int(builder.num_DLA_cores)
    if cores == 0:
        raise UserError(f"--dla-core {spec.dla_core}: this device has no DLA (TensorRT reports 0 DLA cores; Jetson AGX "
                        "and NX Orin and Xavier have them, Orin Nano does not); drop --dla-core to build for the GPU")
    if spec.dla_core >= cores:
        raise UserError(f"--dla-core {spec.dla_core}: this device has {cores} DLA core(s), numbered 0..{cores - 1}")
    if config is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = spec.dla_core
        if spec.gpu_fallback:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)


def preflight(spec: EngineSpec = EngineSpec(), precision: str | None = None) -> GpuFacts:
    """Fail fast, before any ONNX work, when this machine cannot build this engine (no TensorRT, GPU or DLA)."""
    if precision is not None:
        spec.check_dla(precision)
    version = require_tensorrt()
    import tensorrt as trt

    builder = _make_builder(trt.Logger(trt.Logger.ERROR), version)
    facts = gpu_facts()
    _use_dla(builder, None, spec)
    return facts


def _parse(parser: "trt.OnnxParser", onnx_path: Path) -> None:
    if parser.parse_from_file(str(onnx_path)):
        return
    errors = [str(parser.get_error(i)).strip() for i in range(parser.num_errors)]
    errors = [e for e in errors if e]  # an empty message would leave no first line to show
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
    spec.check_dla(meta.precision)
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = _make_builder(trt_logger, version)
    gpu = gpu_facts()
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, trt_logger)
    _parse(parser, onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(spec.workspace_gib * (1 << 30)))
    config.add_optimization_profile(_profile(builder, meta, spec))
    _use_dla(builder, config, spec)
    _load_timing_cache(config, spec.timing_cache)
    where = "GPU" if spec.dla_core is None else f"DLA core {spec.dla_core}" + (" (GPU fallback)" if spec.gpu_fallback else "")
    logger.info("building a %s TensorRT %s engine for %s on %s (sm %s); this takes minutes", meta.precision, version, gpu.name,
                where, gpu.compute_capability)
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
        dla_core=spec.dla_core,
        gpu_fallback=spec.gpu_fallback,
        extra={"gpu_facts_from": gpu.source},
    )
    try:
        atomic_write_bytes(plan_path, _host_bytes(serialized))
    except OSError as exc:
        raise UserError(f"{plan_path}: cannot write ({exc.strerror}); choose a writable --output") from None
    write_plan_sidecar(plan_path, meta, record)
    logger.info("wrote %s (%.1f MB) and %s.json", plan_path, plan_path.stat().st_size / 1e6, plan_path.name)
    return plan_path
