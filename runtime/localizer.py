"""`Localizer`: the API a camera pipeline embeds. Load once, then one call per frame or per batch.

    loc = Localizer("model.onnx")                 # backend/device picked from the file and the install
    result = loc(frame, color="BGR")              # one HxWx3 uint8 frame -> Result
    results = loc([f1, f2], color="RGB")          # a list (or an (N, H, W, 3) array) -> list[Result]
    loc = Localizer(runner)                       # any ready runner: TorchRunner, TritonRunner("grpc://host/tedloc")
    for result, frame in loc.stream("rtsp://cam/1", color="BGR"): ...   # infer's threaded reader (runtime/stream.py)

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
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence, cast, overload

import numpy as np

from tedloc_edge.bundle import BundleMeta
from tedloc_edge.errors import UserError
from tedloc_edge.presence import PROBABILITY
from tedloc_edge.runtime.backends import load_runner
from tedloc_edge.runtime.postprocess import DecodeConfig, Decoded, decode_one, top_classes
from tedloc_edge.runtime.preprocess import Preprocessor, as_uint8_3ch, check_color, frame_list
from tedloc_edge.runtime.result import Result
from tedloc_edge.runtime.runner import Boxes, BoxRunner, Runner

if TYPE_CHECKING:
    from tedloc_edge.runtime.frames import ThreadedSource

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

    `model`: a model file, loaded by `load_runner` with backend ... metadata (threads: ONNX Runtime's intra-op
    threads; cuda_graph: one CUDA graph per call, a --static-batch model on ORT's CUDA EP; cuda_options: ORT CUDA
    EP provider options; trt_cache: the folder of ORT TensorRT EP's caches, default beside the model; metadata: an
    .onnx or bundle JSON describing a plan built without the project's sidecar, by trtexec), or a ready `Runner` /
    `BoxRunner` (a server that decodes: the decode settings given here go with each request), which brings its
    own. threshold / contour_mode / presence_threshold default to the bundle's (calibrated) values; min_box_area is
    an inclusive pixel area at the model's input size (as the evaluator's decoder counts it); classes restricts the
    class choice to a subset (names or ids); return_map keeps each frame's (gh, gw) map on its Result.
    Presence: every Result carries the frame's presence score; a frame below the presence threshold has no box
    and no class. A model without a presence threshold reports every frame present (warned once, never filtered).
    """

    def __init__(
        self,
        model: str | Path | Runner | BoxRunner,
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
        trt_cache: str | Path | None = None,
        metadata: str | Path | None = None,
        presence_threshold: float | None = None,
    ) -> None:
        self.runner = model if isinstance(model, (Runner, BoxRunner)) else \
            load_runner(Path(model), backend, device, providers, max_batch, threads, cuda_graph, cuda_options,
                        trt_cache, metadata)
        self.meta: BundleMeta = self.runner.meta
        self.decode = DecodeConfig(
            threshold=self.meta.threshold if threshold is None else float(threshold),
            contour_mode=contour_mode or self.meta.contour_mode,
            min_box_area=int(min_box_area),
            topk=int(topk),
            presence_threshold=self.meta.presence_threshold if presence_threshold is None else float(presence_threshold),
            map_kind=self.meta.map_kind,
        )
        self._check_presence(presence_threshold is not None)
        given = {"threshold": threshold is not None, "contour_mode": contour_mode is not None, "min_box_area": bool(min_box_area)}
        self._overrides: dict[str, object] = {k: getattr(self.decode, k) for k, on in given.items() if on}
        self.allowed = resolve_classes(classes, self.meta.class_names)
        if return_map and isinstance(self.runner, BoxRunner):
            raise UserError(f"{self.runner.source}: the localization map (--heatmap) is not sent by {self.runner.name}; "
                            "run without --heatmap or locally")
        self.return_map = return_map
        self.max_batch = self.runner.max_batch
        self._pre = Preprocessor(self.meta.input_size, self.max_batch, self.meta.preprocess, self.runner.host_input(self.max_batch))
        self._lock = threading.Lock()
        logger.debug("Localizer(%s): %s, %d classes, input %s", self.runner.source, self.runner.name, self.meta.num_classes, self.meta.input_size)

    def _check_presence(self, given: bool) -> None:
        """A presence threshold for a map without presence is refused; frames that will not be filtered by presence
        are said once, at the first call (never silently; evaluation, which scores maps, is not concerned)."""
        source, kind = self.runner.source, self.meta.map_kind
        self._presence_note: str | None = None
        if kind != PROBABILITY:
            if given:
                raise UserError(f"{source}: a {kind} map is not a probability, so this model has no presence score; "
                                "drop --presence-threshold (every frame is reported present)")
        elif isinstance(self.runner, BoxRunner):
            if given:
                raise UserError(f"{source}: {self.runner.name} sends boxes, not the map, so there is no presence score to "
                                "threshold; drop --presence-threshold or run the model locally")
            self._presence_note = f"{source}: {self.runner.name} sends boxes, not the map: no presence score, every frame is reported present"
        elif self.decode.presence_threshold is None:
            self._presence_note = (f"{source}: the model has no presence threshold: every frame is reported present "
                                   "(presence is still scored); calibrate with `tedloc-edge eval RUN --split val --calibrate` "
                                   "(object-free images needed) and export again, or pass --presence-threshold")

    @property
    def backend(self) -> str:
        return self.runner.name

    @overload
    def __call__(self, frames: np.ndarray, color: str = ...) -> Result | list[Result]: ...
    @overload
    def __call__(self, frames: Sequence[np.ndarray], color: str = ...) -> list[Result]: ...

    def __call__(self, frames: Frames, color: str = "RGB") -> Result | list[Result]:
        """One frame (HxW[xC] array) -> Result; a list of frames or an (N, H, W, 3) array -> list[Result].
        A runner's `frame_errors` (a server's failed request) lose this call only; the next may succeed."""
        color = check_color(color)
        batch, single = frame_list(frames)
        if not batch:
            return []
        results: list[Result] = []
        with self._lock:
            if self._presence_note:
                logger.warning(self._presence_note)
                self._presence_note = None
            for start in range(0, len(batch), self.max_batch):
                results.extend(self._run(batch[start : start + self.max_batch], color))
        return results[0] if single else results

    def _images(self, frames: Sequence[np.ndarray], color: str) -> np.ndarray:
        """At most max_batch frames resized into the runner's input buffer."""
        images = self._pre(frames, color)
        if self.runner.fixed_batch is not None:  # a static-batch model: run the full buffer, keep the first n
            images = self._pre.buffer[: self.runner.fixed_batch]
        return images

    def _run(self, frames: list[np.ndarray], color: str) -> list[Result]:
        frames = [as_uint8_3ch(f, color, f"frame {i}") for i, f in enumerate(frames)]
        shapes = [(f.shape[0], f.shape[1]) for f in frames]
        t0 = time.perf_counter()
        images = self._images(frames, color)
        t1 = time.perf_counter()
        if isinstance(self.runner, BoxRunner):
            out: Boxes | tuple[np.ndarray, np.ndarray] = self.runner.infer_boxes(images, shapes, self._overrides)
        else:
            out = self.runner.infer(images)
        t2 = time.perf_counter()
        maps = out[0] if isinstance(out, tuple) and self.return_map else [None] * len(frames)
        results = [self._result(d, shape, m) for d, shape, m in zip(self._decoded(out, shapes), shapes, maps)]
        n = len(frames)
        speed = {"preprocess": (t1 - t0) * 1e3 / n, "inference": (t2 - t1) * 1e3 / n, "postprocess": (time.perf_counter() - t2) * 1e3 / n}
        for r in results:
            r.speed = dict(speed)
        return results

    def _decoded(self, out: Boxes | tuple[np.ndarray, np.ndarray], shapes: list[tuple[int, int]]) -> list[Decoded]:
        if isinstance(out, Boxes):  # boxes decoded by the server: the classes are ranked here, as decode_one ranks them
            return [Decoded(b, s, *top_classes(lg, self.decode.topk, self.allowed))
                    for b, s, lg in zip(out.boxes, out.box_scores, out.logits)]
        fg_map, logits = out
        return [decode_one(m, lg, shape, self.meta.input_size, self.decode, self.allowed)
                for m, lg, shape in zip(fg_map, logits, shapes)]

    def _result(self, d: Decoded, frame_shape: tuple[int, int], fg_map: np.ndarray | None) -> Result:
        names = self.meta.class_names
        ids, probs = d.topk.tolist(), d.probs[d.topk].tolist()  # plain ints and floats in two calls; [] when absent
        return Result(
            boxes=d.boxes,
            box_scores=d.box_scores,
            class_id=ids[0] if ids else None,
            class_name=names[ids[0]] if ids else None,
            score=probs[0] if ids else None,
            topk=[(i, names[i], p) for i, p in zip(ids, probs)],
            orig_shape=frame_shape,
            fg_map=None if fg_map is None else fg_map.copy(),
            presence=d.presence,
            present=d.present,
        )

    def warmup(self) -> None:
        """One call on a blank frame: the model really runs (on its server too), and the first real frame's timings
        do not carry the backend's start-up. A server that fails this first request is one line naming it."""
        h, w = self.meta.input_size
        try:
            self(np.zeros((h, w, 3), np.uint8))
        except self.runner.frame_errors as exc:
            raise UserError(f"{exc}; check the server's log") from None
        finally:
            self.runner.warmed_up()

    def forward_maps(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The predictor evaluation scores (tedloc_edge.evaluate.Predictor): RGB uint8 images of any size ->
        (maps (N, gh, gw), logits (N, C)), float32 copies."""
        runner = self.runner
        if isinstance(runner, BoxRunner):
            raise UserError(f"{runner.source}: {runner.name} sends boxes, not the localization map; evaluate the model file")
        maps, logits = [], []
        with self._lock:
            for start in range(0, len(images), self.max_batch):
                chunk = [as_uint8_3ch(im, "RGB", f"image {start + i}") for i, im in enumerate(images[start : start + self.max_batch])]
                m, lg = runner.infer(self._images(chunk, "RGB"))
                maps.append(m[: len(chunk)].copy())
                logits.append(lg[: len(chunk)].copy())
        if not maps:
            return np.zeros(runner.contract.shape("fg_map", 0), np.float32), np.zeros(runner.contract.shape("logits", 0), np.float32)
        return np.concatenate(maps), np.concatenate(logits)

    def stream(self, source: "str | int | ThreadedSource", color: str = "RGB", **options: Any) -> Iterator[tuple[Result, np.ndarray]]:
        """(Result, frame) for each frame of a video, stream, camera or images, read by `infer`'s threaded reader
        (stale frames dropped and reconnects for live sources); frames in `color` order. Options: batch, stride,
        queue, timeout, hwaccel ("cuda": NVDEC), reconnect ("forever" or N), smooth (K frames); see runtime/stream.py."""
        from tedloc_edge.runtime.stream import stream

        return stream(self, source, color=color, **options)

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> "Localizer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Localizer({self.runner.source!r}, backend={self.backend!r}, classes={self.meta.num_classes}, max_batch={self.max_batch})"
