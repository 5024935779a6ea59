"""Sources: dispatch from the SOURCE string, image formats, the reader thread (stale-frame dropping or
queueing), truncated files and URLs that never answer."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Callable

import faultkit
import numpy as np
import pytest
from runtime_media import make_clip, truncate, write_photos

from tedloc_edge.errors import UserError
from tedloc_edge.runtime.frames import Frame, ThreadedSource
from tedloc_edge.images import load_image as read_image
from tedloc_edge.runtime.sources import ImageSource, open_source
from tedloc_edge.runtime.video_source import VideoSource


def test_image_formats_become_rgb_uint8(tmp_path):
    photos = write_photos(tmp_path)
    color = read_image(photos["astronaut"])
    for key in ("camera_gray", "coffee_rgba", "astronaut_16bit"):
        image = read_image(photos[key])
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, key
    assert np.abs(read_image(photos["astronaut_16bit"]).astype(int) - color.astype(int)).mean() < 8  # jpeg vs png source
    assert color[..., 0].mean() > color[..., 2].mean()  # astronaut's suit and flag: more red than blue, so RGB order
    with pytest.raises(UserError, match="corrupt.jpg: not a decodable image"):
        read_image(photos["corrupt"])


def test_dispatch(tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", frames=5)
    write_photos(tmp_path / "photos")
    assert isinstance(open_source(str(clip)), VideoSource)
    assert isinstance(open_source(str(tmp_path / "photos")), ImageSource)
    assert len(open_source(str(tmp_path / "photos" / "*.png")).paths) == 3
    with pytest.raises(UserError, match="no such image file"):
        open_source(str(tmp_path / "nope.jpg"))
    with pytest.raises(UserError, match="webcam 97"):
        open_source("97", timeout=2)


def test_video_frames_in_order_with_stride(tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", frames=20, size=(96, 64))
    with open_source(str(clip), stride=4) as source:
        frames = list(source)
    assert [f.index for f in frames] == [0, 4, 8, 12, 16]
    assert frames[0].image.shape == (64, 96, 3) and frames[0].image.dtype == np.uint8
    assert source.fps == 25 and source.frames_expected == 20 and source.stats.skipped_stride == 15


@pytest.mark.parametrize("pix_fmt", ["yuv420p", "yuvj420p", "yuv444p"])
def test_reader_rgb_equals_pyav_to_ndarray(tmp_path, pix_fmt):
    """The reader's kept single-thread swscale context gives PyAV's own RGB, frame by frame, in new arrays."""
    import av

    clip = make_clip(tmp_path / "clip.mp4", frames=12, size=(98, 66), pix_fmt=pix_fmt)
    with av.open(str(clip)) as container:
        expected = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    with open_source(str(clip)) as source:
        frames = [f.image for f in source]
    assert len(frames) == len(expected) == 12
    for got, want in zip(frames, expected):
        np.testing.assert_array_equal(got, want)
    assert not np.shares_memory(frames[0], frames[1])


def _nvidia_driver() -> bool:
    import ctypes

    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


@pytest.mark.skipif(_nvidia_driver(), reason="an NVIDIA driver is here: tests/test_gpu.py decodes on NVDEC instead")
def test_hwaccel_without_a_gpu_is_one_line_error_naming_the_fix(tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", frames=4, size=(64, 48))
    with pytest.raises(UserError, match=r"clip\.mp4: cannot start decoding on cuda .*NVDEC.*drop --hwaccel") as info:
        open_source(str(clip), hwaccel="cuda")
    assert "\n" not in str(info.value)


def test_hwaccel_blames_the_input_when_the_input_is_bad(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video" * 10)
    with pytest.raises(UserError, match="junk.mp4: cannot open as video"):
        open_source(str(junk), hwaccel="cuda")
    with pytest.raises(UserError, match="no such file"):
        open_source(str(tmp_path / "missing.mp4"), hwaccel="cuda")


def test_hwaccel_unknown_device_lists_what_ffmpeg_offers(tmp_path):
    from av.codec.hwaccel import hwdevices_available

    clip = make_clip(tmp_path / "clip.mp4", frames=4, size=(64, 48))
    with pytest.raises(UserError, match=r"--hwaccel nodevice: this PyAV's FFmpeg decodes on .*drop --hwaccel") as info:
        open_source(str(clip), hwaccel="nodevice")
    assert all(name in str(info.value) for name in hwdevices_available())


def test_a_device_decoder_that_quietly_fell_back_is_reported_as_cpu(tmp_path, caplog):
    """FFmpeg falls back to its CPU decoder without an error when NVDEC cannot start; the reader tells from the
    codec's pixel format after the first frame. Here a CPU decode stands in for that fallback."""
    clip = make_clip(tmp_path / "clip.mp4", frames=6, size=(64, 48))
    with caplog.at_level("WARNING"), open_source(str(clip)) as source:
        source._unconfirmed, source.decoder = "cuda", "h264 on cuda"  # as opened with a device context
        assert len(list(source)) == 6
    assert source.decoder == "h264 on cpu" and source._unconfirmed is None
    assert "could not start h264 decoding on cuda" in caplog.text


def test_decoder_is_named_and_images_ignore_hwaccel(tmp_path, caplog):
    clip = make_clip(tmp_path / "clip.mp4", frames=4, size=(64, 48))
    with open_source(str(clip)) as source:
        assert source.decoder == "h264 on cpu"
    photo = write_photos(tmp_path / "photos")["coffee"]
    with caplog.at_level("WARNING"), open_source(str(photo), hwaccel="cuda") as source:
        assert source.decoder == "opencv" and len(list(source)) == 1
    assert "applies to videos and streams" in caplog.text


def test_truncated_file_ends_cleanly(tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", frames=60)
    with open_source(str(truncate(clip, tmp_path / "cut.mp4", keep=0.5))) as source:
        frames = list(source)
    assert 0 < len(frames) < 60
    assert [f.index for f in frames] == list(range(len(frames)))


class CountingLive(ThreadedSource):
    """A live source producing `n` numbered frames as fast as it can."""

    live = True
    label = "fake-live"

    def __init__(self, n: int, queue_frames: bool) -> None:
        super().__init__(queue_frames=queue_frames)
        self.n = n

    def _produce(self, emit: Callable[[Frame], bool]) -> None:
        for i in range(self.n):
            if not emit(Frame(index=i, image=np.zeros((2, 2, 3), np.uint8))):
                return
            time.sleep(0.001)


def slow_consume(source: ThreadedSource) -> list[int]:
    seen = []
    for frame in source:
        seen.append(frame.index)
        time.sleep(0.01)
    return seen


def test_live_sources_drop_stale_frames_unless_queued():
    live = CountingLive(200, queue_frames=False)
    seen = slow_consume(live)
    assert seen == sorted(seen) and seen[-1] == 199  # always the newest frame, and the last one arrives
    assert live.stats.dropped > 0 and len(seen) + live.stats.dropped == 200
    queued = CountingLive(100, queue_frames=True)
    assert slow_consume(queued) == list(range(100)) and queued.stats.dropped == 0


def test_live_batches_take_only_what_waits():
    source = CountingLive(30, queue_frames=True)
    sizes = [len(b) for b in source.batches(8)]
    assert sum(sizes) == 30 and max(sizes) <= 8


def test_close_stops_the_reader_early(tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", frames=60)
    source = open_source(str(clip))
    first = source.get()
    assert first is not None and first.index == 0
    source.close()
    assert source._thread is not None and not source._thread.is_alive()


@pytest.fixture
def silent_server():
    """A TCP server that accepts connections and never says a word (tests/faultkit.py)."""
    with faultkit.silent_server() as port:
        yield port


@pytest.mark.parametrize("scheme", ["http", "rtsp"])
def test_url_that_does_not_answer_times_out(silent_server, scheme):
    started = time.monotonic()
    with pytest.raises(UserError, match=r"no answer within 1 s|cannot open as video"):
        open_source(f"{scheme}://127.0.0.1:{silent_server}/stream", timeout=1.0)
    assert time.monotonic() - started < 8


def test_refused_url_is_one_line_error():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(UserError, match=f"http://127.0.0.1:{port}/x"):
        open_source(f"http://127.0.0.1:{port}/x", timeout=2.0)


def test_unreadable_video_file(tmp_path: Path):
    clip = make_clip(tmp_path / "clip.mp4", frames=3)
    clip.chmod(0)
    try:
        if clip.open("rb").readable():  # running as root: permissions do not apply
            pytest.skip("permissions are not enforced for this user")
    except PermissionError:
        with pytest.raises(UserError, match="permission denied"):
            open_source(str(clip))
    finally:
        clip.chmod(0o644)


def test_interrupt_wakes_a_consumer_waiting_on_a_stalled_source():
    class Stalled(ThreadedSource):
        live = True
        label = "stalled"

        def _produce(self, emit: Callable[[Frame], bool]) -> None:
            while not self._stop.wait(0.05):
                pass

    source = Stalled()
    threading.Timer(0.3, source.interrupt).start()
    started = time.monotonic()
    assert source.get() is None and time.monotonic() - started < 3
    source.close()
