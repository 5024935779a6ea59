"""The reader thread every source shares: frames are decoded in the background while the model runs.

A file (video or images) never loses a frame: the reader blocks when the consumer is behind. A live
source (camera, RTSP) must not fall behind real time, so by default only the newest frame waits and a
stale one is dropped (and counted); `queue=True` keeps every frame in a bounded queue instead.
"""

from __future__ import annotations

import abc
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

logger = logging.getLogger(__name__)

QUEUE_FRAMES = 64  # bounded queue for files and for live sources run with --queue
_END = object()


def utc_iso(wall: float) -> str:
    """Seconds since the epoch -> ISO 8601 UTC to the millisecond, e.g. 2025-05-01T12:00:00.123Z."""
    return datetime.fromtimestamp(wall, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Frame:
    index: int  # position in the source (decoded frames, counting those skipped by --stride)
    image: np.ndarray  # HxWx3 uint8 RGB
    time: float | None = None  # presentation time in seconds (video); None for still images
    name: str = ""  # image file name, or the source label
    decode_ms: float = 0.0
    wall: float = field(default_factory=lambda: time.time())  # wall-clock time it was decoded (UTC seconds since the epoch)
    gap_s: float | None = None  # the first frame after a live source reconnected: seconds since the frame before


@dataclass
class SourceStats:
    frames_read: int = 0  # frames handed to the pipeline
    decode_errors: int = 0  # packets or images that failed to decode (skipped, counted)
    frames_missing: int = 0  # frames a video's container declares that never decoded (truncated or corrupt file)
    dropped: int = 0  # stale live frames dropped because inference was behind
    skipped_stride: int = 0
    stream_error: str | None = None  # why a stream ended early, if it did
    lost: bool = False  # a live source ended and could not be reconnected (stream_error says why)
    gaps: list[dict] = field(default_factory=list)  # a live source's reconnections (runtime/reconnect.py)
    errors: list[str] = field(default_factory=list)  # first few decode error messages


class ThreadedSource(abc.ABC):
    """Base: subclasses implement `_produce(emit)`, calling emit(Frame) per frame, and set `label`."""

    label = "source"
    decoder = "opencv"  # what turns the input into pixels, e.g. "h264 on cuda" (summary.json)
    live = False
    fps: float | None = None
    frames_expected: int | None = None

    def __init__(self, queue_frames: bool = False, stride: int = 1) -> None:
        self.stride = max(1, int(stride))
        self.stats = SourceStats()
        self._drop_stale = self.live and not queue_frames
        self._queue: queue.Queue = queue.Queue(maxsize=1 if self._drop_stale else QUEUE_FRAMES)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._closed = False
        self.ended = False  # the consumer has seen the end of the source
        self.notify: threading.Event | None = None  # set on every frame and at the end (one consumer, many sources)

    def input_files(self) -> list[Path]:
        """The local files this source reads (an output must never replace one of them); none for a stream."""
        return []

    @abc.abstractmethod
    def _produce(self, emit: Callable[[Frame], bool]) -> None:
        """Read the source, calling `emit` per frame; return when it ends or `emit` returns False."""

    def _skip(self, index: int) -> bool:
        """True for a frame --stride leaves out (counted); producers check before converting pixels."""
        if index % self.stride:
            self.stats.skipped_stride += 1
            return True
        return False

    def _emit(self, frame: Frame) -> bool:
        """Hand a frame over; False when the consumer has stopped (the producer should return)."""
        if self._drop_stale:
            try:
                stale = self._queue.get_nowait()
                self.stats.dropped += 1
                if frame.gap_s is None:  # a reconnection's mark goes to the frame that is read
                    frame.gap_s = stale.gap_s
            except queue.Empty:
                pass
            self._queue.put(frame)
        else:
            while not self._stop.is_set():
                try:
                    self._queue.put(frame, timeout=0.1)
                    break
                except queue.Full:
                    continue
        if not self._stop.is_set():
            self.stats.frames_read += 1
        if self.notify is not None:
            self.notify.set()
        return not self._stop.is_set()

    def _run(self) -> None:
        try:
            self._produce(self._emit)
        except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread, raised there
            self._failure = exc
        finally:
            self._put_end()

    def _put_end(self) -> None:
        while True:
            try:
                self._queue.put(_END, timeout=0.1)
                if self.notify is not None:
                    self.notify.set()
                return
            except queue.Full:
                if self._stop.is_set():
                    try:
                        self._queue.get_nowait()
                    except queue.Empty:
                        pass

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"reader:{self.label}", daemon=True)
            self._thread.start()

    def get(self, block: bool = True) -> Frame | None:
        """The next frame; None at the end of the source, after `interrupt()`, or (block=False) when none waits."""
        self.start()
        while True:
            if self._stop.is_set():
                return None
            try:
                item = self._queue.get(timeout=0.1) if block else self._queue.get_nowait()
                break
            except queue.Empty:
                if not block:
                    return None
        if item is _END:
            self.ended = True
            self._queue.put(_END)  # stay at the end for later calls
            if self._failure is not None:
                failure, self._failure = self._failure, None
                raise failure
            return None
        return item

    def batches(self, size: int) -> Iterator[list[Frame]]:
        """Frames grouped for inference: files fill each batch; live sources take what is waiting (no lag)."""
        while True:
            first = self.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < size:
                frame = self.get(block=not self.live)
                if frame is None:
                    break
                batch.append(frame)
            yield batch

    def __iter__(self) -> Iterator[Frame]:
        while (frame := self.get()) is not None:
            yield frame

    def interrupt(self) -> None:
        """Stop reading now (safe from a signal handler): `get` returns None from here on."""
        self._stop.set()

    def close(self) -> None:
        """Stop the reader thread and release the input (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            deadline = time.monotonic() + 5.0
            while self._thread.is_alive() and time.monotonic() < deadline:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    self._thread.join(timeout=0.05)
        self._release()

    def _release(self) -> None:
        """Close files or containers (subclasses)."""

    def __enter__(self) -> "ThreadedSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
