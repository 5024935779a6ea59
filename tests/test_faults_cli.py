"""Issue 23, `export`, `eval` and `train`: export replaces a file only with --exist-ok and never its source; eval
checks where it writes before it evaluates, and a late failure keeps the figures; a zero-byte checkpoint is one
line; every train option is checked before any work."""

from __future__ import annotations

import errno
import json
import math
import re
from pathlib import Path

import pytest
import typer
from exportkit import TinyTedLoc, tiny_meta
from faultkit import read_only
from runtime_models import fixture_meta, write_model
from typer.testing import CliRunner

from tedloc_edge.app.eval_cli import evaluate as eval_command
from tedloc_edge.bundle import read_onnx_meta
from tedloc_edge.datasets import open_split
from tedloc_edge.errors import UserError, first_line
from tedloc_edge.export import exporter
from tedloc_edge.export.cli import export as export_command
from tedloc_edge.export.exporter import ExportOptions, export
from tedloc_edge.train.cli import train as train_command
from tedloc_edge.train.config import TrainConfig
from tedloc_edge.train.synth import generate


def invoke(command, *args: object):
    app = typer.Typer()
    app.command()(command)
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line(result, *needles: str) -> None:
    """Exit 2 (user_errors), no exception escaped, and the message holds every needle."""
    assert result.exit_code == 2 and isinstance(result.exception, (SystemExit, type(None))), result.output
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())
    for needle in needles:
        assert needle in text, result.output


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("data") / "synth", classes=3, train=6, val=6, test=6, seed=3,
                    image_size=(64, 96), show_progress=False)


@pytest.fixture
def run(tmp_path, dataset, monkeypatch) -> Path:
    """A run folder whose torch model is the contract-shaped TinyTedLoc (as test_export_pipeline)."""
    meta = tiny_meta().replace(class_names=open_split(dataset, "val").class_names)
    model = TinyTedLoc(num_classes=meta.num_classes).eval()  # the export checks the class count against the bundle
    monkeypatch.setattr(exporter, "load_model", lambda source: (model, meta))
    folder = tmp_path / "run"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "best.pt").write_bytes(b"stand-in: load_model is patched")
    (folder / "config.json").write_text(json.dumps({"data": str(dataset)}), encoding="utf-8")
    return folder


# -- export: refuse without --exist-ok, atomic replace with it, never the source --------------------------------


def test_export_does_not_replace_a_user_file_without_exist_ok(run, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    one_line(invoke(export_command, run, "--no-verify", "--output", notes), "notes.txt: already exists; pass --exist-ok")
    assert notes.read_text() == "my notes\n"
    result = invoke(export_command, run, "--no-verify", "--output", notes, "--exist-ok")
    assert result.exit_code == 0, result.output
    assert read_onnx_meta(notes).precision == "fp32" and [p.name for p in tmp_path.iterdir()] == ["notes.txt", "run"]


def test_export_again_to_the_same_place_needs_exist_ok(run):
    first = export(run, ExportOptions(verify=False, static_batch=2)).artifacts
    assert [a.path.name for a in first] == ["model.onnx", "model_b2.onnx"]
    with pytest.raises(UserError, match=r"model.onnx: already exists; pass --exist-ok to replace it, or choose another --output"):
        export(run, ExportOptions(verify=False))
    (run / "export" / "model.onnx").unlink()
    with pytest.raises(UserError, match=r"model_b2.onnx: already exists"):  # checked before the first file is made
        export(run, ExportOptions(verify=False, static_batch=2))
    assert not (run / "export" / "model.onnx").exists()
    assert export(run, ExportOptions(verify=False, static_batch=2, exist_ok=True)).final.path.name == "model_b2.onnx"


def test_export_never_writes_over_its_source(run):
    best = run / "checkpoints" / "best.pt"
    with pytest.raises(UserError, match=r"best.pt: is an input of this run .*--exist-ok never replaces an input"):
        export(best, ExportOptions(verify=False, output=best, exist_ok=True))
    assert best.read_bytes() == b"stand-in: load_model is patched"


# -- eval: where it writes is checked first; a late failure keeps the figures --------------------------------------


@pytest.fixture
def model(tmp_path, dataset) -> Path:
    return write_model(tmp_path / "m.onnx", meta=fixture_meta(class_names=open_split(dataset, "test").class_names))


def test_eval_json_into_an_unwritable_folder_fails_before_the_evaluation(model, dataset, tmp_path):
    (tmp_path / "ro").mkdir()
    with read_only(tmp_path / "ro"):
        result = invoke(eval_command, model, "--data", dataset, "--json", tmp_path / "ro" / "report.json")
    one_line(result, "ro: output folder is not writable")
    assert "MaxBoxAcc" not in result.output  # refused before the work, not after it


def test_eval_write_failing_after_the_evaluation_keeps_the_figures(model, dataset, tmp_path, monkeypatch):
    from tedloc_edge import evaluate

    def full_disk(self, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(evaluate.EvalReport, "save_json", full_disk)
    result = invoke(eval_command, model, "--data", dataset, "--json", tmp_path / "report.json")
    one_line(result, "report.json: could not be written (No space left on device); the figures are printed above")
    assert "MaxBoxAcc" in result.output


def test_eval_calibrate_of_an_exported_model_is_refused_before_the_evaluation(model, dataset):
    result = invoke(eval_command, model, "--data", dataset, "--split", "val", "--calibrate")
    one_line(result, "--calibrate stores the threshold in the run folder")
    assert "MaxBoxAcc" not in result.output


# -- a zero-byte best.pt (fixed on main by fa0c1a9: first_line) -----------------------------------------------------


def test_zero_byte_checkpoint_is_one_line_error_in_export_and_eval(tmp_path, dataset):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.pt").write_bytes(b"")
    (run / "config.json").write_text(json.dumps({"data": str(dataset)}), encoding="utf-8")
    for result in (invoke(export_command, run, "--no-verify"), invoke(eval_command, run)):
        one_line(result, "best.pt: not a readable checkpoint")
    assert first_line(EOFError()) == "EOFError" and first_line(ValueError("\n\n  x\ny")) == "x"
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(Exception, match=r"empty.onnx: not a readable ONNX model \(.+\)$"):
        read_onnx_meta(tmp_path / "empty.onnx")


# -- train: every option is checked before any work ------------------------------------------------------------------


@pytest.mark.parametrize("option, value, message", [
    ("lr", math.nan, "--lr must be a finite number"),
    ("lr", math.inf, "--lr must be a finite number"),
    ("temperature", math.nan, "--temperature must be a finite number"),
    ("w_kd", math.nan, "--w-kd must be a finite number"),
    ("grad_clip", math.nan, "--grad-clip must be a finite number"),
    ("weight_decay", -0.1, "--weight-decay must be 0 or more"),
    ("warmup_epochs", -1.0, "--warmup-epochs must be 0 or more"),
    ("workers", -1, "--workers must be 0 or more"),
    ("seed", -1, "--seed must be in 0..4294967295"),
    ("decoder_hidden", 0, "--decoder-hidden must be at least 1"),
    ("epochs", 0, "--epochs must be at least 1"),  # fixed on main by the merge of `options`
    ("prompt_template", "a photo", "--prompt-template 'a photo' needs one '{}'"),
    ("prompt_template", "a {} of {kind}", "needs one '{}' where the class name goes (and no other braces)"),
])
def test_train_options_are_checked_before_any_work(tmp_path, option, value, message):
    with pytest.raises(UserError, match=re.escape(message)):
        TrainConfig(data=str(tmp_path), out=str(tmp_path / "run"), **{option: value}).validate()


@pytest.mark.parametrize("args, message", [
    (["--lr", "nan"], "--lr must be a finite number, not nan"),
    (["--epochs", "0"], "--epochs must be at least 1, not 0"),  # it trained 10 epochs (merge of `options` fixed it)
])
def test_train_bad_option_stops_at_once_and_leaves_no_run_folder(tmp_path, dataset, args, message):
    result = invoke(train_command, "--data", dataset, "--out", tmp_path / "run", *args)
    one_line(result, message)
    assert not (tmp_path / "run").exists()


def test_train_out_that_is_a_file_is_one_line_error(tmp_path, dataset):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine\n")
    one_line(invoke(train_command, "--data", dataset, "--out", notes), "notes.txt: is a file, not a run folder")
    assert notes.read_text() == "mine\n"
