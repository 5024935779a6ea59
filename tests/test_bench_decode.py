"""benchmarks/bench_decode.py: every way of making RGB frames reads the whole clip, ratios are over the
shipped reader, and a device that cannot decode is reported as skipped while the other rows stand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from runtime_media import make_clip

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_decode.py"


def test_rows_ratios_and_a_skipped_device(tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", frames=16, size=(96, 64))
    out = tmp_path / "decode.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--video", str(clip), "--rounds", "2", "--hwaccel", "nodevice",
                          "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text())
    rows = {r["way"]: r for r in report["rows"]}
    assert set(rows) == {"reader", "to_ndarray", "kept, auto threads"}
    assert all(r["frames"] == 16 and r["fps"] > 0 and r["decoder"] == "h264 on cpu" for r in rows.values())
    assert rows["reader"]["ratio"] == 1.0
    assert "--hwaccel nodevice" in report["skipped"]["reader on nodevice"]
    assert "vs reader" in run.stdout and "skipped" in run.stdout
