"""Presence: is there an object in the frame at all? numpy only (the runtime, eval and export share it).

TeD-Loc's patch head gives an absolute foreground probability per patch (a sigmoid), unlike a CAM, so the RAW
map (before the protocol's per-image min-max normalization, which makes every map peak at 1) can say "nothing
here". The presence score is the mean of the map's `PRESENCE_TOPK` highest patches: O(patches) (one
`np.partition`), in [0, 1]. `present` is ``presence >= threshold``; the threshold is picked on validation images
with objects and images without (`calibrate_presence`) and stored in the bundle (`BundleMeta.presence_threshold`).

A CAM (map_kind "cam") is a raw class score, not a probability, and it is trained on images that all hold an
object: it has no notion of "no object", so its presence is None and every frame is reported present.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from tedloc_edge.images import load_image

PRESENCE_TOPK = 4  # patches averaged; picked by val AUROC on the synthetic benchmark (docs/results.md)
PROBABILITY = "probability"  # BundleMeta.map_kind whose maps are probabilities
SCORE_TEXT = f"mean of the top {PRESENCE_TOPK} patches of the raw foreground map"


def presence_score(fg_map: np.ndarray, map_kind: str = PROBABILITY) -> float | None:
    """The frame's presence score from its raw map; None for a CAM (not a probability)."""
    return top_mean(fg_map) if map_kind == PROBABILITY else None


def top_mean(fg_map: np.ndarray, topk: int = PRESENCE_TOPK) -> float:
    """The mean of the `topk` highest values of a map (all of them on a smaller grid), in O(patches)."""
    flat = np.asarray(fg_map, dtype=np.float32).ravel()
    k = min(int(topk), flat.size)
    if k == 1:
        return float(flat.max())
    return float(np.partition(flat, flat.size - k)[flat.size - k :].mean())


def auroc(positives: Sequence[float] | np.ndarray, negatives: Sequence[float] | np.ndarray) -> float | None:
    """Area under the ROC curve: P(score of an object image > score of an empty one), ties counting half
    (the Mann-Whitney U statistic). None when either side is empty."""
    pos = np.sort(np.asarray(positives, dtype=np.float64))
    neg = np.sort(np.asarray(negatives, dtype=np.float64))
    if not len(pos) or not len(neg):
        return None
    below = np.searchsorted(neg, pos, side="left")  # negatives strictly below each positive
    ties = np.searchsorted(neg, pos, side="right") - below
    return float((below.sum() + 0.5 * ties.sum()) / (len(pos) * len(neg)))


def rates(positives: np.ndarray, negatives: np.ndarray, threshold: float) -> tuple[float | None, float | None]:
    """(false-positive rate: empty images reported present, miss rate: object images lost) at `threshold`, in
    [0, 1]; None for a side with no image."""
    pos, neg = np.asarray(positives, np.float64), np.asarray(negatives, np.float64)
    fp = float((neg >= threshold).mean()) if len(neg) else None
    miss = float((pos < threshold).mean()) if len(pos) else None
    return fp, miss


CRITERION = "minimax"  # threshold.json's name for calibrate_presence's rule


def calibrate_presence(positives: Sequence[float] | np.ndarray, negatives: Sequence[float] | np.ndarray) -> float:
    """The threshold at which the larger of the two error rates (objects lost, empty images reported present) is
    smallest: a camera needs both low, and a target like "<= 5% each" is met by this threshold when any meets it
    (Youden's J, which minimizes their sum, can trade a 10% miss rate for a 2% false-positive rate). Among equally
    good thresholds, the middle of the widest gap between two neighbouring scores, so it sits as far from both
    sides as the data allows. Needs images of both kinds."""
    pos, neg = np.asarray(positives, np.float64), np.asarray(negatives, np.float64)
    if not len(pos) or not len(neg):
        raise ValueError("presence calibration needs images with objects and images without")
    values = np.unique(np.concatenate([pos, neg]))
    edges = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-6]])
    miss = np.searchsorted(np.sort(pos), edges, side="left") / len(pos)  # pos < edge
    fpr = 1.0 - np.searchsorted(np.sort(neg), edges, side="left") / len(neg)  # neg >= edge
    worst = np.maximum(miss, fpr)
    best = np.flatnonzero(np.isclose(worst, worst.min(), rtol=0, atol=1e-12))
    gaps = np.array([_gap(values, i) for i in best])
    return float(np.clip(edges[best[int(np.argmax(gaps))]], 0.0, 1.0))


def _gap(values: np.ndarray, i: int) -> float:
    """Width of the gap the i-th edge sits in (the ends count as the largest of the inner gaps)."""
    if 0 < i < len(values):
        return float(values[i] - values[i - 1])
    return float(np.diff(values).max()) if len(values) > 1 else 1.0


def negative_scores(predictor: Any, samples: Sequence[Any], batch: int = 32) -> np.ndarray:
    """Presence scores of object-free images (`Sample`s: no box, no class, only their raw maps count) through an
    evaluation `Predictor` (`forward_maps`)."""
    scores: list[float] = []
    for start in range(0, len(samples), batch):
        maps, _ = predictor.forward_maps([load_image(s.path) for s in samples[start : start + batch]])
        scores += [top_mean(m) for m in np.asarray(maps)]
    return np.array(scores, dtype=np.float64)


def calibration_record(report: "PresenceReport") -> dict[str, Any]:
    """threshold.json's "presence" record: the threshold `calibrate_presence` picks on these (validation) scores,
    with the AUROC and both error rates (percent) it gives there."""
    threshold = calibrate_presence(report.positives, report.negatives)
    fp, miss = rates(report.positives, report.negatives, threshold)
    return {"threshold": round(threshold, 6), "criterion": CRITERION, "score": SCORE_TEXT,
            "object_images": int(len(report.positives)), "empty_images": int(len(report.negatives)),
            "auroc": auroc(report.positives, report.negatives), "false_positive_rate": 100.0 * (fp or 0.0),
            "miss_rate": 100.0 * (miss or 0.0), "negatives": report.negatives_source}


@dataclass
class PresenceReport:
    """Presence scores of one evaluation: object images (`positives`) and object-free ones (`negatives`)."""

    positives: np.ndarray
    negatives: np.ndarray
    threshold: float | None  # the stored (or given) threshold the rates are taken at
    threshold_source: str
    negatives_source: str = ""

    def summary(self) -> dict[str, Any]:
        """JSON-ready: AUROC, and at the threshold the false-positive and miss rates (percent)."""
        fp, miss = rates(self.positives, self.negatives, self.threshold) if self.threshold is not None else (None, None)
        au = auroc(self.positives, self.negatives)
        return {
            "score": SCORE_TEXT,
            "object_images": int(len(self.positives)),
            "empty_images": int(len(self.negatives)),
            "negatives": self.negatives_source,
            "auroc": None if au is None else round(au, 5),
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "false_positive_rate": None if fp is None else round(100.0 * fp, 3),
            "miss_rate": None if miss is None else round(100.0 * miss, 3),
        }
