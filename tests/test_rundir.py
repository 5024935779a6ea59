"""RunDir: the run folder's one reader and writer (paths, config.json's dataset root, threshold.json, results)."""

from __future__ import annotations

import json

import pytest

from tedloc_edge.errors import UserError
from tedloc_edge.rundir import RunDir


def test_a_run_is_found_from_its_folder_or_any_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    assert RunDir.of(run).path == run
    assert RunDir.of(run / "checkpoints" / "best.pt").path == run
    assert RunDir.of(tmp_path / "loose.pt").path == tmp_path  # a checkpoint outside a run: its own folder
    monkeypatch.chdir(run / "checkpoints")
    assert RunDir.of("best.pt").path == run
    assert RunDir(run).checkpoint("last") == run / "checkpoints" / "last.pt"
    assert RunDir(run).checkpoint("/x/epoch3.pt").name == "epoch3.pt" and str(RunDir(run)) == str(run)


def test_dataset_root_one_rule_for_eval_and_export(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "run")
    assert run.data_root() is None  # no config.json
    run.start({"data": str(tmp_path / "data")}, fresh=True)
    assert run.data_root() == tmp_path / "data"  # absolute, whether or not it is on this machine
    (run.path / "local").mkdir()
    run.start({"data": "local"}, fresh=True)
    monkeypatch.chdir(tmp_path)
    assert run.data_root() == run.path / "local"  # relative: the run folder's first
    run.start({"data": "elsewhere"}, fresh=True)
    assert run.data_root() == tmp_path / "elsewhere"  # else the working folder's
    run.start({"data": ""}, fresh=True)
    assert run.data_root() is None
    run.config.write_text("{not json")
    with pytest.raises(UserError, match=r"run/config.json: not a valid run config"):
        run.data_root()


def test_threshold_round_trip_and_unreadable_file(tmp_path):
    run = RunDir(tmp_path)
    assert run.read_threshold() is None
    doc = {"threshold": 0.37, "criterion": "top1_loc", "split": "val", "value": 61.5}
    assert run.write_threshold(doc) == tmp_path / "threshold.json"
    assert run.read_threshold() == (0.37, "val:top1_loc")
    assert json.loads(run.threshold_file.read_text()) == doc
    run.threshold_file.write_text('{"criterion": "top1_loc"}')
    with pytest.raises(UserError, match=r"threshold.json: unreadable threshold file .*--calibrate"):
        run.read_threshold()


def test_a_fresh_start_removes_an_earlier_runs_results_and_resume_keeps_them(tmp_path):
    run = RunDir(tmp_path / "run")
    run.start({"data": "d"}, fresh=True)
    run.write_classes(["a", "b"])
    run.append_metrics({"epoch": 1})
    run.write_skipped({"train": ["x.jpg"]})
    run.write_threshold({"threshold": 0.5, "criterion": "top1_loc", "split": "val", "value": 1.0})
    assert (run.path / "classes.txt").read_text() == "a\nb\n"
    assert json.loads((run.path / "skipped.json").read_text())["count"] == {"train": 1}
    run.start({"data": "d", "resume": True}, fresh=False)
    assert (run.path / "metrics.jsonl").is_file() and run.threshold_file.is_file()
    run.start({"data": "d"}, fresh=True)
    assert not (run.path / "metrics.jsonl").exists() and not run.threshold_file.exists()
    assert not (run.path / "skipped.json").exists() and json.loads(run.config.read_text()) == {"data": "d"}
