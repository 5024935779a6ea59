"""Patch scoring and box decoding: one image's (fg_map, logits) -> class, top-k and boxes in frame pixels.

Boxes come from `tedloc_edge.boxes.decode_boxes`, the evaluator's own decoder, run at the model's input
size (exactly what evaluation scores), then `scale_boxes` maps them to the original frame.
Box score: the mean of the min-max normalised patch map over the patches whose centres a box covers (O(patches);
1.0 means every covered patch is the map's peak). Class probabilities: softmax of the logits, optionally
restricted to a subset of classes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tedloc_edge.boxes import CONTOUR_MODES, decode_boxes, normalize_map, scale_boxes
from tedloc_edge.errors import UserError


@dataclass(frozen=True)
class DecodeConfig:
    """How maps become boxes; defaults come from the bundle (threshold, contour mode)."""

    threshold: float
    contour_mode: str = "largest"
    min_box_area: int = 0  # inclusive pixel area at the model input size, as the evaluator's decoder counts
    topk: int = 5

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.threshold) < 1.0:
            raise UserError(f"threshold must be in [0, 1) (a fraction of the map's peak), not {self.threshold}")
        if self.contour_mode not in CONTOUR_MODES:
            raise UserError(f"contour mode must be one of {CONTOUR_MODES}, not {self.contour_mode!r}")
        if self.topk < 1:
            raise UserError(f"topk must be at least 1, not {self.topk}")


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.array(logits, dtype=np.float32)  # a copy, worked on in place
    z -= z.max()
    np.exp(z, out=z)
    z /= z.sum()
    return z


def class_probabilities(logits: np.ndarray, allowed: np.ndarray | None) -> np.ndarray:
    """Softmax over all classes, or over `allowed` class ids only (others get probability 0)."""
    if allowed is None:
        return softmax(logits)
    probs = np.zeros(len(logits), dtype=np.float32)
    probs[allowed] = softmax(logits[allowed])
    return probs


def top_classes(logits: np.ndarray, topk: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(class probabilities, the top-k class ids best first), over `allowed` only when given."""
    probs = class_probabilities(logits, allowed)
    k = min(topk, len(probs) if allowed is None else len(allowed))
    return probs, np.argsort(-probs, kind="stable")[:k]


def _cells(lo: float, hi_inclusive: float, cells: int, pixels: int) -> slice:
    """Patch cells whose centre lies inside the pixel span [lo, hi + 1); the centre cell when none does."""
    step = pixels / cells
    first = math.ceil(lo / step - 0.5)
    last = math.floor((hi_inclusive + 1) / step - 0.5)
    if first > last:
        first = last = min(cells - 1, int((lo + hi_inclusive + 1) / 2 / step))
    return slice(max(first, 0), min(last, cells - 1) + 1)


def box_scores(norm_grid: np.ndarray, boxes: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """Mean normalised patch value over the patches whose centres a box (input pixels, inclusive) covers."""
    gh, gw = norm_grid.shape
    h, w = input_size
    means = [norm_grid[_cells(y0, y1, gh, h), _cells(x0, x1, gw, w)].mean() for x0, y0, x1, y1 in boxes.tolist()]
    return np.array(means, dtype=np.float32)


@dataclass
class Decoded:
    boxes: np.ndarray  # (K, 4) float32 xyxy, frame pixels
    box_scores: np.ndarray  # (K,) float32
    probs: np.ndarray  # (C,) float32
    topk: np.ndarray  # (k,) int class ids, best first


def decode_one(
    fg_map: np.ndarray,
    logits: np.ndarray,
    frame_shape: tuple[int, int],
    input_size: tuple[int, int],
    config: DecodeConfig,
    allowed: np.ndarray | None = None,
) -> Decoded:
    """Everything the runtime derives from one image's model outputs (frame_shape = (height, width))."""
    # Few numpy calls on purpose: this runs right after inference, on caches the model has just evicted,
    # where each call costs several microseconds (docs/performance.md).
    probs, top = top_classes(logits, config.topk, allowed)
    model_boxes = decode_boxes(fg_map, config.threshold, input_size, config.contour_mode, config.min_box_area)
    if len(model_boxes) == 0:
        return Decoded(boxes=np.zeros((0, 4), np.float32), box_scores=np.zeros(0, np.float32), probs=probs, topk=top)
    scores = box_scores(normalize_map(fg_map), model_boxes, input_size)
    if len(scores) > 1:  # best box first
        order = np.argsort(-scores, kind="stable")
        model_boxes, scores = model_boxes[order], scores[order]
    return Decoded(boxes=scale_boxes(model_boxes, input_size, frame_shape), box_scores=scores, probs=probs, topk=top)
