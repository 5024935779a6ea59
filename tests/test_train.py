"""End-to-end tiny training: the run folder contract, load_run, resume, bad input, interruption, torchrun."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tedloc_edge.errors import UserError
from tedloc_edge.train import loop
from tedloc_edge.runtime import Localizer
from tedloc_edge.train.predict import TorchRunner, load_run, read_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from tinyrun import make_tiny_data, make_tiny_run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_tiny_data(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def tedloc_run(data) -> Path:
    return make_tiny_run(data.parent, "tedloc")


def test_tiny_run_writes_the_run_folder_export_needs(tedloc_run):
    for name in ("config.json", "classes.txt", "anchors.npy", "anchors.json", "checkpoints/last.pt",
                 "checkpoints/best.pt", "metrics.jsonl", "cues/cues.npy", "cues/cues.png"):
        assert (tedloc_run / name).is_file(), name
    record = json.loads((tedloc_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["epoch"] == 1 and all(np.isfinite(record[k]) for k in ("loss", "kd", "pcl", "icl"))
    assert {"val_top1_cls", "val_top1_loc"} <= set(record)
    anchors = json.loads((tedloc_run / "anchors.json").read_text())
    assert anchors["has_text_semantics"] is False  # random CLIP offline, recorded


def test_load_run_and_torch_runner(tedloc_run):
    model, meta = load_run(tedloc_run)
    assert meta.method == "tedloc" and meta.map_kind == "probability"
    assert meta.input_size == (64, 64) and meta.patch_grid == (4, 4) and meta.num_classes == 3
    assert meta.anchors_have_text_semantics is False and meta.anchor_source == "clip:ViT-S-32:random"
    assert meta.run_id.startswith("run-tedloc-")
    frames = [np.full((50, 80, 3), 30, np.uint8), np.random.default_rng(0).integers(0, 255, (120, 90, 3), np.uint8)]
    maps, logits = Localizer(TorchRunner(model, meta)).forward_maps(frames)
    assert maps.shape == (2, 4, 4) and logits.shape == (2, 3) and maps.dtype == np.float32
    # the Localizer's resize is the runtime's (cv2 INTER_LINEAR to the input size), then the graph
    import cv2

    direct = model(torch.from_numpy(cv2.resize(frames[1], (64, 64), interpolation=cv2.INTER_LINEAR))[None])
    np.testing.assert_allclose(maps[1], direct[0][0].detach().numpy(), atol=1e-6)


def test_threshold_json_reaches_the_bundle(tedloc_run, tmp_path):
    run = shutil.copytree(tedloc_run, tmp_path / "run")
    (run / "threshold.json").write_text(json.dumps({"threshold": 0.37, "criterion": "top1_loc", "split": "val"}))
    assert load_run(run)[1].threshold == 0.37 and load_run(run)[1].threshold_source == "val:top1_loc"


def test_load_run_errors_name_the_problem(tedloc_run, tmp_path):
    with pytest.raises(UserError, match="no such run folder"):
        load_run(tmp_path / "nope")
    run = shutil.copytree(tedloc_run, tmp_path / "run")
    (run / "checkpoints" / "best.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="best.pt: not a readable checkpoint"):
        load_run(run)
    ckpt = read_checkpoint(run / "checkpoints" / "last.pt")
    torch.save({**ckpt, "version": 99}, run / "checkpoints" / "best.pt")
    with pytest.raises(UserError, match="checkpoint version 99"):
        load_run(run)


def test_cam_baseline_in_the_same_harness(data):
    run = make_tiny_run(data.parent, "cam")
    model, meta = load_run(run)
    assert meta.method == "cam" and meta.map_kind == "cam" and not (run / "anchors.npy").exists()


def test_existing_run_folder_is_not_overwritten(tedloc_run, data):
    with pytest.raises(UserError, match="run folder exists; pass --resume"):
        make_tiny_run(data.parent, "tedloc")
    with pytest.raises(UserError, match="nothing to resume"):
        make_tiny_run(data.parent, data=str(data), out=str(data.parent / "fresh"), resume=True)


def test_nan_loss_stops_naming_the_step(data, tmp_path, monkeypatch):
    real = loop.tedloc_loss

    def poisoned(*args, **kwargs):
        parts = real(*args, **kwargs)
        return {**parts, "loss": parts["loss"] * float("nan")}

    monkeypatch.setattr(loop, "tedloc_loss", poisoned)
    with pytest.raises(UserError, match=r"loss is nan at epoch 1, step 1"):
        make_tiny_run(tmp_path, data=str(data), out=str(tmp_path / "nan"))


def test_interrupted_run_resumes_to_the_same_state_as_a_straight_run(data, tmp_path, monkeypatch):
    straight = make_tiny_run(tmp_path, data=str(data), out=str(tmp_path / "a"), epochs=2)
    real, calls = loop.validate, []

    def ctrl_c_in_epoch_2(*args, **kwargs):  # Ctrl-C after epoch 2's steps, before its checkpoint
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "validate", ctrl_c_in_epoch_2)
    out = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        make_tiny_run(tmp_path, data=str(data), out=str(out), epochs=2)
    assert read_checkpoint(out / "checkpoints/last.pt")["epoch"] == 1  # intact, the last finished epoch
    monkeypatch.setattr(loop, "validate", real)
    resumed = make_tiny_run(tmp_path, data=str(data), out=str(out), epochs=2, resume=True)
    a, b = read_checkpoint(straight / "checkpoints/last.pt"), read_checkpoint(resumed / "checkpoints/last.pt")
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"]
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=0, msg=key)
    for key in ("loss", "kd", "pcl", "icl"):
        assert a["metrics"][key] == b["metrics"][key]
    assert len((resumed / "metrics.jsonl").read_text().splitlines()) == 2


def test_undecodable_images_are_skipped_and_counted_with_flip_augmentation(data, tmp_path):
    broken = shutil.copytree(data, tmp_path / "data")
    first = (broken / "metadata/train/image_ids.txt").read_text().split()[0]
    (broken / "images" / first).write_bytes(b"\x00garbage")
    run = make_tiny_run(tmp_path, data=str(broken), out=str(tmp_path / "run"), augment=True)
    skipped = json.loads((run / "skipped.json").read_text())
    assert skipped["count"]["train"] == 1 and skipped["images"]["train"] == [first]
    assert read_checkpoint(run / "checkpoints/last.pt")["skipped"]["train"] == 1
    # --augment caches the mirrored images' features: the encoder on a flipped image, row for row
    feats = np.load(run / "cache/train-features.npy")
    flipped = np.load(run / "cache/train-flipped.npy")
    assert flipped.shape == feats.shape and not np.array_equal(flipped[1], feats[1])
    assert not feats[0].any() and not flipped[0].any()  # the undecodable row stays empty


def test_empty_class_is_an_error_before_training(data, tmp_path):
    broken = shutil.copytree(data, tmp_path / "data")
    labels = broken / "metadata/train/class_labels.txt"
    lines = [line.replace(",2", ",1") for line in labels.read_text().splitlines()]
    labels.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match="class"):
        make_tiny_run(tmp_path, data=str(broken), out=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # nothing written: the user fixes the data and reruns as is


def test_missing_val_split_says_how_to_go_without(data, tmp_path):
    partial = shutil.copytree(data, tmp_path / "data")
    shutil.rmtree(partial / "metadata" / "val")
    with pytest.raises(UserError, match="--val-split ''"):
        make_tiny_run(tmp_path, data=str(partial), out=str(tmp_path / "run"))


@pytest.mark.slow
def test_torchrun_two_gloo_processes_give_one_checkpoint(data, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TEDLOC_NO_PROGRESS": "1"}
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "tedloc_edge.train.loop",
           "--data", str(data), "--out", str(out), "--input-size", "64", "--epochs", "1", "--batch-size", "4",
           "--embed-dim", "16", "--decoder-hidden", "32", "--clip-model", "ViT-S-32", "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = read_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["step"] == 3  # 24 images / 2 processes / batch 4
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1  # only rank 0 writes
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.pt", "last.pt"]


def test_cli_train_resume_and_one_line_errors(data, tmp_path):
    import typer
    from typer.testing import CliRunner

    from tedloc_edge.train.cli import synth, train

    app = typer.Typer()
    app.command("train")(train)
    app.command("synth")(synth)
    runner = CliRunner()
    out = tmp_path / "run"
    tiny = ["--input-size", "64", "--embed-dim", "16", "--decoder-hidden", "32", "--clip-model", "ViT-S-32"]
    result = runner.invoke(app, ["train", "--data", str(data), "--out", str(out), "--epochs", "1", *tiny])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train", "--out", str(out), "--resume", "--epochs", "2"])
    assert result.exit_code == 0, result.output
    assert read_checkpoint(out / "checkpoints/last.pt")["epoch"] == 2
    assert json.loads((out / "config.json").read_text())["input_size"] == 64  # the run's own settings
    result = runner.invoke(app, ["train", "--data", str(data), "--out", str(out), *tiny])
    assert result.exit_code == 2 and "run folder exists" in result.output
    result = runner.invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "x"), "--method", "dino"])
    assert result.exit_code == 2 and "--method 'dino': choose one of tedloc, cam" in result.output
    result = runner.invoke(app, ["synth", str(tmp_path / "syn"), "--classes", "2", "--train", "4", "--val", "2",
                                 "--test", "0", "--min-size", "64", "--max-size", "72"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "syn" / "metadata" / "val" / "localization.txt").is_file()


@pytest.mark.parametrize("augment", [False, True], ids=["plain", "flips"])  # flips: packed (B, 2, D) cache rows
def test_finetuned_backbone_stage_is_trained_saved_and_exported(data, tmp_path, augment):
    run = make_tiny_run(tmp_path, "tedloc", finetune_stages=1, augment=augment)
    ckpt = read_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["config"]["finetune_stages"] == 1
    from tedloc_edge.train.backbone import create_backbone

    fresh = create_backbone("tf_efficientnet_lite0", input_size=64).state_dict()
    moved = [k for k, v in fresh.items() if not torch.equal(v, ckpt["model"][f"backbone.{k}"])]
    assert moved and all(k.startswith("model.blocks.6.") for k in moved)  # only the last stage trained
    model, _ = load_run(run, "last")  # the whole encoder with the fine-tuned weights: what export traces
    x = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fg_map, logits = model(x)
        model.backbone.set_tail(1, 64)
        out = model.forward_features(model.backbone.encode(model.normalize(x)))
    torch.testing.assert_close(out["logits"], logits)
    torch.testing.assert_close(out["fg_map"], fg_map)
