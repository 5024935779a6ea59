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
from tedloc_edge.images import COLOR_ORDERS, INTERPOLATIONS, as_uint8_3ch, resize_image

logger = logging.getLogger(__name__)


def check_color(color: str) -> str:
    upper = str(color).upper()
    if upper not in COLOR_ORDERS:
        raise UserError(f"color must be 'RGB' or 'BGR' (the channel order of the frames you pass), not {color!r}")
    return upper


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
        self.interpolation = interpolation
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
        row = resize_image(frame, (self.height, self.width), self.interpolation, out=self.buffer[i])
        if bgr:
            cv2.cvtColor(row, cv2.COLOR_BGR2RGB, dst=row)
