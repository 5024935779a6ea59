"""Which ONNX Runtime execution providers a session asks for, and what the CUDA EP needs before it starts.

`choose_providers` maps --device to providers (TensorRT's EP only where libnvinfer loads), `graph_providers`
and `with_cuda_options` shape the CUDA EP entry (CUDA graphs, provider options), and `preload_cuda_libraries`
loads CUDA and cuDNN the way onnxruntime-gpu offers, so a torch-free process finds pip-installed libraries.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
from pathlib import Path
from typing import Any, Mapping, Sequence

from tedloc_edge.errors import UserError

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
