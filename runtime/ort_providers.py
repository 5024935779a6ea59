"""Which ONNX Runtime execution providers a session asks for, and what the CUDA EP needs before it starts.

`choose_providers` maps --device to providers (TensorRT's EP only where libnvinfer loads), `graph_providers`
and `with_cuda_options` shape the CUDA EP entry (CUDA graphs, provider options), `with_tensorrt_options` the
TensorRT EP entry (per-model engine and timing caches, the bundle's profile shapes, precision flags; without
them ORT rebuilds the engine at every start and whenever the batch size changes), and `preload_cuda_libraries`
loads CUDA and cuDNN the way onnxruntime-gpu offers, so a torch-free process finds pip-installed libraries.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import io
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from tedloc_edge.files import file_sha256
from tedloc_edge.bundle import BundleMeta, read_onnx_meta
from tedloc_edge.errors import UserError, first_line
from tedloc_edge.runtime.runner import INPUT_NAME

logger = logging.getLogger(__name__)

CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
TRT_EP = "TensorrtExecutionProvider"


@functools.lru_cache(maxsize=1)
def tensorrt_libraries_load() -> bool:
    """Whether TensorRT's libnvinfer loads here. onnxruntime-gpu lists its TensorRT EP whether or not TensorRT
    is installed; without it, session creation fails, ORT prints an 'EP Error' banner to stdout and retries
    on CUDA. Most GPU users have no TensorRT, so the EP is only asked for when its library is there."""
    for name in ("libnvinfer.so.10", "libnvinfer.so.11", "libnvinfer.so", "nvinfer_10.dll", "nvinfer.dll"):
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def choose_providers(device: str, providers: Sequence[str] | None, available: Sequence[str],
                     tensorrt_ok: bool | None = None) -> list[str]:
    """Execution providers for `device` ("cpu" or "cuda"), or the caller's explicit list checked against ORT.
    `tensorrt_ok` (default: whether libnvinfer loads) says whether "cuda" puts TensorRT's EP first."""
    if providers:
        missing = [p for p in providers if p not in available]
        if missing:
            raise UserError(
                f"onnxruntime has no {', '.join(missing)} (available: {', '.join(available)}); "
                "for GPU providers install onnxruntime-gpu instead of onnxruntime"
            )
        return list(providers)
    if device == "auto":
        device = "cuda" if CUDA_EP in available else "cpu"
    if device == "cpu":
        return [CPU_EP]
    if device == "cuda":
        if CUDA_EP not in available:
            raise UserError(
                "device 'cuda' needs onnxruntime-gpu (this onnxruntime offers "
                f"{', '.join(available)}); pip uninstall onnxruntime && pip install onnxruntime-gpu, or use --device cpu"
            )
        if tensorrt_ok is None:
            tensorrt_ok = TRT_EP in available and tensorrt_libraries_load()
        return [p for p in ((TRT_EP,) if tensorrt_ok else ()) + (CUDA_EP, CPU_EP) if p in available]
    raise UserError(f"device must be 'cpu', 'cuda' or 'auto', not {device!r}")


@functools.lru_cache(maxsize=1)
def preload_cuda_libraries(ort: Any) -> str:
    """Load CUDA and cuDNN the way onnxruntime-gpu (1.21+) offers: from torch's or the nvidia-* pip packages,
    then the system's library path. Without it, a torch-free process finds pip-installed CUDA libraries
    nowhere and ORT silently runs on the CPU. Returns what ORT printed (it prints, not raises, failures)."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return ""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            preload()
    except Exception as exc:  # noqa: BLE001 - a bad preload only means ORT searches the default paths
        return f"preload_dlls: {exc}"
    return printed.getvalue().strip()


GRAPH_FIX = ("export a fixed-batch model with `tedloc-edge export RUN --static-batch N` and pass that model_b<N>.onnx, "
             "or drop --cuda-graph")


def graph_providers(path: Path, device: str, chosen: Sequence[str]) -> list[str]:
    """The CUDA EP (graph capture is switched on in its options) and the CPU EP, which must end up with no
    node. TensorRT's EP has graphs of its own; a graph here means ORT's CUDA EP runs every node."""
    if device == "cpu" or CUDA_EP not in chosen:
        raise UserError(f"{path}: CUDA graphs run on the CUDA execution provider; use --device cuda with onnxruntime-gpu, or drop --cuda-graph")
    return [CUDA_EP, CPU_EP]


def with_cuda_options(providers: Sequence[str], options: Mapping[str, str]) -> list[Any]:
    """The CUDA EP as (name, options) when there are options (ORT's CUDA EP provider options, e.g.
    enable_cuda_graph, prefer_nhwc, cudnn_conv_algo_search); other providers unchanged."""
    return [(p, {k: str(v) for k, v in options.items()}) if p == CUDA_EP and options else p for p in providers]


# ------------------------------------------------------------------------------- TensorRT execution provider

TRT_CACHE_SUFFIX = ".trt-cache"


def tensorrt_library_version() -> str:
    """libnvinfer's own version number (getInferLibVersion, e.g. "100300" for 10.3.0), "" where it does not load."""
    for name in ("libnvinfer.so.10", "libnvinfer.so.11", "libnvinfer.so", "nvinfer_10.dll", "nvinfer.dll"):
        try:
            return str(int(ctypes.CDLL(name).getInferLibVersion()))
        except (OSError, AttributeError):
            continue
    return ""


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".tedloc-write-test-"):
            return True
    except OSError:
        return False


def tensorrt_cache_dirs(model: Path, cache: Path | None, ort_version: str) -> tuple[Path, Path]:
    """(timing cache folder, engine cache folder) of one model. The per-model folder is `<model stem>.trt-cache`
    in `cache` (--trt-cache DIR) or beside the model (a user cache folder when that is read-only). It holds the
    timing cache, which any later build on this GPU reuses, and one engine folder keyed by the model file's
    hash and the ORT and TensorRT versions: ORT names cached engines by the model's path and graph, not its
    weights, so a retrained model at the same path would otherwise load the old engine. Other keys' engine
    folders are stale (another model file or version) and are removed."""
    if cache is not None:
        root = Path(cache).expanduser() / (model.stem + TRT_CACHE_SUFFIX)
        if not _writable(root):
            raise UserError(f"--trt-cache {cache}: cannot write TensorRT's caches there; choose a writable folder")
    else:
        root = model.resolve().parent / (model.stem + TRT_CACHE_SUFFIX)
        if not _writable(root):
            base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tedloc-edge" / "trt"
            where = hashlib.sha256(str(model.resolve()).encode()).hexdigest()[:8]
            root = base / f"{model.stem}-{where}{TRT_CACHE_SUFFIX}"
            logger.warning("%s: its folder is read-only; TensorRT's caches go to %s (--trt-cache DIR to choose)", model, root)
            root.mkdir(parents=True, exist_ok=True)
    key = f"engine-{file_sha256(model)[:16]}-ort{ort_version}-trt{tensorrt_library_version() or 'unknown'}"
    for stale in root.glob("engine-*"):
        if stale.name != key and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    engines = root / key
    engines.mkdir(exist_ok=True)
    return root, engines


def tensorrt_options(meta: BundleMeta, static_batch: int | None, max_batch: int, timing: Path, engines: Path) -> dict[str, str]:
    """ORT's TensorRT EP options for one model: engine and timing caches on, the optimization profile from the
    bundle's input size (batch 1..max_batch, tuned for max_batch; none for a static-batch model, whose shapes
    are fixed), and the builder precision flags the model's precision needs (a Q/DQ model needs INT8 on)."""
    options = {
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": str(engines),
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": str(timing),
        "trt_fp16_enable": "1" if meta.precision == "fp16" else "0",
        "trt_int8_enable": "1" if meta.precision == "int8" else "0",
    }
    if static_batch is None:
        h, w = meta.input_size
        shape = lambda n: f"{INPUT_NAME}:{n}x{h}x{w}x3"  # noqa: E731 - NHWC, as the graph takes it
        options.update(trt_profile_min_shapes=shape(1), trt_profile_opt_shapes=shape(max_batch), trt_profile_max_shapes=shape(max_batch))
    return options


def peek_model(ort: Any, path: Path) -> tuple[BundleMeta, int | None]:
    """The bundle and static batch of an ONNX file, read before the real session is made (its providers' options
    depend on them) by a CPU session with graph optimizations off."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=[CPU_EP])
    except Exception as exc:  # noqa: BLE001 - ORT raises Fail / InvalidProtobuf / RuntimeException
        raise UserError(f"{path}: onnxruntime cannot load this model ({first_line(exc)}); re-export it with `tedloc-edge export RUN`") from None
    meta = read_onnx_meta(path, session.get_modelmeta().custom_metadata_map)
    inputs = [i for i in session.get_inputs() if i.name == INPUT_NAME]
    batch = inputs[0].shape[0] if inputs else None
    return meta, batch if isinstance(batch, int) and batch > 0 else None


def with_tensorrt_options(ort: Any, providers: Sequence[Any], path: Path, max_batch: int, cache: Path | None = None) -> list[Any]:
    """TensorRT's EP as (name, options) for this model (`tensorrt_options`), or dropped for a cpu-mode INT8 model
    (uint8 activations with zero points, which TensorRT cannot build): the CUDA EP runs it instead."""
    if TRT_EP not in providers:
        return list(providers)
    meta, static_batch = peek_model(ort, path)
    if meta.precision == "int8" and meta.extra.get("int8_mode") == "cpu":
        logger.info("%s: a cpu-mode INT8 model (zero points TensorRT cannot build); not asking for TensorRT's EP", path)
        return [p for p in providers if p != TRT_EP]
    timing, engines = tensorrt_cache_dirs(path, cache, str(ort.__version__))
    options = tensorrt_options(meta, static_batch, max(1, int(max_batch)), timing, engines)
    logger.info("%s: TensorRT EP engine cache %s (the first start builds the engine: minutes on a Jetson)", path, engines)
    return [(TRT_EP, options) if p == TRT_EP else p for p in providers]
