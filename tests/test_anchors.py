"""Class anchors: QR orthonormal, deterministic, cached, the text-semantics flag, user files, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from tedloc_edge.errors import UserError
from tedloc_edge.train.anchors import cache_key, file_anchors, load_anchors, orthonormalize, save_anchors, text_anchors


def test_qr_anchors_are_orthonormal_and_span_the_embeddings():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((5, 8))
    anchors = orthonormalize(emb, dim=8)  # same width: no projection
    assert anchors.shape == (5, 8)
    np.testing.assert_allclose(anchors @ anchors.T, np.eye(5), atol=1e-6)
    # The rows span the same space as the (normalized) embeddings: projecting emb onto it loses nothing.
    proj = emb @ anchors.T @ anchors
    np.testing.assert_allclose(proj, emb, atol=1e-6)
    # QR is Gram-Schmidt: the first anchor is the first embedding's direction (sign fixed positive).
    np.testing.assert_allclose(anchors[0], emb[0] / np.linalg.norm(emb[0]), atol=1e-6)


def test_projection_to_a_wider_d_is_fixed_by_seed():
    emb = np.random.default_rng(1).standard_normal((4, 6))
    a, b = orthonormalize(emb, dim=32), orthonormalize(emb, dim=32)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a @ a.T, np.eye(4), atol=1e-6)


def test_d_smaller_than_classes_is_a_one_line_error():
    with pytest.raises(UserError, match="--embed-dim 3 is smaller than the number of classes 4"):
        orthonormalize(np.eye(4), dim=3)


def test_text_anchors_random_clip_say_no_semantics_and_cache(tmp_path):
    names = ["cat", "dog", "héron"]
    anchors, info = text_anchors(names, 16, clip_model="ViT-S-32", cache_dir=tmp_path)
    np.testing.assert_allclose(anchors @ anchors.T, np.eye(3), atol=1e-5)
    assert info.has_text_semantics is False and info.source == "clip:ViT-S-32:random"
    cached = tmp_path / f"anchors-{cache_key('ViT-S-32', None, 'Image of a {}.', names, 16)}.npy"
    assert cached.is_file()
    again, _ = text_anchors(names, 16, clip_model="ViT-S-32", cache_dir=tmp_path)  # from the cache
    np.testing.assert_array_equal(anchors, again)
    save_anchors(tmp_path / "run", anchors, info)
    loaded, loaded_info = load_anchors(tmp_path / "run")
    np.testing.assert_array_equal(loaded, anchors)
    assert loaded_info == info


def test_cache_key_depends_on_every_input():
    base = cache_key("ViT-B-16", None, "Image of a {}.", ["a", "b"], 8)
    assert base != cache_key("ViT-B-16", "openai", "Image of a {}.", ["a", "b"], 8)
    assert base != cache_key("ViT-B-16", None, "a photo of a {}.", ["a", "b"], 8)
    assert base != cache_key("ViT-B-16", None, "Image of a {}.", ["b", "a"], 8)
    assert base != cache_key("ViT-B-16", None, "Image of a {}.", ["a", "b"], 16)


def test_user_anchor_file(tmp_path):
    good = orthonormalize(np.random.default_rng(2).standard_normal((3, 8)), 8)
    np.save(tmp_path / "a.npy", good * 3.0)  # scaled rows are normalized back
    anchors, info = file_anchors(tmp_path / "a.npy", ["x", "y", "z"], 8)
    np.testing.assert_allclose(anchors, good, atol=1e-6)
    assert info.source.startswith("file:")
    with pytest.raises(UserError, match=r"shape \(3, 8\), need \(3, 16\)"):
        file_anchors(tmp_path / "a.npy", ["x", "y", "z"], 16)
    with pytest.raises(UserError, match="no such anchors file"):
        file_anchors(tmp_path / "missing.npy", ["x"], 8)


def test_default_embed_dim_fits_any_class_count():
    from tedloc_edge.train.config import TrainConfig, auto_embed_dim

    assert [auto_embed_dim(c) for c in (3, 8, 128, 129, 150, 200, 1000)] == [128, 128, 128, 192, 192, 256, 1024]
    assert TrainConfig().resolved(200).embed_dim == 256 and TrainConfig(embed_dim=300).resolved(200).embed_dim == 300
    assert TrainConfig(cue="ddt").resolved(8).fg_rule != "auto" and TrainConfig(cue="clip-es").resolved(8).fg_rule == "otsu"
    wide = np.random.default_rng(0).standard_normal((600, 512))  # more classes than the CLIP width: projected up
    q = orthonormalize(wide, auto_embed_dim(600))
    assert q.shape == (600, 640) and np.abs(q @ q.T - np.eye(600)).max() < 1e-5
