"""Many cameras, one process: `tedloc-edge infer SRC1 SRC2 ...` (or `--sources FILE`, one per line).

One model. Each source has its own reader thread (a ThreadedSource: live ones drop stale frames and reconnect,
runtime/reconnect.py). The main thread takes what is waiting from every source, round robin from a turning
start, into one batch of up to `--batch` frames, runs the model once, and hands each result to its source's
outputs under OUT/<name>/ (mp4, JSONL, summary.json, as a single source writes them). A source with nothing to
give (stalled, reconnecting, lost, ended) is passed over, so a dead camera never holds up the others; a stream
URL that does not answer at start is tried again in the background while the others run (`--reconnect` applies).
OUT/summary.json holds every camera's fps and share of the total.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tedloc_edge.errors import UserError, first_line
from tedloc_edge.files import atomic_write_text
from tedloc_edge.runtime.camera_table import CameraTable
from tedloc_edge.runtime.frames import Frame, ThreadedSource
from tedloc_edge.runtime.infer import STAGES, InferOptions, InferSummary, _finish, graceful_stop, open_localizer, smoothed
from tedloc_edge.runtime.localizer import Localizer
from tedloc_edge.runtime.outputs import Outputs
from tedloc_edge.runtime.reconnect import Reconnect, ReconnectingSource, open_stream
from tedloc_edge.runtime.segments import parse_duration
from tedloc_edge.runtime.sinks import check_writable
from tedloc_edge.runtime.smoothing import Smoother
from tedloc_edge.runtime.sources import URL_RE
from tedloc_edge.runtime.video_source import LIVE_SCHEMES, VideoSource, open_url

logger = logging.getLogger(__name__)


@dataclass
class Camera:
    """One source of a multi-source run: its reader, its outputs and its running summary."""

    name: str
    source: ThreadedSource
    summary: InferSummary
    make_outputs: Callable[[ThreadedSource], Outputs]
    smoother: Smoother | None = None
    totals: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    done: bool = False
    outputs: Outputs | None = None  # a camera that did not answer at start gets them with its first frame (its fps)

    def open_outputs(self) -> Outputs:
        if self.outputs is None:
            self.outputs = self.make_outputs(self.source)
            self.summary.outputs = self.outputs.paths()
        return self.outputs

    def finish(self, started: float) -> None:
        _finish(self.summary, self.source, self.open_outputs(), self.totals, started)

    @property
    def state(self) -> str:
        if self.source.stats.lost:
            return "lost"
        if self.done:
            return "ended"
        return getattr(self.source, "state", "live")


@dataclass
class MultiSummary:
    cameras: list[InferSummary]
    names: list[str]
    wall_s: float = 0.0
    interrupted: bool = False

    @property
    def lost(self) -> list[InferSummary]:
        return [s for s in self.cameras if s.lost]

    def to_dict(self, batch: int) -> dict[str, Any]:
        total = sum(s.frames_processed for s in self.cameras)
        mean = total / max(1, len(self.cameras))
        rows = [{"name": n, "source": s.source, "frames_processed": s.frames_processed,
                 "fps": round(s.frames_processed / self.wall_s, 2) if self.wall_s else 0.0,
                 "share_of_mean": round(s.frames_processed / mean, 3) if mean else 0.0,
                 "dropped_stale": s.dropped_stale, "reconnects": s.reconnects, "lost": s.lost,
                 "stream_error": s.stream_error} for n, s in zip(self.names, self.cameras)]
        return {"sources": rows, "frames_processed": total, "wall_s": round(self.wall_s, 3),
                "fps": round(total / self.wall_s, 2) if self.wall_s else 0.0, "batch": batch,
                "model": self.cameras[0].model if self.cameras else "", "backend": self.cameras[0].backend if self.cameras else "",
                "interrupted": self.interrupted}


def read_sources_file(path: Path) -> list[str]:
    """One source per line; blank lines and lines starting with # are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UserError(f"{path}: cannot read the sources file ({exc.strerror}); check --sources") from None
    specs = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not specs:
        raise UserError(f"{path}: no sources in it; write one video, URL or camera index per line")
    return specs


def camera_names(specs: list[str]) -> list[str]:
    """A folder name per source: a file's stem, a URL's host, port and path (never its credentials), webcamN;
    repeats get _2, _3."""
    names: list[str] = []
    for spec in specs:
        text = str(spec).strip()
        if "://" in text:
            where = text.split("://", 1)[1].split("?")[0].rsplit("@", 1)[-1].strip("/")
            base = where.replace("/", "_").replace(":", "_")
        elif text.isdigit() and not Path(text).exists():
            base = f"webcam{text}"
        else:
            base = Path(text.rstrip("/")).stem or "source"
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "source"
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


def _open(opts: InferOptions, spec: str) -> ThreadedSource:
    """The source; a stream URL that does not answer yet becomes a source that keeps trying (unless --reconnect 0)."""
    video = dict(queue_frames=opts.queue, stride=opts.stride, timeout=opts.timeout, hwaccel=opts.hwaccel)
    try:
        return open_stream(spec, queue=opts.queue, stride=opts.stride, timeout=opts.timeout, hwaccel=opts.hwaccel,
                           reconnect=opts.reconnect)
    except UserError as exc:
        policy = Reconnect.parse(opts.reconnect)
        if not URL_RE.match(spec) or spec.split("://", 1)[0].lower() not in LIVE_SCHEMES or policy.attempts == 0:
            raise
        error = first_line(exc).removeprefix(f"{spec}: ")
        logger.warning("%s: %s; the other sources start, this one keeps trying (--reconnect %s)", spec, error, policy)

        def opener() -> VideoSource:
            return open_url(spec, **video)

        return ReconnectingSource.waiting(opener, spec, error, policy, queue_frames=opts.queue, stride=opts.stride)


def open_cameras(opts: InferOptions, specs: list[str], names: list[str], loc: Localizer, cleanup: ExitStack) -> list[Camera]:
    """Open every source at once (a slow camera does not delay the others' start), then their outputs."""
    segment_s = parse_duration(opts.segment) if opts.segment else None
    with ThreadPoolExecutor(max_workers=min(8, len(specs))) as pool:
        futures = [pool.submit(_open, opts, spec) for spec in specs]
    opened = []
    for future in futures:
        try:
            opened.append(future.result())
        except UserError:
            for source in [f.result() for f in futures if f.exception() is None]:
                source.close()
            raise
    for source in opened:
        cleanup.callback(source.close)
    cameras = []
    for name, spec, source in zip(names, specs, opened):
        folder = Path(opts.out) / name

        def make_outputs(source: ThreadedSource, folder: Path = folder) -> Outputs:
            return Outputs(folder, source, opts.exist_ok, opts.video, opts.heatmap, segment_s)

        summary = InferSummary(source=spec, model=str(opts.triton or opts.model), backend=loc.backend, smooth=opts.smooth,
                               reconnect=str(source.policy) if isinstance(source, ReconnectingSource) else None)
        cam = Camera(name, source, summary, make_outputs, Smoother(opts.smooth) if opts.smooth else None)
        if getattr(source, "conn", True) is not None:  # open now: an existing file stops the run before it starts
            cam.open_outputs()
        else:
            for existing in ("summary.json", "predictions.jsonl"):
                check_writable(folder / existing, opts.exist_ok)
        cameras.append(cam)
    return cameras


def gather(cameras: list[Camera], size: int, turn: int, max_frames: int | None) -> list[tuple[Camera, Frame]]:
    """Up to `size` waiting frames, one per camera per round, starting at camera `turn` (fair under load)."""
    batch: list[tuple[Camera, Frame]] = []
    taken = dict.fromkeys(range(len(cameras)), 0)
    progress = True
    while progress and len(batch) < size:
        progress = False
        for k in range(len(cameras)):
            i = (turn + k) % len(cameras)
            cam = cameras[i]
            if cam.done or len(batch) >= size:
                continue
            if max_frames is not None and cam.summary.frames_processed + taken[i] >= max_frames:
                continue
            try:
                frame = cam.source.get(block=False)
            except Exception as exc:  # noqa: BLE001 - one camera's reader failing must not stop the others
                cam.done, cam.summary.stream_error = True, f"reader failed: {exc}"
                logger.error("%s: reader failed (%s); the other sources go on", cam.name, exc)
                continue
            if frame is None:
                cam.done = cam.source.ended
                continue
            batch.append((cam, frame))
            taken[i] += 1
            progress = True
    return batch


def _run_batch(loc: Localizer, batch: list[tuple[Camera, Frame]]) -> None:
    results = loc([frame.image for _, frame in batch], color="RGB")
    for (cam, frame), result in zip(batch, results):
        t0 = time.perf_counter()
        cam.open_outputs().write(frame, *smoothed(cam.smoother, frame, result))
        cam.summary.frames_processed += 1
        cam.summary.frames_present += int(result.present)
        cam.totals["decode"] += frame.decode_ms
        for stage in ("preprocess", "inference", "postprocess"):
            cam.totals[stage] += result.speed[stage]
        cam.totals["annotate_write"] += (time.perf_counter() - t0) * 1e3


def _retire_full(cameras: list[Camera], max_frames: int | None) -> None:
    """Cameras that reached --max-frames stop reading (their thread and decoder are freed for the others)."""
    for cam in cameras:
        if max_frames is not None and not cam.done and cam.summary.frames_processed >= max_frames:
            cam.done = True
            cam.source.interrupt()


def run_multi(opts: InferOptions, specs: list[str]) -> MultiSummary:
    """Run the model over every source at once; OUT/<name>/ per source, OUT/summary.json for all."""
    if opts.batch < 1 or opts.stride < 1:
        raise UserError("--batch and --stride must be at least 1")
    if opts.max_frames is not None and opts.max_frames < 1:
        raise UserError("--max-frames must be at least 1")
    if opts.smooth:
        Smoother(opts.smooth)  # a bad --smooth is refused before any camera opens
    names = camera_names(specs)
    summary_path = check_writable(Path(opts.out) / "summary.json", opts.exist_ok)
    ready = threading.Event()
    with ExitStack() as cleanup:
        loc = open_localizer(opts)
        cleanup.callback(loc.close)
        loc.warmup()
        cameras = open_cameras(opts, specs, names, loc, cleanup)
        multi = MultiSummary([c.summary for c in cameras], names)
        cleanup.callback(lambda: atomic_write_text(summary_path, json.dumps(multi.to_dict(loc.max_batch), indent=2) + "\n"))
        started = time.perf_counter()
        for cam in cameras:  # closed in reverse order, each camera's summary written after its outputs
            cleanup.callback(cam.finish, started)
            cam.source.notify = ready
            cam.source.start()
        def stop_all() -> None:
            for cam in cameras:
                cam.source.interrupt()

        with graceful_stop(stop_all) as stop, CameraTable(names, cameras, opts.show_progress) as table:
            turn = 0
            while not stop.event.is_set():
                ready.clear()
                batch = gather(cameras, loc.max_batch, turn, opts.max_frames)
                turn += 1
                if not batch:
                    if all(cam.done for cam in cameras):
                        break
                    ready.wait(0.05)
                    continue
                try:
                    _run_batch(loc, batch)
                except loc.runner.frame_errors as exc:  # this batch is lost (counted per camera); the streams go on
                    for cam, _ in batch:
                        cam.summary.frame_errors += 1
                    logger.debug("batch of %d frames lost: %s", len(batch), exc)
                _retire_full(cameras, opts.max_frames)
                table.update()
            multi.interrupted = stop.event.is_set()
            multi.wall_s = time.perf_counter() - started
        for cam in cameras:
            cam.summary.interrupted = multi.interrupted
    return multi
