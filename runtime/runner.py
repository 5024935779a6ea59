"""The one contract every backend keeps (as Polygraphy's runners do): load once, then `infer` a uint8 batch.

`infer` checks the batch against the graph contract (`tedloc_edge.contract`), times the backend's `_infer`, and
checks its float32 ``fg_map`` (n, gh, gw) and ``logits`` (n, C) (float16 is widened). Outputs may be views into
buffers the runner reuses: a caller copies what it needs past the next call. Runners: ONNX Runtime, TensorRT,
torch (`tedloc_edge.train.predict.TorchRunner`); a Triton server's models decode too, so `TritonRunner` is a
`BoxRunner` (frames' sizes in, boxes in frame pixels out). `Localizer` takes either.
"""

from __future__ import annotations

import abc
import functools
import logging
import time
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

import numpy as np

from tedloc_edge.bundle import BundleMeta
from tedloc_edge.contract import INPUT_NAME, GraphContract

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R", bound="RunnerBase")  # typing.Self is 3.11; the device install is 3.10


class RunnerBase(abc.ABC):
    """A loaded model. Subclasses set `name`, `source`, `meta`, `max_batch` and `fixed_batch` in their constructor."""

    name: str = "runner"
    source: str = ""  # the model file, URL or run it came from
    meta: BundleMeta
    max_batch: int = 1
    fixed_batch: int | None = None  # a model exported with a static batch dimension takes exactly this many
    frame_errors: tuple[type[Exception], ...] = ()  # errors that lose one batch, not the stream (a server restarting)
    last_inference_ms: float = 0.0  # the latest call, as Polygraphy's runners time theirs

    @functools.cached_property
    def contract(self) -> GraphContract:
        return GraphContract.of(self.meta)

    def host_input(self, max_batch: int) -> np.ndarray:
        """The host buffer the preprocessor writes into; backends that copy to a device give pinned memory."""
        return np.empty(self.contract.shape(INPUT_NAME, max_batch), dtype=np.uint8)

    def _run(self, run: Callable[..., T], images: np.ndarray, *args: object) -> T:
        """`run` on the checked, contiguous batch (and `args`), timed."""
        self.contract.check_input(images, self.name)
        n = images.shape[0]
        if self.fixed_batch is not None and n != self.fixed_batch:
            raise ValueError(f"{self.name}: this model takes batches of exactly {self.fixed_batch}, got {n}")
        if not 0 < n <= self.max_batch:
            raise ValueError(f"{self.name}: batch of {n}; this runner takes 1..{self.max_batch}")
        start = time.perf_counter()
        out = run(np.ascontiguousarray(images), *args)
        self.last_inference_ms = (time.perf_counter() - start) * 1e3
        return out

    def warmed_up(self) -> None:
        """The Localizer's warm-up call is done: a runner that counts its calls starts from zero here."""

    def close(self) -> None:
        """Release sessions, contexts and device memory (idempotent)."""

    def __enter__(self: R) -> R:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, max_batch={self.max_batch}, fixed_batch={self.fixed_batch})"


class Runner(RunnerBase):
    """The graph contract as a call: uint8 (n, H, W, 3) -> (fg_map, logits)."""

    def infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        fg_map, logits = self._run(self._infer, images)
        outputs = fg_map.astype(np.float32, copy=False), logits.astype(np.float32, copy=False)  # fp16 outputs widened
        self.contract.check_outputs(outputs, len(images), self.name)
        return outputs

    @abc.abstractmethod
    def _infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the model on a checked, contiguous batch."""


@dataclass
class Boxes:
    """A decoding model's answer for a batch: per image, boxes (k, 4) in frame pixels, best first, and their
    scores; and the (n, C) logits, from which the Localizer ranks the classes as it does for a local model."""

    boxes: list[np.ndarray]
    box_scores: list[np.ndarray]
    logits: np.ndarray


class BoxRunner(RunnerBase):
    """A model that decodes too (a Triton server's ensemble): it sends boxes, never the map."""

    def infer_boxes(self, images: np.ndarray, frame_shapes: Sequence[tuple[int, int]], overrides: dict[str, object]) -> Boxes:
        """`frame_shapes`: each image's (height, width) before the resize; `overrides`: the decode settings the
        caller gave (threshold, contour_mode, min_box_area), which replace the model's own."""
        return self._run(self._infer_boxes, images, frame_shapes, overrides)

    @abc.abstractmethod
    def _infer_boxes(self, images: np.ndarray, frame_shapes: Sequence[tuple[int, int]], overrides: dict[str, object]) -> Boxes:
        """Run the model on a checked, contiguous batch."""
