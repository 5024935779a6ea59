"""The reduced demo, end to end, as a newcomer runs it: every stage through the real CLI, then a second run
that reuses every stage."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_tiny_demo_end_to_end_then_reused(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "tedloc_edge.app.cli", "demo", "--size", "tiny", "--out", str(out)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    report = (out / "report.md").read_text(encoding="utf-8")
    for row in ("TeD-Loc (torch fp32)", "CAM baseline (torch fp32)", "TeD-Loc ONNX fp32", "TeD-Loc ONNX INT8"):
        line = next(l for l in report.splitlines() if l.startswith(f"| {row}"))
        assert "–" not in line, f"missing metrics in report row: {line}"
    assert "tedloc-edge train --data" in report and "tedloc-edge export" in report
    assert "INT8 accuracy gate on" in report and "McNemar p" in report  # the gate's val figures, from the model
    presence = report.split("## Presence", 1)[1].split("\n## ", 1)[0]  # test split + the test negatives
    for row in ("TeD-Loc (torch fp32)", "TeD-Loc ONNX fp32", "TeD-Loc ONNX INT8"):
        line = next(l for l in presence.splitlines() if l.startswith(f"| {row}"))
        assert "%" in line and "none stored" not in line and "| 6 + 6 |" in line, line  # calibrated on val_negatives
    assert "| CAM baseline (torch fp32) | none: the map is not a probability" in presence
    assert "Presence on the video:" in report
    sidecar = json.loads(next((out / "runs" / "tedloc" / "cues").glob("ddt-*.json")).read_text())
    assert sidecar["settings"]["contrast"] == 1.5 and "background" in sidecar["settings"]  # contrasted with negatives
    rows = _script("cue_quality").quality_rows(out / "runs" / "tedloc", [0.0, 1.5])  # benchmarks/cue_quality.py
    assert [r[1] for r in rows] == ["plain", "1.5"] and all(" of " in cell for cell in rows[1][2:] if cell != "–")
    assert (out / "models" / "tedloc_fp32.onnx").stat().st_size > 0
    table = out / "calibration_size.md"  # benchmarks/calibration_size.py: val subsets of 3 + 4, then all 6 + 8
    _script("calibration_size").main([str(out / "models" / "tedloc_fp32.onnx"), "--data", str(out / "data"),
                                      "--sizes", "3:4", "--draws", "5", "--markdown", str(table)])
    rows = [line for line in table.read_text().splitlines() if line.startswith(("| 3 + 4", "| 6 + 8", "| none"))]
    assert len(rows) == 3 and rows[0].split(" | ")[1] == "5" and "(all of val) | 1 |" in rows[1]
    assert (out / "models" / "tedloc_int8.onnx").stat().st_size > 0
    assert (out / "eval" / "tedloc_torch.png").stat().st_size > 0
    lines = (out / "infer" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 12 and all(json.loads(l)["frame"] >= 0 and "present" in json.loads(l) for l in lines)
    bench = json.loads((out / "bench.json").read_text())
    assert {r["precision"] for r in bench["rows"]} >= {"fp32", "int8"}

    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    stages = json.loads((out / "stages.json").read_text())
    assert all(s["reused"] for s in stages)


def _script(name: str):
    """A benchmarks/ script as a module."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_script", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
