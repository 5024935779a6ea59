"""The INT8 accuracy gate: fp32 and int8 ONNX scored on the val split with the evaluation metrics.

Tensor errors say little about an int8 model; what matters is whether it still localizes and classifies.
Both models run through the runtime (`tedloc_edge.runtime.Localizer`, same preprocessing as deployment)
and are scored by `tedloc_edge.evaluate.evaluate_predictor`. A drop of MaxBoxAcc or Top-1 Loc larger than
`max_drop` points refuses the export unless the user allows it; both figures are printed either way, with
the images behind the drop: how many fp32 got right and int8 lost, how many the other way, and the exact
McNemar p-value of that split, because on a small val split one image is already more than a point.
The gate knows its power: when one val image is worth more than the allowed drop it says so before scoring
and names the split size that would resolve it (`power_note`). The record keeps fp32's per-image hits, so a
TensorRT engine built from the file is gated against the same fp32 figures (`gate_engine`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from tedloc_edge.errors import UserError

logger = logging.getLogger(__name__)

GATED_METRICS = ("maxboxacc", "top1_loc")


@dataclass(frozen=True)
class GateResult:
    fp32: dict[str, float]
    int8: dict[str, float]
    max_drop: float
    images: int = 0  # how many val images scored both: one image is 100 / images points
    flips: dict[str, tuple[int, int]] = field(default_factory=dict)  # metric -> (images lost, images gained) by int8
    fp32_hits: dict[str, str] = field(default_factory=dict)  # metric -> fp32's per-image hits as "0101..."
    search: dict[str, Any] | None = None  # the sensitivity search's record (int8_search.SearchReport.to_dict)

    @property
    def drops(self) -> dict[str, float]:
        return {k: self.fp32[k] - self.int8[k] for k in GATED_METRICS}

    @property
    def passed(self) -> bool:
        return all(drop <= self.max_drop for drop in self.drops.values())

    def p_value(self, metric: str) -> float | None:
        """Exact McNemar p-value of `metric`'s lost/gained split (None without per-image results)."""
        return mcnemar_exact(*self.flips[metric]) if metric in self.flips else None

    @property
    def within_chance(self) -> bool:
        """Every failing drop could come from chance alone (p >= 0.05) on these few images."""
        failing = [k for k in GATED_METRICS if self.drops[k] > self.max_drop]
        return bool(failing) and all((self.p_value(k) or 0.0) >= 0.05 for k in failing)

    def summary(self) -> str:
        parts = [f"{k} fp32 {self.fp32[k]:.2f} int8 {self.int8[k]:.2f} (drop {self.drops[k]:+.2f}{self._flip_text(k)})" for k in GATED_METRICS]
        scale = f" ({self.images} images: one image is {100 / self.images:.2f} points)" if self.images else ""
        unit = "point" if self.max_drop == 1 else "points"
        return "; ".join(parts) + f"; allowed drop {self.max_drop:g} {unit}{scale}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record, stored in the int8 model's metadata so the file carries its own accuracy evidence."""
        return {
            "split": "val",
            "images": self.images,
            "max_drop": self.max_drop,
            "passed": self.passed,
            "fp32": self.fp32,
            "int8": self.int8,
            "flips": {k: {"lost": lost, "gained": gained, "mcnemar_p": round(mcnemar_exact(lost, gained), 4)}
                      for k, (lost, gained) in self.flips.items()},
            **({"fp32_hits": self.fp32_hits} if self.fp32_hits else {}),
            **({"search": self.search} if self.search is not None else {}),
        }

    def _flip_text(self, metric: str) -> str:
        if metric not in self.flips:
            return ""
        lost, gained = self.flips[metric]
        return f": int8 lost {lost} and gained {gained} images, McNemar p {self.p_value(metric):.2f}"


def mcnemar_exact(lost: int, gained: int) -> float:
    """Two-sided exact McNemar test: the binomial probability of a split at least this uneven, given fair odds."""
    n = lost + gained
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(lost, gained) + 1)) / 2**n
    return min(1.0, 2 * tail)


class Int8AccuracyError(UserError):
    """The int8 model loses more accuracy than allowed."""


def gate(fp32: dict[str, Any], int8: dict[str, Any], max_drop: float, images: int = 0,
         hits: tuple[dict[str, Any], dict[str, Any]] | None = None) -> GateResult:
    """Compare the two metric dicts; `hits` (fp32, int8 per-image hits, same images in the same order) adds the flips."""
    missing = [k for k in GATED_METRICS if k not in fp32 or k not in int8]
    if missing:
        raise KeyError(f"evaluation report lacks {', '.join(missing)}")
    pick = lambda doc: {k: float(doc[k]) for k in GATED_METRICS}  # noqa: E731
    fp32_hits = {k: "".join("1" if h else "0" for h in np.asarray(v, bool)) for k, v in hits[0].items() if k in GATED_METRICS} if hits else {}
    return GateResult(pick(fp32), pick(int8), float(max_drop), int(images), flips=_flips(hits) if hits else {}, fp32_hits=fp32_hits)


def _flips(hits: tuple[dict[str, Any], dict[str, Any]]) -> dict[str, tuple[int, int]]:
    ref, got = hits
    out = {}
    for k in GATED_METRICS:
        if k in ref and k in got:
            a, b = np.asarray(ref[k], dtype=bool), np.asarray(got[k], dtype=bool)
            if a.shape != b.shape:
                raise ValueError(f"per-image {k} hits cover {a.shape} vs {b.shape} images; score both on the same split")
            out[k] = (int((a & ~b).sum()), int((b & ~a).sum()))
    return out


def power_note(images: int, max_drop: float) -> str:
    """'' when one image is within the allowed drop; else why the gate cannot resolve it and the split size that would."""
    if images <= 0 or 100 / images <= max_drop or max_drop <= 0:
        return ""
    need = math.ceil(100 / max_drop)
    return (f"the val split has {images} images, so one image is {100 / images:.2f} points, more than the allowed drop of "
            f"{max_drop:g}: the gate cannot tell a {max_drop:g}-point drop from a one-image one and refuses any net loss; "
            f"a val split of at least {need} images would resolve it (`tedloc-edge data synth --val {need}`, or a larger "
            "val split of your dataset)")


def enforce(result: GateResult, allow_drop: bool, path: str | Path, note: str = "") -> None:
    """Log both figures; refuse (one line, with `note` appended) when the drop is too large and not allowed."""
    if result.passed:
        logger.info("int8 gate passed: %s", result.summary())
        return
    if allow_drop:
        logger.warning("int8 accuracy drop accepted (--int8-allow-drop): %s", result.summary())
        return
    chance = (f"; on {result.images} images a drop this size is within chance (McNemar p >= 0.05), so score on a "
              "larger val split to tell") if result.within_chance else ""
    raise Int8AccuracyError(
        f"{path}: int8 loses too much accuracy ({result.summary()}){chance}{'; ' + note if note else ''}; nothing was "
        "written. Calibrate on more images (--calib-images), keep more layers float (--int8-max-float), export fp16, "
        "or accept it with --int8-allow-drop / a larger --int8-max-drop"
    )


Reference = tuple[dict[str, float], dict[str, np.ndarray]]  # (metrics, per-image hits) of the fp32 model


def evaluate_model(path: str | Path, split: Any, backend: str = "onnxruntime") -> Reference:
    """(MaxBoxAcc, Top-1 Loc, ... in percent; per-image hits) of a model on a split, through the runtime."""
    from tedloc_edge.evaluate import evaluate_predictor
    from tedloc_edge.runtime import Localizer

    device = "cuda" if backend == "tensorrt" else "cpu"
    with Localizer(str(path), backend=backend, device=device) as predictor:
        report = evaluate_predictor(predictor, split, per_image=True, progress=False)
    return dict(report.metrics), report.per_image


def score_gate(fp32: Path | Reference, int8_path: Path, split: Any, max_drop: float, backend: str = "onnxruntime") -> GateResult:
    """The gate's figures for `int8_path` against `fp32` (a model file, or its scores already taken); not enforced."""
    ref = evaluate_model(fp32, split) if isinstance(fp32, (str, Path)) else fp32
    got = evaluate_model(int8_path, split, backend)
    return gate(ref[0], got[0], max_drop, len(split), hits=(ref[1], got[1]))


def run_gate(fp32_path: Path, int8_path: Path, split: Any, max_drop: float, allow_drop: bool,
             label: str | Path | None = None) -> GateResult:
    """Score both models on `split` and enforce the gate; errors name `label` (the file the user asked for)."""
    note = power_note(len(split), max_drop)
    if note:
        logger.warning("int8 gate: %s", note)
    logger.info("int8 gate: scoring fp32 and int8 on %d %s images", len(split), getattr(split, "name", "val"))
    result = score_gate(fp32_path, int8_path, split, max_drop)
    enforce(result, allow_drop, label or int8_path)
    return result


def reference_from_record(record: dict[str, Any], images: int) -> Reference | None:
    """fp32's val figures and per-image hits as an int8 ONNX's gate record keeps them (None if it does not,
    or if they were taken on a different number of images)."""
    hits = record.get("fp32_hits") or {}
    if record.get("images") != images or set(hits) != set(GATED_METRICS) or any(len(h) != images for h in hits.values()):
        return None
    return dict(record["fp32"]), {k: np.array([c == "1" for c in v]) for k, v in hits.items()}


def gate_engine(plan: Path, record: dict[str, Any] | None, split: Any, max_drop: float, allow_drop: bool,
                label: str | Path) -> GateResult | None:
    """Score a built int8 TensorRT engine on val through the runtime against the fp32 figures its ONNX's gate
    recorded, with the same rule; None (and a warning) when there is nothing to compare with."""
    ref = reference_from_record(record or {}, len(split))
    if ref is None:
        message = (f"{label}: the int8 ONNX carries no fp32 val figures for {len(split)} images (export the run folder "
                   "with this tedloc-edge to record them), so the engine cannot be gated")
        if not allow_drop:
            raise UserError(message + "; pass --int8-allow-drop to build it ungated")
        logger.warning("%s (--int8-allow-drop)", message)
        return None
    logger.info("engine int8 gate: scoring the engine on %d val images against the fp32 ONNX's figures", len(split))
    result = replace(score_gate(ref, plan, split, max_drop, backend="tensorrt"), search=None)
    enforce(result, allow_drop, label)
    return result


def gate_plan(onnx_path: Path, plan: Path, source: Any, opts: Any, label: str | Path) -> GateResult | None:
    """The export's engine gate: `plan` (just built from the int8 `onnx_path`) scored on the run's val split
    against the fp32 figures in the ONNX's gate record; the result goes in the plan's sidecar
    (``extra["int8_engine_gate"]``). An ONNX source with no run beside it is built ungated, with a warning (its
    ONNX was gated where it was exported); a run whose dataset is not here needs --int8-allow-drop."""
    from tedloc_edge.bundle import read_onnx_meta, read_plan_sidecar, write_plan_sidecar
    from tedloc_edge.datasets import open_split
    from tedloc_edge.export.images import run_data_root

    root = run_data_root(source.run_dir)
    if root is None:
        message = f"{label}: the int8 engine is not gated: the run's val split is not on this machine"
        if source.run_dir is not None and not opts.int8_allow_drop:
            raise UserError(message + "; export where the run's dataset is, or pass --int8-allow-drop to build it ungated")
        logger.warning("%s", message)
        return None
    split = open_split(root, "val")
    record = read_onnx_meta(onnx_path).extra.get("int8_gate")
    result = gate_engine(plan, record, split, opts.int8_max_drop, opts.int8_allow_drop, label)
    if result is not None:
        meta, build = read_plan_sidecar(plan)
        write_plan_sidecar(plan, meta.replace(extra={**meta.extra, "int8_engine_gate": result.to_dict()}), build)
    return result
