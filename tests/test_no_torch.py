"""The runtime ships without torch: importing it, the CLI, `tedloc-edge --help` and a whole `infer` run load
neither torch, timm, open_clip nor torchvision (checked in a fresh interpreter's sys.modules)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from runtime_media import make_clip
from runtime_models import write_model

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "timm", "open_clip", "torchvision")

PROBE = """
import json, sys
from typer.testing import CliRunner
import tedloc_edge.runtime
from tedloc_edge.runtime import Localizer, Result, decode_boxes
import tedloc_edge.runtime.backend_tensorrt, tedloc_edge.runtime.bench, tedloc_edge.runtime.infer
from tedloc_edge.app.cli import app
runner = CliRunner()
codes = {
    "help": runner.invoke(app, ["--help"]).exit_code,
    "infer_help": runner.invoke(app, ["infer", "--help"]).exit_code,
    "bench_help": runner.invoke(app, ["bench", "--help"]).exit_code,
    "infer_bad_args": runner.invoke(app, ["infer"]).exit_code,
    "infer_run": runner.invoke(app, ["infer", sys.argv[1], "--model", sys.argv[2], "--out", sys.argv[3]]).exit_code,
    "bench_run": runner.invoke(app, ["bench", sys.argv[2], "--batch", "1", "--seconds", "0.1"]).exit_code,
}
print(json.dumps({"codes": codes, "heavy": sorted(m for m in sys.modules if m.split(".")[0] in %r)}))
""" % (HEAVY,)


def test_runtime_and_cli_never_import_torch(tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", frames=4)
    model = write_model(tmp_path / "tiny.onnx")
    run = subprocess.run(
        [sys.executable, "-c", PROBE, str(clip), str(model), str(tmp_path / "out")],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["heavy"] == [], f"heavy modules loaded: {report['heavy']}"
    codes = report["codes"]
    assert codes["help"] == codes["infer_help"] == codes["bench_help"] == 0
    assert codes["infer_bad_args"] == 2  # typer's usage error: SOURCE and --model are required
    assert codes["infer_run"] == 0 and codes["bench_run"] == 0
    assert (tmp_path / "out" / "predictions.jsonl").read_text().count("\n") == 4

