"""WSOL metrics: the exact threshold sweep and streaming accumulators (numpy + OpenCV, no torch).

The protocol is wsolevaluation's (Choe et al., CVPR 2020) as `tedloc_edge.boxes` decodes it: a map is resized
bicubic to 224x224, min-max normalized and cut to uint8; at each tau of `CAM_THRESHOLDS` the foreground is the
pixels strictly above ``int(tau * max(u))``; boxes are the bounding rectangles of OpenCV's RETR_TREE contours
(largest, or all); an image's score is the best inclusive-pixel IoU over (predicted, true) box pairs.

The fast sweep gives the same boxes as calling the decoder 1,000 times, for a fraction of the work:
- a uint8 map has at most 256 levels, so the 1,000 thresholds name at most 256 distinct levels;
- two levels with the same number of pixels above them give the same (nested) mask: contours are taken once
  per distinct mask, and both contour modes come from the same contour list;
- each mask is cut to the bounding rectangle of its foreground plus one pixel of background, and contours are
  taken there with findContours' offset (same contours, same order, fewer pixels);
- IoU against the true boxes is computed once for every box of every mask, then reduced per mask.
Accumulators keep only counts per threshold and two histograms, so memory does not grow with the images.

Metric definitions (percent): MaxBoxAcc = max over tau of the IoU-0.5 box accuracy, largest contour;
MaxBoxAccV2 = mean over IoU 0.3/0.5/0.7 of that maximum with every contour; GT-known / Top-1 / Top-5 Loc are
the largest-contour IoU-0.5 curve (as in the v1 table of the TeD-Loc paper) with no class condition / the
top-1 class right / the class in the top 5, each maximized over tau on its own curve, so GT-known Loc equals
MaxBoxAcc by construction; PxAP is wsolevaluation's MaskEvaluator (no ignore regions).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np

from tedloc_edge.boxes import (
    CAM_THRESHOLDS,
    box_iou,
    boxes_at_level,
    normalize_map,
    protocol_boxes,
    resize_map,
    threshold_level,
)

logger = logging.getLogger(__name__)

EVAL_SIZE = (224, 224)  # (height, width) of the protocol grid
IOU_DELTAS = (0.3, 0.5, 0.7)  # MaxBoxAccV2's IoU thresholds; MaxBoxAcc and the Loc metrics use 0.5
LOC_DELTA = 0.5
TOP_K = 5
CALIBRATION_CRITERIA = ("top1_loc", "gt_known_loc", "maxboxacc")
_EMPTY = np.zeros((0, 4), dtype=np.int64)


@dataclass(frozen=True)
class LevelSweep:
    """The decoder's boxes at every threshold of one uint8 map, stored once per distinct mask.

    `largest[k]` / `every[k]` are the boxes of distinct mask k ((0, 4) when it has no contour, exactly as
    `boxes.boxes_at_level` returns them); `mask_index[t]` is the mask of threshold t.
    """

    largest: list[np.ndarray]
    every: list[np.ndarray]
    mask_index: np.ndarray

    def boxes(self, t: int, mode: str = "largest") -> np.ndarray:
        return (self.largest if mode == "largest" else self.every)[int(self.mask_index[t])]


def protocol_scoremap(fg_map: np.ndarray, size: tuple[int, int] = EVAL_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(float map in [0, 1], its uint8 cut) at `size`: what PxAP and the box sweep see; as boxes.map_to_uint8."""
    scoremap = normalize_map(resize_map(fg_map, size))
    return scoremap, (scoremap * 255).astype(np.uint8)


def sweep_levels(u: np.ndarray, thresholds: np.ndarray = CAM_THRESHOLDS) -> LevelSweep:
    """Boxes of the uint8 map `u` at every threshold, largest and all contours, with one contour pass per mask."""
    u = np.ascontiguousarray(u, dtype=np.uint8)
    levels = (np.asarray(thresholds, dtype=np.float64) * int(u.max())).astype(np.int64)  # == int(tau * max)
    above = u.size - np.cumsum(np.bincount(u.ravel(), minlength=256))  # pixels strictly above each level
    # a tau outside [0, 1) (a hand-set deployment threshold) gives a level below 0 (every pixel) or above 255
    counts_per_tau = np.where(levels < 0, u.size, above[np.clip(levels, 0, 255)])
    counts, mask_index = np.unique(counts_per_tau, return_inverse=True)
    representative = np.full(len(counts), levels.min(), dtype=np.int64)
    np.maximum.at(representative, mask_index, levels)  # any level of the group gives the same mask
    row_max, col_max = u.max(axis=1), u.max(axis=0)
    largest, every = [], []
    for level, count in zip(representative, counts):
        contours = _contours_above(u, int(level), row_max, col_max) if count else ()
        big, all_boxes = _contour_boxes(contours, u.shape)
        largest.append(big)
        every.append(all_boxes)
    return LevelSweep(largest, every, mask_index.reshape(-1))


def _contours_above(u: np.ndarray, level: int, row_max: np.ndarray, col_max: np.ndarray) -> Sequence[np.ndarray]:
    """Contours of (u > level), taken on the foreground's bounding rectangle padded by one pixel."""
    height, width = u.shape
    rows = np.flatnonzero(row_max > level)
    cols = np.flatnonzero(col_max > level)
    y0, y1 = max(int(rows[0]) - 1, 0), min(int(rows[-1]) + 2, height)
    x0, x1 = max(int(cols[0]) - 1, 0), min(int(cols[-1]) + 2, width)
    crop = (u[y0:y1, x0:x1] > level).view(np.uint8)
    return cv2.findContours(crop, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE, offset=(x0, y0))[0]


def _contour_boxes(contours: Sequence[np.ndarray], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(largest-contour box (1, 4), every contour's box (K, 4)), clipped as the reference; (0, 4) when none."""
    if len(contours) == 0:
        return _EMPTY, _EMPTY
    height, width = shape
    rects = np.array([cv2.boundingRect(c) for c in contours], dtype=np.int64).reshape(-1, 4)
    boxes = np.empty_like(rects)
    boxes[:, :2] = rects[:, :2]
    boxes[:, 2] = np.minimum(rects[:, 0] + rects[:, 2], width - 1)
    boxes[:, 3] = np.minimum(rects[:, 1] + rects[:, 3], height - 1)
    best = max(range(len(contours)), key=lambda i: cv2.contourArea(contours[i]))  # first of ties, as max()
    return boxes[best : best + 1], boxes


def best_iou(sweep: LevelSweep, gt_boxes: np.ndarray) -> dict[str, np.ndarray]:
    """Best IoU over (predicted, true) pairs at every threshold, per contour mode: {"largest": (T,), "all": (T,)}."""
    gt = np.asarray(gt_boxes, dtype=np.int64).reshape(-1, 4)
    out = {}
    for mode, per_mask in (("largest", sweep.largest), ("all", sweep.every)):
        boxes = [protocol_boxes(b) for b in per_mask]
        starts = np.cumsum([0] + [len(b) for b in boxes[:-1]])
        iou = box_iou(np.concatenate(boxes), gt).max(axis=1)
        out[mode] = np.maximum.reduceat(iou, starts)[sweep.mask_index]
    return out


def straight_best_iou(
    u: np.ndarray, gt_boxes: np.ndarray, thresholds: np.ndarray = CAM_THRESHOLDS
) -> dict[str, np.ndarray]:
    """The reference's way: decode every threshold with `boxes.boxes_at_level`, per mode. Slow; for checks."""
    gt = np.asarray(gt_boxes, dtype=np.int64).reshape(-1, 4)
    u_max = int(u.max())
    out = {mode: np.empty(len(thresholds)) for mode in ("largest", "all")}
    for mode, best in out.items():
        for t, tau in enumerate(thresholds):
            boxes = protocol_boxes(boxes_at_level(u, threshold_level(float(tau), u_max), mode))
            best[t] = box_iou(boxes, gt).max()
    return out


def topk_hits(ranking: Sequence[int] | np.ndarray, label: int, k: int = TOP_K) -> tuple[bool, bool]:
    """(top-1 correct, true class among the first k) for a ranking of class indices, best first."""
    ranked = [int(c) for c in ranking]
    return bool(ranked) and ranked[0] == label, label in ranked[:k]


def ranking_from_logits(logits: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """Class indices best first (the top k), ties broken by the lower index as a stable sort does."""
    order = np.argsort(-np.asarray(logits, dtype=np.float64), kind="stable")
    return order[:k]


@dataclass
class LocAccumulator:
    """Streaming box / Loc counts per threshold. `deploy_threshold` adds one column: the model's stored tau."""

    deploy_threshold: float | None = None
    thresholds: np.ndarray = field(default_factory=lambda: CAM_THRESHOLDS.copy())
    deltas: tuple[float, ...] = IOU_DELTAS
    keep_per_image: bool = False  # also keep each image's box / Top-1 Loc hits per threshold (for paired comparisons)

    def __post_init__(self) -> None:
        self._taus = self.thresholds if self.deploy_threshold is None else np.append(self.thresholds, self.deploy_threshold)
        width = len(self._taus)
        self.box_correct = {m: np.zeros((len(self.deltas), width), dtype=np.int64) for m in ("largest", "all")}
        self.top1_correct = np.zeros(width, dtype=np.int64)
        self.top5_correct = np.zeros(width, dtype=np.int64)
        self.count = 0
        self.cls_count = 0
        self.top1_cls = 0
        self.top5_cls = 0
        self._box_hits: list[np.ndarray] = []  # per image, IoU >= LOC_DELTA per threshold (keep_per_image)
        self._top1_hits: list[np.ndarray] = []

    def add(self, u: np.ndarray, gt_boxes: np.ndarray, label: int,
            ranking: Sequence[int] | np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Score one uint8 protocol map against its true boxes (at the same grid); returns its best IoUs."""
        ious = best_iou(sweep_levels(u, self._taus), gt_boxes)
        for mode, iou in ious.items():
            for d, delta in enumerate(self.deltas):
                self.box_correct[mode][d] += iou >= delta
        self.count += 1
        hit = ious["largest"] >= LOC_DELTA
        if self.keep_per_image:
            self._box_hits.append(hit)
        if ranking is not None:
            top1, top5 = topk_hits(ranking, label)
            self.top1_correct += hit & top1
            self.top5_correct += hit & top5
            self.cls_count += 1
            self.top1_cls += top1
            self.top5_cls += top5
            if self.keep_per_image:
                self._top1_hits.append(hit & top1)
        return ious

    def merge(self, other: "LocAccumulator") -> None:
        """Add another accumulator's counts (same thresholds), e.g. from another worker."""
        if len(other._taus) != len(self._taus) or not np.array_equal(other._taus, self._taus):
            raise ValueError("cannot merge accumulators with different thresholds")
        for mode in self.box_correct:
            self.box_correct[mode] += other.box_correct[mode]
        self.top1_correct += other.top1_correct
        self.top5_correct += other.top5_correct
        for name in ("count", "cls_count", "top1_cls", "top5_cls"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self._box_hits += other._box_hits
        self._top1_hits += other._top1_hits

    def _pct(self, correct: np.ndarray, total: int) -> np.ndarray:
        return correct * 100.0 / max(total, 1)

    def curves(self) -> dict[str, np.ndarray]:
        """Percent per threshold of `thresholds` (the deployment column excluded)."""
        n = len(self.thresholds)
        out = {}
        for mode in ("largest", "all"):
            for d, delta in enumerate(self.deltas):
                out[f"box_acc_{mode}_iou{round(delta * 100)}"] = self._pct(self.box_correct[mode][d, :n], self.count)
        if self.cls_count:
            out["top1_loc"] = self._pct(self.top1_correct[:n], self.cls_count)
            out["top5_loc"] = self._pct(self.top5_correct[:n], self.cls_count)
        return out

    def _loc_key(self) -> str:
        return f"box_acc_largest_iou{round(LOC_DELTA * 100)}"

    def metrics(self) -> dict[str, float]:
        """Every metric in percent; ``*_at_threshold`` at the deployment threshold when one was given."""
        curves = self.curves()
        gt_known = curves[self._loc_key()]
        out = {
            "maxboxacc": float(gt_known.max()),
            "maxboxacc_v2": float(np.mean([curves[f"box_acc_all_iou{round(d * 100)}"].max() for d in self.deltas])),
            "gt_known_loc": float(gt_known.max()),
        }
        if self.cls_count:
            out.update(
                top1_loc=float(curves["top1_loc"].max()),
                top5_loc=float(curves["top5_loc"].max()),
                top1_cls=self.top1_cls * 100.0 / self.cls_count,
                top5_cls=self.top5_cls * 100.0 / self.cls_count,
            )
        if self.deploy_threshold is not None:
            out.update(self._at_deploy())
        return out

    def _at_deploy(self) -> dict[str, float]:
        d_loc = self.deltas.index(LOC_DELTA)
        out = {"gt_known_loc_at_threshold": float(self._pct(self.box_correct["largest"][d_loc, -1], self.count))}
        out["maxboxacc_v2_at_threshold"] = float(
            np.mean([self._pct(self.box_correct["all"][d, -1], self.count) for d in range(len(self.deltas))])
        )
        if self.cls_count:
            out["top1_loc_at_threshold"] = float(self._pct(self.top1_correct[-1], self.cls_count))
            out["top5_loc_at_threshold"] = float(self._pct(self.top5_correct[-1], self.cls_count))
        return out

    def optimal_thresholds(self) -> dict[str, float]:
        """The tau maximizing each single-curve metric (the lowest one among ties, as argmax)."""
        curves = self.curves()
        out = {"maxboxacc": self._argmax_tau(curves[self._loc_key()])}
        out["gt_known_loc"] = out["maxboxacc"]
        for name in ("top1_loc", "top5_loc"):
            if name in curves:
                out[name] = self._argmax_tau(curves[name])
        return out

    def per_image_hits(self) -> dict[str, np.ndarray]:
        """Each image's hit (bool, in the order added) at the threshold that maximizes each metric.

        Their means are exactly MaxBoxAcc and Top-1 Loc, so two models scored on the same images can be
        compared image by image (which images one gets right and the other not). Needs keep_per_image.
        """
        if not self.keep_per_image:
            raise ValueError("per-image hits need LocAccumulator(keep_per_image=True)")
        curves = self.curves()  # the argmax is the lowest optimal threshold, as optimal_thresholds() reports
        best = int(np.argmax(curves[self._loc_key()]))
        out = {"maxboxacc": np.array([h[best] for h in self._box_hits], dtype=bool)}
        if self._top1_hits:
            best = int(np.argmax(curves["top1_loc"]))
            out["top1_loc"] = np.array([h[best] for h in self._top1_hits], dtype=bool)
        return out

    def _argmax_tau(self, curve: np.ndarray) -> float:
        return float(self.thresholds[int(np.argmax(curve))])


@dataclass
class PixelAccumulator:
    """PxAP as wsolevaluation's MaskEvaluator: score histograms of true and false pixels, then AP (percent)."""

    thresholds: np.ndarray = field(default_factory=lambda: CAM_THRESHOLDS.copy())

    def __post_init__(self) -> None:
        self._edges = np.append(self.thresholds, [1.0, 2.0, 3.0])  # bins [0, bw), ..., [1, 2), [2, 3)
        self.true_hist = np.zeros(len(self._edges) - 1, dtype=np.float64)
        self.false_hist = np.zeros(len(self._edges) - 1, dtype=np.float64)
        self.count = 0

    def add(self, scoremap: np.ndarray, mask: np.ndarray) -> None:
        """`scoremap`: float map in [0, 1] at the mask's grid; `mask`: bool foreground (True) / background."""
        mask = np.asarray(mask, dtype=bool)
        self.true_hist += np.histogram(scoremap[mask], bins=self._edges)[0]
        self.false_hist += np.histogram(scoremap[~mask], bins=self._edges)[0]
        self.count += 1

    def merge(self, other: "PixelAccumulator") -> None:
        self.true_hist += other.true_hist
        self.false_hist += other.false_hist
        self.count += other.count

    def pxap(self) -> float | None:
        """Average precision in percent; None when no mask or no foreground pixel was seen."""
        tp = self.true_hist[::-1].cumsum()
        fp = self.false_hist[::-1].cumsum()
        if self.count == 0 or tp[-1] <= 0:
            return None
        predicted = tp + fp
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = tp / predicted
        recall = tp / tp[-1]  # tp + fn is the number of true pixels at every threshold
        keep = predicted[1:] != 0
        return float((precision[1:] * np.diff(recall))[keep].sum() * 100)
