"""Presence: the score, its AUROC and calibration; the Localizer's present/absent results (no box, no class,
nothing drawn), the warning without a threshold, a CAM's honest None; negatives splits (synth, datasets); the
stored threshold (threshold.json -> bundle); eval's presence figures and --calibrate."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from runtime_models import fixture_meta, write_model
from typer.testing import CliRunner

from tedloc_edge.app import eval_cli
from tedloc_edge.bundle import BundleMeta
from tedloc_edge.datasets import NO_OBJECT, dataset_negatives, open_negatives, open_split
from tedloc_edge.errors import UserError
from tedloc_edge.evaluate import calibrate_threshold, evaluate_predictor
from tedloc_edge.images import load_image
from tedloc_edge.presence import PRESENCE_TOPK, auroc, calibrate_presence, presence_score, rates, top_mean
from tedloc_edge.rundir import RunDir
from tedloc_edge.runtime import Localizer
from tedloc_edge.train.synth import generate

DARK, BRIGHT = 10, 240  # the fixture model's map: sigmoid(8 * gray / 255 - 4) per patch


def frame(value: int = DARK, box=(60, 40, 200, 160), h: int = 240, w: int = 320) -> np.ndarray:
    image = np.full((h, w, 3), DARK, np.uint8)
    if value != DARK:
        x0, y0, x1, y1 = box
        image[y0:y1, x0:x1] = value
    return image


def fixture_prob(gray: float) -> float:
    return float(1 / (1 + np.exp(-(8 * gray / 255 - 4))))


# ---------------------------------------------------------------------------------------------- the score


def test_score_is_the_mean_of_the_top_patches_and_none_for_a_cam():
    grid = np.zeros((7, 7), np.float32)
    grid[0, :5] = [0.9, 0.8, 0.7, 0.6, 0.5]
    assert top_mean(grid) == pytest.approx(np.mean([0.9, 0.8, 0.7, 0.6][:PRESENCE_TOPK]))
    assert top_mean(np.array([[0.2, 0.4]])) == pytest.approx(0.3)  # a grid smaller than k: all of it
    assert presence_score(grid) == top_mean(grid) and presence_score(grid, "cam") is None


def test_auroc_is_the_pairwise_probability_with_ties_half():
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 5, 40) / 4, rng.integers(0, 4, 30) / 4  # many ties
    pairs = [1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)]
    assert auroc(pos, neg) == pytest.approx(np.mean(pairs))
    assert auroc([0.9, 0.8], [0.1]) == 1.0 and auroc([], [0.1]) is None


def test_calibration_sits_in_the_middle_of_the_gap_and_minimizes_the_larger_error():
    assert calibrate_presence([0.8, 0.9, 0.95], [0.1, 0.2, 0.4]) == pytest.approx(0.6)  # separated: mid-gap
    pos, neg = [0.3, 0.7, 0.8, 0.9], [0.1, 0.2, 0.75]
    t = calibrate_presence(pos, neg)
    fp, miss = rates(np.array(pos), np.array(neg), t)
    best = min(max(rates(np.array(pos), np.array(neg), x)) for x in np.linspace(0, 1, 1001))
    assert max(fp, miss) == pytest.approx(best)
    # the smallest sum (Youden's J) is also reached at 0.461: 4 of 10 empty images present, no object lost
    pos = [0.48, 0.5, 0.57, 0.69, 0.72, 0.72, 0.81, 0.85, 0.85, 0.9]
    neg = [0.03, 0.06, 0.15, 0.42, 0.43, 0.46, 0.49, 0.54, 0.62, 0.77]
    fp, miss = rates(np.array(pos), np.array(neg), calibrate_presence(pos, neg))
    assert (fp, miss) == (0.2, 0.2)
    with pytest.raises(ValueError):
        calibrate_presence([0.5], [])


# ---------------------------------------------------------------------------------------------- runtime


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("presence")
    return {
        "calibrated": write_model(d / "cal.onnx", meta=fixture_meta(presence_threshold=0.5, presence_source="val:minimax")),
        "uncalibrated": write_model(d / "raw.onnx"),
        "cam": write_model(d / "cam.onnx", meta=fixture_meta(method="cam")),
    }


def test_an_empty_frame_has_no_box_no_class_and_nothing_drawn(models):
    loc = Localizer(models["calibrated"])
    seen, empty = loc([frame(BRIGHT), frame(DARK)])
    assert seen.present and seen.class_name is not None and len(seen.boxes) == 1
    assert seen.presence == pytest.approx(fixture_prob(BRIGHT), abs=1e-3)
    assert not empty.present and empty.presence == pytest.approx(fixture_prob(DARK), abs=1e-3)
    assert len(empty.boxes) == 0 and empty.class_id is None and empty.class_name is None and empty.score is None
    assert empty.topk == [] and "present=False" in repr(empty)
    line = json.loads(json.dumps(empty.summary()))
    assert line["present"] is False and line["boxes"] == [] and line["class_name"] is None and line["topk"] == []
    assert json.loads(json.dumps(seen.summary()))["present"] is True
    image = frame(DARK)
    np.testing.assert_array_equal(empty.plot(image, heatmap=True), image)  # nothing drawn, not even the map
    assert not np.array_equal(seen.plot(frame(BRIGHT)), frame(BRIGHT))


def test_infer_counts_the_frames_with_an_object_in_summary_json(models, tmp_path):
    import cv2

    from tedloc_edge.runtime.infer import InferOptions, run_infer

    folder = tmp_path / "frames"
    folder.mkdir()
    for i, gray in enumerate([BRIGHT, DARK, DARK, BRIGHT, DARK]):
        cv2.imwrite(str(folder / f"{i}.png"), frame(gray))
    summary = run_infer(InferOptions(source=str(folder), model=models["calibrated"], out=tmp_path / "out",
                                     show_progress=False))
    lines = [json.loads(x) for x in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert summary.frames_processed == 5 and summary.frames_present == 2 == sum(x["present"] for x in lines)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["frames_present"] == 2


def test_box_scores_are_raw_probabilities_not_the_normalized_map(models):
    loc = Localizer(models["calibrated"], presence_threshold=0.3)
    dim, bright = loc([frame(150), frame(BRIGHT)])  # a faint object's patches are about 0.67 likely, a bright one's 0.98
    assert dim.present and bright.present
    # the mean raw probability over the box's patches: normalized per frame, both would be near 1
    assert dim.box_scores[0] == pytest.approx(fixture_prob(150), abs=0.02) and bright.box_scores[0] > dim.box_scores[0] + 0.1
    assert Localizer(models["calibrated"], presence_threshold=0.8)(frame(150)).present is False  # the override


def test_no_presence_threshold_reports_every_frame_present_and_warns_once(models, caplog):
    loc = Localizer(models["uncalibrated"])
    with caplog.at_level(logging.WARNING):
        results = loc([frame(DARK)]) + loc([frame(DARK)])
    assert all(r.present and r.presence == pytest.approx(fixture_prob(DARK), abs=1e-3) for r in results)
    assert all(len(r.boxes) and r.class_name for r in results)  # nothing filtered
    assert sum("no presence threshold" in rec.getMessage() for rec in caplog.records) == 1


def test_a_cam_has_no_presence(models):
    result = Localizer(models["cam"])(frame(DARK))
    assert result.present and result.presence is None and result.summary()["presence"] is None
    with pytest.raises(UserError, match="not a probability"):
        Localizer(models["cam"], presence_threshold=0.5)


# ---------------------------------------------------------------------------------------------- data


def test_synth_negatives_leave_the_object_splits_unchanged(tmp_path):
    small = dict(classes=2, train=4, val=2, test=2, image_size=(64, 80), show_progress=False)
    plain = generate(tmp_path / "plain", **small)
    with_neg = generate(tmp_path / "neg", negatives=3, **small)
    for split in ("train", "val", "test"):
        for a, b in zip(open_split(plain, split).samples, open_split(with_neg, split).samples):
            assert a.path.read_bytes() == b.path.read_bytes() and a.label == b.label
        negatives = dataset_negatives(with_neg, split)
        assert negatives is not None and open_negatives(with_neg, split).samples[0].path == negatives.samples[0].path and negatives.name == f"{split}_negatives" and len(negatives) == 3
        assert all(s.label == NO_OBJECT and len(s.boxes) == 0 and s.size and s.mask_path is None for s in negatives.samples)
        assert not (with_neg / "metadata" / f"{split}_negatives" / "class_labels.txt").exists()
    more_val = generate(tmp_path / "val5", negatives=3, val_negatives=5, **small)  # calibration wants more in val
    assert len(dataset_negatives(more_val, "val")) == 5 and "val_negatives 5" in (more_val / "README.txt").read_text()
    for split in ("train", "test"):  # the other splits' scenes do not move
        pairs = zip(open_negatives(with_neg, split).samples, open_negatives(more_val, split).samples, strict=True)
        assert all(a.path.read_bytes() == b.path.read_bytes() for a, b in pairs)
    assert dataset_negatives(plain, "val") is None  # a dataset without negatives has none (the default: no error)
    with pytest.raises(UserError, match="val_negatives"):
        open_negatives(plain, "val")  # but one the user names must have them
    assert dataset_negatives(plain / "images", "val") is None  # another layout's root is never a folder of negatives
    folder = open_negatives(with_neg / "images" / "val_negatives", "val")  # any folder of images
    assert len(folder) == 3 and folder.samples[0].label == NO_OBJECT
    (tmp_path / "nothing").mkdir()
    with pytest.raises(UserError, match="no images"):
        open_negatives(tmp_path / "nothing", "val")


def test_the_threshold_travels_from_threshold_json_to_the_bundle(tmp_path):
    run = RunDir(tmp_path)
    run.write_threshold({"threshold": 0.4, "criterion": "top1_loc", "split": "val", "value": 50.0,
                         "presence": {"threshold": 0.62, "criterion": "minimax", "object_images": 80, "empty_images": 70}})
    assert run.read_threshold() == (0.4, "val:top1_loc")
    assert run.read_presence() == (0.62, "val:minimax (80 object, 70 empty images)")
    run.write_threshold({"threshold": 0.4, "criterion": "top1_loc", "split": "val", "value": 50.0, "presence": None})
    assert run.read_presence() is None
    meta = fixture_meta(presence_threshold=0.62, presence_source="val:minimax")
    assert BundleMeta.from_json(meta.to_json()).presence_threshold == 0.62
    old = json.loads(fixture_meta().to_json())
    del old["presence_threshold"], old["presence_source"]  # a bundle written before presence
    assert BundleMeta.from_dict(old).presence_threshold is None


# ---------------------------------------------------------------------------------------------- evaluation


class MapPredictor:
    """Maps from the image itself: its mean brightness / 255 everywhere (a constant map boxes nothing)."""

    def __init__(self, classes, presence_threshold=None):
        self.meta = BundleMeta(class_names=tuple(classes), input_size=(64, 64), patch_grid=(4, 4),
                               presence_threshold=presence_threshold, presence_source="stored")

    def forward_maps(self, images):
        maps = np.stack([np.full((4, 4), im.mean() / 255, np.float32) for im in images])
        return maps, np.zeros((len(images), self.meta.num_classes), np.float32)


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("bench") / "data", classes=2, train=4, val=6, test=6, negatives=5,
                    image_size=(64, 80), show_progress=False)


def test_eval_scores_presence_and_leaves_the_wsol_metrics_alone(bench):
    split, empty = open_split(bench, "test"), open_negatives(bench, "test")
    predictor = MapPredictor(split.class_names, presence_threshold=0.5)
    alone = evaluate_predictor(MapPredictor(split.class_names), split, progress=False)
    report = evaluate_predictor(predictor, split, progress=False, negatives=empty)
    assert report.metrics == alone.metrics  # presence is extra
    pos, neg = (np.array([load_image(s.path).mean() / 255 for s in part.samples]) for part in (split, empty))
    p = report.to_dict()["presence"]
    assert p["object_images"] == 6 and p["empty_images"] == 5 and p["auroc"] == pytest.approx(auroc(pos, neg), abs=1e-4)
    assert p["false_positive_rate"] == pytest.approx(100 * (neg >= 0.5).mean(), abs=1e-2)
    assert p["miss_rate"] == pytest.approx(100 * (pos < 0.5).mean(), abs=1e-2) and p["threshold_source"] == "stored"
    doc = calibrate_threshold(report, "gt_known_loc")
    assert doc["presence"]["threshold"] == pytest.approx(calibrate_presence(pos, neg), abs=1e-5)
    assert calibrate_threshold(alone, "gt_known_loc")["presence"] is None  # no negatives: nothing calibrated


def test_eval_cli_calibrates_presence_from_the_datasets_negatives(bench, tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"data": str(bench)}))
    classes = open_split(bench, "val").class_names
    monkeypatch.setattr(eval_cli, "load_predictor", lambda target, device, batch: MapPredictor(classes))
    result = run_eval(str(run), "--calibrate")
    assert result.exit_code == 0, result.output
    presence = json.loads((run / "threshold.json").read_text())["presence"]
    assert presence["object_images"] == 6 and presence["empty_images"] == 5 and "val_negatives" in presence["negatives"]
    assert "calibrated: presence threshold" in " ".join(result.output.split())
    stored = MapPredictor(classes, presence_threshold=presence["threshold"])
    monkeypatch.setattr(eval_cli, "load_predictor", lambda target, device, batch: stored)
    result = run_eval(str(run), "--split", "test", "--presence-threshold", "0.3")
    text = " ".join(result.output.split())
    assert result.exit_code == 0 and "AUROC" in text and "at presence threshold 0.3000 (given)" in text
    result = run_eval(str(run), "--split", "test", "--presence-threshold", "1.5")
    assert result.exit_code != 0 and "--presence-threshold 1.5" in " ".join(result.output.split())


def run_eval(*args: str):
    from tedloc_edge.app.cli import app

    return CliRunner().invoke(app, ["eval", *args])


@pytest.mark.slow
def test_training_with_object_free_images_then_the_bundle_carries_the_threshold(tmp_path):
    from tinyrun import make_tiny_run  # torch: imported here, so the rest of this file runs without it

    from tedloc_edge.train.predict import load_run

    empty = generate(tmp_path / "empty", classes=3, train=3, val=0, test=0, negatives=5, image_size=(64, 96),
                     show_progress=False)
    run = make_tiny_run(tmp_path, negatives=str(empty))
    config = json.loads((run / "config.json").read_text())
    assert config["negatives"] == str(empty)  # what was used, so --resume uses it again
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert np.isfinite(record["loss"]) and 0 <= record["train_top1"] <= 100  # top-1 over the object images only
    assert load_run(run)[1].presence_threshold is None
    RunDir(run).write_threshold({"threshold": 0.3, "criterion": "top1_loc", "split": "val", "value": 0.0,
                                 "presence": {"threshold": 0.7, "criterion": "minimax", "object_images": 9, "empty_images": 5}})
    meta = load_run(run)[1]
    assert meta.presence_threshold == 0.7 and meta.presence_source == "val:minimax (9 object, 5 empty images)"
    cam = make_tiny_run(tmp_path, "cam", negatives=str(empty))  # a CAM has no presence to train: not used
    assert json.loads((cam / "config.json").read_text())["negatives"] == ""
    RunDir(cam).write_threshold({"threshold": 0.3, "criterion": "top1_loc", "split": "val", "value": 0.0,
                                 "presence": {"threshold": 0.7, "criterion": "minimax", "object_images": 9, "empty_images": 5}})
    assert load_run(cam)[1].presence_threshold is None
