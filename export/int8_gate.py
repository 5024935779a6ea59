"""The INT8 accuracy gate: fp32 and int8 ONNX scored on the val split with the evaluation metrics.

Tensor errors say little about an int8 model; what matters is whether it still localizes and classifies.
Both models run through the runtime (`tedloc_edge.runtime.Localizer`, same preprocessing as deployment)
and are scored by `tedloc_edge.evaluate.evaluate_predictor`. A drop of MaxBoxAcc or Top-1 Loc larger than
`max_drop` points refuses the export unless the user allows it; both figures are printed either way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tedloc_edge.console import UserError

logger = logging.getLogger(__name__)

GATED_METRICS = ("maxboxacc", "top1_loc")


@dataclass(frozen=True)
class GateResult:
    fp32: dict[str, float]
    int8: dict[str, float]
    max_drop: float
    images: int = 0  # how many val images scored both: one image is 100 / images points

    @property
    def drops(self) -> dict[str, float]:
        return {k: self.fp32[k] - self.int8[k] for k in GATED_METRICS}

    @property
    def passed(self) -> bool:
        return all(drop <= self.max_drop for drop in self.drops.values())

    def summary(self) -> str:
        parts = [f"{k} fp32 {self.fp32[k]:.2f} int8 {self.int8[k]:.2f} (drop {self.drops[k]:+.2f})" for k in GATED_METRICS]
        scale = f" ({self.images} images: one image is {100 / self.images:.2f} points)" if self.images else ""
        unit = "point" if self.max_drop == 1 else "points"
        return "; ".join(parts) + f"; allowed drop {self.max_drop:g} {unit}{scale}"


class Int8AccuracyError(UserError):
    """The int8 model loses more accuracy than allowed."""


def gate(fp32: dict[str, Any], int8: dict[str, Any], max_drop: float, images: int = 0) -> GateResult:
    missing = [k for k in GATED_METRICS if k not in fp32 or k not in int8]
    if missing:
        raise KeyError(f"evaluation report lacks {', '.join(missing)}")
    pick = lambda doc: {k: float(doc[k]) for k in GATED_METRICS}  # noqa: E731
    return GateResult(pick(fp32), pick(int8), float(max_drop), int(images))


def enforce(result: GateResult, allow_drop: bool, path: str | Path) -> None:
    """Log both figures; refuse (one line) when the drop is too large and not allowed."""
    if result.passed:
        logger.info("int8 gate passed: %s", result.summary())
        return
    if allow_drop:
        logger.warning("int8 accuracy drop accepted (--int8-allow-drop): %s", result.summary())
        return
    raise Int8AccuracyError(
        f"{path}: int8 loses too much accuracy ({result.summary()}); nothing was written. Calibrate on more "
        "images (--calib-images), export fp16, or accept it with --int8-allow-drop / a larger --int8-max-drop"
    )


def evaluate_model(path: str | Path, split: Any) -> dict[str, float]:
    """MaxBoxAcc, Top-1 Loc, ... in percent, of an ONNX model on a dataset split, through the runtime."""
    from tedloc_edge.evaluate import evaluate_predictor
    from tedloc_edge.runtime import Localizer

    predictor = Localizer(str(path), backend="onnxruntime", device="cpu")
    report = evaluate_predictor(predictor, split)
    return dict(report.metrics)


def run_gate(fp32_path: Path, int8_path: Path, split: Any, max_drop: float, allow_drop: bool) -> GateResult:
    logger.info("int8 gate: scoring fp32 and int8 on %d %s images", len(split), getattr(split, "name", "val"))
    result = gate(evaluate_model(fp32_path, split), evaluate_model(int8_path, split), max_drop, len(split))
    enforce(result, allow_drop, int8_path)
    return result
