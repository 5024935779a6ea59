"""`tedloc-edge export` end to end on a run folder: CLI table and next commands, verification on the run's
val images, int8 calibration on its train images and the accuracy gate, atomic writes, one-line errors.

The torch model is the contract-shaped `TinyTedLoc` (load_model is patched) so this runs in seconds; the
real tiny training run is exported in test_export_tinyrun.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import typer
from exportkit import TinyTedLoc, real_photos, tiny_meta
from typer.testing import CliRunner

from tedloc_edge.bundle import read_onnx_meta
from tedloc_edge.errors import UserError
from tedloc_edge.datasets import open_split
from tedloc_edge.export import exporter, verify
from tedloc_edge.export.cli import export as export_command
from tedloc_edge.export.exporter import ExportOptions, export
from tedloc_edge.export.int8_gate import Int8AccuracyError
from tedloc_edge.export.tensorrt_build import tensorrt_available
from tedloc_edge.runtime import Localizer
from tedloc_edge.runtime.backend_onnxruntime import OnnxRuntimeRunner
from tedloc_edge.train.synth import generate


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("data") / "synth", classes=4, train=8, val=8, test=0, seed=3,
                    image_size=(64, 96), show_progress=False)


def make_run(folder: Path, data: Path | str) -> Path:
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"data": str(data)}), encoding="utf-8")
    return folder


@pytest.fixture
def run(tmp_path, dataset, monkeypatch) -> Path:
    meta = tiny_meta().replace(class_names=open_split(dataset, "val").class_names)
    monkeypatch.setattr(exporter, "load_model", lambda source: (TinyTedLoc().eval(), meta))
    return make_run(tmp_path / "run", dataset)


def cli(*args: str):
    app = typer.Typer()
    app.command()(export_command)
    return CliRunner().invoke(app, list(args))


def test_cli_exports_verified_onnx_and_prints_table_and_next_commands(run):
    result = cli(str(run), "--format", "onnx")
    assert result.exit_code == 0, result.output
    model = run / "export" / "model.onnx"
    assert read_onnx_meta(model).precision == "fp32"
    out = result.output
    assert "format" in out and "verified" in out and "│ yes" in out
    assert "verification: fp32 vs torch on 8 images" in out and "boxes identical 8/8" in out
    assert f"tedloc-edge infer VIDEO_OR_IMAGES --model {model}" in out.replace("\n", "")
    assert "tedloc-edge eval" in out and "tedloc-edge bench" in out
    assert not list((run / "export").glob(".*"))  # no temporary left


def test_fp16_and_triton(run, tmp_path):
    res = export(run, ExportOptions(format="triton", precision="fp16", output=tmp_path / "repo", batch_max=4))
    assert [a.kind for a in res.artifacts] == ["onnx", "triton"]
    assert (tmp_path / "repo" / "tedloc_model" / "1" / "model.onnx").is_file()
    assert "max_batch_size: 4" in (tmp_path / "repo" / "tedloc_model" / "config.pbtxt").read_text()
    assert res.verify is not None and res.verify.precision == "fp16" and res.verify.passed


def test_int8_gate_passes_and_records_calibration(run):
    res = export(run, ExportOptions(precision="int8", calib_images=8, int8_max_drop=100.0))
    meta = read_onnx_meta(res.final.path)
    assert meta.precision == "int8" and len(meta.calibration_hash or "") == 64 and meta.extra["int8_mode"] == "cpu"
    assert res.gate is not None and res.gate.passed and set(res.gate.fp32) == {"maxboxacc", "top1_loc"}
    for metric, (lost, gained) in res.gate.flips.items():  # the per-image hits explain the drop exactly
        assert res.gate.drops[metric] == pytest.approx((lost - gained) * 100 / res.gate.images)
    assert set(res.gate.flips) == {"maxboxacc", "top1_loc"} and "McNemar p" in res.gate.summary()
    stored = meta.extra["int8_gate"]  # the file carries its own accuracy evidence
    assert stored["passed"] and stored["images"] == res.gate.images and stored["int8"] == res.gate.int8
    assert stored["flips"]["top1_loc"]["lost"] == res.gate.flips["top1_loc"][0]


def test_int8_gate_refuses_and_writes_nothing(run):
    with pytest.raises(Int8AccuracyError, match=r"int8 loses too much accuracy \(maxboxacc fp32 .* int8 .*allowed drop -100 points \(8 images: one image is 12.50 points\)") as err:
        export(run, ExportOptions(precision="int8", calib_images=4, int8_max_drop=-100.0))
    assert "\n" not in str(err.value) and str(err.value).startswith(str(run / "export" / "model_int8.onnx"))
    assert not (run / "export" / "model_int8.onnx").exists() and not list((run / "export").glob(".*"))


def test_int8_cpu_mode_is_refused_for_engines_before_any_work(run):
    with pytest.raises(UserError, match="--int8-mode cpu makes uint8 activations .* use --int8-mode tensorrt"):
        export(run, ExportOptions(format="engine", precision="int8", int8_mode="cpu"))


def test_int8_allow_drop_keeps_it(run):
    res = export(run, ExportOptions(precision="int8", calib_images=4, int8_max_drop=-100.0, int8_allow_drop=True))
    assert res.final.path.is_file() and not res.gate.passed
    assert read_onnx_meta(res.final.path).extra["int8_gate"]["passed"] is False  # accepted, and it says so


def test_failed_verification_writes_nothing(run, monkeypatch):
    monkeypatch.setitem(verify.TOLERANCES, "fp32", verify.Tolerance(atol=-1.0, rtol=0.0, min_box_iou=1.0, max_top1_disagree=0.0))
    with pytest.raises(verify.VerificationError, match="verification failed .* nothing was written"):
        export(run, ExportOptions())
    assert not (run / "export" / "model.onnx").exists() and not list((run / "export").glob(".*"))


def test_user_images_when_the_dataset_is_elsewhere(tmp_path, monkeypatch):
    monkeypatch.setattr(exporter, "load_model", lambda source: (TinyTedLoc().eval(), tiny_meta()))
    run = make_run(tmp_path / "run", tmp_path / "not-here")
    with pytest.raises(UserError, match="dataset .* is not on this machine.*pass --images FOLDER"):
        export(run, ExportOptions())
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, img in enumerate(real_photos()):
        cv2.imwrite(str(photos / f"{i}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    res = export(run, ExportOptions(images=(str(photos),), output=tmp_path / "m.onnx"))
    assert res.verify.num_images == 4 and res.verify.boxes_identical == 4
    with pytest.raises(UserError, match="int8 needs the run's val split|--calib-dir"):
        export(run, ExportOptions(precision="int8", images=(str(photos),)))


@pytest.mark.parametrize("args, message", [
    (["--format", "onxx"], "unknown export format 'onxx': choose one of onnx, engine, triton; did you mean 'onnx'?"),
    (["--precision", "fp61"], "unknown precision 'fp61' for --format onnx"),
    (["--batch-max", "4"], "--batch-max does not apply to --format onnx"),
    (["--opset", "12"], "--opset 12 is outside 17..20"),
    (["--static-batch", "0"], "--static-batch 0 must be between 1 and 4096"),
    (["--format", "triton", "--static-batch", "2"], "--static-batch does not apply to --format triton (it applies to --format onnx)"),
])
def test_cli_errors_are_one_line(run, args, message):
    result = cli(str(run), *args)
    assert result.exit_code == 2
    assert message in result.output.replace("\n", " ") and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 2  # one line (rich may wrap a long one)


def test_missing_or_wrong_source(tmp_path):
    with pytest.raises(UserError, match="no such run folder or checkpoint"):
        export(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a training run"):
        export(tmp_path / "empty")


def test_onnx_source_cannot_become_another_onnx(run):
    model = export(run, ExportOptions(verify=False)).final.path
    with pytest.raises(UserError, match="already a fp32 ONNX"):
        export(model, ExportOptions(format="onnx"))


def test_static_batch_writes_a_second_model_that_equals_the_dynamic_one(run):
    result = cli(str(run), "--static-batch", "4")
    assert result.exit_code == 0, result.output
    dynamic, static = run / "export" / "model.onnx", run / "export" / "model_b4.onnx"
    assert dynamic.is_file() and static.is_file() and "= dynamic" in result.output
    assert f"tedloc-edge bench {static} --batch 4 --device cuda --cuda-graph" in result.output.replace("\n", "")
    assert read_onnx_meta(static).extra["static_batch"] == 4
    graph = onnx.load(str(static)).graph
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [4, 64, 64, 3]
    assert not any(n.op_type == "Shape" for n in graph.node)  # nothing computed from the batch at run time
    with Localizer(static, device="cpu") as fixed, Localizer(dynamic, device="cpu") as free:
        assert fixed.runner.fixed_batch == 4 and free.runner.fixed_batch is None
        frames = real_photos()[:3]  # fewer frames than the batch: the runtime pads, keeps the first 3
        for a, b in zip(fixed(frames), free(frames)):
            assert a.class_id == b.class_id and np.allclose(a.boxes, b.boxes, atol=1.0)


def test_static_batch_of_an_onnx_source_and_of_an_int8_model_keeps_its_qdq(run, tmp_path):
    int8 = export(run, ExportOptions(precision="int8", int8_mode="tensorrt", int8_allow_drop=True, verify=False)).final.path
    res = export(int8, ExportOptions(format="onnx", static_batch=2))
    assert [a.path.name for a in res.artifacts] == ["model_int8_b2.onnx"] and res.final.precision == "int8"
    count = lambda path, op: sum(n.op_type == op for n in onnx.load(str(path)).graph.node)  # noqa: E731
    assert count(res.final.path, "DequantizeLinear") == count(int8, "DequantizeLinear") > 0
    with pytest.raises(UserError, match="already has a fixed batch of 2"):
        export(res.final.path, ExportOptions(format="onnx", static_batch=3))


def test_unwritable_output(run, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    with pytest.raises(UserError, match="not writable"):
        export(run, ExportOptions(output=blocker / "sub" / "m.onnx"))


@pytest.mark.skipif(tensorrt_available(), reason="TensorRT is installed here")
def test_engine_without_tensorrt_is_one_line(run):
    result = cli(str(run), "--format", "engine", "--precision", "fp16")
    assert result.exit_code == 2
    assert "TensorRT is not installed here" in result.output and "Traceback" not in result.output
    assert not (run / "export").exists()  # refused before any work


class FakeEngine(OnnxRuntimeRunner):
    """A stand-in for the TensorRT runner: the plan's ONNX bytes on ONNX Runtime, plus `shift` on the map (an
    engine that computes something else)."""

    def __init__(self, path: Path, onnx_copy: Path, shift: float) -> None:
        super().__init__(shutil.copyfile(path, onnx_copy), device="cpu")
        self.shift = shift

    def _infer(self, images):
        fg_map, logits = super()._infer(images)
        return fg_map + np.float32(self.shift), logits


def _fake_engine(monkeypatch, tmp_path, shift: float = 0.0):
    """Stand-ins for the GPU steps: the 'plan' is the ONNX bytes, run by `FakeEngine` as the TensorRT runner."""
    from tedloc_edge.bundle import write_plan_sidecar
    from tedloc_edge.export import tensorrt_build

    built = {}

    def build(onnx_path, plan, spec):
        shutil.copyfile(onnx_path, plan)
        write_plan_sidecar(plan, read_onnx_meta(onnx_path), {"tensorrt_version": "10.13.3.9", "compute_capability": "8.7",
                                                             "precision": "fp16", "onnx_sha256": "x"})
        built["onnx"], built["spec"] = Path(onnx_path), spec
        return Path(plan)

    real_runner = verify.runtime_runner

    def runner(path, backend, max_batch):
        if backend != "tensorrt":  # the ONNX stage's own verification
            return real_runner(path, backend, max_batch)
        assert Path(str(path) + ".json").is_file()
        return FakeEngine(path, tmp_path / "as-onnx.onnx", shift)

    monkeypatch.setattr(tensorrt_build, "preflight", lambda *args: None)
    monkeypatch.setattr(tensorrt_build, "build_engine", build)
    monkeypatch.setattr(verify, "runtime_runner", runner)
    return built


def test_engine_stage_verifies_and_renames_plan_with_sidecar(run, tmp_path, monkeypatch):
    built = _fake_engine(monkeypatch, tmp_path)
    res = export(run, ExportOptions(format="engine", precision="fp16", batch_max=4))
    plan = run / "export" / "model_fp16.plan"
    assert [a.kind for a in res.artifacts] == ["onnx", "engine"] and res.final.path == plan
    assert plan.is_file() and Path(str(plan) + ".json").is_file() and res.final.verified == "yes"
    assert built["onnx"] == run / "export" / "model_fp16.onnx"
    assert (built["spec"].batch_min, built["spec"].batch_opt, built["spec"].batch_max) == (1, 1, 4)
    assert "--batch-max 4" in built["spec"].rebuild_command
    assert not list((run / "export").glob(".*"))


def test_engine_that_computes_something_else_fails_verification(run, tmp_path, monkeypatch):
    _fake_engine(monkeypatch, tmp_path, shift=0.3)  # the map off by 0.3: far past fp16's bounds
    with pytest.raises(verify.VerificationError, match=r"model_fp16.plan: verification failed \(fg_map max abs error 3.00e-01"):
        export(run, ExportOptions(format="engine", precision="fp16"))
    assert not (run / "export" / "model_fp16.plan").exists() and not list((run / "export").glob(".*"))


def test_engine_failing_verification_leaves_no_plan(run, tmp_path, monkeypatch):
    _fake_engine(monkeypatch, tmp_path)
    strict = verify.Tolerance(atol=-1.0, rtol=0.0, min_box_iou=1.0, max_top1_disagree=0.0)
    monkeypatch.setitem(verify.TOLERANCES, "fp16", strict)
    monkeypatch.setitem(verify.TOLERANCES, "fp32", verify.TOLERANCES["fp32"])
    with pytest.raises(verify.VerificationError, match="model.plan: verification failed"):
        export(run, ExportOptions(format="engine", precision="fp32"))
    assert not (run / "export" / "model.plan").exists() and not (run / "export" / "model.plan.json").exists()
    assert not list((run / "export").glob(".*"))
