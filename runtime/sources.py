"""`open_source(SOURCE)`: what `tedloc-edge infer SOURCE` reads, decided from the string alone.

| SOURCE                                  | reader                                    |
|-----------------------------------------|-------------------------------------------|
| 0, 1, ... (digits, no such file)        | webcam by index (live)                    |
| rtsp:// rtmp:// udp:// srt:// ...       | network stream through PyAV (live)        |
| http:// https://                        | remote file or stream through PyAV        |
| a folder, or a glob (`photos/**/*.jpg`) | the images in it, sorted, each file once  |
| a file with an image suffix             | that image                                |
| any other file                          | a video through PyAV                      |

Every reader yields RGB uint8 HxWx3 frames from a background thread (frames.ThreadedSource).
"""

from __future__ import annotations

import logging
import math
import re
import stat
import time
from pathlib import Path
from typing import Callable, Sequence

from tedloc_edge.errors import UserError
from tedloc_edge.images import IMAGE_SUFFIXES, image_base, is_pattern, list_images, load_image, relative_name
from tedloc_edge.runtime.frames import Frame, ThreadedSource

logger = logging.getLogger(__name__)

URL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


class ImageSource(ThreadedSource):
    """A list of image files, read by the loader evaluation uses; an unreadable one is counted as a decode
    error and skipped."""

    def __init__(self, paths: Sequence[Path], label: str, stride: int = 1, names: Sequence[str] | None = None) -> None:
        self.label = label
        super().__init__(queue_frames=True, stride=stride)
        self.paths = list(paths)
        self.names = list(names) if names is not None else [p.name for p in self.paths]  # relative: "a/x.jpg"
        self.frames_expected = len(self.paths)

    def input_files(self) -> list[Path]:
        return list(self.paths)

    def _produce(self, emit: Callable[[Frame], bool]) -> None:
        for index, path in enumerate(self.paths):
            if self._skip(index):
                continue
            t0 = time.perf_counter()
            try:
                image = load_image(path)
            except UserError as exc:
                self.stats.decode_errors += 1
                if len(self.stats.errors) < 5:
                    self.stats.errors.append(str(exc))
                logger.warning("skipped %s", exc)
                continue
            if not emit(Frame(index=index, image=image, name=self.names[index], decode_ms=(time.perf_counter() - t0) * 1e3)):
                return


def check_timeout(timeout: float) -> float:
    """A URL or camera wait in seconds: positive and finite (FFmpeg takes a negative one as 'wait for ever')."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (math.isfinite(timeout) and timeout > 0):
        raise UserError(f"--timeout {timeout}: must be a positive number of seconds (how long to wait for a URL or "
                        "camera to answer), e.g. --timeout 10")
    return float(timeout)


def is_image_spec(spec: str) -> bool:
    path = Path(spec).expanduser()
    return path.is_dir() or (is_pattern(spec) and not path.exists()) or path.suffix.lower() in IMAGE_SUFFIXES


def open_source(spec: str | int, queue: bool = False, stride: int = 1, timeout: float = 10.0,
                hwaccel: str | None = None) -> ThreadedSource:
    """The reader for SOURCE (see the table above); a one-line UserError when it cannot be read.

    `hwaccel` ("cuda": NVDEC) decodes videos and streams on that device through FFmpeg; images stay on OpenCV.
    """
    from tedloc_edge.runtime.video_source import VideoSource, open_url, open_webcam

    timeout = check_timeout(timeout)
    text = str(spec).strip()
    if not text:
        raise UserError("SOURCE is empty; pass a video, an image, a folder of images, a URL or a webcam index")
    path = Path(text).expanduser()
    video = dict(queue_frames=queue, stride=stride, timeout=timeout, hwaccel=hwaccel)
    if isinstance(spec, int) or (text.isdigit() and not Path(text).exists()):
        return open_webcam(int(text), **video)
    if URL_RE.match(text):
        return open_url(text, **video)
    if is_image_spec(text):
        if hwaccel is not None:
            logger.warning("--hwaccel %s applies to videos and streams; %s is decoded by OpenCV on the CPU", hwaccel, text)
        files = list_images(text)  # a folder's own images only: its subfolders are not read
        label = text if is_pattern(text) and not path.exists() else str(path)
        if not files:
            raise UserError(f"{text}: no images found (looked for {', '.join(IMAGE_SUFFIXES[:5])}, ...); check the folder or pattern")
        if len(files) == 1 and not files[0].is_file():
            raise UserError(f"{files[0]}: no such image file; check the path")
        base = image_base(text)  # names relative to it keep a/x.jpg and b/x.jpg apart
        return ImageSource(files, label, stride=stride, names=[relative_name(p, base) for p in files])
    if not path.exists():
        raise UserError(f"{text}: no such file; pass a video, an image, a folder of images, a URL or a webcam index")
    if stat.S_ISFIFO(path.stat().st_mode) or stat.S_ISSOCK(path.stat().st_mode):  # opening one waits for a writer
        raise UserError(f"{text}: a pipe or socket, not a video file; stream it through a URL (e.g. udp:// or rtsp://)")
    return VideoSource(str(path), **video)
