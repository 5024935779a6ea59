"""`tedloc-edge inspect`: an ONNX, a plan (with its record, or built elsewhere), a Triton repository; the JSON
view; presence shown only when the bundle has one; "runs here" against this machine's TensorRT and GPU (faked
where a GPU is needed); and no torch on the way."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
from runtime_models import fixture_meta, write_model
from typer.testing import CliRunner

from tedloc_edge.app import inspect as ins
from tedloc_edge.app.cli import app
from tedloc_edge.build_record import make_build_record
from tedloc_edge.bundle import write_plan_sidecar
from tedloc_edge.errors import UserError
from tedloc_edge.runtime.gpu_facts import GpuFacts

REPO = Path(__file__).resolve().parents[1]
GATE = {"split": "val", "images": 80, "max_drop": 1.0, "passed": True, "fp32": {"maxboxacc": 41.25, "top1_loc": 31.25},
        "int8": {"maxboxacc": 41.0, "top1_loc": 31.25},
        "flips": {"maxboxacc": {"lost": 1, "gained": 0, "mcnemar_p": 1.0}, "top1_loc": {"lost": 2, "gained": 2, "mcnemar_p": 1.0}}}


def int8_meta(**fields):
    return fixture_meta(precision="int8", threshold=0.41, threshold_source="val:top1_loc", anchor_source="clip:ViT-B-16:openai",
                        anchors_have_text_semantics=True,
                        extra={"int8_mode": "tensorrt", "int8_calibration_images": 200, "int8_gate": GATE}, **fields)


def plan(path: Path, cc: str = "8.7", **record) -> Path:
    path.write_bytes(b"plan")
    write_plan_sidecar(path, fixture_meta(precision="fp16"), make_build_record(
        tensorrt_version="10.3.0.30", gpu_name="Jetson AGX Orin", compute_capability=cc, cuda_version="12.6",
        precision="fp16", input_shapes={"images": {"min": [1, 64, 64, 3], "opt": [1, 64, 64, 3], "max": [4, 64, 64, 3]}},
        onnx_sha256="0" * 64, workspace_bytes=1, rebuild="tedloc-edge export m_fp16.onnx --format engine",
        built_at="2026-01-01T00:00:00+00:00", **record))
    return path


def test_onnx_int8(tmp_path):
    doc = ins.describe(write_model(tmp_path / "m_int8.onnx", meta=int8_meta()))
    m = doc["model"]
    assert doc["kind"] == "onnx" and m["classes"] == ["red", "green", "blue"] and m["precision"] == "int8"
    assert m["input"]["size"] == [64, 64] and m["input"]["layout"] == "NHWC"
    assert m["thresholds"] == {"box": 0.41, "box_source": "val:top1_loc", "contour_mode": "largest"}  # no presence invented
    assert m["int8"]["mode"] == "tensorrt" and m["int8"]["gate"] == GATE
    assert m["anchors"] == {"source": "clip:ViT-B-16:openai", "text_semantics": True}
    assert doc["io"]["inputs"] == [{"name": "images", "dtype": "uint8", "shape": ["N", 64, 64, 3]}]
    assert [o["name"] for o in doc["io"]["outputs"]] == ["fg_map", "logits"] and doc["runs_here"]["ok"] is True
    text = dict(ins.rows(doc))
    assert text["INT8 gate"] == ("val, 80 images, allowed drop 1.0: MaxBoxAcc 41.25 -> 41.00 (lost 1, gained 0, McNemar p 1.00); "
                                 "Top-1 Loc 31.25 -> 31.25 (lost 2, gained 2, McNemar p 1.00); passed")
    assert text["anchors"] == "clip:ViT-B-16:openai; text semantics: yes" and "presence threshold" not in text


def test_presence_threshold_only_when_the_bundle_has_one(tmp_path):
    meta = int8_meta(presence_threshold=0.6, presence_source="val:minimax (80 object, 80 empty images)")
    doc = ins.describe(write_model(tmp_path / "m.onnx", meta=meta))
    assert doc["model"]["thresholds"]["presence"] == 0.6
    assert dict(ins.rows(doc))["presence threshold"] == "0.6 (val:minimax (80 object, 80 empty images))"


def test_json_and_table_from_the_cli(tmp_path):
    model = write_model(tmp_path / "m_int8.onnx", meta=int8_meta())
    got = CliRunner().invoke(app, ["inspect", str(model), "--json"])
    assert got.exit_code == 0, got.output
    assert json.loads(got.stdout)["model"]["int8"]["gate"]["passed"] is True
    table = CliRunner().invoke(app, ["inspect", str(model)])
    assert table.exit_code == 0 and "INT8 gate" in table.stdout and "box threshold" in table.stdout


def test_plan_without_tensorrt(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    doc = ins.describe(plan(tmp_path / "m.plan"))
    assert doc["kind"] == "plan" and doc["build"]["gpu_name"] == "Jetson AGX Orin"
    assert doc["io"]["inputs"][0]["shape"] == ["1..4", 64, 64, 3]
    assert doc["runs_here"] == {"ok": False, "why": "no: TensorRT is not installed here (engines run on the GPU they were built for)"}


@pytest.fixture
def orin(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0.30"))
    monkeypatch.setattr("tedloc_edge.runtime.gpu_facts.gpu_facts", lambda: GpuFacts("Jetson AGX Orin", "8.7", "12.6", "libcuda"))


def test_plan_runs_here_or_says_why_not(tmp_path, orin):
    assert ins.describe(plan(tmp_path / "m.plan"))["runs_here"]["why"] == "yes: TensorRT 10.3.0.30 on Jetson AGX Orin (sm 8.7)"
    other = ins.describe(plan(tmp_path / "x.plan", cc="9.0"))["runs_here"]
    assert other["ok"] is False and "built for compute capability 9.0" in other["why"] and other["why"].endswith(
        "tedloc-edge export m_fp16.onnx --format engine")
    dla = ins.describe(plan(tmp_path / "d.plan", dla_core=1, gpu_fallback=True))
    assert dla["runs_here"]["why"].endswith("(sm 8.7, DLA core 1)") and "DLA core 1 + GPU fallback" in dict(ins.rows(dla))["build record"]


def test_foreign_plan_with_metadata(tmp_path, orin):
    onnx_path = write_model(tmp_path / "m.onnx", meta=fixture_meta(precision="fp16"))
    (tmp_path / "trtexec.plan").write_bytes(b"plan")
    doc = ins.describe(tmp_path / "trtexec.plan", onnx_path)
    assert doc["build"] is None and doc["runs_here"]["ok"] is None and doc["runs_here"]["why"].startswith("unknown: no build record")
    assert dict(ins.rows(doc))["build record"] == "none (a plan built elsewhere)"


def test_triton_repository(tmp_path):
    for name in ("tedloc_model", "tedloc_decode"):
        (tmp_path / "repo" / name / "1").mkdir(parents=True)
        (tmp_path / "repo" / name / "config.pbtxt").write_text(f'name: "{name}"\n')
    write_model(tmp_path / "repo" / "tedloc_model" / "1" / "model.onnx")
    doc = ins.describe(tmp_path / "repo")
    assert doc["kind"] == "triton" and doc["models"] == {"tedloc_decode": [], "tedloc_model": ["tedloc_model/1/model.onnx"]}
    assert doc["files"]["tedloc_model/1/model.onnx"]["model"]["classes"] == ["red", "green", "blue"]
    with pytest.raises(UserError, match="not a Triton model repository"):
        ins.describe(tmp_path / "repo" / "tedloc_decode")


def test_refusals(tmp_path):
    (tmp_path / "m.txt").write_text("")
    for path, expected in ((tmp_path / "none.onnx", "no such model file"), (tmp_path / "m.txt", "inspect takes an .onnx")):
        with pytest.raises(UserError, match=expected):
            ins.describe(path)
    with pytest.raises(UserError, match="--metadata is for a plan built elsewhere"):
        ins.describe(write_model(tmp_path / "m.onnx"), tmp_path / "m.onnx")


def test_inspect_never_imports_torch(tmp_path):
    model = write_model(tmp_path / "m.onnx")
    probe = ("import sys, json; from typer.testing import CliRunner; from tedloc_edge.app.cli import app; "
             f"r = CliRunner().invoke(app, ['inspect', {str(model)!r}, '--json']); "
             "print(json.dumps([r.exit_code, sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx', 'timm'))]))")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert json.loads(run.stdout.strip().splitlines()[-1]) == [0, []], run.stderr[-2000:]
