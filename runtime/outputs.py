"""The outputs of one `infer` run, named from the source and checked for overwrites before any frame runs.

video or stream SOURCE -> OUT/<source name>.mp4 (annotated, unless --no-video)
image(s) SOURCE        -> OUT/<image path relative to the folder or glob> (annotated), one per image
always                 -> OUT/predictions.jsonl (one line per frame) and OUT/summary.json (atomic, at the end)
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
from tedloc_edge.runtime.frames import Frame, ThreadedSource
from tedloc_edge.runtime.result import Result
from tedloc_edge.runtime.sinks import OUT_FIX, ImageSink, JsonlSink, VideoSink, check_writable
from tedloc_edge.runtime.sources import ImageSource

logger = logging.getLogger(__name__)


def output_stem(source: ThreadedSource) -> str:
    label = source.label.rstrip("/")
    if "://" in label:
        label = label.split("://", 1)[1].split("?")[0].strip("/").replace("/", "_") or "stream"
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

    def __init__(self, out: Path, source: ThreadedSource, exist_ok: bool, video: bool, heatmap: bool) -> None:
        self.out = out
        self.heatmap = heatmap
        self.images: ImageSink | None = None
        self.video: VideoSink | None = None
        self.summary_path = out / "summary.json"
        planned = [self.summary_path, out / "predictions.jsonl"]
        video_path = out / f"{output_stem(source)}.mp4" if video and not isinstance(source, ImageSource) else None
        if isinstance(source, ImageSource):
            self.images = ImageSink(out, exist_ok)
            targets = [self.images.target(name) for name in source.names]
            refuse_collisions(targets, source.paths)
            planned += targets
        elif video_path is not None:
            planned.append(video_path)
        check_not_inputs(planned, source.input_files(), OUT_FIX)
        probed: set[Path] = set()
        for path in planned:  # everything, before a single byte is written
            check_writable(path, exist_ok, probed)
        if video_path is not None:
            self.video = VideoSink(video_path, video_rate(source), exist_ok)
        self.jsonl = JsonlSink(planned[1], exist_ok)

    @property
    def draws(self) -> bool:
        return self.images is not None or self.video is not None

    def write(self, frame: Frame, result: Result) -> None:
        record: dict[str, Any] = {"frame": frame.index, "time": None if frame.time is None else round(frame.time, 4)}
        if frame.name:
            record["image"] = frame.name
        record.update(result.summary())
        record["speed"]["decode"] = round(frame.decode_ms, 3)
        if self.draws:
            annotated = draw_result(frame.image, result, color="RGB", heatmap=self.heatmap)  # the frame is ours: in place
            if self.video is not None:
                self.video.write(annotated)
            if self.images is not None:
                record["annotated"] = self.images.write(frame.name, annotated).relative_to(self.out).as_posix()
        self.jsonl.write(record)

    def paths(self) -> dict[str, str]:
        found = {"jsonl": str(self.jsonl.path), "summary": str(self.summary_path)}
        if self.video is not None:
            found["video"] = str(self.video.path)
        if self.images is not None:
            found["images"] = str(self.out)
        return found

    def close(self) -> None:
        """Close every sink even if one fails (the video's flush must not be skipped)."""
        first: BaseException | None = None
        for sink in (self.video, self.jsonl, self.images):
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
