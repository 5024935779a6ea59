"""Issue 23, beyond its list: the same classes of fault hunted in the other commands. An output never replaces an
input (eval --json, bench --json) nor a file without --exist-ok (data video), and --exist-ok never wipes a folder
the command did not make (data synth, train); nothing hangs (a pipe as source, bench --seconds nan); options are
checked before any work (bench --frame-size 0x0)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
import typer
from faultkit import read_only
from runtime_models import fixture_meta, write_model
from typer.testing import CliRunner

from tedloc_edge.app import cli as app_cli
from tedloc_edge.app.eval_cli import evaluate as eval_command
from tedloc_edge.datasets import open_split
from tedloc_edge.errors import UserError
from tedloc_edge.runtime.cli import bench as bench_command
from tedloc_edge.runtime.infer import InferOptions, run_infer
from tedloc_edge.train.config import TrainConfig
from tedloc_edge.train.synth import generate


def invoke(command, *args: object):
    app = typer.Typer()
    app.command()(command)
    app.command("other")(lambda: None)  # two commands: the first argument names the command
    return CliRunner().invoke(app, [command.__name__, *map(str, args)])


def one_line(result, *needles: str) -> None:
    assert result.exit_code == 2 and isinstance(result.exception, (SystemExit, type(None))), result.output
    text = " ".join(result.output.split())
    assert "Traceback" not in text and all(needle in text for needle in needles), result.output


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("data") / "synth", classes=3, train=6, val=3, test=3, seed=3,
                    image_size=(64, 96), show_progress=False)


@pytest.fixture
def model(tmp_path, dataset) -> Path:
    return write_model(tmp_path / "m.onnx", meta=fixture_meta(class_names=open_split(dataset, "test").class_names))


# -- an output never replaces an input ---------------------------------------------------------------------------


def test_eval_json_over_the_model_it_evaluates_is_refused(model, dataset):
    before = model.read_bytes()
    one_line(invoke(eval_command, model, "--data", dataset, "--json", model), "m.onnx: is an input of this run")
    assert model.read_bytes() == before  # it was replaced by the report, exit 0
    classes = dataset / "classes.txt"
    one_line(invoke(eval_command, model, "--data", dataset, "--plot", classes), "classes.txt: is an input of this run")


def test_bench_json_over_a_model_it_benches_is_refused_before_the_bench(model, tmp_path):
    before = model.read_bytes()
    one_line(invoke(bench_command, model, "--seconds", "0.1", "--json", model), "m.onnx: is an input of this run")
    assert model.read_bytes() == before
    (tmp_path / "ro").mkdir()
    with read_only(tmp_path / "ro"):
        result = invoke(bench_command, model, "--seconds", "0.1", "--json", tmp_path / "ro" / "b.json")
    one_line(result, "ro: output folder is not writable")
    assert "images/s" not in result.output  # refused before the benchmark, not after it


def test_data_video_does_not_replace_a_file_without_exist_ok(tmp_path):
    notes = tmp_path / "notes.mp4"
    notes.write_text("not a video\n")
    one_line(invoke(app_cli.video, notes, "--frames", "2"), "notes.mp4: already exists; pass --exist-ok")
    assert notes.read_text() == "not a video\n"
    result = invoke(app_cli.video, notes, "--frames", "2", "--exist-ok")
    assert result.exit_code == 0, result.output
    assert notes.stat().st_size > 100 and Path(f"{notes}.json").is_file()


# -- --exist-ok replaces only what the command made ------------------------------------------------------------------


def test_data_synth_exist_ok_never_wipes_a_folder_it_did_not_make(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work\n")
    small = dict(classes=2, train=2, val=0, test=0, image_size=(64, 64), show_progress=False)
    with pytest.raises(UserError, match="mine: is not a synthetic benchmark .* --exist-ok replaces only those"):
        generate(mine, exist_ok=True, **small)
    assert (mine / "thesis.tex").read_text() == "years of work\n"
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    with pytest.raises(UserError, match="not a synthetic benchmark"):
        generate(notes, exist_ok=True, **small)
    assert notes.read_text() == "x"
    bench = generate(tmp_path / "bench", **small)
    assert generate(bench, exist_ok=True, seed=1, **small) == bench  # its own earlier output: replaced


def test_train_exist_ok_never_writes_into_a_folder_that_is_not_a_run(tmp_path, dataset):
    project = tmp_path / "project"
    project.mkdir()
    (project / "config.json").write_text('{"my": "settings"}')
    with pytest.raises(UserError, match="not a run folder .* --exist-ok replaces only runs"):
        TrainConfig(data=str(dataset), out=str(project), exist_ok=True).validate()
    with pytest.raises(UserError, match="is the dataset folder"):
        TrainConfig(data=str(dataset), out=str(dataset), exist_ok=True).validate()
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    TrainConfig(data=str(dataset), out=str(run), exist_ok=True).validate()  # an earlier run: allowed


# -- nothing hangs; options before any work ---------------------------------------------------------------------------


def test_a_pipe_as_source_is_refused_instead_of_waiting_for_a_writer(model, tmp_path):
    pipe = tmp_path / "camera.mp4"
    os.mkfifo(pipe)
    raised: list[BaseException] = []

    def run() -> None:
        try:
            run_infer(InferOptions(source=str(pipe), model=model, out=tmp_path / "out", show_progress=False))
        except BaseException as exc:  # noqa: BLE001 - looked at below
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(20)
    if thread.is_alive():
        with open(pipe, "wb"):  # let the waiting open return, so the thread ends
            pass
        pytest.fail("infer on a named pipe waited for a writer")
    assert len(raised) == 1 and isinstance(raised[0], UserError) and "a pipe or socket" in str(raised[0])
    with pytest.raises(UserError, match="SOURCE is empty"):
        run_infer(InferOptions(source="  ", model=model, out=tmp_path / "out2", show_progress=False))


@pytest.mark.parametrize("args, message", [
    (["--seconds", "nan"], "--seconds nan: must be a positive number"),
    (["--seconds", "inf"], "--seconds inf: must be a positive number"),
    (["--frame-size", "0x0"], "--frame-size '0x0': give WIDTHxHEIGHT, each 1..8192"),
    (["--frame-size", "99999x99999"], "each 1..8192"),
    (["--threads", "-3"], "--threads must be 0 (one per core) or more"),
])
def test_bench_options_are_checked_before_any_model_runs(model, args, message):
    result = invoke(bench_command, model, *args)  # --seconds nan never ended; 0x0 was a ZeroDivisionError
    one_line(result, message)


def test_export_options_are_checked_before_the_model_is_exported(tmp_path, monkeypatch):
    """--verify-images 0 verified on every image; --int8-max-drop nan ran calibration and the gate, then refused
    with 'allowed drop nan'; a missing --images folder was found after the ONNX export."""
    from tedloc_edge.export import exporter
    from tedloc_edge.export.exporter import ExportOptions, export

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    monkeypatch.setattr(exporter, "load_model", lambda source: pytest.fail("the model was loaded"))
    cases = [(dict(verify_images=0), "--verify-images 0 must be >= 1"),
             (dict(verify_images=-3), "--verify-images -3 must be >= 1"),
             (dict(precision="int8", int8_max_drop=float("nan")), "--int8-max-drop nan must be a number"),
             (dict(images=(str(tmp_path / "nope"),)), "nope: no such image file or folder; fix --images"),
             (dict(precision="int8", calib_dir=(str(tmp_path / "nope"),)), "fix --calib-dir")]
    for options, message in cases:
        with pytest.raises(UserError, match=message.replace("(", r"\(")):
            export(run, ExportOptions(**options))


def test_a_batch_too_large_to_allocate_is_one_line_error(model, tmp_path):
    """infer --batch 10**8 was a numpy MemoryError traceback; bench --batch 10**8 made frames for ever."""
    with pytest.raises(UserError, match=r"--batch must be in 1\.\.4096"):
        run_infer(InferOptions(source=str(model), model=model, out=tmp_path / "out", batch=10**8, show_progress=False))
    one_line(invoke(bench_command, model, "--batch", "1,100000000"), "batch sizes must be in 1..4096")


def test_paths_with_brackets_are_text_not_markup(model, tmp_path):
    """A path like 'x[/y]' is rich markup: it was a MarkupError traceback in the error line and in infer's summary
    (after the whole run), and '[bold]x.mp4' was named as 'x.mp4'."""
    import cv2
    from faultkit import cli
    from runtime_media import make_clip

    proc = cli("infer", tmp_path / "nope[/x].mp4", "--model", model, "--out", tmp_path / "o")
    assert proc.returncode == 2 and "Traceback" not in proc.stdout and "nope[/x].mp4: no images found" in proc.stdout
    make_clip(tmp_path / "clip[1].mp4", frames=3)  # an existing name with brackets is that file, not a pattern
    assert run_infer(InferOptions(source=str(tmp_path / "clip[1].mp4"), model=model, out=tmp_path / "v",
                                  show_progress=False)).frames_processed == 3
    folder = tmp_path / "ph[/b]"  # folders "ph[" and "b]"
    folder.mkdir(parents=True)
    cv2.imwrite(str(folder / "a.png"), np.full((32, 32, 3), 90, np.uint8))
    proc = cli("infer", folder, "--model", model, "--out", tmp_path / "o[/c]")
    assert proc.returncode == 0 and "Traceback" not in proc.stdout, proc.stdout
    assert f"jsonl: {tmp_path / 'o[/c]' / 'predictions.jsonl'}" in proc.stdout


def test_sigterm_mid_write_removes_the_temporary_file_and_exits_143(tmp_path):
    """SIGTERM's default action killed an export mid-way and left its 13 MB .model.partial.onnx behind."""
    import signal
    import subprocess
    import sys

    code = ("import sys, time\nfrom tedloc_edge.console import user_errors\nfrom tedloc_edge.files import atomic_write_with\n"
            "def slow(fh):\n    fh.write(b'x' * 1000)\n    print('ready', flush=True)\n    time.sleep(60)\n"
            "with user_errors():\n    atomic_write_with(sys.argv[1], slow)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "out" / "model.onnx")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout.readline().strip() == "ready"
    assert [p.name for p in (tmp_path / "out").iterdir()][0].startswith(".model.onnx.")  # the temporary file
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=20)[0]
    assert proc.returncode == 143 and "terminated" in output and "Traceback" not in output, output
    assert list((tmp_path / "out").iterdir()) == []
