"""Localization cues: each source on hand-made inputs where the right answer is known, the cache, the picture."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from tedloc_edge.errors import UserError
from tedloc_edge.datasets import NO_BOXES, Sample
from tedloc_edge.train import cue_picture, cues, ddt
from tedloc_edge.train.cues import compute_cues, save_cue_picture


def _samples(labels, paths=None):
    paths = paths or [f"/nonexistent/img{i}.jpg" for i in range(len(labels))]
    return [Sample(f"c{y}/img{i}.jpg", paths[i], int(y), NO_BOXES, None) for i, y in enumerate(labels)]


def _object_features(n_per_class, classes, grid, box, seed=0, channels=16):
    """Background descriptors share one direction; each class's object region (`box` = y0, y1, x0, x1,
    in the interior) adds its own strong direction. Returns features (N, C, g, g) and labels."""
    rng = np.random.default_rng(seed)
    y0, y1, x0, x1 = box
    labels = np.repeat(np.arange(classes), n_per_class)
    bg_dir = rng.normal(size=channels)
    feats = bg_dir[None, :, None, None] + 0.3 * rng.normal(size=(len(labels), channels, grid, grid))
    for i, y in enumerate(labels):
        obj_dir = np.eye(channels)[y] * 4.0
        feats[i, :, y0:y1, x0:x1] += obj_dir[:, None, None]
    return torch.tensor(feats, dtype=torch.float32), labels


def _inside(maps, box):
    y0, y1, x0, x1 = box
    mask = np.zeros(maps.shape[1:], bool)
    mask[y0:y1, x0:x1] = True
    return maps[:, mask], maps[:, ~mask]


@pytest.mark.parametrize("box", [(3, 6, 2, 5), (1, 7, 1, 7)], ids=["small-object", "object-over-half"])
def test_ddt_lights_the_object_with_the_right_sign(box):
    # (1, 7, 1, 7) covers 36 of 64 patches: the minority rule alone would pick the background.
    feats, labels = _object_features(6, 3, 8, box)
    maps = compute_cues("ddt", _samples(labels), ["a", "b", "c"], features=feats, out_size=(8, 8), progress=False)
    inside, outside = _inside(maps, box)
    assert maps.shape == (18, 8, 8) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert inside.mean() > 0.7 and outside.mean() < 0.1


def test_ddt_sign_falls_back_to_minority_on_tiny_grids():
    proj = torch.tensor([[[-1.0, -1.0], [-1.0, 3.0]]])  # no interior; the single positive patch is the minority
    assert ddt._object_sign(proj) == 1.0
    assert ddt._object_sign(-proj) == -1.0


def _scenes_with_a_distractor(n, grid=10, channels=12, seed=0, with_object=True):
    """Every scene has a strong distractor (one direction, 3x3, anywhere); object scenes add a weaker 2x2
    object (another direction) in the interior, away from the distractor. Returns features and object masks."""
    rng = np.random.default_rng(seed)
    feats = 0.3 * rng.normal(size=(n, channels, grid, grid))
    masks = np.zeros((n, grid, grid), bool)
    for i in range(n):
        y, x = rng.integers(0, grid - 3, size=2)
        feats[i, 0, y:y + 3, x:x + 3] += 6.0
        if with_object:
            while True:
                oy, ox = rng.integers(1, grid - 3, size=2)
                if oy + 2 <= y or oy >= y + 3 or ox + 2 <= x or ox >= x + 3:
                    break
            feats[i, 1, oy:oy + 2, ox:ox + 2] += 2.0
            masks[i, oy:oy + 2, ox:ox + 2] = True
    return torch.tensor(feats, dtype=torch.float32), masks


def test_contrastive_ddt_finds_a_small_object_where_plain_ddt_finds_the_distractor(tmp_path):
    feats, masks = _scenes_with_a_distractor(30)
    free, _ = _scenes_with_a_distractor(30, seed=1, with_object=False)
    labels = np.zeros(30, np.int64)
    kw = dict(features=feats, out_size=(10, 10), progress=False)
    plain = compute_cues("ddt", _samples(labels), ["bird"], **kw)
    contrast = compute_cues("ddt", _samples(labels), ["bird"], background=free, ddt_contrast=1.5, **kw)
    assert plain[masks].mean() < 0.5 < plain[~masks].max()  # the distractor's variance wins plain DDT
    assert contrast[masks].mean() > 0.7 and contrast[~masks].mean() < 0.1
    peaks = contrast.reshape(30, -1).argmax(1)
    assert masks.reshape(30, -1)[np.arange(30), peaks].all()  # every map peaks on its object
    # contrast 0, or no object-free images: plain DDT
    np.testing.assert_array_equal(compute_cues("ddt", _samples(labels), ["bird"], background=free, **kw), plain)
    np.testing.assert_array_equal(compute_cues("ddt", _samples(labels), ["bird"], ddt_contrast=1.5, **kw), plain)


def test_contrastive_ddt_is_cached_under_its_own_key(tmp_path):
    feats, _ = _scenes_with_a_distractor(8)
    free, _ = _scenes_with_a_distractor(8, seed=1, with_object=False)
    kw = dict(features=feats, out_size=(10, 10), progress=False, cache_dir=tmp_path)
    samples = _samples(np.zeros(8, np.int64))
    compute_cues("ddt", samples, ["bird"], **kw)
    compute_cues("ddt", samples, ["bird"], background=free, ddt_contrast=1.5, **kw)
    compute_cues("ddt", samples, ["bird"], background=free, ddt_contrast=1.0, **kw)
    compute_cues("ddt", samples, ["bird"], background=free[:4], ddt_contrast=1.0, **kw)  # other object-free images
    assert len(list(tmp_path.glob("ddt-*.npy"))) == 4


def test_cam_lights_the_discriminative_part_not_the_shared_body():
    rng = np.random.default_rng(1)
    n, c, g = 40, 8, 6
    labels = np.arange(n) % 2
    feats = 0.2 * rng.random((n, c, g, g))
    feats[:, 0, 1:5, 1:5] += 2.0  # the body every class shares
    for i, y in enumerate(labels):
        feats[i, 1 + y, 1:3, 1:3] += 2.0  # the class-telling head
    maps = compute_cues("cam", _samples(labels), ["p", "q"], features=torch.tensor(feats, dtype=torch.float32),
                        out_size=(g, g), progress=False)
    head = maps[:, 1:3, 1:3].mean()
    body = np.concatenate([maps[:, 3:5, 1:5].reshape(n, -1), maps[:, 1:3, 3:5].reshape(n, -1)], 1).mean()
    background = maps[:, 5, :].mean()
    assert head > 0.8 and head > body + 0.4 and background < 0.3


def test_files_any_range_and_resolution(tmp_path):
    cue_dir = tmp_path / "cues"
    (cue_dir / "c0").mkdir(parents=True)
    ramp = np.arange(5 * 7, dtype=np.float64).reshape(5, 7) * 100.0 - 50.0  # any range, odd size
    np.save(cue_dir / "c0" / "img0.npy", ramp)
    img = np.zeros((30, 40), np.uint8)
    img[:15, :20] = 255
    cv2.imwrite(str(cue_dir / "img1.png"), img)  # bare-stem fallback
    maps = compute_cues("files", _samples([0, 1]), ["x", "y"], features=None, out_size=(10, 14),
                        cue_dir=cue_dir, progress=False)
    assert maps.shape == (2, 10, 14) and maps.min() == 0.0 and maps.max() == 1.0
    assert maps[0, -1, -1] == 1.0 and maps[0, 0, 0] == 0.0
    assert maps[1, :4, :6].min() == 1.0 and maps[1, 6:, 8:].max() == 0.0


def test_files_missing_map_names_the_expected_path(tmp_path):
    (tmp_path / "cues").mkdir()
    with pytest.raises(UserError, match=r"cues/c0/img0\.npy: missing cue map for image c0/img0\.jpg"):
        compute_cues("files", _samples([0]), ["x"], features=None, out_size=(4, 4), cue_dir=tmp_path / "cues")


def test_bad_kind_and_label_are_user_errors():
    with pytest.raises(UserError, match="did you mean 'clip-es'"):
        compute_cues("clipes", _samples([0]), ["x"], features=None, out_size=(4, 4))
    with pytest.raises(UserError, match="c3/img0.jpg: class index 3 is outside 0..1"):
        compute_cues("ddt", _samples([3]), ["x", "y"], features=torch.zeros(1, 2, 4, 4), out_size=(4, 4))


def test_cache_second_call_loads_without_computing(tmp_path, monkeypatch):
    feats, labels = _object_features(4, 2, 6, (2, 4, 2, 4))
    kw = dict(features=feats, out_size=(6, 6), cache_dir=tmp_path, progress=False)
    first = compute_cues("ddt", _samples(labels), ["a", "b"], **kw)
    assert len(list(tmp_path.glob("ddt-*.npy"))) == 1 and len(list(tmp_path.glob("ddt-*.json"))) == 1

    def boom(*args, **kwargs):
        raise AssertionError("recomputed despite a matching cache")

    monkeypatch.setattr(cues, "ddt_maps", boom)
    np.testing.assert_array_equal(compute_cues("ddt", _samples(labels), ["a", "b"], **kw), first)
    with pytest.raises(AssertionError, match="recomputed"):  # other settings: another key
        compute_cues("ddt", _samples(labels), ["a", "b"], **{**kw, "out_size": (12, 12)})
    with pytest.raises(AssertionError, match="recomputed"):  # other labels: another key
        compute_cues("ddt", _samples(labels[::-1]), ["a", "b"], **kw)


def test_cache_with_features_key_never_builds_the_features(tmp_path):
    feats, labels = _object_features(3, 2, 6, (2, 4, 2, 4))
    calls = []

    def lazy():
        calls.append(1)
        return feats

    kw = dict(features=lazy, features_key="resnet18@224", out_size=(6, 6), cache_dir=tmp_path, progress=False)
    first = compute_cues("ddt", _samples(labels), ["a", "b"], **kw)
    second = compute_cues("ddt", _samples(labels), ["a", "b"], **kw)
    assert calls == [1]
    np.testing.assert_array_equal(first, second)


def test_cue_picture_size_and_overlay(tmp_path):
    paths = []
    for i in range(5):
        p = tmp_path / f"img{i}.png"
        cv2.imwrite(str(p), np.full((50, 70, 3), 128, np.uint8))
        paths.append(p)
    maps = np.zeros((5, 4, 4), np.float32)
    maps[:, :2, :2] = 1.0  # hot top-left quadrant
    out = save_cue_picture(tmp_path / "cues.png", _samples([0, 0, 0, 1, 1], paths), maps, n=5,
                           class_names=["bird", "plane"])
    pic = cv2.imread(str(out))  # BGR
    t, cap = cue_picture.PICTURE_TILE, cue_picture.PICTURE_CAPTION
    assert pic.shape == (2 * (t + cap), 4 * t, 3)
    hot, cold = pic[t // 8, t // 8], pic[t - t // 8, t - t // 8]
    assert hot[2] > hot[0] + 50 and cold[0] > cold[2] + 50  # JET: high = red, low = blue
    assert pic[t + cap:, t:].min() == 255  # slots 6 to 8 stay empty (white)


def test_spread_over_classes_takes_each_class_in_turn():
    assert cue_picture._spread_over_classes([0, 0, 0, 1, 1, 2], 4) == [0, 3, 5, 1]


# ---------------------------------------------------------------------------------------------- clip-es


@pytest.fixture(scope="module")
def clip():
    from tedloc_edge.train.clip import load_clip

    torch.manual_seed(0)
    model = load_clip("ViT-B-16", None)  # random weights offline
    encode, memo = model.encode_text, {}

    def encode_once(prompts):  # the text tower is the slow part on a shared CPU; tests repeat the prompts
        key = tuple(prompts)
        if key not in memo:
            memo[key] = encode(prompts)
        return memo[key]

    model.encode_text = encode_once
    return model


@pytest.mark.slow  # ViT-B/16 on CPU: seconds each, kept in the default run
def test_clip_es_manual_forward_equals_open_clip(clip):
    from tedloc_edge.train.clip_es import ClipES

    es = ClipES(clip, ["cat"])
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(es.encode_image(x), clip.model.encode_image(x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # ViT-B/16 on CPU: seconds each, kept in the default run
def test_clip_es_gradcam_and_affinity_on_a_tiny_input(clip):
    from tedloc_edge.train.clip_es import ClipES, ClipESConfig

    es = ClipES(clip, ["cat", "dog"], ClipESConfig(input_size=64))  # 4x4 patch grid, position embedding resized
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 56, 3), dtype=np.uint8) for _ in range(2)]
    cam, affinity = es.gradcam_and_affinity(es.preprocess(images), torch.tensor([0, 1]))
    assert cam.shape == (2, 16) and torch.isfinite(cam).all() and float(cam.max()) == pytest.approx(1.0)
    assert affinity.shape == (2, 16, 16) and (affinity >= 0).all()
    rows = affinity.sum(dim=-1)  # attention rows are distributions over CLS + patches; the CLS column is dropped
    assert (rows > 0).all() and (rows <= 1 + 1e-5).all()


def test_clip_es_refinement_keeps_only_the_boxed_region():
    from tedloc_edge.train.clip_es import ClipES, ClipESConfig

    es = ClipES.__new__(ClipES)  # refine() needs only the config
    es.cfg = ClipESConfig()
    cam = np.zeros((6, 6), np.float32)
    cam[1:3, 1:3] = 1.0  # the object, well above 0.4 of the max
    cam[5, 5] = 0.3  # a weak blip below 0.4: outside every box, so the affinity drops it
    refined = es.refine(cam, torch.eye(36))
    assert refined[1:3, 1:3].min() == 1.0 and refined[5, 5] == 0.0


@pytest.mark.slow  # ViT-B/16 on CPU: seconds each, kept in the default run
def test_compute_cues_clip_es_end_to_end(tmp_path, monkeypatch, clip):
    import tedloc_edge.train.clip as clip_module

    monkeypatch.setattr(clip_module, "load_clip", lambda *a, **k: clip)
    paths = []
    for i in range(2):
        p = tmp_path / f"img{i}.png"
        cv2.imwrite(str(p), np.random.default_rng(i).integers(0, 256, (48, 64, 3), dtype=np.uint8))
        paths.append(p)
    maps = compute_cues("clip-es", _samples([0, 1], paths), ["cat", "dog"], features=None, out_size=(7, 7),
                        clip_input_size=64, cache_dir=tmp_path / "cache", progress=False)
    assert maps.shape == (2, 7, 7) and maps.dtype == np.float32
    assert maps.min() == 0.0 and maps.max() == pytest.approx(1.0)
    side = next((tmp_path / "cache").glob("clip-es-*.json")).read_text()
    assert '"meaningful": false' in side
