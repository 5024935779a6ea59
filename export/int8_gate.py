"""The INT8 accuracy gate: fp32 and int8 ONNX scored on the val split with the evaluation metrics.

Tensor errors say little about an int8 model; what matters is whether it still localizes and classifies.
Both models run through the runtime (`tedloc_edge.runtime.Localizer`, same preprocessing as deployment)
and are scored by `tedloc_edge.evaluate.evaluate_predictor`. A drop of MaxBoxAcc or Top-1 Loc larger than
`max_drop` points refuses the export unless the user allows it; both figures are printed either way, with
the images behind the drop: how many fp32 got right and int8 lost, how many the other way, and the exact
McNemar p-value of that split, because on a small val split one image is already more than a point.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
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
    return GateResult(pick(fp32), pick(int8), float(max_drop), int(images), flips=_flips(hits) if hits else {})


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


def enforce(result: GateResult, allow_drop: bool, path: str | Path) -> None:
    """Log both figures; refuse (one line) when the drop is too large and not allowed."""
    if result.passed:
        logger.info("int8 gate passed: %s", result.summary())
        return
    if allow_drop:
        logger.warning("int8 accuracy drop accepted (--int8-allow-drop): %s", result.summary())
        return
    chance = (f"; on {result.images} images a drop this size is within chance (McNemar p >= 0.05), so score on a "
              "larger val split to tell") if result.within_chance else ""
    raise Int8AccuracyError(
        f"{path}: int8 loses too much accuracy ({result.summary()}){chance}; nothing was written. Calibrate on more "
        "images (--calib-images), export fp16, or accept it with --int8-allow-drop / a larger --int8-max-drop"
    )


def evaluate_model(path: str | Path, split: Any) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """(MaxBoxAcc, Top-1 Loc, ... in percent; per-image hits) of an ONNX model on a split, through the runtime."""
    from tedloc_edge.evaluate import evaluate_predictor
    from tedloc_edge.runtime import Localizer

    with Localizer(str(path), backend="onnxruntime", device="cpu") as predictor:
        report = evaluate_predictor(predictor, split, per_image=True)
    return dict(report.metrics), report.per_image


def run_gate(fp32_path: Path, int8_path: Path, split: Any, max_drop: float, allow_drop: bool,
             label: str | Path | None = None) -> GateResult:
    """Score both models on `split` and enforce the gate; errors name `label` (the file the user asked for)."""
    logger.info("int8 gate: scoring fp32 and int8 on %d %s images", len(split), getattr(split, "name", "val"))
    (fp32, fp32_hits), (int8, int8_hits) = evaluate_model(fp32_path, split), evaluate_model(int8_path, split)
    result = gate(fp32, int8, max_drop, len(split), hits=(fp32_hits, int8_hits))
    enforce(result, allow_drop, label or int8_path)
    return result
