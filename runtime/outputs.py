"""The outputs of one `infer` run, named from the source and checked for overwrites before any frame runs.

video or stream SOURCE -> OUT/<source name>.mp4 (annotated, unless --no-video)
image(s) SOURCE        -> OUT/<image name> (annotated), one per image
always                 -> OUT/predictions.jsonl (one line per frame) and OUT/summary.json (atomic, at the end)
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from tedloc_edge.files import atomic_write_text
from tedloc_edge.runtime.annotate import draw_result
from tedloc_edge.runtime.frames import Frame, ThreadedSource
from tedloc_edge.runtime.result import Result
from tedloc_edge.runtime.sinks import ImageSink, JsonlSink, VideoSink, check_writable
from tedloc_edge.runtime.sources import ImageSource

logger = logging.getLogger(__name__)


def output_stem(source: ThreadedSource) -> str:
    label = source.label.rstrip("/")
    if "://" in label:
        label = label.split("://", 1)[1].split("?")[0].strip("/").replace("/", "_") or "stream"
    stem = Path(label).stem if not label.startswith("webcam") else label.replace(" ", "")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem) or "source"


class Outputs:
    """Opens every sink up front (so an existing file stops the run before it starts), writes each frame's
    result to all of them, and closes them in any case."""

    def __init__(self, out: Path, source: ThreadedSource, exist_ok: bool, video: bool, heatmap: bool) -> None:
        self.out = out
        self.heatmap = heatmap
        self.images: ImageSink | None = None
        self.video: VideoSink | None = None
        self.summary_path = check_writable(out / "summary.json", exist_ok)
        if isinstance(source, ImageSource):
            self.images = ImageSink(out, exist_ok)
            for path in source.paths:
                check_writable(self.images.target(path.name), exist_ok)
        elif video:
            fps = source.fps / source.stride if source.fps else None  # --stride keeps real-time playback
            self.video = VideoSink(out / f"{output_stem(source)}.mp4", fps, exist_ok)
        self.jsonl = JsonlSink(out / "predictions.jsonl", exist_ok)

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
                record["annotated"] = self.images.write(frame.name, annotated).name
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
