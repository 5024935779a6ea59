"""The one table of export formats, which drives the export (as Ultralytics' export table), and every export
option declared once with its CLI flag and help (`tedloc-edge export` is built from `ExportOptions`).

A format names the exporter's function that makes it and its file suffix; `needs_gpu` checks the GPU (one line
when there is none) before any work; options it does not take are refused. Unknown names get a close-match hint.
Torch-free, so `tedloc-edge --help` stays light.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from tedloc_edge.cli_options import option
from tedloc_edge.errors import UserError

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class ExportFormat:
    name: str
    suffix: str  # the product's file suffix, or "/" for a folder
    needs_gpu: bool  # built on the GPU that runs it: the GPU is checked before any export work
    precisions: tuple[str, ...]
    options: frozenset[str]  # the ExportOptions fields only some formats take (the rest: every format)
    stage: str = ""  # the exporter's function making it from the model before it; "": the ONNX itself
    wraps_backend: bool = False  # wraps a model exported in the format its --triton-backend names


ENGINE_OPTIONS = frozenset({"batch_min", "batch_opt", "batch_max", "workspace_gib", "timing_cache"})  # EngineSpec's
DLA_OPTIONS = frozenset({"dla_core", "gpu_fallback"})  # EngineSpec's too: a native engine only (docs/jetson.md)
FORMATS: dict[str, ExportFormat] = {f.name: f for f in (
    # ONNX with the bundle metadata; runs in ONNX Runtime anywhere
    ExportFormat("onnx", ".onnx", False, PRECISIONS, frozenset({"static_batch"})),
    # TensorRT plan + <plan>.json build record; built on the device that runs it
    ExportFormat("engine", ".plan", True, PRECISIONS, ENGINE_OPTIONS | DLA_OPTIONS, stage="engine_stage"),
    # Triton model repository (tedloc_model, tedloc_decode, tedloc ensemble, tedloc_python; docs/triton.md)
    ExportFormat("triton", "/", False, PRECISIONS, ENGINE_OPTIONS | {"triton_backend", "triton_variants"},
                 stage="triton_stage", wraps_backend=True),
)}
ONNX = FORMATS["onnx"]
TRITON_BACKENDS = {"onnxruntime": "onnx", "tensorrt": "engine"}  # what tedloc_model runs on -> its format; first: default


@dataclass(frozen=True)
class ExportOptions:
    """Every option of an export; None means unset (the format's default, and not refused by check_options)."""

    format: str = option("onnx", "onnx | engine (TensorRT plan) | triton (model repository).", short="-f")
    precision: str | None = option(None, "fp32 | fp16 | int8 (Q/DQ). Default fp32.", short="-p")  # or an ONNX source's own
    output: Path | None = option(None, "Output file (onnx, engine) or folder (triton). Default RUN/export/.", short="-o")
    checkpoint: str = option("best", "best | last | path to a .pt.")
    opset: int = option(17, "ONNX opset, 17..20.")
    verify: bool = option(True, "Compare ONNX Runtime with torch on real images after export.", flag="--verify/--no-verify")
    images: tuple[str, ...] = option((), "Images (files, folders, globs) to verify on. Default: the run's val split.")
    verify_images: int = option(32, "How many images to verify on.")
    calib_images: int = option(200, "int8: how many calibration images.")
    calib_dir: tuple[str, ...] = option((), "int8: calibration images (files, folders, globs). Default: the run's train split.")
    int8_max_drop: float = option(1.0, "int8: largest allowed drop of MaxBoxAcc and of Top-1 Loc on val, in points.")
    int8_allow_drop: bool = option(False, "int8: keep the model even when the drop is larger (still printed).")
    int8_mode: str | None = option(None, "int8: cpu (uint8 activations, fast in ONNX Runtime on a CPU) | tensorrt (symmetric, "
                                   "zero point 0, for engines). Default: tensorrt when an engine is built, else cpu.")
    int8_search: bool | None = option(None, "int8: rank the layers by sensitivity on val and keep the fewest worst ones "
                                      "float until the gate passes. Default: only when the gate fails.",
                                      flag="--int8-search/--no-int8-search")
    int8_max_float: int | None = option(None, "int8: most layers the search may keep float (8).")
    batch_min: int | None = option(None, "engine/triton: smallest batch of the TensorRT profile (1).")
    batch_opt: int | None = option(None, "engine/triton: batch TensorRT tunes for (1).")
    batch_max: int | None = option(None, "engine/triton: largest batch (8); Triton's max_batch_size.")
    workspace_gib: float | None = option(None, "engine: TensorRT workspace limit in GiB (2).")
    timing_cache: Path | None = option(None, "engine: persistent timing cache file (default beside the plan).")
    dla_core: int | None = option(None, "engine: build for this DLA core (Jetson AGX/NX Orin, Xavier); fp16/int8, one "
                                  "batch size (docs/jetson.md).")
    gpu_fallback: bool | None = option(None, "engine, --dla-core: run the layers the DLA cannot on the GPU instead of "
                                       "failing the build.")
    triton_backend: str | None = option(None, "triton: what tedloc_model runs on: onnxruntime (default) | tensorrt.")
    triton_variants: tuple[str, ...] | None = option(None, "triton: model | decode | ensemble | python (repeat; default all). "
                                                     "See docs/triton.md.", flag="--triton-variant")  # None: all
    exist_ok: bool = option(False, "Replace outputs that exist (model files; triton: model folders in the repository).")
    static_batch: int | None = option(None, "onnx: also write <model>_b<N>.onnx with a fixed batch of N (what ONNX Runtime's "
                                      "CUDA graphs need; `infer --cuda-graph`).")

    def format_options(self) -> dict[str, object]:
        """The options only some formats take, as the table names them."""
        return {k: getattr(self, k) for f in FORMATS.values() for k in f.options}




def close_match_hint(word: str, choices: Iterable[str]) -> str:
    choices = list(choices)
    match = difflib.get_close_matches(word.lower(), choices, n=1, cutoff=0.5)
    hint = f"; did you mean '{match[0]}'?" if match else ""
    return f"choose one of {', '.join(choices)}{hint}"


def get_format(name: str) -> ExportFormat:
    key = name.strip().lower()
    if key in ("plan", "trt", "tensorrt"):
        key = "engine"
    if key not in FORMATS:
        raise UserError(f"unknown export format '{name}': {close_match_hint(key, FORMATS)}")
    return FORMATS[key]


def check_precision(fmt: ExportFormat, precision: str) -> str:
    key = precision.strip().lower()
    if key not in fmt.precisions:
        raise UserError(f"unknown precision '{precision}' for --format {fmt.name}: {close_match_hint(key, fmt.precisions)}")
    return key


def check_options(fmt: ExportFormat, options: dict[str, Any]) -> None:
    """Reject options the user set (None is unset) that only other formats take; one no format names, all take."""
    for key, value in options.items():
        takers = [f.name for f in FORMATS.values() if key in f.options]
        if value is not None and takers and fmt.name not in takers:
            raise UserError(f"option --{key.replace('_', '-')} does not apply to --format {fmt.name} "
                            f"(it applies to --format {' or '.join(takers)}); drop it")


def route(fmt: ExportFormat, triton_backend: str | None) -> tuple[ExportFormat, ...]:
    """The formats an export makes, in order: the ONNX, the model a repository wraps, the product (no repeats)."""
    model = fmt
    if fmt.wraps_backend:
        backend = triton_backend or next(iter(TRITON_BACKENDS))
        if backend not in TRITON_BACKENDS:
            raise UserError(f"unknown --triton-backend '{backend}': {close_match_hint(backend, TRITON_BACKENDS)}")
        model = FORMATS[TRITON_BACKENDS[backend]]
    return tuple(dict.fromkeys((ONNX, model, fmt)))


def check_batch_range(batch_min: int, batch_opt: int, batch_max: int) -> tuple[int, int, int]:
    if not 1 <= batch_min <= batch_opt <= batch_max:
        raise UserError(
            f"batch range min={batch_min} opt={batch_opt} max={batch_max} is not 1 <= min <= opt <= max; "
            "fix --batch-min/--batch-opt/--batch-max"
        )
    return batch_min, batch_opt, batch_max
