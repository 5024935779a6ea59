"""Video files, network streams and webcams through PyAV (FFmpeg), decoded in the reader thread.

A damaged file is read to its end: a packet that fails to decode is counted and skipped, and a container
that ends early (a truncated mp4) ends the source cleanly. A stream that stalls longer than the read
timeout, or dies, ends the source with the reason kept in `stats.stream_error`. Opening a URL that does
not answer fails after the open timeout with a one-line error (never a hang).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Callable

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from tedloc_edge.errors import UserError, first_line
from tedloc_edge.runtime.frames import Frame, ThreadedSource

logger = logging.getLogger(__name__)

LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "udp", "tcp", "srt", "rtp")
AV_VERSION = tuple(int(part) for part in av.__version__.split(".")[:2])
# PyAV before 19 decodes container metadata strictly unless told otherwise (one bad tag fails the open);
# PyAV 19 (Python 3.12+) removed the option and no longer fails on it.
OPEN_OPTIONS: dict[str, str] = {"metadata_errors": "ignore"} if AV_VERSION < (19, 0) else {}
MAX_ERRORS_KEPT = 5


def open_container(target: str, fmt: str | None, options: dict[str, str], timeout: float, label: str,
                   hwaccel: str | None = None) -> Any:
    """av.open with an open/read timeout, decoding on `hwaccel` if given; every failure is a one-line UserError."""
    started = time.monotonic()
    extra = dict(OPEN_OPTIONS, hwaccel=hardware_decoding(hwaccel)) if hwaccel is not None else OPEN_OPTIONS
    try:
        return interruptible(lambda: av.open(target, format=fmt, options=options, timeout=(timeout, timeout), **extra))
    except (FileNotFoundError, av.error.FileNotFoundError):
        raise UserError(f"{label}: no such file or device; check the path (or the camera index)") from None
    except (PermissionError, av.error.PermissionError, av.FFmpegError, OSError) as exc:
        if hwaccel is not None:  # the input or the device? open it plainly: that raises the input's own error
            open_container(target, fmt, options, timeout, label).close()
            raise UserError(f"{label}: cannot start decoding on {hwaccel} ({first_line(exc)}); that needs "
                            f"{_device_needs(hwaccel)}; drop --hwaccel to decode on the CPU") from None
        if isinstance(exc, PermissionError):
            raise UserError(f"{label}: permission denied; check the file's (or the device's) permissions") from None
        if time.monotonic() - started >= timeout * 0.9:
            raise UserError(f"{label}: no answer within {timeout:g} s; check the URL and the network, or raise --timeout") from None
        raise UserError(f"{label}: cannot open as video ({first_line(exc)}); pass a video file, an image, a folder or a stream URL") from None


_ABANDONED: set[threading.Thread] = set()  # open threads whose caller gave up (Ctrl-C) while FFmpeg still waits


def abandoned_opens() -> list[threading.Thread]:
    """Open threads still inside FFmpeg after their caller gave up: a process exiting around one can crash in
    interpreter shutdown (SIGSEGV instead of its exit code), so the CLI's entry point exits past them."""
    return [t for t in _ABANDONED if t.is_alive()]


def interruptible(open_container: Callable[[], Any]) -> Any:
    """Run a blocking open in a helper thread while this one waits in short steps, so Ctrl-C (KeyboardInterrupt)
    is seen at once, not when FFmpeg gives up: a Python signal handler only runs between bytecodes, and av.open
    waits inside FFmpeg for up to the whole timeout. A container opened after the caller gave up is closed."""
    done, lock, box = threading.Event(), threading.Lock(), {}

    def work() -> None:
        try:
            box["container"] = open_container()
        except BaseException as exc:  # noqa: BLE001 - raised in the waiting thread
            box["error"] = exc
        with lock:
            done.set()
            if box.get("abandoned") and "container" in box:
                box["container"].close()

    thread = threading.Thread(target=work, name="open", daemon=True)
    thread.start()
    try:
        while not done.wait(0.05):
            pass
    except BaseException:
        with lock:
            box["abandoned"] = True
            _ABANDONED.add(thread)
            if done.is_set() and "container" in box:
                box["container"].close()
        raise
    if "error" in box:
        raise box["error"]
    return box["container"]


def _device_needs(device: str) -> str:
    return "an NVIDIA GPU and driver with NVDEC (libnvcuvid)" if device == "cuda" else f"a working {device} device and driver"


def hardware_decoding(device: str) -> Any:
    """PyAV's HWAccel for `--hwaccel DEVICE`; streams whose codec the device cannot take stay on the CPU."""
    if AV_VERSION < (14, 1):
        raise UserError(f"--hwaccel needs PyAV 14.1 or newer (this is {av.__version__}); pip install -U av")
    from av.codec.hwaccel import HWAccel, hwdevices_available

    available = hwdevices_available()
    if device not in available:
        raise UserError(f"--hwaccel {device}: this PyAV's FFmpeg decodes on {', '.join(available) or 'no device'}; "
                        "pick one of those or drop --hwaccel")
    # cuda: share the CUDA runtime's primary context (the one ONNX Runtime's CUDA EP and torch use), so the
    # decoder and the model do not time-slice the GPU between two contexts
    options = {"primary_ctx": "1"} if device == "cuda" else None
    return HWAccel(device, allow_software_fallback=True, options=options)


class RGBConverter:
    """Decoded frames to HxWx3 uint8 RGB through one swscale context kept for the stream, on one thread.

    `frame.to_ndarray(format="rgb24")` builds a new swscale context per frame and, since PyAV 17, gives it a
    thread per core, which then contend with the decoder's own frame threads: on 2 cores the reader runs 1.3x
    faster this way (benchmarks/bench_decode.py). The pixels are the same: swscale's threads only split rows.
    """

    def __init__(self, threads: int = 1) -> None:
        self.reformatter = VideoReformatter()
        self.options = {"threads": threads} if AV_VERSION >= (17, 0) else {}  # the option came with PyAV 17

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        return self.reformatter.reformat(frame, format="rgb24", **self.options).to_ndarray()


class VideoSource(ThreadedSource):
    """One video stream of a container: file, URL or capture device."""

    def __init__(
        self,
        target: str,
        label: str | None = None,
        fmt: str | None = None,
        options: dict[str, str] | None = None,
        live: bool = False,
        queue_frames: bool = False,
        stride: int = 1,
        timeout: float = 10.0,
        hwaccel: str | None = None,
    ) -> None:
        self.live = live
        self.label = label or target
        self.target = target
        super().__init__(queue_frames=queue_frames, stride=stride)
        self._args = dict(target=target, label=label, fmt=fmt, options=options, live=live, queue_frames=queue_frames,
                          stride=stride, timeout=timeout, hwaccel=hwaccel)
        self.container = open_container(target, fmt, options or {}, timeout, self.label, hwaccel)
        if not self.container.streams.video:
            self.container.close()
            raise UserError(f"{self.label}: holds no video stream; pass a video file, an image or a folder of images")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"  # frame + slice threads in the decoder
        self.to_rgb = RGBConverter()
        codec = self.stream.codec_context
        self._unconfirmed = hwaccel if hwaccel is not None and codec.is_hwaccel else None
        self.decoder = f"{codec.name} on {self._unconfirmed or 'cpu'}"  # checked again on the first frame
        if hwaccel is not None and self._unconfirmed is None:
            logger.warning("%s: FFmpeg cannot decode %s on %s; decoding on the CPU", self.label, codec.name, hwaccel)
        rate = self.stream.average_rate or self.stream.guessed_rate
        self.fps = float(rate) if rate else None
        self.frames_expected = int(self.stream.frames) or None

    def input_files(self) -> list[Path]:
        path = Path(urllib.parse.urlparse(self.target).path if self.target.startswith("file:") else self.target)
        return [path] if path.is_file() else []

    def _count_error(self, exc: BaseException) -> None:
        self.stats.decode_errors += 1
        if len(self.stats.errors) < MAX_ERRORS_KEPT:
            self.stats.errors.append(first_line(exc))
        logger.debug("%s: decode error %s", self.label, exc)

    def _produce(self, emit: Callable[[Frame], bool]) -> None:
        decoded_all = self._decode(emit)
        if decoded_all is not None and self.frames_expected and decoded_all < self.frames_expected:
            self.stats.frames_missing = self.frames_expected - decoded_all
            logger.warning("%s: %d of the %d frames the container declares could not be read (truncated or corrupt)",
                           self.label, self.stats.frames_missing, self.frames_expected)

    def _confirm_device(self) -> None:
        """After the first frame: when the device's decoder cannot start (no libnvcuvid, a profile NVDEC lacks),
        FFmpeg quietly decodes on the CPU instead; the codec then holds a software pixel format, not a device one."""
        codec, device = self.stream.codec_context, self._unconfirmed
        self._unconfirmed = None
        if codec.pix_fmt and av.VideoFormat(codec.pix_fmt).components:  # device surfaces have no components
            self.decoder = f"{codec.name} on cpu"
            logger.warning("%s: FFmpeg could not start %s decoding on %s and decodes on the CPU; that needs %s",
                           self.label, codec.name, device, _device_needs(device))

    def _decode(self, emit: Callable[[Frame], bool]) -> int | None:
        """Decode to the end; the number of frames decoded, or None when the consumer stopped first."""
        index = 0
        packets = self.container.demux(self.stream)
        while True:
            t0 = time.perf_counter()
            try:
                packet = next(packets)
            except StopIteration:
                return index
            except (av.FFmpegError, OSError) as exc:  # a truncated file or a dead stream: keep what we have
                self.stats.stream_error = first_line(exc)
                logger.warning("%s: input ended early (%s); %d frames read", self.label, self.stats.stream_error, index)
                return index
            try:
                decoded = packet.decode()
            except (av.FFmpegError, ValueError) as exc:
                self._count_error(exc)
                continue
            packet_ms = (time.perf_counter() - t0) * 1e3 / max(1, len(decoded))
            if decoded and self._unconfirmed:
                self._confirm_device()
            for video_frame in decoded:
                if self._skip(index):
                    index += 1
                    continue
                t1 = time.perf_counter()
                image = self.to_rgb(video_frame)
                ms = packet_ms + (time.perf_counter() - t1) * 1e3  # demux + decode share + RGB conversion
                if not emit(Frame(index=index, image=image, time=video_frame.time, decode_ms=ms)):
                    return None
                index += 1

    def reopen(self) -> "VideoSource":
        """A new connection to the same input, opened as this one was (a live stream reconnecting)."""
        return VideoSource(**self._args)

    def _release(self) -> None:
        try:
            self.container.close()
        except (av.FFmpegError, OSError):
            pass


def open_webcam(index: int, **kwargs: Any) -> VideoSource:
    """A capture device by index: V4L2 on Linux, AVFoundation on macOS."""
    if sys.platform.startswith("linux"):
        return VideoSource(f"/dev/video{index}", label=f"webcam {index}", fmt="v4l2", live=True, **kwargs)
    if sys.platform == "darwin":
        return VideoSource(str(index), label=f"webcam {index}", fmt="avfoundation", options={"framerate": "30"}, live=True, **kwargs)
    raise UserError(f"webcam {index}: capture by index works on Linux (v4l2) and macOS; pass the camera's stream URL instead")


def open_url(url: str, **kwargs: Any) -> VideoSource:
    """A network stream; RTSP over TCP (UDP loses packets on busy networks)."""
    scheme = url.split("://", 1)[0].lower()
    options = {"rtsp_transport": "tcp"} if scheme in ("rtsp", "rtsps") else {}
    return VideoSource(url, options=options, live=scheme in LIVE_SCHEMES, **kwargs)
