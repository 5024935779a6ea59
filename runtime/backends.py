"""One way in to a model file: `load_runner(path, backend, device, ...)` picks and loads the backend.

| backend       | model file                   | devices | runs on                                     |
|---------------|------------------------------|---------|---------------------------------------------|
| onnxruntime   | .onnx                        | cpu, cuda, auto (cuda when onnxruntime-gpu has it) | CPU EP; TensorRT + CUDA EPs with onnxruntime-gpu |
| tensorrt      | .plan / .engine (+ .json)    | cuda    | native TensorRT, execute_async_v3           |
| auto          | by suffix: engines -> tensorrt, anything else -> onnxruntime |
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Mapping, Sequence

from tedloc_edge.errors import UserError
from tedloc_edge.runtime.runner import Runner

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime", "tensorrt")
ENGINE_SUFFIXES = (".plan", ".engine", ".trt")


def resolve_backend(path: Path, backend: str) -> str:
    if backend not in BACKENDS:
        hint = difflib.get_close_matches(backend, BACKENDS, n=1)
        raise UserError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    is_engine = path.suffix.lower() in ENGINE_SUFFIXES
    if backend == "auto":
        return "tensorrt" if is_engine else "onnxruntime"
    if backend == "tensorrt" and not is_engine:
        raise UserError(
            f"{path}: native TensorRT runs a built engine (.plan); build one with `tedloc-edge export RUN --format engine`, "
            "or run this file with --backend onnxruntime --device cuda (TensorRT execution provider)"
        )
    if backend == "onnxruntime" and is_engine:
        raise UserError(f"{path}: onnxruntime runs the .onnx, not a TensorRT engine; pass the .onnx or use --backend tensorrt")
    return backend


def load_runner(
    path: str | Path,
    backend: str = "auto",
    device: str = "auto",
    providers: Sequence[str] | None = None,
    max_batch: int = 8,
    threads: int = 0,
    cuda_graph: bool = False,
    cuda_options: Mapping[str, str] | None = None,
    trt_cache: str | Path | None = None,
    metadata: str | Path | None = None,
) -> Runner:
    """Load a model for inference; every problem is a one-line UserError naming the file and the fix."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such model file; pass the .onnx (or .plan) written by `tedloc-edge export RUN`")
    if not path.is_file():
        raise UserError(f"{path}: is a folder, not a model file; pass the .onnx (or .plan) inside it")
    try:
        with path.open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise UserError(f"{path}: cannot read the model ({exc.strerror}); check its permissions") from None
    if max_batch < 1:
        raise UserError(f"max batch must be at least 1, not {max_batch}")
    chosen = resolve_backend(path, backend)
    if chosen == "tensorrt":
        if device == "cpu":
            raise UserError(f"{path}: a TensorRT engine runs on the GPU only; use --device cuda, or run the .onnx on CPU")
        if cuda_graph:
            raise UserError(f"{path}: --cuda-graph applies to ONNX Runtime's CUDA EP; drop it for a TensorRT engine")
        from tedloc_edge.runtime.backend_tensorrt import TensorRTRunner

        return TensorRTRunner(path, max_batch=max_batch, metadata=metadata)
    if metadata is not None:
        raise UserError(f"{path}: --metadata is for a TensorRT plan built elsewhere (trtexec); an .onnx carries its own")
    from tedloc_edge.runtime.backend_onnxruntime import OnnxRuntimeRunner

    return OnnxRuntimeRunner(path, device=device, providers=providers, max_batch=max_batch, threads=threads,
                             cuda_graph=cuda_graph, cuda_options=cuda_options, trt_cache=trt_cache)
