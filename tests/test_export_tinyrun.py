"""Export of a real tiny training run (tests/tinyrun.py): the CLI on the run folder, fp32 ONNX against torch
on the run's synthetic val images and on real photos, and the one-line refusal of a corrupt checkpoint."""

from __future__ import annotations

import shutil

import onnx
import pytest
import typer
from exportkit import real_photos
from tinyrun import make_tiny_run
from typer.testing import CliRunner

from tedloc_edge.bundle import read_onnx_meta
from tedloc_edge.errors import UserError
from tedloc_edge.export.cli import export as export_command
from tedloc_edge.export.exporter import ExportOptions, export
from tedloc_edge.export.verify import verify_export
from tedloc_edge.runtime.preprocess import Preprocessor
from tedloc_edge.train.predict import load_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def exported(run):
    app = typer.Typer()
    app.command()(export_command)
    result = CliRunner().invoke(app, [str(run)])
    assert result.exit_code == 0, result.output
    return run / "export" / "model.onnx", result.output


def test_cli_exports_the_run(run, exported):
    path, output = exported
    meta = read_onnx_meta(path)
    _, torch_meta = load_run(run)
    assert meta == torch_meta.replace(precision="fp32")
    assert meta.num_classes == 3 and meta.input_size == (64, 64)
    assert "verification: fp32 vs torch on 9 images" in output and "boxes identical 9/9" in output
    assert onnx.load(str(path)).opset_import[0].version == 17


def test_fp32_matches_torch_on_real_photos(run, exported):
    model, meta = load_run(run)
    photos = Preprocessor(meta.input_size, 4)(real_photos()).copy()
    report = verify_export(model, exported[0], meta, photos, "fp32")
    assert report.passed, report.failures
    assert max(o.max_abs for o in report.outputs) < 1e-4
    assert report.boxes_identical == 4 and report.top1_agree == 4


def test_corrupt_checkpoint_is_one_line(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("export", "cues"))
    best = copy / "checkpoints" / "best.pt"
    best.write_bytes(best.read_bytes()[:1000])
    with pytest.raises(UserError, match=r"best.pt: not a readable checkpoint .*retrain or use the other checkpoint") as err:
        export(copy, ExportOptions())
    assert "\n" not in str(err.value)
