"""Where `infer` writes: an annotated H.264 mp4, a JSONL of results, annotated images. Nothing is lost on
Ctrl-C or a dying stream, and nothing is written over unless the caller says so (`exist_ok`).

The mp4 is fragmented (moov first, then self-contained fragments at every keyframe, one keyframe a
second): `close()` flushes the encoder and writes every frame given, and even a process killed outright
leaves a file that plays up to its last complete fragment. The JSONL is flushed after every line.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from fractions import Fraction
from pathlib import Path
from typing import Any, TextIO

import av
import cv2
import numpy as np

from tedloc_edge.files import atomic_write_bytes, check_output
from tedloc_edge.errors import UserError, first_line

logger = logging.getLogger(__name__)

MP4_OPTIONS = {"movflags": "frag_keyframe+empty_moov+default_base_moof"}
WRITER_QUEUE = 8  # frames waiting for the encoder; write() blocks beyond that (no unbounded memory)


OUT_FIX = "choose another --out folder"


def check_writable(path: Path, exist_ok: bool, probed: set[Path] | None = None) -> Path:
    """Refuse to write over an existing output unless exist_ok; the folder must take a new file (files.check_output)."""
    return check_output(path, exist_ok, OUT_FIX, probed)


def write_failed(path: Path, exc: BaseException, frames: str = "") -> UserError:
    """The one-line error of an output that failed part way, saying what is on disk (not what was meant to be)."""
    size = path.stat().st_size if path.is_file() else 0
    kept = f"{size} bytes are on disk{frames}" if size else "nothing was written"
    return UserError(f"{path}: writing failed ({getattr(exc, 'strerror', None) or first_line(exc)}); {kept}; "
                     "check the disk and permissions, or choose another --out folder")


def _even(n: int) -> int:
    return max(2, n - (n % 2))


class VideoSink:
    """Annotated frames (RGB uint8) -> H.264 mp4 at a constant rate, encoded in a writer thread so that
    encoding overlaps inference. The size is fixed by the first frame (rounded down to even numbers, as
    yuv420p needs); a later frame of another size is resized to it. `close()` writes every frame given."""

    def __init__(self, path: Path, fps: float | None, exist_ok: bool = False, crf: int = 23, preset: str = "superfast") -> None:
        self.path = check_writable(path, exist_ok)
        self.rate = Fraction(fps or 25.0).limit_denominator(1001)
        self.crf, self.preset = crf, preset
        self.container: Any = None
        self.stream: Any = None
        self.size: tuple[int, int] | None = None  # (width, height) written
        self._first: tuple[int, int] | None = None  # (width, height) of the first frame
        self.frames = 0
        self.resized = 0
        self._queue: queue.Queue = queue.Queue(maxsize=WRITER_QUEUE)
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    def _open(self, height: int, width: int) -> None:
        self.size = (_even(width), _even(height))
        self._first = (width, height)
        try:
            self.container = av.open(str(self.path), mode="w", format="mp4", options=MP4_OPTIONS)
        except (OSError, av.FFmpegError) as exc:
            raise write_failed(self.path, exc) from None
        stream = self.container.add_stream("libx264", rate=self.rate)
        stream.width, stream.height = self.size
        stream.pix_fmt = "yuv420p"
        gop = max(1, round(float(self.rate)))
        stream.options = {"crf": str(self.crf), "preset": self.preset, "g": str(gop), "keyint_min": str(gop)}
        self.stream = stream
        self._thread = threading.Thread(target=self._work, name=f"writer:{self.path.name}", daemon=True)
        self._thread.start()

    def write(self, image: np.ndarray) -> None:
        """Queue one frame (the sink keeps a reference: do not modify `image` afterwards)."""
        if self._failure is not None:
            raise self._failure
        if self.container is None:
            self._open(*image.shape[:2])
        self._queue.put(image)

    def _fit(self, image: np.ndarray) -> np.ndarray:
        assert self.size is not None
        height, width = image.shape[:2]
        if (width, height) == self.size:
            return image
        if (width, height) == self._first:  # odd width or height: drop the last column or row
            return np.ascontiguousarray(image[: self.size[1], : self.size[0]])
        self.resized += 1
        return cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)

    def _work(self) -> None:
        try:
            while (image := self._queue.get()) is not None:
                frame = av.VideoFrame.from_ndarray(self._fit(image), format="rgb24")
                frame.pts = self.frames
                for packet in self.stream.encode(frame):
                    self.container.mux(packet)
                self.frames += 1
            for packet in self.stream.encode():
                self.container.mux(packet)
        except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread by write/close
            self._failure = exc
            while self._queue.get() is not None:  # keep draining so a blocked write() returns
                pass

    def close(self) -> None:
        if self.container is None:
            return
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join()
        container, self.container = self.container, None
        container.close()
        if self.resized:
            logger.info("%s: %d frames of another size were resized to %s", self.path, self.resized, self.size)
        if self._failure is not None:  # what plays is what reached the disk, up to its last complete fragment
            raise write_failed(self.path, self._failure, f" (it plays up to its last complete fragment of {self.frames} "
                               "frames encoded)")


class JsonlSink:
    """One JSON object per line, flushed per line, so every line on disk is complete and valid."""

    def __init__(self, path: Path, exist_ok: bool = False) -> None:
        self.path = check_writable(path, exist_ok)
        try:
            self._fh: TextIO | None = self.path.open("w", encoding="utf-8")
        except OSError as exc:
            raise write_failed(self.path, exc) from None
        self.lines = 0

    def write(self, record: dict[str, Any]) -> None:
        assert self._fh is not None, "JsonlSink is closed"
        try:
            self._fh.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
            self._fh.flush()
        except OSError as exc:  # a full disk: the lines before this one are complete
            raise write_failed(self.path, exc, f" ({self.lines} complete lines)") from None
        self.lines += 1

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class ImageSink:
    """Annotated copies of still images under their relative names ("a/x.jpg"), the format kept; formats OpenCV
    writes lossy or not at all get ".png" added ("x.pgm.png"), so they never meet an "x.png" input's copy."""

    KEEP = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

    def __init__(self, folder: Path, exist_ok: bool = False) -> None:
        self.folder = folder
        self.exist_ok = exist_ok
        self.written = 0

    def target(self, name: str) -> Path:
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts:  # never outside the folder
            rel = Path(rel.name)
        path = self.folder / rel
        return path if path.suffix.lower() in self.KEEP else path.with_name(path.name + ".png")

    def write(self, name: str, image_rgb: np.ndarray) -> Path:
        path = check_writable(self.target(name), self.exist_ok)
        ok, data = cv2.imencode(path.suffix, cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
        if not ok:
            raise UserError(f"{path}: OpenCV cannot encode this format; rename the input to .png or .jpg")
        try:
            atomic_write_bytes(path, data.tobytes())  # makes the subfolder of a relative name
        except OSError as exc:
            raise write_failed(path, exc) from None
        self.written += 1
        return path

    def close(self) -> None:
        """Nothing buffered: every image is complete when written."""
