"""Frames in, model input out: one resize per frame into a batch buffer allocated once.

The bundle's preprocessing record (`tedloc_edge.bundle.Preprocess`) says what the graph takes: uint8 NHWC at
``input_size``, normalized inside the graph (the schema refuses anything else at load), in the record's channel
order. So the runtime's whole preprocessing is: make the frame 3-channel uint8, resize it to (H, W) with no
crop and the record's interpolation (`tedloc_edge.images.resize_image`, as training and evaluation do), and
swap RGB/BGR when the caller's frames are in the other order. Standard frames (HxWx3 uint8) cost no
allocation of a model-sized array: OpenCV resizes straight into the buffer row and the swap happens in place.
"""

from __future__ import annotations

import logging
from typing import Sequence

import cv2
import numpy as np

from tedloc_edge.bundle import COLOR_ORDERS, Preprocess
from tedloc_edge.errors import UserError
from tedloc_edge.images import as_uint8_3ch, resize_image

logger = logging.getLogger(__name__)


def check_color(color: str) -> str:
    upper = str(color).upper()
    if upper not in COLOR_ORDERS:
        raise UserError(f"color must be 'RGB' or 'BGR' (the channel order of the frames you pass), not {color!r}")
    return upper


def frame_list(frames: object) -> tuple[list[np.ndarray], bool]:
    """(the frames as a list, whether a single frame was given): one HxW[xC] array, an (N, H, W, C) array or a
    sequence of arrays; anything else (a scalar, a 1-D array, None) is a one-line UserError."""
    if isinstance(frames, np.ndarray):
        if frames.ndim in (2, 3):
            return [frames], True
        if frames.ndim == 4:
            return list(frames), False
        raise UserError(f"frames: an array of shape {frames.shape} is neither a frame (HxW or HxWxC) nor a batch "
                        "(NxHxWxC)")
    try:
        return list(frames), False  # type: ignore[call-overload]
    except TypeError:
        raise UserError(f"frames: pass an HxWx3 array or a list of them, not {type(frames).__name__}") from None


class Preprocessor:
    """Resize frames into the model's uint8 NHWC input buffer (allocated once, at `max_batch`), as the bundle's
    `preprocess` record says (interpolation, channel order).

    `buffer` may be given by the backend (e.g. pinned host memory for TensorRT) so the host-to-device copy
    reads exactly what the resize wrote. Not thread-safe on its own: the Localizer holds a lock around it.
    """

    def __init__(
        self,
        input_size: tuple[int, int],
        max_batch: int,
        preprocess: Preprocess = Preprocess(),
        buffer: np.ndarray | None = None,
    ) -> None:
        self.height, self.width = (int(v) for v in input_size)
        self.max_batch = int(max_batch)
        self.preprocess = preprocess
        shape = (self.max_batch, self.height, self.width, 3)
        if buffer is None:
            buffer = np.empty(shape, dtype=np.uint8)
        if buffer.shape != shape or buffer.dtype != np.uint8 or not buffer.flags.c_contiguous:
            raise ValueError(f"input buffer must be C-contiguous uint8 {shape}, got {buffer.dtype} {buffer.shape}")
        self.buffer = buffer

    def __call__(self, frames: Sequence[np.ndarray], color: str = "RGB") -> np.ndarray:
        """Fill the first len(frames) rows of the buffer from frames in `color` order; returns that (contiguous) view."""
        n = len(frames)
        if not 0 < n <= self.max_batch:
            raise ValueError(f"batch of {n} frames; this preprocessor holds 1..{self.max_batch}")
        swap = check_color(color) != self.preprocess.channel_order
        size, interpolation = (self.height, self.width), self.preprocess.interpolation
        for i, frame in enumerate(frames):
            row = resize_image(as_uint8_3ch(frame, "RGB", f"frame {i}"), size, interpolation, out=self.buffer[i])
            if swap:  # RGB <-> BGR is the same swap either way, in place in the buffer row
                cv2.cvtColor(row, cv2.COLOR_BGR2RGB, dst=row)
        return self.buffer[:n]
