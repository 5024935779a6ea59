"""The TensorRT build record: what an engine was built with, and whether this machine may run it.

A TensorRT plan is specific to the TensorRT version and the GPU architecture (compute capability) it was
built on. Export writes this record into the plan's sidecar JSON (``build`` key, `tedloc_edge.bundle`);
the runtime checks it before deserializing, so a mismatch is one clear line with the rebuild command
instead of TensorRT's "serialization version mismatch". Pure python: no numpy, no TensorRT, no torch.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from tedloc_edge.bundle import BundleError, BundleMeta, read_onnx_meta, read_plan_sidecar, sidecar_path

RECORD_VERSION = 1
REQUIRED_KEYS = ("tensorrt_version", "compute_capability", "precision", "onnx_sha256")


class BuildRecordError(BundleError):
    """An engine that this machine must not (or cannot) run; the message carries the rebuild command."""


def plan_bundle(plan_path: str | os.PathLike, metadata: str | os.PathLike | None = None) -> tuple[BundleMeta, dict[str, Any] | None]:
    """The bundle and build record of a plan: from its ``<plan>.json``; or, for a plan built elsewhere (trtexec),
    from `metadata` (the .onnx it was built from, or a bundle JSON) with no build record, so the version and GPU
    checks cannot run (the caller says so). A sidecar given as `metadata` describes another plan: its record is
    dropped."""
    if metadata is None:
        if not sidecar_path(plan_path).is_file():
            raise BundleError(f"{plan_path}: no {sidecar_path(plan_path).name} beside it (the bundle and build record "
                              "`tedloc-edge export` writes); rebuild with `tedloc-edge export MODEL.onnx --format engine`, "
                              "or run a plan built elsewhere (trtexec) with --metadata MODEL.onnx")
        return read_plan_sidecar(plan_path)
    source = Path(metadata)
    if not source.is_file():
        raise BundleError(f"{source}: no such metadata file; pass the .onnx the plan was built from, or a bundle JSON")
    if source.suffix.lower() == ".onnx":
        return read_onnx_meta(source), None
    try:
        doc = json.loads(source.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{source}: not a JSON bundle ({exc}); pass the .onnx the plan was built from") from None
    if not isinstance(doc, dict):
        raise BundleError(f"{source}: not a JSON bundle (not an object); pass the .onnx the plan was built from")
    doc.pop("build", None)
    return BundleMeta.from_dict(doc, str(source)), None


def normalize_compute_capability(cc: Any) -> str:
    """"8.7", (8, 7), "sm_87", "87" or 8.7 -> "8.7"."""
    if isinstance(cc, (tuple, list)) and len(cc) == 2:
        return f"{int(cc[0])}.{int(cc[1])}"
    text = str(cc).strip().lower().removeprefix("sm_").removeprefix("sm")
    match = re.fullmatch(r"(\d+)\.(\d+)", text)
    if match:
        return f"{int(match.group(1))}.{int(match.group(2))}"
    if re.fullmatch(r"\d{2,3}", text):  # "87" -> 8.7, "100" -> 10.0, "121" -> 12.1
        return f"{int(text[:-1])}.{int(text[-1])}"
    raise BuildRecordError(f"compute capability {cc!r} is not of the form 'major.minor' (e.g. 8.7)")


def version_tuple(version: str) -> tuple[int, ...]:
    """"10.13.3.9" -> (10, 13, 3, 9); non-numeric tails are dropped ("10.13.3.9.post1" -> (10, 13, 3, 9))."""
    parts: list[int] = []
    for piece in str(version).split("."):
        match = re.match(r"\d+", piece)
        if not match:
            break
        parts.append(int(match.group(0)))
    return tuple(parts)


def rebuild_command(record: dict[str, Any]) -> str:
    """The command that rebuilds this engine (stored at build time; a generic one for old records)."""
    stored = record.get("rebuild_command")
    if isinstance(stored, str) and stored:
        return stored
    precision = record.get("precision", "fp16")
    return f"tedloc-edge export RUN --format engine --precision {precision}"


def make_build_record(
    *,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: Any,
    cuda_version: str,
    precision: str,
    input_shapes: dict[str, dict[str, list[int]]],
    onnx_sha256: str,
    workspace_bytes: int,
    rebuild: str,
    built_at: str,
    dla_core: int | None = None,
    gpu_fallback: bool = False,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``build`` section of a plan's sidecar JSON, with every field the check and a reader need."""
    record: dict[str, Any] = {
        "record_version": RECORD_VERSION,
        "tensorrt_version": str(tensorrt_version),
        "gpu_name": gpu_name,
        "compute_capability": normalize_compute_capability(compute_capability),
        "cuda_version": cuda_version,
        "precision": precision,
        "input_shapes": input_shapes,
        "onnx_sha256": onnx_sha256,
        "workspace_bytes": int(workspace_bytes),
        "built_at": built_at,
        "rebuild_command": rebuild,
        "dla_core": dla_core,  # None: built for the GPU
        "gpu_fallback": bool(gpu_fallback),
    }
    if extra:
        record.update(extra)
    return record


def check_build_record(
    record: dict[str, Any],
    trt_version: str,
    compute_capability: Any,
    source: str = "engine",
) -> None:
    """Refuse an engine built with another TensorRT release or for another GPU architecture.

    TensorRT plans (without version-compatible builds, which this project does not make) deserialize only
    on the TensorRT release that built them, and their kernels only run on the compute capability they
    were tuned for. Another major version is always refused; so are minor and patch differences, which
    TensorRT itself rejects at deserialization. The build number (4th field) is not compared.
    """
    missing = [key for key in REQUIRED_KEYS if key not in record]
    if missing:
        raise BuildRecordError(
            f"{source}: build record lacks {', '.join(missing)}; rebuild the engine: {rebuild_command(record)}"
        )
    built = version_tuple(record["tensorrt_version"])
    here = version_tuple(trt_version)
    fix = f"rebuild it on this device: {rebuild_command(record)}"
    if not built or not here:
        raise BuildRecordError(f"{source}: unreadable TensorRT version ({record['tensorrt_version']!r} vs {trt_version!r}); {fix}")
    if built[:1] != here[:1]:
        raise BuildRecordError(
            f"{source}: built with TensorRT {record['tensorrt_version']} (major {built[0]}), this machine has "
            f"TensorRT {trt_version} (major {here[0]}); {fix}"
        )
    if built[:3] != here[:3]:
        raise BuildRecordError(
            f"{source}: built with TensorRT {record['tensorrt_version']}, this machine has {trt_version}; "
            f"plans load only on the release that built them; {fix}"
        )
    cc_built = normalize_compute_capability(record["compute_capability"])
    cc_here = normalize_compute_capability(compute_capability)
    if cc_built != cc_here:
        gpu = record.get("gpu_name") or "another GPU"
        raise BuildRecordError(
            f"{source}: built for compute capability {cc_built} ({gpu}), this GPU is {cc_here}; {fix}"
        )
