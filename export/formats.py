"""The one table of export formats: name, file suffix, whether a GPU is needed, precisions and options.

Everything that checks a user's --format / --precision / options reads this table (as Ultralytics' export
table), so a format and what it accepts are declared in one place. Unknown names get a close-match hint.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Iterable

from tedloc_edge.errors import UserError

PRECISIONS = ("fp32", "fp16", "int8")

# Options every format takes (they shape the ONNX, the verification or the int8 calibration).
COMMON_OPTIONS = frozenset(
    {"opset", "verify", "images", "calib_images", "int8_max_drop", "int8_allow_drop", "checkpoint", "verify_images"}
)


@dataclass(frozen=True)
class ExportFormat:
    name: str
    suffix: str  # file suffix, or "/" for a folder
    needs_gpu: bool
    precisions: tuple[str, ...]
    options: frozenset[str]  # format-specific options, beyond COMMON_OPTIONS
    description: str


FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat(
            "onnx", ".onnx", False, PRECISIONS, frozenset({"static_batch"}),
            "ONNX with the bundle metadata; runs in ONNX Runtime anywhere",
        ),
        ExportFormat(
            "engine", ".plan", True, PRECISIONS,
            frozenset({"batch_min", "batch_opt", "batch_max", "workspace_gib", "timing_cache", "dla_core", "gpu_fallback"}),
            "TensorRT plan + <plan>.json build record; built on the device that runs it",
        ),
        ExportFormat(
            "triton", "/", False, PRECISIONS,
            frozenset({"triton_backend", "triton_variants", "exist_ok", "batch_min", "batch_opt", "batch_max", "workspace_gib", "timing_cache"}),
            "Triton model repository (tedloc_model, tedloc_decode, tedloc ensemble, tedloc_python; docs/triton.md)",
        ),
    )
}

TRITON_BACKENDS = ("onnxruntime", "tensorrt")


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
    """Reject options this format does not take (only options the user set: None means unset)."""
    allowed = fmt.options | COMMON_OPTIONS
    for key, value in options.items():
        if value is None or key in allowed:
            continue
        flag = "--" + key.replace("_", "-")
        takers = [f.name for f in FORMATS.values() if key in f.options]
        where = f" (it applies to --format {' or '.join(takers)})" if takers else ""
        raise UserError(f"option {flag} does not apply to --format {fmt.name}{where}; drop it")


def check_batch_range(batch_min: int, batch_opt: int, batch_max: int) -> tuple[int, int, int]:
    if not 1 <= batch_min <= batch_opt <= batch_max:
        raise UserError(
            f"batch range min={batch_min} opt={batch_opt} max={batch_max} is not 1 <= min <= opt <= max; "
            "fix --batch-min/--batch-opt/--batch-max"
        )
    return batch_min, batch_opt, batch_max
