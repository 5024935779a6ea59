"""The synthetic benchmark and video: determinism, layout, mask/box agreement, head share, scale, video."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tedloc_edge.boxes import boxes_from_mask
from tedloc_edge.errors import UserError
from tedloc_edge.datasets import load_mask, open_split
from tedloc_edge.images import load_image
from tedloc_edge.train.synth import SCALE_RANGE, Pose, draw, extent, fit_pose, generate, mask_box
from tedloc_edge.train.synth_video import make_video

SMALL = dict(classes=4, train=8, val=4, test=12, image_size=(96, 140), show_progress=False)


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("synth") / "bench", seed=5, **SMALL)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(bench, tmp_path):
    again = _files(generate(tmp_path / "again", seed=5, **SMALL))
    assert again == _files(bench)
    other = _files(generate(tmp_path / "other", seed=6, **SMALL))
    assert other.keys() != again.keys() or any(other[k] != again[k] for k in again if k.startswith("images/"))


def test_layout_is_readable_with_boxes_and_masks(bench):
    assert (bench / "README.txt").read_text(encoding="utf-8").startswith("Synthetic WSOL benchmark")
    counts = {}
    for name in ("train", "val", "test"):
        split = open_split(bench, name)
        counts[name] = len(split)
        assert split.layout == "wsol" and split.has_boxes and split.has_masks and split.warnings == {}
        assert split.class_names[0] == "rouge-gorgé" and len(split.class_names) == 4
    assert counts == {"train": 8, "val": 4, "test": 12}
    assert sorted(s.label for s in open_split(bench, "train").samples) == [0, 0, 1, 1, 2, 2, 3, 3]  # balanced
    assert not (bench.parent / ".bench.tmp").exists() and not list(bench.parent.glob(".bench.*"))


def test_box_is_the_masks_bounding_box_and_scale_in_range(bench):
    for sample in open_split(bench, "test").samples:
        image, mask = load_image(sample.path), load_mask(sample)
        width, height = sample.size
        assert image.shape == (height, width, 3) and mask.shape == (height, width)
        assert 96 <= width <= 140 and 96 <= height <= 140
        box = sample.boxes[0].astype(int)
        np.testing.assert_array_equal(boxes_from_mask(mask.astype(np.uint8) * 255)[0], box)
        outside = mask.copy()
        outside[box[1]:box[3], box[0]:box[2]] = False
        assert not outside.any()  # the mask lies inside its box
        side = max(box[2] - box[0], box[3] - box[1]) / min(width, height)
        assert SCALE_RANGE[0] - 0.03 <= side <= SCALE_RANGE[1] + 0.03


def test_scale_rotation_and_placement_cover_the_requested_ranges():
    rng = np.random.default_rng(1)
    for _ in range(200):
        w, h = (int(v) for v in rng.integers(200, 321, size=2))
        frac = rng.uniform(*SCALE_RANGE)
        pose = fit_pose(rng, (0, 0, w, h), frac, min(w, h))
        x0, y0, x1, y1 = extent(pose)
        assert math.isclose(max(x1 - x0, y1 - y0), frac * min(w, h), rel_tol=1e-6)
        assert x0 >= 0 and y0 >= 0 and x1 <= w - 1 and y1 <= h - 1


def test_head_is_a_small_part_and_the_only_class_cue():
    rng = np.random.default_rng(2)
    for _ in range(30):
        pose = Pose(100.0, 100.0, rng.uniform(10, 40), rng.uniform(0, 2 * math.pi), rng.uniform(0.8, 1.25),
                    bool(rng.integers(2)))
        canvas = np.full((200, 200, 3), 90, np.uint8)
        a, b = canvas.copy(), canvas.copy()
        bird, head = draw(a, pose, label=0)
        draw(b, pose, label=3)
        assert 0.05 < head.sum() / bird.sum() < 0.25
        differs = (a != b).any(axis=2)
        assert differs.any() and not (differs & ~head).any()  # classes differ inside the head only
        assert (mask_box(bird) == boxes_from_mask(bird.astype(np.uint8))[0]).all()


def test_generate_refuses_bad_arguments_and_existing_output(bench, tmp_path):
    with pytest.raises(UserError, match="already exists"):
        generate(bench, seed=5, **SMALL)
    for bad in (dict(classes=1), dict(classes=99), dict(classes=4, train=3), dict(test=-1), dict(image_size=(32, 40))):
        with pytest.raises(UserError):
            generate(tmp_path / "x", **{**SMALL, **bad})
    assert not (tmp_path / "x").exists()
    out = generate(tmp_path / "y", seed=1, **{**SMALL, "val": 0, "test": 0})
    generate(out, seed=2, exist_ok=True, **{**SMALL, "val": 0, "test": 0})
    assert not (out / "metadata" / "test").exists() and len(open_split(out, "train")) == 8
    assert out.stat().st_mode & 0o755 == 0o755  # readable by others, not mkdtemp's private mode


def test_video_frames_and_ground_truth(tmp_path):
    import av

    path = tmp_path / "clip.mp4"
    boxes = make_video(path, frames=12, size=(160, 96), fps=24, classes=4, seed=3)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(frames) == 12 and frames[0].shape == (96, 160, 3)
    doc = json.loads(Path(str(path) + ".json").read_text(encoding="utf-8"))
    assert doc["frames"] == 12 and len(doc["objects"]) == 12 and doc["class_names"][0] == "rouge-gorgé"
    assert [[tuple(o["box"]) for o in frame] for frame in doc["objects"]] == boxes
    assert 1 <= len(boxes[0]) <= 3 and all(len(f) == len(boxes[0]) for f in boxes)
    for frame in boxes:
        for x0, y0, x1, y1 in frame:
            assert 0 <= x0 < x1 < 160 and 0 <= y0 < y1 < 96
    assert boxes[0] != boxes[-1]  # the birds move
    with pytest.raises(UserError, match="even"):
        make_video(tmp_path / "odd.mp4", frames=2, size=(161, 96))
