"""The evaluator on a tiny synthetic split with hand-made maps whose numbers are worked out by hand, the
`tedloc-edge eval` command (--maps/--predictions, --calibrate, --json, --plot) and its one-line errors.

The split: four 448x448 images, classes a, b, c. Boxes halve to the 224 grid (truncated as the reference).
  img0: label a, true box (0,0,99,99) at 224; map blob 0..98 -> box (0,0,99,99): IoU 1; ranked a first.
  img1: label b, same box and map: IoU 1; ranked second (top-5 only).
  img2: label a, true box (0,0,99,39): IoU 4000/10000 = 0.4 (right at IoU 0.3 only); ranked first.
  img3: label a, true box (0,0,99,99); constant map -> box (0,0,0,0): IoU 1/10000; ranked first.
MaxBoxAcc = GT-known = 2/4 = 50; Top-1 Loc = 1/4 = 25; Top-5 Loc = 2/4 = 50; Top-1 cls 3/4; Top-5 cls 4/4;
MaxBoxAccV2 = mean(3/4, 2/4, 2/4) = 58.33. Masks = pixels 0..98 of every image; the maps score them
1 on images 0-2 and 0 on image 3, so PxAP = 100 * (3/4 * 1 + 1/4 * 9801/50176).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from tedloc_edge.app import eval_cli
from tedloc_edge.bundle import BundleMeta
from tedloc_edge.errors import UserError
from tedloc_edge.datasets import open_split
from tedloc_edge.evaluate import calibrate_threshold, evaluate_predictor

IDS = [f"img{i}.png" for i in range(4)]
LABELS = [0, 1, 0, 0]
BOXES = ["0,0,198,198", "0,0,198,198", "0,0,198,78", "0,0,198,198"]  # original pixels (448 x 448)
LOGITS = np.array([5.0, 1.0, 0.0], np.float32)  # ranking a, b, c for every image
EXPECTED = {
    "maxboxacc": 50.0, "gt_known_loc": 50.0, "top1_loc": 25.0, "top5_loc": 50.0, "top1_cls": 75.0,
    "top5_cls": 100.0, "maxboxacc_v2": 175 / 3, "gt_known_loc_at_threshold": 50.0, "top1_loc_at_threshold": 25.0,
    "pxap": 100 * (0.75 + 0.25 * 9801 / 50176),
}


def hand_map(i: int, ring: bool = False) -> np.ndarray:
    """224x224: 1.0 on 0..98 (none for img3); with `ring`, 0.5 on the rest of 0..197 (wrong below tau 0.499)."""
    m = np.zeros((224, 224), np.float32)
    if i == 3:
        return m
    if ring:
        m[:198, :198] = 0.5
    m[:99, :99] = 1.0
    return m


def make_dataset(root: Path, splits=("test", "val"), masks: bool = True) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "classes.txt").write_text("a\nb\nc\n")
    for image_id in IDS:
        cv2.imwrite(str(root / "images" / image_id), np.full((448, 448, 3), 90, np.uint8))
    for split in splits:
        meta = root / "metadata" / split
        meta.mkdir(parents=True)
        (meta / "image_ids.txt").write_text("\n".join(IDS) + "\n")
        (meta / "class_labels.txt").write_text("".join(f"{i},{lab}\n" for i, lab in zip(IDS, LABELS)))
        (meta / "image_sizes.txt").write_text("".join(f"{i},448,448\n" for i in IDS))
        (meta / "localization.txt").write_text("".join(f"{i},{b}\n" for i, b in zip(IDS, BOXES)))
        if masks:
            (root / "masks" / split).mkdir(parents=True)
            mask = np.zeros((448, 448), np.uint8)
            mask[:198, :198] = 255  # nearest resize to 224 keeps 0..98
            for image_id in IDS:
                cv2.imwrite(str(root / "masks" / split / image_id), mask)
    return root


class FakePredictor:
    """The predictor contract with hand-made maps: image i of the split is recognized by call order."""

    def __init__(self, classes=("a", "b", "c"), threshold=0.5, source="default", ring=False):
        self.meta = BundleMeta(class_names=tuple(classes), input_size=(224, 224), patch_grid=(224, 224),
                               threshold=threshold, threshold_source=source)
        self.ring = ring
        self.seen = 0

    def forward_maps(self, images):
        index = range(self.seen, self.seen + len(images))
        self.seen += len(images)
        maps = np.stack([hand_map(i % 4, self.ring) for i in index])
        return maps, np.tile(LOGITS[: self.meta.num_classes], (len(images), 1))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("wsol") / "data")


def test_evaluate_predictor_hand_numbers(data):
    report = evaluate_predictor(FakePredictor(), open_split(data, "test"), batch=3, progress=False, examples=2)
    for key, value in EXPECTED.items():
        assert report.metrics[key] == pytest.approx(value), key
    assert report.num_images == 4 and len(report.examples) == 2
    assert report.curves["top1_loc"].shape == (1000,)
    doc = json.loads(report.to_json())
    assert doc["metrics"]["top1_loc"] == 25.0 and len(doc["curves"]["box_acc_all_iou70"]) == 1000


def test_calibration_picks_the_first_threshold_that_drops_the_ring(data):
    report = evaluate_predictor(FakePredictor(ring=True), open_split(data, "val"), progress=False)
    doc = calibrate_threshold(report, "top1_loc")
    assert doc["threshold"] == pytest.approx(0.499) and doc["value"] == 25.0 and doc["split"] == "val"
    assert calibrate_threshold(report, "gt_known_loc")["value"] == 50.0


def test_class_count_mismatch_is_one_line(data):
    with pytest.raises(UserError, match=r"2 classes but .*classes.txt lists 3"):
        evaluate_predictor(FakePredictor(classes=("a", "b")), open_split(data, "test"), progress=False)


def write_maps(folder: Path, ring: bool = False) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image_id in enumerate(IDS):
        np.save(folder / f"{image_id}.npy", hand_map(i, ring))
    predictions = folder.parent / f"{folder.name}_predictions.txt"
    predictions.write_text("".join(f"{image_id} 0 1 2\n" for image_id in IDS))
    return folder, predictions


def run_eval(*args: str):
    from tedloc_edge.app.cli import app

    return CliRunner().invoke(app, ["eval", *args])


def test_cli_maps_predictions_json_and_plot(data, tmp_path):
    maps, predictions = write_maps(tmp_path / "maps")
    out, plot = tmp_path / "eval.json", tmp_path / "eval.png"
    result = run_eval("--maps", str(maps), "--predictions", str(predictions), "--data", str(data),
                      "--json", str(out), "--plot", str(plot), "--examples", "4")
    assert result.exit_code == 0, result.output
    assert "Top-1 Loc" in result.output
    metrics = json.loads(out.read_text())["metrics"]
    for key in ("maxboxacc", "top1_loc", "top5_loc", "top1_cls", "maxboxacc_v2", "pxap"):
        assert metrics[key] == pytest.approx(EXPECTED[key]), key
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_calibrate_writes_threshold_then_test_reports_the_gap(data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"data": str(data)}))  # --data and --split val by default
    monkeypatch.setattr(eval_cli, "load_predictor", lambda target, device, batch: FakePredictor(ring=True))
    result = run_eval(str(run), "--calibrate")
    assert result.exit_code == 0, result.output
    doc = json.loads((run / "threshold.json").read_text())
    assert doc["threshold"] == pytest.approx(0.499) and doc["criterion"] == "top1_loc" and doc["split"] == "val"
    assert doc["curve_optimum"]["gt_known_loc"]["value"] == 50.0
    stored = FakePredictor(ring=True, threshold=0.3, source="val:top1_loc")
    monkeypatch.setattr(eval_cli, "load_predictor", lambda target, device, batch: stored)
    result = run_eval(str(run), "--data", str(data), "--split", "test")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "stored tau 0.300 (val:top1_loc) vs test optimum 0.499 (delta -0.199): 0.00% at stored, 25.00% at optimum" in text


def test_cli_errors_name_the_file_and_id(data, tmp_path):
    maps, predictions = write_maps(tmp_path / "maps")
    (maps / "img2.png.npy").unlink()
    result = run_eval("--maps", str(maps), "--data", str(data))
    assert result.exit_code == 2 and "img2.png" in result.output and "no map for image" in result.output
    write_maps(tmp_path / "maps")
    predictions.write_text("img0.png 0 1\n")
    result = run_eval("--maps", str(maps), "--predictions", str(predictions), "--data", str(data))
    assert result.exit_code == 2 and "no prediction for image 'img1.png'" in result.output
    result = run_eval("--maps", str(maps), "--data", str(data), "--split", "test", "--calibrate")
    assert result.exit_code == 2 and "--split val" in result.output


def test_cli_image_missing_from_box_file(tmp_path):
    root = make_dataset(tmp_path / "data", splits=("test",), masks=False)
    loc = root / "metadata" / "test" / "localization.txt"
    loc.write_text("".join(line + "\n" for line in loc.read_text().splitlines() if not line.startswith("img1")))
    maps, _ = write_maps(tmp_path / "maps")
    result = run_eval("--maps", str(maps), "--data", str(root))
    assert result.exit_code == 2
    assert "localization.txt" in result.output and "img1.png" in result.output
