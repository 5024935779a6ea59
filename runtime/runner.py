"""The one contract every backend keeps (as Polygraphy's runners do): load once, then `infer` a uint8 batch.

`infer` checks the batch against what the model declares, then calls the backend's `_infer`. Outputs are
float32 ``fg_map`` (n, gh, gw) and ``logits`` (n, C) (a backend may return float16; `infer` widens it); they may be views into buffers the runner reuses, so
a caller keeps a copy of anything it needs past the next call.
"""

from __future__ import annotations

import abc
import logging

import numpy as np

from tedloc_edge.bundle import BundleMeta

logger = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAMES = ("fg_map", "logits")


class Runner(abc.ABC):
    """A loaded model. Subclasses set `name`, `meta`, `max_batch` and `fixed_batch` in their constructor."""

    name: str = "runner"
    meta: BundleMeta
    max_batch: int = 1
    fixed_batch: int | None = None  # a model exported with a static batch dimension takes exactly this many

    def host_input(self, max_batch: int) -> np.ndarray:
        """The host buffer the preprocessor writes into; backends that copy to a device give pinned memory."""
        h, w = self.meta.input_size
        return np.empty((max_batch, h, w, 3), dtype=np.uint8)

    def infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.meta.input_size
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (h, w, 3):
            raise ValueError(f"{self.name}: input must be uint8 (n, {h}, {w}, 3), got {images.dtype} {images.shape}")
        n = images.shape[0]
        if self.fixed_batch is not None and n != self.fixed_batch:
            raise ValueError(f"{self.name}: this model takes batches of exactly {self.fixed_batch}, got {n}")
        if not 0 < n <= self.max_batch:
            raise ValueError(f"{self.name}: batch of {n}; this runner takes 1..{self.max_batch}")
        fg_map, logits = self._infer(np.ascontiguousarray(images))
        return fg_map.astype(np.float32, copy=False), logits.astype(np.float32, copy=False)  # fp16 outputs widened

    @abc.abstractmethod
    def _infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the model on a checked, contiguous batch."""

    def close(self) -> None:
        """Release sessions, contexts and device memory (idempotent)."""

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, max_batch={self.max_batch}, fixed_batch={self.fixed_batch})"
