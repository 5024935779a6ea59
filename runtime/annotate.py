"""Drawing a Result on its frame: boxes, the class with its probability, each box's score; optionally the
foreground map blended over the frame (--heatmap). Draws in place, in the frame's own channel order. A frame
without an object (`Result.present` False) is left as it is: no box, no class, no map."""

from __future__ import annotations

import cv2
import numpy as np

from tedloc_edge.boxes import normalize_map
from tedloc_edge.runtime.preprocess import check_color
from tedloc_edge.runtime.result import Result

BOX_RGB = (0, 230, 118)
TEXT_RGB = (0, 0, 0)
HEATMAP_ALPHA = 0.45


def _order(rgb: tuple[int, int, int], color: str) -> tuple[int, int, int]:
    return rgb if color == "RGB" else (rgb[2], rgb[1], rgb[0])


def blend_heatmap(image: np.ndarray, fg_map: np.ndarray, color: str = "RGB", alpha: float = HEATMAP_ALPHA) -> np.ndarray:
    """Blend the normalised map, upsampled to the frame, as a JET colour map over `image` (in place)."""
    h, w = image.shape[:2]
    u8 = (normalize_map(cv2.resize(np.asarray(fg_map, np.float32), (w, h), interpolation=cv2.INTER_LINEAR)) * 255).astype(np.uint8)
    heat = cv2.applyColorMap(u8, cv2.COLORMAP_JET)  # BGR
    if color == "RGB":
        cv2.cvtColor(heat, cv2.COLOR_BGR2RGB, dst=heat)
    cv2.addWeighted(image, 1.0 - alpha, heat, alpha, 0.0, dst=image)
    return image


def _label(image: np.ndarray, text: str, x: int, y: int, scale: float, thickness: int, color: str) -> None:
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    y_top = y - th - base - 2 if y - th - base - 2 >= 0 else y
    cv2.rectangle(image, (x, y_top), (x + tw + 4, y_top + th + base + 2), _order(BOX_RGB, color), -1)
    cv2.putText(image, text, (x + 2, y_top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, _order(TEXT_RGB, color), thickness, cv2.LINE_AA)


def draw_result(image: np.ndarray, result: Result, color: str = "RGB", heatmap: bool = False) -> np.ndarray:
    """Draw `result` on `image` (HxWx3 uint8, channel order `color`) in place and return it.

    Boxes are in the result's frame pixels; when `image` has another size (a resized output frame), they
    are scaled to it.
    """
    color = check_color(color)
    if not result.present:
        return image
    h, w = image.shape[:2]
    if heatmap and result.fg_map is not None:
        blend_heatmap(image, result.fg_map, color)
    sy, sx = h / result.orig_shape[0], w / result.orig_shape[1]
    thickness = max(1, round(min(h, w) / 320))
    scale = max(0.4, min(h, w) / 900)
    for (x0, y0, x1, y1), box_score in zip(result.boxes, result.box_scores):
        p0 = (int(round(x0 * sx)), int(round(y0 * sy)))
        p1 = (int(round((x1 + 1) * sx)) - 1, int(round((y1 + 1) * sy)) - 1)
        cv2.rectangle(image, p0, p1, _order(BOX_RGB, color), thickness + 1)
        _label(image, f"{result.class_name} {result.score:.2f} | box {box_score:.2f}", p0[0], p0[1], scale, thickness, color)
    if not len(result.boxes):
        _label(image, f"{result.class_name} {result.score:.2f} | no box", 0, 0, scale, thickness, color)
    return image
