"""The three losses on hand-made cases whose values are worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from tedloc_edge.train.losses import LossWeights, icl_loss, kd_loss, pcl_loss, tedloc_loss

E = torch.eye(2)  # two orthonormal anchors in d = 2


def test_kd_pulls_fg_patches_to_their_class_anchor():
    # One fg patch per image, exactly along anchor 0 (its length must not matter: cosine), T = 1:
    # logits (1, 0) -> CE(label 0) = log(1 + e^-1), CE(label 1) = log(1 + e).
    emb = torch.tensor([[[2.0, 0.0]], [[0.5, 0.0]]])  # (B=2, k=1, d=2)
    got = kd_loss(emb, torch.tensor([0, 1]), E, temperature=1.0)
    assert got.item() == pytest.approx((math.log(1 + math.exp(-1)) + math.log(1 + math.e)) / 2, abs=1e-6)
    # The temperature sharpens: T = 0.5 gives logits (2, 0).
    got = kd_loss(emb[:1], torch.tensor([0]), E, temperature=0.5)
    assert got.item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-6)
    # An image whose cue is flat (valid False) contributes nothing.
    got = kd_loss(emb, torch.tensor([0, 1]), E, temperature=1.0, valid=torch.tensor([True, False]))
    assert got.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)


def test_pcl_is_bce_with_fg_one_and_bg_zero():
    # logit ln 3 -> p = 3/4: as fg, -ln(3/4); as bg, -ln(1/4). Mean over the two sampled patches.
    third = torch.tensor([[math.log(3.0)]])
    got = pcl_loss(third, third)
    assert got.item() == pytest.approx((-math.log(0.75) - math.log(0.25)) / 2, abs=1e-6)
    assert pcl_loss(torch.zeros(1, 3), torch.zeros(1, 2)).item() == pytest.approx(math.log(2), abs=1e-6)


def test_icl_is_image_cross_entropy():
    logits = torch.tensor([[math.log(3.0), 0.0]])  # softmax (3/4, 1/4)
    assert icl_loss(logits, torch.tensor([0])).item() == pytest.approx(-math.log(0.75), abs=1e-6)
    assert icl_loss(logits, torch.tensor([1])).item() == pytest.approx(-math.log(0.25), abs=1e-6)


def test_tedloc_loss_gathers_the_sampled_patches_and_weights_the_sum():
    # One image, 3 patches: patch 0 along anchor 0, patch 2 along anchor 1; fg = patch 0, bg = patch 2.
    out = {
        "embeddings": torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]]),  # (B=1, d=2, P=3)
        "fg_logits": torch.tensor([[math.log(3.0), 5.0, -math.log(3.0)]]),
        "logits": torch.tensor([[0.0, 0.0]]),
    }
    parts = tedloc_loss(out, torch.tensor([0]), torch.tensor([[0]]), torch.tensor([[2]]), torch.tensor([True]),
                        E, 1.0, LossWeights(kd=2.0, pcl=3.0, icl=0.5))
    kd = math.log(1 + math.exp(-1))
    pcl = -math.log(0.75)  # fg at p = 3/4 and bg at p = 1/4: both cost -ln(3/4)
    icl = math.log(2)
    assert parts["kd"].item() == pytest.approx(kd, abs=1e-6)
    assert parts["pcl"].item() == pytest.approx(pcl, abs=1e-6)
    assert parts["icl"].item() == pytest.approx(icl, abs=1e-6)
    assert parts["loss"].item() == pytest.approx(2 * kd + 3 * pcl + 0.5 * icl, abs=1e-5)


def test_object_free_rows_teach_background_only():
    # Row 0 has an object (label 0), row 1 is object-free (label -1): its fg slot and its class are ignored,
    # its bg patch counts. logit ln 3 -> p = 3/4.
    lg = torch.full((2, 1), math.log(3.0))
    has_object = torch.tensor([True, False])
    got = pcl_loss(lg, lg, torch.tensor([True, True]), has_object)
    assert got.item() == pytest.approx((-math.log(0.75) - math.log(0.25) - math.log(0.25)) / 3, abs=1e-6)
    logits = torch.tensor([[2.0, 0.0], [0.0, 9.0]])
    assert icl_loss(logits, torch.tensor([0, -1])).item() == pytest.approx(icl_loss(logits[:1], torch.tensor([0])).item())
    out = {"embeddings": torch.tensor([[[1.0], [0.0]], [[0.0], [1.0]]]), "fg_logits": torch.zeros(2, 1), "logits": logits}
    idx = torch.zeros(2, 1, dtype=torch.long)
    parts = tedloc_loss(out, torch.tensor([0, -1]), idx, idx, torch.tensor([True, True]), E, 1.0)
    alone = tedloc_loss({k: v[:1] for k, v in out.items()}, torch.tensor([0]), idx[:1], idx[:1], torch.tensor([True]), E, 1.0)
    assert parts["kd"].item() == pytest.approx(alone["kd"].item()) and parts["icl"].item() == pytest.approx(alone["icl"].item())
    assert torch.isfinite(parts["loss"])
