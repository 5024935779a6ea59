"""Live sources that survive: a camera or stream that drops is reopened with backoff, and the run goes on.

    --reconnect forever   default for live sources (RTSP and other stream URLs, webcams, HTTP of unknown length)
    --reconnect N         give up after N failed attempts in a row (the count restarts once a frame comes through)
    --reconnect 0         off: the first end of the stream is final

Attempts wait 0.5 s, 1 s, then every 2 s, so a camera that comes back is read again within about 2 s plus its
own start-up. Frame indices go on across reconnections; the first frame after one carries `gap_s`, and every
gap is kept in `stats.gaps` (summary.json). A live source that ends for good sets `stats.lost`: `infer` then
exits with EXIT_SOURCE_LOST, and `Localizer.stream` raises SourceLost, so a service manager restarts it.
Files are never reconnected: their end is the end.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

from tedloc_edge.errors import UserError, first_line
from tedloc_edge.runtime.frames import Frame, ThreadedSource, utc_iso
from tedloc_edge.runtime.sources import open_source
from tedloc_edge.runtime.video_source import VideoSource

logger = logging.getLogger(__name__)

EXIT_SOURCE_LOST = 75  # sysexits' EX_TEMPFAIL: a live source ended and could not be reconnected; try again later
DELAYS_S = (0.5, 1.0, 2.0)  # wait before attempt 1, 2, 3 and every later one


class SourceLost(RuntimeError):
    """A live source ended and could not be reconnected; the message is one line with the cause."""


@dataclass(frozen=True)
class Reconnect:
    """How often a live source is reopened in a row before it counts as lost (math.inf: forever; 0: never)."""

    attempts: float = math.inf

    @classmethod
    def parse(cls, text: str | int | None) -> "Reconnect":
        """`--reconnect forever|N`; None is the default (forever)."""
        if text is None or str(text).strip().lower() in ("forever", "on", "inf"):
            return cls(math.inf)
        value = str(text).strip().lower()
        if value == "off":
            return cls(0)
        if not value.isdigit():
            raise UserError(f"--reconnect {text!r}: give a number of attempts (0 turns reconnecting off) or 'forever'")
        return cls(int(value))

    def delay(self, attempt: int) -> float:
        return DELAYS_S[min(attempt, len(DELAYS_S)) - 1]

    def __str__(self) -> str:
        return "forever" if math.isinf(self.attempts) else str(int(self.attempts))


def is_live(source: ThreadedSource) -> bool:
    """Cameras and stream URLs; an HTTP input counts as live when its container declares no duration."""
    if not isinstance(source, VideoSource):
        return False
    http = source.label.lower().startswith(("http://", "https://"))
    return source.live or (http and source.container.duration is None)


def open_stream(spec: str | int, queue: bool = False, stride: int = 1, timeout: float = 10.0,
                hwaccel: str | None = None, reconnect: str | int | None = None) -> ThreadedSource:
    """`open_source`, with live sources wrapped to reconnect (`reconnect`: None is the default, forever)."""
    policy = Reconnect.parse(reconnect)
    source = open_source(spec, queue=queue, stride=stride, timeout=timeout, hwaccel=hwaccel)
    if not is_live(source):
        if reconnect is not None:
            logger.warning("%s: --reconnect applies to live sources (cameras, streams); a file is read once", source.label)
        return source
    assert isinstance(source, VideoSource)
    return ReconnectingSource(source, policy, queue_frames=queue)


class ReconnectingSource(ThreadedSource):
    """A live VideoSource that is reopened when it ends or fails, in the same reader thread and queue.

    `waiting(...)` makes one for a camera that did not answer at start (several sources: the others start, this
    one keeps trying with the same policy); `fps` is known once it connects."""

    live = True

    def __init__(self, first: VideoSource | None, policy: Reconnect, queue_frames: bool = False, label: str = "",
                 stride: int = 1, opener: Callable[[], VideoSource] | None = None, start_error: str = "") -> None:
        self.label = first.label if first is not None else label
        super().__init__(queue_frames=queue_frames, stride=first.stride if first is not None else stride)
        self.policy = policy
        self.conn = first
        self._opener = opener
        self._start_error = start_error
        if first is not None:
            first.stats = self.stats  # decode errors, stride skips and stream errors of every connection add up here
        self.fps = first.fps if first is not None else None
        self.state = "live" if first is not None else "connecting"  # also reconnecting, lost (the multi-camera table)
        self._failed = 0  # failed attempts in a row
        self._pending: dict | None = None  # the gap that waits for its first frame
        self._last_wall: float | None = None

    @classmethod
    def waiting(cls, opener: Callable[[], VideoSource], label: str, error: str, policy: Reconnect, queue_frames: bool = False,
                stride: int = 1) -> "ReconnectingSource":
        return cls(None, policy, queue_frames, label=label, stride=stride, opener=opener, start_error=error)

    @property
    def decoder(self) -> str:  # type: ignore[override]
        return self.conn.decoder if self.conn is not None else "not connected"

    def _produce(self, emit: Callable[[Frame], bool]) -> None:
        base = 0
        if self.conn is None and not self._reconnect(f"no answer at start: {self._start_error}"):
            return
        assert self.conn is not None

        def forward(frame: Frame) -> bool:
            frame.index += base
            if self._pending is not None:
                self._close_gap(frame)
            self._failed = 0
            self._last_wall = frame.wall
            return emit(frame)

        while True:
            decoded = self.conn._decode(forward)
            if decoded is None:  # the consumer stopped
                return
            base += decoded
            cause = self.stats.stream_error or "the stream ended"
            self.stats.stream_error = None
            if not self._reconnect(cause):
                return

    def _close_gap(self, frame: Frame) -> None:
        gap, self._pending = self._pending, None
        assert gap is not None
        since = gap.pop("since")
        frame.gap_s = frame.wall - since
        gap.update(back=utc_iso(frame.wall), seconds=round(frame.gap_s, 3))
        if self.fps:
            gap["frames_missed"] = max(0, round(frame.gap_s * self.fps) - 1)  # at the stream's rate
        self.stats.gaps.append(gap)
        self.state = "live"
        logger.info("%s: back after %.1f s (%s)", self.label, frame.gap_s, gap["cause"])

    def _reconnect(self, cause: str) -> bool:
        """Reopen with backoff; False when stopped or given up (then `stats.lost` and `stream_error` say why)."""
        lost_at = time.time()
        since = self._last_wall if self._last_wall is not None else lost_at
        if self._pending is None:
            self._pending = {"lost": utc_iso(since), "cause": cause, "attempts": 0, "since": since}
        last_error = cause
        if self.conn is not None:
            self.conn._release()
            self.state = "reconnecting"
        while self._failed < self.policy.attempts:
            self._failed += 1
            self._pending["attempts"] += 1
            delay = self.policy.delay(self._failed)
            logger.warning("%s: stream lost (%s); reconnecting in %g s (attempt %d of %s)", self.label, cause, delay,
                           self._failed, self.policy)
            if self._stop.wait(delay):
                return False
            try:
                conn = self._opener() if self._opener is not None else self.conn.reopen()  # type: ignore[union-attr]
            except UserError as exc:
                last_error = first_line(exc).removeprefix(f"{self.label}: ")
                continue
            if self._stop.is_set():
                conn._release()
                return False
            conn.stats = self.stats
            self.conn = conn
            self.fps = self.fps or conn.fps
            self.state = "live"
            return True
        self.state = "lost"
        self.stats.lost = True
        if self.policy.attempts == 0:
            self.stats.stream_error = f"stream lost ({cause}) and --reconnect is off"
        else:
            self.stats.stream_error = (f"stream lost ({cause}); {self._failed} reconnect attempts failed over "
                                       f"{time.time() - lost_at:.0f} s (last: {last_error})")
        logger.error("%s: %s", self.label, self.stats.stream_error)
        return False

    def _release(self) -> None:
        if self.conn is not None:
            self.conn._release()
