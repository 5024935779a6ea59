"""The box decoder: localization map -> boxes. One function, used by the runtime AND by evaluation.

It follows the WSOL protocol of Choe et al. (CVPR 2020, clovaai/wsolevaluation) to the pixel:
bicubic resize, min-max normalize (NaN or constant map -> zeros), uint8 by truncation, foreground strictly
above int(tau * max(u)), OpenCV contours (RETR_TREE, CHAIN_APPROX_SIMPLE), bounding rectangles with
x1, y1 clipped to W-1, H-1; largest contour by area or every contour.
"""

from __future__ import annotations

import cv2
import numpy as np

from tedloc_edge.bundle import CONTOUR_MODES

# Exactly the reference's threshold list (np.arange floats, so int(tau * max) matches bit for bit).
CAM_THRESHOLDS = np.arange(0, 1, 0.001)
NO_BOX = np.zeros((1, 4), dtype=np.int64)  # the protocol's box when no contour exists


def normalize_map(fg_map: np.ndarray) -> np.ndarray:
    """Min-max normalize to [0, 1] in float32; a NaN or constant map becomes all zeros (as the reference)."""
    return _normalize_inplace(np.array(fg_map, dtype=np.float32, copy=True))


def _normalize_inplace(m: np.ndarray) -> np.ndarray:
    # In place on an array we own, four passes: the same float32 results as the reference's
    # `m -= m.min(); m /= m.max()` (rounding is monotonic, so max(m - lo) is exactly hi - lo), and NaN
    # shows in min/max, which propagate it (this is most of the per-frame decode time).
    lo, hi = m.min(), m.max()
    if np.isnan(lo) or np.isnan(hi) or lo == hi:
        m.fill(0)
        return m
    m -= lo
    m /= hi - lo
    return m


def resize_map(fg_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of a 2-D map to `size` = (height, width)."""
    h, w = size
    return cv2.resize(np.asarray(fg_map, dtype=np.float32), (int(w), int(h)), interpolation=cv2.INTER_CUBIC)


def map_to_uint8(fg_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Protocol map at `size`: resized, normalized, then uint8 by truncation (what contours are taken on)."""
    m = _normalize_inplace(resize_map(fg_map, size))  # cv2.resize returns a fresh array
    m *= 255
    return m.astype(np.uint8)


def threshold_level(tau: float, u_max: int) -> int:
    """Pixels strictly above this uint8 level are foreground at threshold tau."""
    return int(tau * u_max)


def boxes_from_mask(mask: np.ndarray, mode: str = "largest") -> np.ndarray:
    """Bounding rectangles (x0, y0, x1, y1), int64, of a binary mask's contours; shape (0, 4) when none."""
    height, width = mask.shape
    contours = cv2.findContours(mask, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    if len(contours) == 0:
        return np.zeros((0, 4), dtype=np.int64)
    if mode == "largest":
        contours = [max(contours, key=cv2.contourArea)]
    elif mode != "all":
        raise ValueError(f"contour mode must be one of {CONTOUR_MODES}, not {mode!r}")
    boxes = np.empty((len(contours), 4), dtype=np.int64)
    for i, contour in enumerate(contours):
        x, y, w, h = cv2.boundingRect(contour)
        boxes[i] = (x, y, min(x + w, width - 1), min(y + h, height - 1))
    return boxes


def boxes_at_level(u: np.ndarray, level: int, mode: str = "largest") -> np.ndarray:
    """Boxes of the uint8 map `u` whose pixels are strictly above `level`."""
    mask = cv2.threshold(u, level, 255, cv2.THRESH_BINARY)[1]  # 255 where u > level (strictly), else 0
    return boxes_from_mask(mask, mode)


def decode_boxes(
    fg_map: np.ndarray,
    threshold: float,
    size: tuple[int, int] = (224, 224),
    mode: str = "largest",
    min_area: int = 0,
) -> np.ndarray:
    """Boxes (K, 4) int64 xyxy at `size` = (height, width) from a map at any resolution (K = 0: no object).

    The runtime decodes at the model's input size (as evaluation does) and scales the boxes to the frame,
    so what is measured is what ships. `min_area` drops boxes whose inclusive pixel area is smaller.
    """
    u = map_to_uint8(fg_map, size)
    boxes = boxes_at_level(u, threshold_level(threshold, int(u.max())), mode)
    if min_area > 0 and len(boxes):
        boxes = boxes[box_area(boxes) >= min_area]
    return boxes


def box_area(boxes: np.ndarray) -> np.ndarray:
    """Inclusive pixel area of xyxy boxes (the protocol's +1 on width and height)."""
    boxes = np.asarray(boxes)
    return (boxes[..., 2] - boxes[..., 0] + 1) * (boxes[..., 3] - boxes[..., 1] + 1)


def protocol_boxes(boxes: np.ndarray) -> np.ndarray:
    """The protocol scores an image with no contour as the single box (0, 0, 0, 0)."""
    return boxes if len(boxes) else NO_BOX


def box_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU matrix (P, G) with inclusive pixels, as the reference computes it."""
    a = np.asarray(pred, dtype=np.float64)[:, None, :]
    b = np.asarray(gt, dtype=np.float64)[None, :, :]
    x0 = np.maximum(a[..., 0], b[..., 0])
    y0 = np.maximum(a[..., 1], b[..., 1])
    x1 = np.minimum(a[..., 2], b[..., 2])
    y1 = np.minimum(a[..., 3], b[..., 3])
    inter = (x1 - x0 + 1).clip(0) * (y1 - y0 + 1).clip(0)
    return inter / (box_area(a) + box_area(b) - inter)


def scale_boxes(boxes: np.ndarray, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
    """Map inclusive-pixel xyxy boxes from a (h, w) grid to another (h, w) grid, float32, clipped to it."""
    fh, fw = from_size
    th, tw = to_size
    sx, sy = tw / fw, th / fh
    out = np.empty(np.shape(boxes), dtype=np.float32)
    if len(out):
        b = np.asarray(boxes, dtype=np.float32)
        # inclusive pixel x covers [x, x+1) on the grid; scale both edges, then back to inclusive
        out[:, 0] = b[:, 0] * sx
        out[:, 1] = b[:, 1] * sy
        out[:, 2] = (b[:, 2] + 1) * sx - 1
        out[:, 3] = (b[:, 3] + 1) * sy - 1
        # On a frame smaller than the grid a one-pixel box scales to less than a pixel, and its inclusive far
        # edge would fall before its near edge: keep x0 <= x1, y0 <= y1, all inside the frame.
        np.clip(out[:, 0::2], 0, tw - 1, out=out[:, 0::2])
        np.clip(out[:, 1::2], 0, th - 1, out=out[:, 1::2])
        np.maximum(out[:, 2], out[:, 0], out=out[:, 2])
        np.maximum(out[:, 3], out[:, 1], out=out[:, 3])
    return out
