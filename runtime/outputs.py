"""The outputs of one `infer` run, named from the source and checked for overwrites before any frame runs.

video or stream SOURCE -> OUT/<source name>.mp4 (annotated, unless --no-video)
image(s) SOURCE        -> OUT/<image path relative to the folder or glob> (annotated), one per image
always                 -> OUT/predictions.jsonl (one line per frame) and OUT/summary.json (atomic, at the end)
--segment 10m          -> OUT/<source name>_0000.mp4, OUT/predictions_0000.jsonl, ... (runtime/segments.py)

Each JSONL line: "frame" (index in the source), "time" (wall clock when it was decoded, ISO 8601 UTC),
"stream_time" (the stream's timestamp in seconds, null for images), "gap_s" on the first frame after a live
source reconnected, then the Result's fields (and "smooth" with the raw values when --smooth is on).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from tedloc_edge.errors import UserError
from tedloc_edge.files import atomic_write_text, check_not_inputs
from tedloc_edge.runtime.annotate import draw_result
from tedloc_edge.runtime.frames import Frame, ThreadedSource, utc_iso
from tedloc_edge.runtime.result import Result
from tedloc_edge.runtime.segments import Segments, part_name
from tedloc_edge.runtime.sinks import OUT_FIX, ImageSink, JsonlSink, VideoSink, check_writable
from tedloc_edge.runtime.sources import ImageSource

logger = logging.getLogger(__name__)


def output_stem(source: ThreadedSource) -> str:
    label = source.label.rstrip("/")
    if "://" in label:  # host, port and path, without credentials; only a file name's suffix is dropped
        where = label.split("://", 1)[1].split("?")[0].rsplit("@", 1)[-1].strip("/")
        head, _, last = where.rpartition("/")
        stem = "_".join(filter(None, (head.replace("/", "_"), Path(last).stem if head else last))) or "stream"
    else:
        stem = Path(label).stem if not label.startswith("webcam") else label.replace(" ", "")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem) or "source"


def video_rate(source: ThreadedSource) -> float | None:
    """The annotated mp4's frame rate: the source's / --stride keeps real-time playback, but never so slow that
    the mp4 outlasts its source (--stride 1000 on a 3 s clip: one frame shown 3 s, not 33 s)."""
    if not source.fps:
        return None
    rate = source.fps / source.stride
    if source.frames_expected:
        kept = -(-source.frames_expected // source.stride)
        rate = max(rate, kept * source.fps / source.frames_expected)
    return rate


def refuse_collisions(targets: list[Path], inputs: list[Path]) -> None:
    """Two inputs whose annotated copies would be one file: the second would replace the first."""
    first: dict[Path, Path] = {}
    for target, path in zip(targets, inputs):
        if first.setdefault(target, path) is not path:
            raise UserError(f"{target}: both {first[target]} and {path} would be annotated to this one file; "
                            "rename one of them or run them separately")


class Outputs:
    """Opens every sink up front (so an existing file stops the run before it starts), writes each frame's
    result to all of them, and closes them in any case. No output may be one of the source's files."""

    def __init__(self, out: Path, source: ThreadedSource, exist_ok: bool, video: bool, heatmap: bool,
                 segment_s: float | None = None) -> None:
        self.out = out
        self.heatmap = heatmap
        self.exist_ok = exist_ok
        self.images: ImageSink | None = None
        self.video: VideoSink | None = None
        self.segments: Segments | None = None
        self._video_name: str | None = None
        self._fps: float | None = None
        self.summary_path = out / "summary.json"
        planned = [self.summary_path]
        if isinstance(source, ImageSource):
            self.images = ImageSink(out, exist_ok)
            targets = [self.images.target(name) for name in source.names]
            refuse_collisions(targets, source.paths)
            planned += targets
        else:
            if video:
                self._fps = video_rate(source)  # --stride keeps real-time playback, never longer than the source
                self._video_name = f"{output_stem(source)}.mp4"
            if segment_s is not None:
                self.segments = Segments(segment_s, source.live)
                taken = sorted(out.glob("predictions_[0-9]*.jsonl"))
                if taken and not exist_ok:
                    raise UserError(f"{taken[0]}: already exists; pass --exist-ok to overwrite, or choose another --out folder")
        planned.append(out / self._name("predictions.jsonl"))
        if self._video_name is not None:
            planned.append(out / self._name(self._video_name))
        check_not_inputs(planned, source.input_files(), OUT_FIX)
        probed: set[Path] = set()
        for path in planned:  # everything, before a single byte is written
            check_writable(path, exist_ok, probed)
        self._open_part()

    def _name(self, name: str) -> str:
        return name if self.segments is None else part_name(name, self.segments.part)

    def _open_part(self) -> None:
        if self._video_name is not None:
            self.video = VideoSink(self.out / self._name(self._video_name), self._fps, self.exist_ok)
        self.jsonl = JsonlSink(self.out / self._name("predictions.jsonl"), self.exist_ok)

    def _next_part(self, frame: Frame) -> None:
        """Close the part (its mp4 flushed) and open the next one, from `frame` on."""
        assert self.segments is not None
        if self.segments.start is not None:
            self._close_sinks((self.video, self.jsonl))
            self.segments.next()
            self._open_part()
        files = {"jsonl": self.jsonl.path.name, **({"video": self.video.path.name} if self.video is not None else {})}
        self.segments.begin(frame, files)

    @property
    def draws(self) -> bool:
        return self.images is not None or self.video is not None

    def write(self, frame: Frame, result: Result, extra: dict[str, Any] | None = None) -> None:
        """One frame's line (with `extra` fields) and annotated frame; a new part first when one is due."""
        if self.segments is not None and (self.segments.start is None or self.segments.due(frame)):
            self._next_part(frame)
        record: dict[str, Any] = {"frame": frame.index, "time": utc_iso(frame.wall),
                                  "stream_time": None if frame.time is None else round(frame.time, 4)}
        if frame.gap_s is not None:
            record["gap_s"] = round(frame.gap_s, 3)
        if frame.name:
            record["image"] = frame.name
        record.update(result.summary())
        record.update(extra or {})
        record["speed"]["decode"] = round(frame.decode_ms, 3)
        if self.draws:
            annotated = draw_result(frame.image, result, color="RGB", heatmap=self.heatmap)  # the frame is ours: in place
            if self.video is not None:
                self.video.write(annotated)
            if self.images is not None:
                record["annotated"] = self.images.write(frame.name, annotated).relative_to(self.out).as_posix()
        self.jsonl.write(record)
        if self.segments is not None:
            self.segments.wrote(frame)

    def paths(self) -> dict[str, str]:
        found = {"jsonl": str(self.jsonl.path), "summary": str(self.summary_path)}
        if self.video is not None:
            found["video"] = str(self.video.path)
        if self.images is not None:
            found["images"] = str(self.out)
        return found

    def close(self) -> None:
        """Close every sink even if one fails (the video's flush must not be skipped)."""
        self._close_sinks((self.video, self.jsonl, self.images))

    @staticmethod
    def _close_sinks(sinks: tuple[Any, ...]) -> None:
        first: BaseException | None = None
        for sink in sinks:
            if sink is None:
                continue
            try:
                sink.close()
            except Exception as exc:  # noqa: BLE001 - keep closing the others, report the first
                first = first or exc
        if first is not None:
            raise first

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.summary_path, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
