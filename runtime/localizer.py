"""`Localizer`: the API a camera pipeline embeds. Load once, then one call per frame or per batch.

    loc = Localizer("model.onnx")                 # backend/device picked from the file and the install
    result = loc(frame, color="BGR")              # one HxWx3 uint8 frame -> Result
    results = loc([f1, f2], color="RGB")          # a list (or an (N, H, W, 3) array) -> list[Result]

Thread safety: one lock per Localizer serializes calls (preprocess buffer, session and output buffers are
shared), so calling one instance from several threads is safe but not parallel; for parallel inference
make one Localizer per thread.
"""

from __future__ import annotations

import difflib
import logging
import threading
import time
from pathlib import Path
from typing import Iterable, Mapping, Sequence, overload

import numpy as np

from tedloc_edge.bundle import BundleMeta
from tedloc_edge.errors import UserError
from tedloc_edge.runtime.backends import load_runner
from tedloc_edge.runtime.postprocess import DecodeConfig, decode_one
from tedloc_edge.runtime.preprocess import Preprocessor, as_uint8_3ch, check_color, frame_list
from tedloc_edge.runtime.result import Result

logger = logging.getLogger(__name__)

Frames = Sequence[np.ndarray] | np.ndarray


def resolve_classes(classes: str | Iterable[str | int] | None, names: Sequence[str]) -> np.ndarray | None:
    """Class names or ids (or "a,b,c") -> sorted class ids; unknown names get a close-match hint."""
    if classes is None:
        return None
    items = [c.strip() for c in classes.split(",")] if isinstance(classes, str) else list(classes)
    ids: set[int] = set()
    for item in items:
        if isinstance(item, (int, np.integer)) or (isinstance(item, str) and item.isdigit() and item not in names):
            index = int(item)
            if not 0 <= index < len(names):
                raise UserError(f"class id {index} is out of range; this model has classes 0..{len(names) - 1}")
            ids.add(index)
        elif item in names:
            ids.add(list(names).index(item))
        elif item:
            hint = difflib.get_close_matches(str(item), list(names), n=1)
            close = f" (did you mean {hint[0]!r}?)" if hint else f"; known: {', '.join(list(names)[:10])}"
            raise UserError(f"class {item!r} is not one of this model's classes{close}")
    if not ids:
        raise UserError("--classes names no class; give names or ids separated by commas")
    return np.array(sorted(ids), dtype=np.int64)


class Localizer:
    """A TeD-Loc model ready for frames: class + boxes per frame, boxes in the frame's own pixels.

    threshold / contour_mode default to the bundle's (calibrated) values; min_box_area is an inclusive pixel
    area at the model's input size (as the evaluator's decoder counts it); classes restricts the class choice
    to a subset (names or ids); return_map keeps each frame's (gh, gw) map on its Result; threads sets ONNX
    Runtime's intra-op threads (0: its default, one per core); cuda_graph replays the model as one CUDA graph
    (ONNX Runtime's CUDA EP, a model exported with --static-batch); cuda_options are ORT CUDA EP provider
    options (e.g. {"prefer_nhwc": "1"}).
    """

    def __init__(
        self,
        model: str | Path,
        backend: str = "auto",
        device: str = "auto",
        providers: Sequence[str] | None = None,
        threshold: float | None = None,
        contour_mode: str | None = None,
        min_box_area: int = 0,
        max_batch: int = 8,
        topk: int = 5,
        classes: str | Iterable[str | int] | None = None,
        return_map: bool = False,
        threads: int = 0,
        cuda_graph: bool = False,
        cuda_options: Mapping[str, str] | None = None,
    ) -> None:
        self.model_path = Path(model)
        self.runner = load_runner(self.model_path, backend, device, providers, max_batch, threads, cuda_graph, cuda_options)
        self.meta: BundleMeta = self.runner.meta
        self.decode = DecodeConfig(
            threshold=self.meta.threshold if threshold is None else float(threshold),
            contour_mode=contour_mode or self.meta.contour_mode,
            min_box_area=int(min_box_area),
            topk=int(topk),
        )
        self.allowed = resolve_classes(classes, self.meta.class_names)
        self.return_map = return_map
        self.max_batch = self.runner.max_batch
        self._pre = Preprocessor(self.meta.input_size, self.max_batch, self.meta.preprocess, self.runner.host_input(self.max_batch))
        self._lock = threading.Lock()
        logger.debug("Localizer(%s): %s, %d classes, input %s", self.model_path, self.runner.name, self.meta.num_classes, self.meta.input_size)

    @property
    def backend(self) -> str:
        return self.runner.name

    @overload
    def __call__(self, frames: np.ndarray, color: str = ...) -> Result | list[Result]: ...
    @overload
    def __call__(self, frames: Sequence[np.ndarray], color: str = ...) -> list[Result]: ...

    def __call__(self, frames: Frames, color: str = "RGB") -> Result | list[Result]:
        """One frame (HxW[xC] array) -> Result; a list of frames or an (N, H, W, 3) array -> list[Result]."""
        color = check_color(color)
        batch, single = frame_list(frames)
        if not batch:
            return []
        results: list[Result] = []
        with self._lock:
            for start in range(0, len(batch), self.max_batch):
                results.extend(self._run(batch[start : start + self.max_batch], color))
        return results[0] if single else results

    def _model(self, frames: Sequence[np.ndarray], color: str) -> tuple[np.ndarray, np.ndarray, float, float]:
        """Preprocess + inference on at most max_batch frames: (fg_map, logits, pre_ms, inf_ms) for the batch."""
        t0 = time.perf_counter()
        images = self._pre(frames, color)
        if self.runner.fixed_batch is not None:  # a static-batch model: run the full buffer, keep the first n
            images = self._pre.buffer[: self.runner.fixed_batch]
        t1 = time.perf_counter()
        fg_map, logits = self.runner.infer(images)
        t2 = time.perf_counter()
        return fg_map[: len(frames)], logits[: len(frames)], (t1 - t0) * 1e3, (t2 - t1) * 1e3

    def _run(self, frames: list[np.ndarray], color: str) -> list[Result]:
        frames = [as_uint8_3ch(f, color, f"frame {i}") for i, f in enumerate(frames)]
        fg_map, logits, pre_ms, inf_ms = self._model(frames, color)
        n = len(frames)
        results = []
        t2 = time.perf_counter()
        for i, frame in enumerate(frames):
            results.append(self._result(fg_map[i], logits[i], (frame.shape[0], frame.shape[1])))
        post_ms = (time.perf_counter() - t2) * 1e3
        for r in results:
            r.speed = {"preprocess": pre_ms / n, "inference": inf_ms / n, "postprocess": post_ms / n}
        return results

    def _result(self, fg_map: np.ndarray, logits: np.ndarray, frame_shape: tuple[int, int]) -> Result:
        d = decode_one(fg_map, logits, frame_shape, self.meta.input_size, self.decode, self.allowed)
        names = self.meta.class_names
        ids, probs = d.topk.tolist(), d.probs[d.topk].tolist()  # plain ints and floats in two calls
        return Result(
            boxes=d.boxes,
            box_scores=d.box_scores,
            class_id=ids[0],
            class_name=names[ids[0]],
            score=probs[0],
            topk=[(i, names[i], p) for i, p in zip(ids, probs)],
            orig_shape=frame_shape,
            fg_map=fg_map.copy() if self.return_map else None,
        )

    def warmup(self) -> None:
        """One call on a blank frame, so the first real frame's timings do not carry the backend's start-up."""
        h, w = self.meta.input_size
        self(np.zeros((h, w, 3), np.uint8))

    def forward_maps(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Predictor contract (docs/architecture.md): RGB uint8 images of any size -> (maps (N, gh, gw), logits (N, C))."""
        maps, logits = [], []
        with self._lock:
            for start in range(0, len(images), self.max_batch):
                chunk = [as_uint8_3ch(im, "RGB", f"image {start + i}") for i, im in enumerate(images[start : start + self.max_batch])]
                m, lg, _, _ = self._model(chunk, "RGB")
                maps.append(m.copy())
                logits.append(lg.copy())
        gh, gw = self.meta.patch_grid
        if not maps:
            return np.zeros((0, gh, gw), np.float32), np.zeros((0, self.meta.num_classes), np.float32)
        return np.concatenate(maps), np.concatenate(logits)

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> "Localizer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Localizer({str(self.model_path)!r}, backend={self.backend!r}, classes={self.meta.num_classes}, max_batch={self.max_batch})"
