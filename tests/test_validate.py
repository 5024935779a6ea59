"""Per-epoch validation scores boxes exactly as the evaluator does, also without image sizes in the metadata
(the native CUB layout never has them) and on non-square images."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from tedloc_edge.datasets import open_split
from tedloc_edge.evaluate import protocol_gt_boxes
from tedloc_edge.train.data import SplitCache
from tedloc_edge.train.validate import gt_boxes, validate

W, H = 240, 80  # wide images: the box is the right half, full height


def make_native_cub(root: Path, per_class: int = 10) -> Path:
    folders = ("001.Black_footed_Albatross", "002.Laysan_Albatross")
    images, labels, splits, boxes = [], [], [], []
    n = 0
    for c, folder in enumerate(folders, 1):
        for i in range(per_class):
            n += 1
            rel = f"{folder}/img_{i}.jpg"
            (root / "images" / folder).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / "images" / rel), np.full((H, W, 3), 40 * c, np.uint8))
            images.append(f"{n} {rel}")
            labels.append(f"{n} {c}")
            splits.append(f"{n} 1")
            boxes.append(f"{n} {W // 2}.0 0.0 {W // 2}.0 {H}.0")  # x, y, w, h in original pixels
    (root / "classes.txt").write_text("".join(f"{i} {f}\n" for i, f in enumerate(folders, 1)))
    for name, lines in (("images", images), ("image_class_labels", labels), ("train_test_split", splits),
                        ("bounding_boxes", boxes)):
        (root / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return root


class RightHalfModel:
    """A 'model' whose map is the right half of a 4x4 grid and whose class is always right."""

    def __init__(self, labels: np.ndarray):
        self.head = torch.nn.Identity()
        self.labels = labels

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        fg = torch.zeros(len(x), 4, 4)
        fg[:, :, 2:] = 1.0
        logits = torch.nn.functional.one_hot(torch.from_numpy(self.labels[x[:, 0, 0, 0].long().numpy()]), 2).float()
        return {"fg_map": fg, "logits": logits}


def test_validation_on_native_cub_layout_uses_the_evaluators_boxes(tmp_path):
    split = open_split(make_native_cub(tmp_path), "val")
    assert split.layout == "cub" and all(s.size is None for s in split.samples)
    for s in split.samples:  # the evaluator's ground truth: real (non-square) size, read from the image
        np.testing.assert_array_equal(gt_boxes(s, "val"), protocol_gt_boxes(s, (H, W, 3), "val"))
        np.testing.assert_array_equal(gt_boxes(s, "val"), [[112, 0, 224, 224]])
    labels = np.array([s.label for s in split.samples])
    feats = np.zeros((len(labels), 1, 4, 4), np.float16)
    feats[:, 0, 0, 0] = np.arange(len(labels))  # the row index, so the fake model knows each image's label
    cache = SplitCache(feats, None, np.ones(len(labels), bool), [], "k")
    out = validate(RightHalfModel(labels), split, cache, 224, torch.device("cpu"))
    # scaled as if the image were 224x224 (the old code), the true box would be (120, 0, 240, 80): IoU 0.33
    assert out["val_gt_known_loc"] == 100.0 and out["val_top1_loc"] == 100.0
