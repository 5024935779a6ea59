"""Many sources in one process: one model, a batch across sources, outputs per source, and a dead camera
(a real RTSP server killed mid-run) that never stalls the live one."""

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
from runtime_media import count_frames, make_clip, read_jsonl
from runtime_models import write_model

from tedloc_edge.errors import UserError
from tedloc_edge.runtime.infer import InferOptions
from tedloc_edge.runtime.multi import camera_names, read_sources_file, run_multi

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("model") / "tiny.onnx")


def test_names_and_sources_file(tmp_path):
    assert camera_names(["a/clip.mp4", "b/clip.mp4", "rtsp://user:secret@10.0.0.5:554/live/ch1?x=1", "0"]) == \
        ["clip", "clip_2", "10.0.0.5_554_live_ch1", "webcam0"]
    listing = tmp_path / "cams.txt"
    listing.write_text("# garage\nrtsp://10.0.0.5/a\n\n  b.mp4  \n")
    assert read_sources_file(listing) == ["rtsp://10.0.0.5/a", "b.mp4"]
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(UserError, match="no sources in it"):
        read_sources_file(tmp_path / "empty.txt")


def test_two_files_from_a_sources_file_batched_together_outputs_per_source(model, tmp_path):
    clips = [make_clip(tmp_path / "a.mp4", frames=20), make_clip(tmp_path / "b.mp4", frames=14, size=(96, 64))]
    listing = tmp_path / "sources.txt"
    listing.write_text("".join(f"{c}\n" for c in clips))
    out = tmp_path / "out"
    env = {**os.environ, "TEDLOC_NO_PROGRESS": "1"}
    done = subprocess.run([sys.executable, "-m", "tedloc_edge.app.cli", "infer", "--sources", str(listing), "--model", str(model),
                           "--out", str(out)], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    for name, frames in (("a", 20), ("b", 14)):
        lines = read_jsonl(out / name / "predictions.jsonl")
        assert [line["frame"] for line in lines] == list(range(frames))  # a file never loses a frame
        assert count_frames(out / name / f"{name}.mp4") == frames
        assert json.loads((out / name / "summary.json").read_text())["frames_processed"] == frames
    total = json.loads((out / "summary.json").read_text())
    assert total["batch"] == 2 and total["frames_processed"] == 34
    assert [row["name"] for row in total["sources"]] == ["a", "b"]


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


@pytest.mark.skipif(rtsp_unavailable() is not None, reason=f"no RTSP server here: {rtsp_unavailable()}")
def test_a_dead_camera_never_stalls_the_others(model, tmp_path):
    with RtspServer(320, 180, 30) as alive, RtspServer(320, 180, 30) as dying:
        out = tmp_path / "out"
        opts = InferOptions(source="", model=model, out=out, batch=2, max_frames=120, reconnect="2", timeout=3,
                            video=False, show_progress=False)
        result: dict = {}
        worker = threading.Thread(target=lambda: result.update(multi=run_multi(opts, [alive.url, dying.url])), daemon=True)
        worker.start()
        names = camera_names([alive.url, dying.url])
        deadline = time.monotonic() + 15
        path = out / names[1] / "predictions.jsonl"
        while time.monotonic() < deadline and not (path.is_file() and path.read_text().count("\n") >= 15):
            time.sleep(0.02)
        dying.kill()
        killed = time.time()
        worker.join(timeout=30)
        assert not worker.is_alive()
    multi = result["multi"]
    live, dead = multi.cameras
    assert live.frames_processed == 120 and not live.lost
    assert dead.lost and "2 reconnect attempts failed" in dead.stream_error and multi.lost == [dead]
    times = [epoch(line["time"]) for line in read_jsonl(out / names[0] / "predictions.jsonl")]
    during = [t for t in times if t > killed]
    assert len(during) >= 30  # the live camera went on at its rate while the other one was being reconnected
    assert max(b - a for a, b in zip(times, times[1:])) < 1.0
    total = json.loads((out / "summary.json").read_text())
    assert total["sources"][1]["lost"] is True and total["sources"][0]["frames_processed"] == 120


@pytest.mark.skipif(rtsp_unavailable() is not None, reason=f"no RTSP server here: {rtsp_unavailable()}")
def test_a_camera_down_at_start_does_not_keep_the_others_from_starting(model, tmp_path):
    with RtspServer(320, 180, 30) as alive:
        late = RtspServer(320, 180, 30)  # its port is free: nothing answers yet
        out = tmp_path / "out"
        opts = InferOptions(source="", model=model, out=out, max_frames=45, timeout=3, video=False, show_progress=False)
        result: dict = {}
        worker = threading.Thread(target=lambda: result.update(multi=run_multi(opts, [alive.url, late.url])), daemon=True)
        worker.start()
        names = camera_names([alive.url, late.url])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not (out / names[0] / "predictions.jsonl").is_file():
            time.sleep(0.05)
        assert (out / names[0] / "predictions.jsonl").is_file(), "the live camera did not start"
        late.start()
        try:
            worker.join(timeout=30)
        finally:
            late.kill()
        assert not worker.is_alive()
    live, came = result["multi"].cameras
    assert live.frames_processed == came.frames_processed == 45 and not came.lost
    assert came.reconnects == 1 and came.gaps[0]["cause"].startswith("no answer at start")
    assert len(read_jsonl(out / names[1] / "predictions.jsonl")) == 45
