"""The export format table drives the export: the steps and their functions, the product's suffix, the GPU check
before any work; close-match hints and options a format does not take."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tedloc_edge.bundle import sidecar_path
from tedloc_edge.errors import UserError
from tedloc_edge.export import exporter, tensorrt_build
from tedloc_edge.export.cli import export as export_command
from tedloc_edge.export.formats import (
    FORMATS, ExportOptions, check_batch_range, check_options, check_precision, get_format, route,
)


@pytest.fixture
def fake_run(tmp_path, monkeypatch) -> tuple[Path, list[str]]:
    """A run folder whose ONNX step and TensorRT steps are stand-ins that record what ran, in order."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ran: list[str] = []

    def onnx_stage(source, opts, fmt, precision, result):
        out = exporter.onnx_output(source, opts, fmt, precision)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(b"onnx")
        ran.append("onnx")
        return out, None  # no torch model: nothing to verify against

    def build_engine(onnx_path, plan, spec):
        Path(plan).write_bytes(b"plan")
        sidecar_path(plan).write_text("{}")
        ran.append("engine")

    monkeypatch.setattr(exporter, "export_onnx_stage", onnx_stage)
    monkeypatch.setattr(tensorrt_build, "preflight", lambda *args: ran.append("gpu check"))
    monkeypatch.setattr(tensorrt_build, "build_engine", build_engine)
    return run, ran


def test_each_format_is_made_through_the_steps_the_table_names():
    onnx, engine, triton = FORMATS["onnx"], FORMATS["engine"], FORMATS["triton"]
    assert route(onnx, None) == (onnx,) and route(engine, None) == (onnx, engine)
    assert route(triton, None) == (onnx, triton) and route(triton, "tensorrt") == (onnx, engine, triton)
    assert all(callable(getattr(exporter, f.stage)) for f in (engine, triton))
    with pytest.raises(UserError, match="unknown --triton-backend 'tensorrtt'.*did you mean 'tensorrt'"):
        route(triton, "tensorrtt")


def test_the_engine_file_suffix_comes_from_the_table(fake_run, monkeypatch):
    run, ran = fake_run
    monkeypatch.setitem(FORMATS, "engine", replace(FORMATS["engine"], suffix=".trt"))
    result = exporter.export(run, ExportOptions(format="engine"))
    assert result.final.path == run / "export" / "model.trt" and sidecar_path(result.final.path).is_file()
    assert ran == ["gpu check", "onnx", "engine"]  # the GPU is checked before any work


def test_a_stage_is_called_by_the_name_the_table_gives(fake_run, monkeypatch):
    run, ran = fake_run
    monkeypatch.setattr(exporter, "triton_stage", lambda model_path, out, *rest: ran.append(f"triton {out.name}") or out)
    exporter.export(run, ExportOptions(format="triton"))
    assert ran == ["onnx", "triton triton"]  # onnxruntime backend: no GPU check, no engine
    ran.clear()  # the same run again: its model.onnx exists, so --exist-ok (issue 23: export replaces only with it)
    exporter.export(run, ExportOptions(format="triton", triton_backend="tensorrt", output=run / "repo", exist_ok=True))
    assert ran == ["gpu check", "onnx", "engine", "triton repo"]


@pytest.mark.parametrize("args", [["--format", "engine"], ["--format", "triton", "--triton-backend", "tensorrt"]])
def test_a_gpu_format_without_a_gpu_is_one_line_before_any_work(fake_run, monkeypatch, args):
    run, ran = fake_run

    def no_gpu(*args):
        raise UserError(tensorrt_build.NO_TENSORRT)

    monkeypatch.setattr(tensorrt_build, "preflight", no_gpu)
    app = typer.Typer()
    app.command()(export_command)
    result = CliRunner().invoke(app, [str(run), *args])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "TensorRT is not installed here" in result.output and ran == [] and not (run / "export").exists()


def test_unknown_format_gets_a_hint():
    with pytest.raises(UserError, match=r"unknown export format 'onxx': choose one of onnx, engine, triton; did you mean 'onnx'\?"):
        get_format("onxx")
    assert get_format("TensorRT") is get_format("plan") is FORMATS["engine"]


def test_unknown_precision_gets_a_hint():
    with pytest.raises(UserError, match="did you mean 'int8'"):
        check_precision(FORMATS["onnx"], "int9")
    assert check_precision(FORMATS["engine"], "FP16") == "fp16"


def test_option_for_another_format_is_rejected():
    with pytest.raises(UserError, match=r"--batch-max does not apply to --format onnx \(it applies to --format engine or triton\)"):
        check_options(FORMATS["onnx"], {"batch_max": 8})
    check_options(FORMATS["onnx"], {"batch_max": None, "opset": 17})  # unset options are fine
    check_options(FORMATS["engine"], {"batch_max": 8, "workspace_gib": 1.0})
    assert set(ExportOptions().format_options()) == {k for f in FORMATS.values() for k in f.options}


def test_batch_range():
    assert check_batch_range(1, 4, 8) == (1, 4, 8)
    with pytest.raises(UserError, match="1 <= min <= opt <= max"):
        check_batch_range(4, 2, 8)


def test_export_cli_import_is_light():
    """`tedloc-edge --help` imports the export CLI: that must not pull torch, onnx or onnxruntime."""
    import subprocess
    import sys

    code = ("import sys, tedloc_edge.export.cli, tedloc_edge.export; "
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'tensorrt') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
