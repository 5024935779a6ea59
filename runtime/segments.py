"""`--segment 10m`: roll a video source's outputs over into parts, each a complete mp4 and a complete JSONL.

Part k is `<stem>_<k>.mp4` and `predictions_<k>.jsonl` (k from 0000). A live source's parts are cut by the
wall clock (a reconnection's gap counts), a file's by its own timestamps, so a 1-hour file at `--segment 10m`
gives six parts however fast it runs. Every part starts with a keyframe: it is a new encoder and file.
"""

from __future__ import annotations

import re

from tedloc_edge.errors import UserError
from tedloc_edge.runtime.frames import Frame, utc_iso

UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([a-z]*)\s*$")


def parse_duration(text: str, option: str = "--segment") -> float:
    """'10m', '90s', '1h', '45' (seconds) -> seconds; a one-line UserError otherwise."""
    match = DURATION_RE.match(str(text).lower())
    if match is None or match.group(2) not in UNITS or float(match.group(1)) <= 0:
        raise UserError(f"{option} {text!r}: give a positive duration like 30s, 10m or 1h")
    return float(match.group(1)) * UNITS[match.group(2)]


def part_name(name: str, part: int) -> str:
    """'predictions.jsonl', 3 -> 'predictions_0003.jsonl'."""
    stem, dot, suffix = name.rpartition(".")
    return f"{stem}_{part:04d}.{suffix}" if dot else f"{name}_{part:04d}"


class Segments:
    """When to start the next part, and what each part held (summary.json's `segments`)."""

    def __init__(self, seconds: float, live: bool) -> None:
        self.seconds = seconds
        self.live = live
        self.part = 0
        self.start: float | None = None  # the clock at the part's first frame
        self.parts: list[dict] = []

    def clock(self, frame: Frame) -> float:
        return frame.wall if self.live or frame.time is None else frame.time

    def due(self, frame: Frame) -> bool:
        """True when `frame` belongs to the next part (the caller then rolls over and calls `begin`)."""
        return self.start is not None and self.clock(frame) - self.start >= self.seconds

    def begin(self, frame: Frame, files: dict[str, str]) -> None:
        """The part's first frame is about to be written to `files`."""
        self.start = self.clock(frame)
        self.parts.append({"part": self.part, "first_frame": frame.index, "start": utc_iso(frame.wall), "frames": 0, **files})

    def wrote(self, frame: Frame) -> None:
        current = self.parts[-1]
        current["frames"] += 1
        current["last_frame"] = frame.index
        current["end"] = utc_iso(frame.wall)

    def next(self) -> int:
        self.part += 1
        return self.part
