"""Frames in, model input out: one resize per frame into a batch buffer allocated once.

The graph takes uint8 NHWC RGB at the bundle's ``input_size`` and normalizes inside itself
(docs/architecture.md), so the runtime's whole preprocessing is: make the frame 3-channel uint8, resize it
to (H, W) with no crop (as the evaluation protocol does), and swap BGR to RGB when the caller says BGR.
Standard frames (HxWx3 uint8) cost no allocation of a model-sized array: OpenCV resizes straight into the
buffer row and the channel swap happens in place.
"""

from __future__ import annotations

import logging
from typing import Sequence

import cv2
import numpy as np

from tedloc_edge.errors import UserError

logger = logging.getLogger(__name__)

COLOR_ORDERS = ("RGB", "BGR")
INTERPOLATIONS = {"bilinear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "bicubic": cv2.INTER_CUBIC}


def check_color(color: str) -> str:
    upper = str(color).upper()
    if upper not in COLOR_ORDERS:
        raise UserError(f"color must be 'RGB' or 'BGR' (the channel order of the frames you pass), not {color!r}")
    return upper


def as_uint8_3ch(image: np.ndarray, color: str = "RGB", source: str = "frame") -> np.ndarray:
    """Any common image array as HxWx3 uint8 in the SAME channel order `color` (no copy when it already is).

    Grayscale (HxW or HxWx1) is repeated to 3 channels, a 4th (alpha) channel is dropped, 16-bit samples
    keep their top 8 bits (x >> 8), float images are taken as [0, 1] and scaled by 255.
    """
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        img = (np.clip(np.nan_to_num(img), 0.0, 1.0) * 255.0).astype(np.uint8)
    elif img.dtype == np.bool_:
        img = img.astype(np.uint8) * 255
    elif img.dtype != np.uint8:
        raise UserError(f"{source}: pixel type {img.dtype} is not supported; pass uint8, uint16 or float [0, 1] images")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        return np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2))
    if img.ndim == 3 and img.shape[2] == 4:
        return np.ascontiguousarray(img[:, :, :3])
    if img.ndim == 3 and img.shape[2] == 3:
        return img
    raise UserError(f"{source}: image of shape {tuple(np.shape(image))} is not HxW, HxWx1, HxWx3 or HxWx4; pass a picture")


class Preprocessor:
    """Resize frames into the model's uint8 NHWC RGB input buffer (allocated once, at `max_batch`).

    `buffer` may be given by the backend (e.g. pinned host memory for TensorRT) so the host-to-device copy
    reads exactly what the resize wrote. Not thread-safe on its own: the Localizer holds a lock around it.
    """

    def __init__(
        self,
        input_size: tuple[int, int],
        max_batch: int,
        interpolation: str = "bilinear",
        buffer: np.ndarray | None = None,
    ) -> None:
        self.height, self.width = (int(v) for v in input_size)
        self.max_batch = int(max_batch)
        if interpolation not in INTERPOLATIONS:
            raise UserError(f"resize interpolation {interpolation!r} unknown; use one of {sorted(INTERPOLATIONS)}")
        self.interpolation = INTERPOLATIONS[interpolation]
        shape = (self.max_batch, self.height, self.width, 3)
        if buffer is None:
            buffer = np.empty(shape, dtype=np.uint8)
        if buffer.shape != shape or buffer.dtype != np.uint8 or not buffer.flags.c_contiguous:
            raise ValueError(f"input buffer must be C-contiguous uint8 {shape}, got {buffer.dtype} {buffer.shape}")
        self.buffer = buffer

    def __call__(self, frames: Sequence[np.ndarray], color: str = "RGB") -> np.ndarray:
        """Fill the first len(frames) rows of the buffer; returns that (contiguous) view."""
        n = len(frames)
        if not 0 < n <= self.max_batch:
            raise ValueError(f"batch of {n} frames; this preprocessor holds 1..{self.max_batch}")
        bgr = check_color(color) == "BGR"
        for i, frame in enumerate(frames):
            self._load(i, as_uint8_3ch(frame, "RGB", f"frame {i}"), bgr)
        return self.buffer[:n]

    def _load(self, i: int, frame: np.ndarray, bgr: bool) -> None:
        row = self.buffer[i]
        if frame.shape[0] == self.height and frame.shape[1] == self.width:
            np.copyto(row, frame)
        else:
            cv2.resize(frame, (self.width, self.height), dst=row, interpolation=self.interpolation)
        if bgr:
            cv2.cvtColor(row, cv2.COLOR_BGR2RGB, dst=row)
