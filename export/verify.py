"""The export comparator (Polygraphy's shape): two runners on the same images, then validation, then a tolerance.

The runners only run (the same uint8 batch into `Runner.infer`, the graph contract's outputs out): the reference
is the torch module as a `TorchRunner`, the candidate the runtime's own runner for the exported file (ONNX
Runtime on the CPU, or the TensorRT engine just built). Validation (NaN / inf) is its own step; then, per output,
max abs and max rel error, and the task result MMDeploy's regression tests check: the decoded boxes
(`tedloc_edge.boxes.decode_boxes`, the runtime's and evaluation's decoder) and the top-1 class. Tolerances
depend on the precision: fp32 must reproduce torch (boxes and classes identical); fp16 and int8 are bounded, and
int8 is judged on accuracy by the int8 gate, so its tensor errors are reported, not enforced.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tedloc_edge.boxes import box_iou, decode_boxes, protocol_boxes
from tedloc_edge.bundle import BundleMeta
from tedloc_edge.contract import OUTPUT_NAMES
from tedloc_edge.errors import UserError
from tedloc_edge.runtime.runner import Runner

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


class VerificationError(UserError):
    """An exported model that does not reproduce the torch model within tolerance."""


@dataclass(frozen=True)
class Tolerance:
    atol: float  # elementwise |a - b| <= atol * scale + rtol * |torch|, scale = max(1, max |torch|) of that output
    rtol: float
    min_box_iou: float  # per image, best IoU of the exported model's box against torch's
    max_top1_disagree: float  # share of images whose top-1 class may differ


TOLERANCES = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-3, min_box_iou=0.95, max_top1_disagree=0.0),
    "fp16": Tolerance(atol=2e-2, rtol=2e-2, min_box_iou=0.5, max_top1_disagree=0.05),
    "int8": Tolerance(atol=math.inf, rtol=math.inf, min_box_iou=0.0, max_top1_disagree=1.0),
}
# A TensorRT engine picks its own kernels (TF32 for fp32 layers on Ampere and newer): fp16-like bounds.
ENGINE_TOLERANCE = {"fp32": "fp16", "fp16": "fp16", "int8": "int8"}


@dataclass
class OutputDiff:
    name: str
    max_abs: float
    max_rel: float
    within: bool


@dataclass
class VerifyReport:
    precision: str
    num_images: int
    outputs: list[OutputDiff]
    boxes_identical: int
    min_box_iou: float
    mean_box_iou: float
    top1_agree: int
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        errs = ", ".join(f"{o.name} max abs {o.max_abs:.2e} rel {o.max_rel:.2e}" for o in self.outputs)
        n = self.num_images
        return (
            f"{self.precision} vs torch on {n} images: {errs}; boxes identical {self.boxes_identical}/{n} "
            f"(min IoU {self.min_box_iou:.3f}); top-1 agree {self.top1_agree}/{n}"
        )


def runtime_runner(path: str | Path, backend: str, max_batch: int) -> Runner:
    """The runtime's own runner for an exported file (e.g. the TensorRT engine just built), as deployment runs it."""
    from tedloc_edge.runtime.backends import load_runner

    return load_runner(path, backend=backend, device="cuda" if backend == "tensorrt" else "cpu", max_batch=max_batch)


def run_outputs(runner: Runner, images: np.ndarray, batch: int = 8) -> dict[str, np.ndarray]:
    """The runner's outputs for `images`, `batch` at a time, by name (each copied at once: runners reuse buffers)."""
    parts = [[np.array(out) for out in runner.infer(images[i : i + batch])] for i in range(0, len(images), batch)]
    return {name: np.concatenate([p[k] for p in parts]) for k, name in enumerate(OUTPUT_NAMES)}


def compare_tensors(ref: np.ndarray, got: np.ndarray, name: str, tol: Tolerance) -> OutputDiff:
    if ref.shape != got.shape:
        raise VerificationError(f"output {name}: shape {got.shape} differs from torch's {ref.shape}; re-export the model")
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    rel = diff / np.maximum(np.abs(ref.astype(np.float64)), 1e-6)
    # atol is relative to the output's own range: logits are cosines / T (T = 0.1 gives +-10), so an fp16
    # error of 5e-3 in a cosine is 5e-2 in a logit and must not be judged like a [0, 1] probability.
    scale = max(1.0, float(np.abs(ref).max(initial=0.0)))
    within = bool(np.all(diff <= tol.atol * scale + tol.rtol * np.abs(ref)))
    return OutputDiff(name, float(diff.max(initial=0.0)), float(rel.max(initial=0.0)), within)


def compare_boxes(ref_maps: np.ndarray, got_maps: np.ndarray, meta: BundleMeta, pixels: int = 0) -> tuple[int, np.ndarray]:
    """(number of images whose boxes agree to `pixels` (0: identical), per-image best IoU of the candidate's boxes
    against the reference's); boxes as the runtime and evaluation decode them (int64 pixels)."""
    agree, ious = 0, np.empty(len(ref_maps))
    for i, (ref, got) in enumerate(zip(ref_maps, got_maps)):
        a = protocol_boxes(decode_boxes(ref, meta.threshold, meta.input_size, meta.contour_mode))
        b = protocol_boxes(decode_boxes(got, meta.threshold, meta.input_size, meta.contour_mode))
        agree += int(a.shape == b.shape and np.abs(a - b).max() <= pixels)
        ious[i] = float(box_iou(b, a).max(axis=0).min())
    return agree, ious


def validate(outputs: dict[str, np.ndarray], label: str) -> list[str]:
    """Polygraphy's validation step: every output finite."""
    return [f"{label} {name} has NaN or inf" for name, v in outputs.items() if not np.isfinite(v).all()]


def compare(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], meta: BundleMeta, precision: str) -> VerifyReport:
    """Tensors, decoded boxes and top-1 classes of `got` against `ref` at the tolerance of `precision`."""
    tol = TOLERANCES[precision]
    diffs = [compare_tensors(ref[name], got[name], name, tol) for name in OUTPUT_NAMES]
    failures = [f"{d.name} max abs error {d.max_abs:.2e} exceeds {tol.atol:g}*range + {tol.rtol:g}*|torch|" for d in diffs if not d.within]
    identical, ious = compare_boxes(ref["fg_map"], got["fg_map"], meta)
    n = len(ious)
    if n and ious.min() < tol.min_box_iou:
        failures.append(f"a decoded box has IoU {ious.min():.3f} with torch's (needs >= {tol.min_box_iou})")
    agree = int((ref["logits"].argmax(1) == got["logits"].argmax(1)).sum())
    if n and (n - agree) / n > tol.max_top1_disagree:
        failures.append(f"top-1 class differs from torch on {n - agree}/{n} images")
    return VerifyReport(
        precision, n, diffs, identical, float(ious.min(initial=1.0)), float(ious.mean()) if n else 1.0, agree, failures
    )


def compare_runners(reference: Runner, candidate: Runner, images: np.ndarray, precision: str = "fp32", batch: int = 8,
                    tolerance: str | None = None) -> VerifyReport:
    """Run both on `images` (uint8 NHWC at the input size), validate each, then compare them with the tolerance
    of `tolerance` (default: the precision's), decoding boxes with the reference's bundle."""
    if len(images) == 0:
        raise UserError("verification needs at least one image; pass --images or use --no-verify")
    ref, got = run_outputs(reference, images, batch), run_outputs(candidate, images, batch)
    invalid = validate(ref, "torch") + validate(got, precision)
    report = compare(ref, got, reference.meta, tolerance or precision)
    report.precision, report.failures = precision, invalid + report.failures
    logger.info("verify %s", report.summary())
    return report


def verify_export(
    model: "torch.nn.Module", onnx_path: str | Path, meta: BundleMeta, images: np.ndarray, precision: str = "fp32",
    runner: Runner | None = None, batch: int = 8, tolerance: str | None = None,
) -> VerifyReport:
    """torch `model` against the exported file: `runner` (e.g. `runtime_runner` of an engine; closed after), or
    ONNX Runtime on the CPU for `onnx_path`."""
    from tedloc_edge.train.predict import TorchRunner

    with TorchRunner(model, meta, max_batch=batch) as reference, runner or runtime_runner(onnx_path, "onnxruntime", batch) as candidate:
        return compare_runners(reference, candidate, images, precision, batch, tolerance)


def require_passed(report: VerifyReport, path: str | Path) -> None:
    if not report.passed:
        raise VerificationError(
            f"{path}: verification failed ({'; '.join(report.failures)}); nothing was written. "
            "Re-export with --no-verify to keep it anyway, or report the run"
        )
