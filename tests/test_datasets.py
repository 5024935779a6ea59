"""Dataset readers: the three layouts, their errors, image/mask decoding and the protocol's box resize."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from tedloc_edge.errors import UserError
from tedloc_edge.datasets import load_mask, open_split, resize_boxes
from tedloc_edge.images import ImageDecodeError, load_image

CLASSES = ("rouge-gorgé", "blue jay", "木兔")


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), pixels)


def make_wsol(root: Path, **overrides: str) -> Path:
    """A 3-class wsolevaluation dataset: train (labels only) and test (sizes, boxes, masks)."""
    files = {
        "classes.txt": "\n".join(CLASSES) + "\n",
        "metadata/train/image_ids.txt": "a/0.png\na/1.png\nb/2.png\n",
        "metadata/train/class_labels.txt": "a/0.png,0\na/1.png,1\nb/2.png,2\n",
        "metadata/test/image_ids.txt": "t/0.png\nt/1.png\n",
        "metadata/test/class_labels.txt": "t/0.png,2\nt/1.png,0\n",
        "metadata/test/image_sizes.txt": "t/0.png,40,30\nt/1.png,40,30\n",
        # t/0 has two boxes, the second crosses the right and bottom edges
        "metadata/test/localization.txt": "t/0.png,1,2,10,12\nt/0.png,30,20,45,35\nt/1.png,0.5,0.5,39.5,29.5\n",
    }
    files.update(overrides)
    for rel, text in files.items():
        _write(root / rel, text)
    for image_id in ("a/0.png", "a/1.png", "b/2.png", "t/0.png", "t/1.png"):
        _png(root / "images" / image_id, np.full((30, 40, 3), 128, np.uint8))
    mask = np.zeros((30, 40), np.uint8)
    mask[2:12, 1:10] = 255
    _png(root / "masks/test/t/0.png", mask)
    return root


# ---------------------------------------------------------------------------------------------- wsol layout


def test_wsol_test_split_reads_boxes_sizes_masks_and_clips(tmp_path):
    split = open_split(make_wsol(tmp_path), "test")
    assert split.layout == "wsol" and split.class_names == CLASSES
    first, second = split.samples
    assert (first.image_id, first.label, first.size) == ("t/0.png", 2, (40, 30))
    assert first.path == tmp_path.resolve() / "images/t/0.png"
    np.testing.assert_array_equal(first.boxes, [[1, 2, 10, 12], [30, 20, 40, 30]])  # clipped to the image
    assert first.boxes.dtype == np.float64
    np.testing.assert_array_equal(second.boxes, [[0.5, 0.5, 39.5, 29.5]])
    assert split.warnings == {"boxes_clipped": 1}
    assert first.mask_path is not None and second.mask_path is None


def test_wsol_train_needs_only_ids_and_labels(tmp_path):
    split = open_split(make_wsol(tmp_path), "train")
    assert [s.label for s in split.samples] == [0, 1, 2]
    assert all(s.boxes.shape == (0, 4) and s.size is None for s in split.samples)
    assert split.warnings == {}


def test_load_mask_is_bool_and_resizes_nearest(tmp_path):
    sample = open_split(make_wsol(tmp_path), "test").samples[0]
    mask = load_mask(sample)
    assert mask.dtype == bool and mask.shape == (30, 40) and mask.sum() == 10 * 9
    big = load_mask(sample, size=(60, 80))
    assert big.shape == (60, 80) and big.sum() == 4 * 90
    with pytest.raises(UserError, match="t/1.png"):
        load_mask(open_split(tmp_path, "test").samples[1])


BAD_WSOL = {
    "missing classes": ({"classes.txt": None}, "classes.txt"),
    "malformed label line": ({"metadata/test/class_labels.txt": "t/0.png,2\nt/1.png\n"}, "class_labels.txt:2"),
    "label not a number": ({"metadata/test/class_labels.txt": "t/0.png,x\nt/1.png,0\n"}, "class_labels.txt:1"),
    "label out of range": ({"metadata/test/class_labels.txt": "t/0.png,3\nt/1.png,0\n"}, "class_labels.txt:1"),
    "no label for an id": ({"metadata/test/class_labels.txt": "t/0.png,2\n"}, "class_labels.txt.*t/1.png"),
    "no box for an id": ({"metadata/test/localization.txt": "t/0.png,1,2,10,12\n"}, "localization.txt.*t/1.png"),
    "no localization file": ({"metadata/test/localization.txt": None}, "localization.txt"),
    "zero-area box": ({"metadata/test/localization.txt": "t/0.png,5,2,5,12\nt/1.png,1,1,4,4\n"}, "localization.txt:1: .*t/0.png"),
    "box outside the image": ({"metadata/test/localization.txt": "t/0.png,50,2,60,12\nt/1.png,1,1,4,4\n"}, "localization.txt:1: .*t/0.png"),
    "bad coordinate": ({"metadata/test/localization.txt": "t/0.png,1,2,ten,12\nt/1.png,1,1,4,4\n"}, "localization.txt:1"),
    "bad size": ({"metadata/test/image_sizes.txt": "t/0.png,40\nt/1.png,40,30\n"}, "image_sizes.txt:1"),
    "duplicate id": ({"metadata/test/image_ids.txt": "t/0.png\nt/0.png\n"}, "image_ids.txt:2"),
    "empty split": ({"metadata/test/image_ids.txt": "\n"}, "metadata/test"),
    "unknown split": ({}, "metadata/nope: no such split.*test, train"),
}


@pytest.mark.parametrize("case", sorted(BAD_WSOL))
def test_wsol_errors_are_one_line_naming_the_file(tmp_path, case):
    changes, pattern = BAD_WSOL[case]
    make_wsol(tmp_path, **{k: v for k, v in changes.items() if v is not None})
    for rel in (k for k, v in changes.items() if v is None):
        (tmp_path / rel).unlink()
    with pytest.raises(UserError, match=pattern) as err:
        open_split(tmp_path, "nope" if case == "unknown split" else "test")
    assert "\n" not in str(err.value)


def test_train_class_without_images_is_an_error(tmp_path):
    make_wsol(tmp_path, **{"metadata/train/class_labels.txt": "a/0.png,0\na/1.png,1\nb/2.png,1\n"})
    with pytest.raises(UserError, match="1 class.*木兔"):
        open_split(tmp_path, "train")


def test_not_a_dataset(tmp_path):
    with pytest.raises(UserError, match="no such dataset folder"):
        open_split(tmp_path / "absent", "train")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(UserError, match="not a dataset"):
        open_split(tmp_path, "train")


# ---------------------------------------------------------------------------------------------- resize_boxes


def reference_resize_bbox(box, image_size, resize_size):
    """wsolevaluation's resize_bbox, verbatim in its arithmetic."""
    box_x0, box_y0, box_x1, box_y1 = map(float, box)
    image_w, image_h = map(float, image_size)
    new_image_w, new_image_h = map(float, resize_size)
    return (int(box_x0 * new_image_w / image_w), int(box_y0 * new_image_h / image_h),
            int(box_x1 * new_image_w / image_w), int(box_y1 * new_image_h / image_h))


def test_resize_boxes_truncates_exactly_like_wsolevaluation():
    rng = np.random.default_rng(0)
    for _ in range(300):
        w, h = (int(v) for v in rng.integers(20, 1000, size=2))
        x0, x1 = np.sort(rng.uniform(0, w, size=2).round(rng.integers(0, 3)))
        y0, y1 = np.sort(rng.uniform(0, h, size=2).round(rng.integers(0, 3)))
        got = resize_boxes(np.array([[x0, y0, x1, y1]]), (w, h), (224, 224))
        assert got.dtype == np.int64
        assert tuple(got[0]) == reference_resize_bbox((x0, y0, x1, y1), (w, h), (224, 224))
    assert resize_boxes(np.zeros((0, 4)), (10, 10), (5, 5)).shape == (0, 4)


def test_boxes_follow_the_image_when_resized():
    image = np.zeros((300, 500), np.uint8)
    image[60:181, 100:351] = 255  # pixels x 100..350, y 60..180: box (100, 60, 351, 181)
    small = cv2.resize(image, (224, 224), interpolation=cv2.INTER_NEAREST)
    ys, xs = np.nonzero(small)
    box = resize_boxes(np.array([[100, 60, 351, 181]]), (500, 300), (224, 224))[0]
    np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], box, atol=1)


# ---------------------------------------------------------------------------------------------- load_image


@pytest.mark.parametrize(
    "pixels",
    [
        np.full((8, 6), 200, np.uint8),  # grayscale
        np.dstack([np.full((8, 6), 50, np.uint8), np.full((8, 6), 100, np.uint8), np.full((8, 6), 200, np.uint8),
                   np.full((8, 6), 7, np.uint8)]),  # BGRA
        np.full((8, 6), 200 * 257, np.uint16),  # 16-bit grayscale
        np.dstack([np.full((8, 6), v * 257, np.uint16) for v in (50, 100, 200)]),  # 16-bit BGR
    ],
    ids=["gray", "rgba", "gray16", "bgr16"],
)
def test_load_image_gives_rgb_uint8(tmp_path, pixels):
    _png(tmp_path / "x.png", pixels)
    image = load_image(tmp_path / "x.png")
    assert image.dtype == np.uint8 and image.shape == (8, 6, 3)
    expected = (200, 200, 200) if pixels.ndim == 2 else (200, 100, 50)  # stored BGR -> RGB
    np.testing.assert_array_equal(image[0, 0], expected)


def test_load_image_errors_name_the_file(tmp_path):
    with pytest.raises(ImageDecodeError, match="missing.jpg: no such image"):
        load_image(tmp_path / "missing.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match="bad.jpg: not a decodable image"):
        load_image(tmp_path / "bad.jpg")


def test_load_image_reads_unicode_paths(tmp_path):
    _png(tmp_path / "rouge-gorgé" / "é.png", np.zeros((4, 4, 3), np.uint8))
    assert load_image(tmp_path / "rouge-gorgé" / "é.png").shape == (4, 4, 3)


# ---------------------------------------------------------------------------------------------- CUB layout


def make_cub(root: Path, per_class_train: int = 12, per_class_test: int = 3) -> Path:
    folders = ("001.Black_footed_Albatross", "002.Laysan_Albatross")
    images, labels, splits, boxes = [], [], [], []
    n = 0
    for c, folder in enumerate(folders, 1):
        for i in range(per_class_train + per_class_test):
            n += 1
            images.append(f"{n} {folder}/img_{i}.jpg")
            labels.append(f"{n} {c}")
            splits.append(f"{n} {int(i < per_class_train)}")
            boxes.append(f"{n} {n}.0 2.5 10.0 20.0")
    _write(root / "classes.txt", "".join(f"{i} {f}\n" for i, f in enumerate(folders, 1)))
    for name, lines in (("images", images), ("image_class_labels", labels), ("train_test_split", splits),
                        ("bounding_boxes", boxes)):
        _write(root / f"{name}.txt", "\n".join(lines) + "\n")
    return root


def test_cub_layout_labels_boxes_and_held_out_val(tmp_path):
    root = make_cub(tmp_path)
    train, val, test = (open_split(root, s) for s in ("train", "val", "test"))
    assert train.layout == "cub" and train.class_names == ("Black footed Albatross", "Laysan Albatross")
    assert [len(train), len(val), len(test)] == [22, 2, 6]
    # every tenth train image of each class (position 9) is held out
    assert [s.image_id for s in val.samples] == ["001.Black_footed_Albatross/img_9.jpg", "002.Laysan_Albatross/img_9.jpg"]
    assert not {s.image_id for s in train.samples} & {s.image_id for s in val.samples}
    assert [s.label for s in test.samples] == [0, 0, 0, 1, 1, 1]
    np.testing.assert_array_equal(test.samples[0].boxes, [[13.0, 2.5, 23.0, 22.5]])  # x, y, w, h -> xyxy


def test_cub_errors_name_file_and_line(tmp_path):
    root = make_cub(tmp_path)
    _write(root / "image_class_labels.txt", "1 1\n2 9\n")
    with pytest.raises(UserError, match=r"image_class_labels.txt:2: class 9"):
        open_split(root, "test")
    make_cub(root)
    _write(root / "bounding_boxes.txt", "1 1.0 2.0 0.0 5.0\n")
    with pytest.raises(UserError, match="bounding_boxes.txt:1: .*zero area"):
        open_split(root, "train")


# ---------------------------------------------------------------------------------------------- folders layout


def test_folders_with_split_folders_share_class_indices(tmp_path):
    for split, cls, n in (("train", "grünkopf", 2), ("train", "alpha", 1), ("test", "grünkopf", 1), ("test", "zeta", 1)):
        for i in range(n):
            _png(tmp_path / split / cls / f"{i}.jpg", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "train" / "alpha" / "notes.txt").write_text("not an image")
    test = open_split(tmp_path, "test")
    assert test.layout == "folders" and test.class_names == ("alpha", "grünkopf", "zeta")
    assert [(s.image_id, s.label) for s in test.samples] == [("grünkopf/0.jpg", 1), ("zeta/0.jpg", 2)]
    assert test.samples[0].boxes.shape == (0, 4)
    with pytest.raises(UserError, match="'zeta'"):  # zeta has no training image
        open_split(tmp_path, "train")
    with pytest.raises(UserError, match="val: no such split folder"):
        open_split(tmp_path, "val")


def test_folders_without_split_folders(tmp_path):
    for cls in ("b", "a"):
        _png(tmp_path / cls / "x.png", np.zeros((4, 4, 3), np.uint8))
    split = open_split(tmp_path, "train")
    assert split.class_names == ("a", "b") and [s.label for s in split.samples] == [0, 1]
