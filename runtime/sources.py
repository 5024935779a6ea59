"""`open_source(SOURCE)`: what `tedloc-edge infer SOURCE` reads, decided from the string alone.

| SOURCE                                  | reader                                    |
|-----------------------------------------|-------------------------------------------|
| 0, 1, ... (digits, no such file)        | webcam by index (live)                    |
| rtsp:// rtmp:// udp:// srt:// ...       | network stream through PyAV (live)        |
| http:// https://                        | remote file or stream through PyAV        |
| a folder, or a glob (`photos/*.jpg`)    | the images in it, sorted by name          |
| a file with an image suffix             | that image                                |
| any other file                          | a video through PyAV                      |

Every reader yields RGB uint8 HxWx3 frames from a background thread (frames.ThreadedSource).
"""

from __future__ import annotations

import glob
import logging
import re
import time
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from tedloc_edge.errors import UserError
from tedloc_edge.runtime.frames import Frame, ThreadedSource
from tedloc_edge.runtime.preprocess import as_uint8_3ch

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm", ".jp2")
URL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def read_image(path: Path) -> np.ndarray:
    """An image file as HxWx3 uint8 RGB (grayscale, alpha and 16-bit handled; EXIF orientation applied)."""
    data = np.fromfile(str(path), dtype=np.uint8)  # also reads non-ASCII paths, which cv2.imread does not
    image = cv2.imdecode(data, cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH) if data.size else None
    if image is None:
        raise ValueError(f"{path}: not a readable image")
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return as_uint8_3ch(image, "RGB", str(path))


class ImageSource(ThreadedSource):
    """A list of image files; an unreadable one is counted as a decode error and skipped."""

    def __init__(self, paths: Sequence[Path], label: str, stride: int = 1) -> None:
        self.label = label
        super().__init__(queue_frames=True, stride=stride)
        self.paths = list(paths)
        self.frames_expected = len(self.paths)

    def _produce(self, emit: Callable[[Frame], bool]) -> None:
        for index, path in enumerate(self.paths):
            if self._skip(index):
                continue
            t0 = time.perf_counter()
            try:
                image = read_image(path)
            except (ValueError, UserError, OSError) as exc:
                self.stats.decode_errors += 1
                if len(self.stats.errors) < 5:
                    self.stats.errors.append(str(exc))
                logger.warning("skipped %s", exc)
                continue
            if not emit(Frame(index=index, image=image, name=path.name, decode_ms=(time.perf_counter() - t0) * 1e3)):
                return


def list_images(spec: str) -> tuple[list[Path], str]:
    """Image files named by a folder, a glob or a single file; ([], label) when none match."""
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        return files, str(path)
    if any(ch in spec for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
        return [p for p in files if p.is_file()], spec
    return [path], str(path)


def is_image_spec(spec: str) -> bool:
    path = Path(spec).expanduser()
    return path.is_dir() or any(ch in spec for ch in "*?[") or path.suffix.lower() in IMAGE_SUFFIXES


def open_source(spec: str | int, queue: bool = False, stride: int = 1, timeout: float = 10.0,
                hwaccel: str | None = None) -> ThreadedSource:
    """The reader for SOURCE (see the table above); a one-line UserError when it cannot be read.

    `hwaccel` ("cuda": NVDEC) decodes videos and streams on that device through FFmpeg; images stay on OpenCV.
    """
    from tedloc_edge.runtime.video_source import VideoSource, open_url, open_webcam

    text = str(spec).strip()
    video = dict(queue_frames=queue, stride=stride, timeout=timeout, hwaccel=hwaccel)
    if isinstance(spec, int) or (text.isdigit() and not Path(text).exists()):
        return open_webcam(int(text), **video)
    if URL_RE.match(text):
        return open_url(text, **video)
    if is_image_spec(text):
        if hwaccel is not None:
            logger.warning("--hwaccel %s applies to videos and streams; %s is decoded by OpenCV on the CPU", hwaccel, text)
        files, label = list_images(text)
        if not files:
            raise UserError(f"{text}: no images found (looked for {', '.join(IMAGE_SUFFIXES[:5])}, ...); check the folder or pattern")
        if len(files) == 1 and not files[0].is_file():
            raise UserError(f"{files[0]}: no such image file; check the path")
        return ImageSource(files, label, stride=stride)
    path = Path(text).expanduser()
    if not path.exists():
        raise UserError(f"{text}: no such file; pass a video, an image, a folder of images, a URL or a webcam index")
    return VideoSource(str(path), **video)
