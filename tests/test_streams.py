"""Live streams that survive, against a real RTSP server (gst-rtsp-server, tests/rtsp_server.py): the server is
killed mid-stream and started again, and `infer` reconnects, counts the gap and keeps every processed frame.
And an HTTP stream of unknown length (MPEG-TS) that hangs up: live, so it reconnects too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
from rtsp_server import RtspServer, rtsp_unavailable
from runtime_media import count_frames, read_jsonl
from runtime_models import write_model

from tedloc_edge.runtime.infer import InferOptions, run_infer
from tedloc_edge.runtime.reconnect import EXIT_SOURCE_LOST

REPO = Path(__file__).resolve().parents[1]
SKIP = rtsp_unavailable()
needs_rtsp = pytest.mark.skipif(SKIP is not None, reason=f"no RTSP server here: {SKIP}")
SIZE = (320, 180)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("model") / "tiny.onnx")


@pytest.fixture
def server():
    if SKIP is not None:
        pytest.skip(f"no RTSP server here: {SKIP}")
    with RtspServer(*SIZE, fps=30) as running:
        yield running


def wait_lines(path: Path, n: int, timeout: float = 15.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and (count := path.read_text().count("\n")) >= n:
            return count
        time.sleep(0.02)
    raise AssertionError(f"{path}: fewer than {n} lines after {timeout} s")


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


@needs_rtsp
def test_rtsp_server_killed_and_restarted_reconnects_counts_the_gap_and_keeps_every_frame(server, model, tmp_path):
    out = tmp_path / "out"
    opts = InferOptions(source=server.url, model=model, out=out, max_frames=90, timeout=5, show_progress=False)
    done: dict = {}
    worker = threading.Thread(target=lambda: done.update(summary=run_infer(opts)), daemon=True)
    worker.start()
    jsonl = out / "predictions.jsonl"
    before = wait_lines(jsonl, 20)
    server.kill()
    time.sleep(2.0)  # the camera is off for two seconds
    server.start()
    restarted = time.time()
    worker.join(timeout=30)
    assert not worker.is_alive(), "infer did not come back to the restarted server"
    summary = done["summary"]
    lines = read_jsonl(jsonl)
    # nothing processed is lost: every frame in the JSONL and in the mp4, indices increasing across the gap
    assert summary.frames_processed == len(lines) == 90 and not summary.lost and summary.stream_error is None
    assert count_frames(out / "127.0.0.1_{}_cam.mp4".format(server.port)) == 90
    frames = [line["frame"] for line in lines]
    assert frames == sorted(set(frames))
    # the gap is counted: once in the summary, once on the first frame after it
    assert summary.reconnects == 1 and summary.reconnect == "forever"
    gap = summary.gaps[0]
    assert gap["seconds"] >= 2.0 and gap["attempts"] >= 1 and gap["frames_missed"] >= 50
    after = [line for line in lines if "gap_s" in line]
    assert len(after) == 1 and after[0]["gap_s"] == pytest.approx(gap["seconds"], abs=1e-3)
    assert lines.index(after[0]) >= before
    # wall clock beside the stream's timestamp; the first frame after the server came back within 5 s
    latency = epoch(after[0]["time"]) - restarted
    assert 0 < latency < 5.0, latency
    assert all(epoch(a["time"]) <= epoch(b["time"]) for a, b in zip(lines, lines[1:]))
    assert json.loads((out / "summary.json").read_text())["gaps"][0]["cause"] == gap["cause"]


@needs_rtsp
def test_live_source_lost_for_good_exits_with_its_own_code_and_the_cause(server, model, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "TEDLOC_NO_PROGRESS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tedloc_edge.app.cli", "infer", server.url, "--model", str(model),
                             "--out", str(out), "--reconnect", "2", "--timeout", "3", "--no-video"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    wait_lines(out / "predictions.jsonl", 10)
    server.kill()
    output = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == EXIT_SOURCE_LOST, output
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "stream lost" in errors[0] and "2 reconnect attempts failed" in errors[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lost"] is True and "2 reconnect attempts failed" in summary["stream_error"]
    assert summary["frames_processed"] == len(read_jsonl(out / "predictions.jsonl")) >= 10


def test_http_stream_of_unknown_length_is_live_and_reconnects(model, tmp_path):
    """MPEG-TS over HTTP without a length (a live HTTP camera): each request is cut half way, and the run goes on."""
    import http.server

    import av
    import numpy as np

    ts = tmp_path / "clip.ts"
    with av.open(str(ts), "w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt, stream.options = 160, 120, "yuv420p", {"preset": "ultrafast", "g": "5"}
        for i in range(60):
            frame = av.VideoFrame.from_ndarray(np.full((120, 160, 3), i * 4, np.uint8), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    data = ts.read_bytes()

    class HangUp(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "video/mp2t")
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])  # no length, then the connection closes

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HangUp)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/cam.ts"
        summary = run_infer(InferOptions(source=url, model=model, out=tmp_path / "out", max_frames=40, reconnect="3",
                                         queue=True, video=False, timeout=5, show_progress=False))
    finally:
        server.shutdown()
    assert summary.reconnect == "3" and summary.reconnects >= 1 and summary.frames_processed == 40 and not summary.lost
    assert [line["frame"] for line in read_jsonl(tmp_path / "out" / "predictions.jsonl")] == list(range(40))
