"""`tedloc-edge infer`: source -> Localizer -> outputs, with a progress bar and a summary at the end.

Decoding runs in the source's reader thread while the model runs here. Ctrl-C (or SIGTERM) stops after the
batch in flight: outputs are closed normally, so the mp4 holds every processed frame and the JSONL every
line; a second Ctrl-C aborts at once (the outputs are still closed on the way out). A live source reconnects
(runtime/reconnect.py); one lost for good ends the run with `summary.lost` (the CLI exits EXIT_SOURCE_LOST).
Several sources at once: runtime/multi.py.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from tedloc_edge.console import console, progress

from tedloc_edge.errors import UserError
from tedloc_edge.runtime.frames import Frame, ThreadedSource
from tedloc_edge.runtime.localizer import Localizer
from tedloc_edge.runtime.outputs import Outputs
from tedloc_edge.runtime.reconnect import ReconnectingSource, open_stream
from tedloc_edge.runtime.result import Result
from tedloc_edge.runtime.segments import parse_duration
from tedloc_edge.runtime.smoothing import Smoother
from tedloc_edge.runtime.sources import check_timeout, open_source

logger = logging.getLogger(__name__)

MAX_BATCH = 4096  # frames per model call: buffers are allocated for this many up front
STAGES = ("decode", "preprocess", "inference", "postprocess", "annotate_write")


@dataclass
class InferOptions:
    source: str
    model: Path | None
    out: Path = Path("runs/infer")
    exist_ok: bool = False
    stride: int = 1
    batch: int = 1
    max_frames: int | None = None
    classes: str | None = None
    threshold: float | None = None
    presence_threshold: float | None = None  # default: the model's stored one (below it a frame has no object)
    heatmap: bool = False
    queue: bool = False
    device: str = "auto"
    backend: str = "auto"
    threads: int = 0  # ONNX Runtime intra-op threads (0: one per core); fewer leave cores to decoding and other work
    cuda_graph: bool = False  # replay the model as one CUDA graph (CUDA EP, a --static-batch model)
    hwaccel: str | None = None  # decode videos on this FFmpeg device ("cuda": NVDEC) instead of the CPU
    timeout: float = 10.0
    video: bool = True
    show_progress: bool = True
    triton: str | None = None  # run the model on a Triton server (runtime/triton_client.py) instead of in-process
    trt_cache: Path | None = None  # ORT TensorRT EP engine/timing caches (default: <model>.trt-cache beside the model)
    metadata: Path | None = None  # the bundle of a plan built elsewhere (trtexec): an .onnx or a bundle JSON
    reconnect: str | None = None  # live sources: "forever" (None: the default) or N attempts in a row; 0 is off
    segment: str | None = None  # "10m": roll the mp4 and JSONL over into complete parts (runtime/segments.py)
    smooth: int = 0  # class vote and box EMA over the last K frames (runtime/smoothing.py); 0 is off


@dataclass
class InferSummary:
    source: str
    model: str
    backend: str
    decoder: str = ""  # what made the pixels: "h264 on cpu", "h264 on cuda", "opencv"
    frames_read: int = 0
    frames_processed: int = 0
    frames_present: int = 0  # processed frames with an object (presence at or over the threshold)
    decode_errors: int = 0
    frames_missing: int = 0
    dropped_stale: int = 0
    skipped_stride: int = 0
    frame_errors: int = 0  # frames whose inference failed and were skipped (a Triton server restarting)
    stream_error: str | None = None
    lost: bool = False  # a live source ended and could not be reconnected (stream_error says why)
    reconnect: str | None = None  # the live source's policy ("forever", N); None for files
    reconnects: int = 0
    gaps: list[dict] = field(default_factory=list)  # each reconnection: lost, back (ISO UTC), seconds, cause, attempts
    smooth: int = 0
    segments: list[dict] = field(default_factory=list)  # --segment: each part's files, frames and times
    interrupted: bool = False
    wall_s: float = 0.0
    fps: float = 0.0
    mean_ms: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class StopFlag:
    """First SIGINT/SIGTERM: finish the batch in flight, then stop. Second SIGINT: KeyboardInterrupt now."""

    def __init__(self, on_stop: Callable[[], None]) -> None:
        self.event = threading.Event()
        self.on_stop = on_stop

    def __call__(self, signum: int, _frame: Any) -> None:
        if self.event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.event.set()
        self.on_stop()  # a pipeline waiting for a frame from a stalled stream wakes up too
        console.print("[yellow]stopping after this batch[/] (Ctrl-C again to abort); outputs will be closed cleanly")


@contextmanager
def graceful_stop(on_stop: Callable[[], None]) -> Iterator[StopFlag]:
    flag = StopFlag(on_stop)
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {sig: signal.signal(sig, flag) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _fill(summary: InferSummary, source: ThreadedSource, totals: dict[str, float], wall: float) -> None:
    stats = source.stats
    summary.decoder = source.decoder  # a video's is known for sure once a frame has decoded
    summary.frames_read = stats.frames_read
    summary.decode_errors = stats.decode_errors
    summary.frames_missing = stats.frames_missing
    summary.dropped_stale = stats.dropped
    summary.skipped_stride = stats.skipped_stride
    summary.stream_error = stats.stream_error
    summary.lost = stats.lost
    summary.gaps = list(stats.gaps)
    summary.reconnects = len(stats.gaps)
    summary.wall_s = round(wall, 3)
    n = max(1, summary.frames_processed)
    summary.fps = round(summary.frames_processed / wall, 2) if wall > 0 else 0.0
    summary.mean_ms = {stage: round(totals[stage] / n, 3) for stage in STAGES}


def open_localizer(opts: InferOptions) -> Localizer:
    """The Localizer over the model file, or over a Triton server's model with --triton."""
    kwargs: dict[str, Any] = dict(threshold=opts.threshold, classes=opts.classes, return_map=opts.heatmap,
                                  presence_threshold=opts.presence_threshold)
    if opts.triton:
        from tedloc_edge.runtime.triton_client import TritonRunner

        return Localizer(TritonRunner(opts.triton, timeout=opts.timeout, max_batch=opts.batch), **kwargs)
    if opts.model is None:
        raise UserError("infer needs --model MODEL.onnx (or .plan), or --triton URL of a server that runs it")
    if opts.threads < 0:
        raise UserError(f"--threads must be 0 (one per core) or more, not {opts.threads}")
    return Localizer(opts.model, backend=opts.backend, device=opts.device, max_batch=opts.batch, threads=opts.threads,
                     cuda_graph=opts.cuda_graph, trt_cache=opts.trt_cache, metadata=opts.metadata, **kwargs)


def smoothed(smoother: Smoother | None, frame: Frame, result: Result) -> tuple[Result, dict[str, Any] | None]:
    """The result --smooth makes of this frame's, and the JSONL fields that state it (the raw values)."""
    if smoother is None:
        return result, None
    return smoother(result, restart=frame.gap_s is not None)


def _run_batch(loc: Localizer, outputs: Outputs, batch: list[Frame], totals: dict[str, float],
               smoother: Smoother | None = None) -> int:
    """Model on one batch, then every frame's result to every output; stage times added to `totals` (ms).
    Returns how many of the frames hold an object."""
    results = loc([f.image for f in batch], color="RGB")
    t0 = time.perf_counter()
    for frame, result in zip(batch, results):
        outputs.write(frame, *smoothed(smoother, frame, result))
        totals["decode"] += frame.decode_ms
        for stage in ("preprocess", "inference", "postprocess"):
            totals[stage] += result.speed[stage]
    totals["annotate_write"] += (time.perf_counter() - t0) * 1e3
    return sum(1 for r in results if r.present)


def run_infer(opts: InferOptions) -> InferSummary:
    """Run the pipeline; returns the summary (also written to OUT/summary.json)."""
    if not (1 <= opts.batch <= MAX_BATCH and opts.stride >= 1):  # 10**8 was a MemoryError traceback
        raise UserError(f"--batch must be in 1..{MAX_BATCH} and --stride at least 1")
    if opts.max_frames is not None and opts.max_frames < 1:
        raise UserError("--max-frames must be at least 1")
    segment_s = parse_duration(opts.segment) if opts.segment else None
    smoother = Smoother(opts.smooth) if opts.smooth else None
    check_timeout(opts.timeout)  # before the model loads: a Triton server or a URL waits this long
    with ExitStack() as cleanup:  # closes, in reverse: outputs (then the summary), source, model
        loc = open_localizer(opts)
        cleanup.callback(loc.close)
        loc.warmup()
        source = open_stream(opts.source, queue=opts.queue, stride=opts.stride, timeout=opts.timeout, hwaccel=opts.hwaccel,
                             reconnect=opts.reconnect)
        cleanup.callback(source.close)
        outputs = Outputs(Path(opts.out), source, opts.exist_ok, opts.video, opts.heatmap, segment_s)
        summary = InferSummary(source=str(opts.source), model=str(opts.triton or opts.model), backend=loc.backend,
                               outputs=outputs.paths(), smooth=opts.smooth,
                               reconnect=str(source.policy) if isinstance(source, ReconnectingSource) else None)
        totals = dict.fromkeys(STAGES, 0.0)
        started = time.perf_counter()
        cleanup.callback(_finish, summary, source, outputs, totals, started)
        with graceful_stop(source.interrupt) as stop, _progress_bar(source, opts) as advance:
            for batch in source.batches(loc.max_batch):
                if opts.max_frames is not None:
                    batch = batch[: opts.max_frames - summary.frames_processed]
                try:
                    summary.frames_present += _run_batch(loc, outputs, batch, totals, smoother)
                    summary.frames_processed += len(batch)
                except loc.runner.frame_errors as exc:  # this batch is lost (counted); the stream goes on
                    summary.frame_errors += len(batch)
                    logger.debug("batch of %d frames lost: %s", len(batch), exc)
                advance(len(batch), summary.frames_processed / max(1e-9, time.perf_counter() - started))
                if stop.event.is_set() or summary.frames_processed == opts.max_frames:
                    break
            summary.interrupted = stop.event.is_set()
    if summary.frames_processed == 0 and summary.decode_errors:
        first = source.stats.errors[0] if source.stats.errors else "decode error"
        raise UserError(f"{opts.source}: no frame could be decoded ({first}); check that the file is a readable video or image")
    return summary


def _finish(summary: InferSummary, source: ThreadedSource, outputs: Outputs, totals: dict[str, float], started: float) -> None:
    """Stop the reader, close every output (the mp4's flush included), then write the summary."""
    source.close()
    try:
        outputs.close()
    finally:
        _fill(summary, source, totals, time.perf_counter() - started)  # wall time includes the outputs' flush
        summary.segments = outputs.segments.parts if outputs.segments is not None else []
        outputs.write_summary(summary.to_dict())


@contextmanager
def _progress_bar(source: ThreadedSource, opts: InferOptions) -> Iterator[Any]:
    total = source.frames_expected
    if total is not None:
        total = -(-total // opts.stride)
    if opts.max_frames is not None:
        total = min(total, opts.max_frames) if total is not None else opts.max_frames
    bar = progress(disable=None if opts.show_progress else True)
    with bar:
        task = bar.add_task("infer", total=total, info="")

        def advance(n: int, fps: float) -> None:
            bar.update(task, advance=n, info=f"{fps:6.1f} frames/s")

        yield advance
