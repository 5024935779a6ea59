"""Patch scoring and box decoding: one image's (fg_map, logits) -> class, top-k and boxes in frame pixels.

Boxes come from `tedloc_edge.boxes.decode_boxes`, the evaluator's own decoder, run at the model's input
size (exactly what evaluation scores), then `scale_boxes` maps them to the original frame.
Presence (`tedloc_edge.presence`): a score from the RAW map (before the protocol's min-max normalization); below
the presence threshold the frame holds no object: no box and no class. Box score: the mean RAW foreground
probability over the patches whose centres a box covers (O(patches)), so a box on a faint map scores low; for a
CAM (not a probability) it stays the mean of the min-max normalised map (1.0: every covered patch is the map's
peak, relative to this frame only). Class probabilities: softmax of the logits, optionally restricted to a subset
of classes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tedloc_edge.boxes import CONTOUR_MODES, decode_boxes, normalize_map, scale_boxes
from tedloc_edge.errors import UserError
from tedloc_edge.presence import PROBABILITY, presence_score


@dataclass(frozen=True)
class DecodeConfig:
    """How maps become boxes; defaults come from the bundle (threshold, contour mode, presence threshold, map kind).
    `presence_threshold` None: every frame is present (its presence is still scored)."""

    threshold: float
    contour_mode: str = "largest"
    min_box_area: int = 0  # inclusive pixel area at the model input size, as the evaluator's decoder counts
    topk: int = 5
    presence_threshold: float | None = None
    map_kind: str = PROBABILITY  # BundleMeta.map_kind: "probability" (TeD-Loc) or "cam"

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.threshold) < 1.0:
            raise UserError(f"threshold must be in [0, 1) (a fraction of the map's peak), not {self.threshold}")
        if self.presence_threshold is not None and not 0.0 <= float(self.presence_threshold) <= 1.0:
            raise UserError(f"presence threshold must be in [0, 1] (a foreground probability), not {self.presence_threshold}")
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


def box_scores(grid: np.ndarray, boxes: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """Mean patch value of `grid` over the patches whose centres a box (input pixels, inclusive) covers."""
    gh, gw = grid.shape
    h, w = input_size
    means = [grid[_cells(y0, y1, gh, h), _cells(x0, x1, gw, w)].mean() for x0, y0, x1, y1 in boxes.tolist()]
    return np.array(means, dtype=np.float32)


_NO_BOXES, _NO_SCORES, _NO_CLASSES = np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)


@dataclass
class Decoded:
    boxes: np.ndarray  # (K, 4) float32 xyxy, frame pixels
    box_scores: np.ndarray  # (K,) float32
    probs: np.ndarray  # (C,) float32
    topk: np.ndarray  # (k,) int class ids, best first; empty when not present
    presence: float | None = None  # None: the map is not a probability (CAM) or the model decodes remotely
    present: bool = True


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
    presence = presence_score(fg_map, config.map_kind)
    if presence is not None and config.presence_threshold is not None and presence < config.presence_threshold:
        return Decoded(_NO_BOXES, _NO_SCORES, probs, _NO_CLASSES, presence, present=False)
    model_boxes = decode_boxes(fg_map, config.threshold, input_size, config.contour_mode, config.min_box_area)
    if len(model_boxes) == 0:
        return Decoded(_NO_BOXES, _NO_SCORES, probs, top, presence)
    raw = config.map_kind == PROBABILITY  # a probability map scores boxes as it is; a CAM only relative to its peak
    scores = box_scores(fg_map if raw else normalize_map(fg_map), model_boxes, input_size)
    if len(scores) > 1:  # best box first
        order = np.argsort(-scores, kind="stable")
        model_boxes, scores = model_boxes[order], scores[order]
    return Decoded(scale_boxes(model_boxes, input_size, frame_shape), scores, probs, top, presence)
