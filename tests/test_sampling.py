"""Patch sampling: fg/bg rules (otsu, frac, quantile), ties drawn uniformly, redrawn each step, flat maps excluded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tedloc_edge.errors import UserError
from tedloc_edge.train.sampling import flip_regions, otsu_threshold, parse_rule, patch_regions, sample_patches


def hand_cue() -> np.ndarray:
    """A 5x5 map: a bright 2x2 object (0.9, 1.0) at the top left, a dim ring (0.3), dark right column (0.0)."""
    cue = np.full((5, 5), 0.3, dtype=np.float32)
    cue[0:2, 0:2] = [[0.9, 1.0], [1.0, 0.9]]
    cue[:, 4] = 0.0
    return cue


def test_otsu_splits_a_bimodal_histogram_between_its_modes():
    values = np.r_[np.full(50, 0.1), np.full(50, 0.8)]
    t = otsu_threshold(values)
    assert 0.1 <= t < 0.8
    assert (values > t).sum() == 50
    assert otsu_threshold(np.full(9, 0.4)) == 0.4  # constant: nothing above


def test_regions_on_a_hand_made_map():
    regions = patch_regions(hand_cue()[None], bg_rule="quantile:0.2")
    fg = regions.fg[0].view(5, 5).numpy()
    bg = regions.bg[0].view(5, 5).numpy()
    expected_fg = np.zeros((5, 5), bool)
    expected_fg[0:2, 0:2] = True
    np.testing.assert_array_equal(fg, expected_fg)  # only the object lies above Otsu
    expected_bg = np.zeros((5, 5), bool)
    expected_bg[:, 4] = True  # round(0.2 * 25) = 5 lowest patches: the dark column
    np.testing.assert_array_equal(bg, expected_bg)
    assert bool(regions.valid[0])


def test_samples_come_from_the_regions_and_change_every_step():
    cues = np.stack([hand_cue(), np.full((5, 5), 0.5, np.float32)])  # second map is flat
    regions = patch_regions(cues)
    gen = torch.Generator().manual_seed(0)
    fg_idx, bg_idx, valid = sample_patches(regions, torch.tensor([0, 1]), 10, 10, gen)
    assert fg_idx.shape == (2, 10) and bg_idx.shape == (2, 10)
    assert set(fg_idx[0].tolist()) <= {0, 1, 5, 6}
    assert set(bg_idx[0].tolist()) <= {4, 9, 14, 19, 24}
    assert valid.tolist() == [True, False]  # a flat cue teaches nothing
    draws = {tuple(sample_patches(regions, torch.tensor([0]), 10, 10, gen)[0][0].tolist()) for _ in range(5)}
    assert len(draws) > 1  # redrawn each step


def test_flip_mirrors_columns():
    regions = flip_regions(patch_regions(hand_cue()[None]), (5, 5))
    bg = regions.bg[0].view(5, 5).numpy()
    assert bg[:, 0].all() and not bg[:, 1:].any()
    assert regions.fg[0].view(5, 5)[0:2, 3:5].all()


def test_background_ties_are_drawn_from_the_whole_grid_not_raster_order():
    """A DDT-like map: an object blob in the top rows, exactly 0 over most of the grid. "The lowest 20%" must not
    be the first zeros in raster order (the top rows): every tied patch is a candidate, bottom rows included."""
    cue = np.zeros((14, 14), np.float32)
    cue[1:5, 4:10] = np.linspace(0.3, 1.0, 24, dtype=np.float32).reshape(4, 6)
    regions = patch_regions(cue[None], bg_rule="quantile:0.2")
    bg = regions.bg[0].view(14, 14).numpy()
    assert bg[11:14].all()  # the bottom rows are background candidates
    assert bg.sum() == (cue == 0).sum()  # every tie at the cut, nothing above it
    gen = torch.Generator().manual_seed(0)
    rows = torch.cat([sample_patches(regions, torch.tensor([0]), 10, 50, gen)[1][0] for _ in range(20)]) // 14
    assert (rows >= 11).any() and (rows <= 2).any()  # draws reach both ends of the grid


def test_fg_rules_frac_quantile_and_otsu():
    cue = hand_cue()[None]
    fg = lambda rule: patch_regions(cue, fg_rule=rule).fg[0].view(5, 5).numpy()  # noqa: E731
    np.testing.assert_array_equal(fg("frac:0.95"), hand_cue() > 0.95)  # the two 1.0 patches
    np.testing.assert_array_equal(fg("frac:0.5"), hand_cue() > 0.5)  # the whole 2x2 object
    np.testing.assert_array_equal(fg("quantile:0.9"), hand_cue() > 0.9)  # top 10%: above the 0.9 quantile
    np.testing.assert_array_equal(fg("otsu"), hand_cue() > 0.5)
    bg = patch_regions(cue, bg_rule="frac:0.3").bg[0].view(5, 5).numpy()
    np.testing.assert_array_equal(bg, hand_cue() <= 0.3)  # ring and dark column, never the object


@pytest.mark.parametrize("bad", ["otsu:0.5", "frac", "frac:1.5", "quantile:x", "median"])
def test_bad_rules_are_user_errors(bad):
    with pytest.raises(UserError, match="otsu, frac:F or quantile:Q"):
        parse_rule(bad)
    assert parse_rule("frac:0.7") == ("frac", 0.7) and parse_rule("otsu") == ("otsu", 0.0)


def test_negatives_are_all_background_and_teach_their_highest_patches():
    from tedloc_edge.train.sampling import add_negatives, hardest_background

    regions = add_negatives(patch_regions(hand_cue()[None]), 2)
    assert regions.fg.shape == (3, 25) and not regions.fg[1:].any() and regions.bg[1:].all() and regions.valid.all()
    fg_logits = torch.arange(25, dtype=torch.float32).repeat(3, 1)  # patch 24 scores highest
    bg_idx = torch.zeros(3, 4, dtype=torch.long)
    got = hardest_background(bg_idx, fg_logits, torch.tensor([False, True, True]))
    assert got[0].tolist() == [0, 0, 0, 0] and got[1].tolist() == [24, 23, 22, 21]
    small = hardest_background(torch.zeros(1, 5, dtype=torch.long), torch.tensor([[0.1, 0.9]]), torch.tensor([True]))
    assert small.tolist() == [[1, 0, 1, 0, 1]]  # a grid smaller than k repeats its patches
