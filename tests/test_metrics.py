"""WSOL metrics: hand-made maps whose answers are worked out by hand, and the fast sweep against the decoder.

Reminder of the protocol quirk the hand answers use: a blob covering pixels x0..x1 has boundingRect width
x1 - x0 + 1, and the reference's box is (x, y, x + w, y + h), so its box is (x0, y0, x1 + 1, y1 + 1), which the
inclusive IoU then counts as (x1 - x0 + 2) pixels wide.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tedloc_edge.boxes import CAM_THRESHOLDS, boxes_at_level, decode_boxes, threshold_level
from tedloc_edge.metrics import (
    LocAccumulator,
    PixelAccumulator,
    best_iou,
    protocol_scoremap,
    ranking_from_logits,
    straight_best_iou,
    sweep_levels,
    topk_hits,
)

T = len(CAM_THRESHOLDS)


def blob_map(*blobs: tuple[int, int, int, int, float], size: int = 224) -> np.ndarray:
    """A float map with value v on pixels x0..x1, y0..y1 (inclusive) for each (x0, y0, x1, y1, v)."""
    m = np.zeros((size, size), np.float32)
    for x0, y0, x1, y1, v in blobs:
        m[y0 : y1 + 1, x0 : x1 + 1] = v
    return m


def score(fg_map: np.ndarray, gt, label: int = 0, ranking=None, deploy=None) -> LocAccumulator:
    acc = LocAccumulator(deploy_threshold=deploy)
    acc.add(protocol_scoremap(fg_map)[1], np.asarray(gt), label, ranking)
    return acc


# ---------------------------------------------------------------------------------------------- by hand


def test_single_square_blob_is_found_at_every_threshold():
    m = blob_map((60, 50, 119, 99, 1.0))  # 60x50 pixels
    u = protocol_scoremap(m)[1]
    assert set(np.unique(u)) == {0, 255}
    sweep = sweep_levels(u)
    assert len(sweep.largest) == 1  # one distinct mask for all 1000 thresholds
    for t in (0, 500, 999):
        np.testing.assert_array_equal(sweep.boxes(t, "largest"), [[60, 50, 120, 100]])
        np.testing.assert_array_equal(sweep.boxes(t, "all"), [[60, 50, 120, 100]])
    acc = score(m, [[60, 50, 120, 100]])
    assert acc.metrics()["maxboxacc"] == 100.0
    assert acc.metrics()["maxboxacc_v2"] == 100.0
    assert np.all(acc.curves()["box_acc_largest_iou70"] == 100.0)


def test_two_blobs_largest_vs_all_contours():
    # A: 100x100 at 1.0 (u = 255); B: 20x20 at 0.5 (u = 127). B is foreground while int(tau*255) < 127,
    # i.e. up to tau = 0.498 (126.99 -> 126); from tau = 0.499 (127.2 -> 127) only A remains.
    m = blob_map((0, 0, 99, 99, 1.0), (150, 150, 169, 169, 0.5))
    gt_b = [[150, 150, 170, 170]]
    acc = score(m, gt_b)
    curves = acc.curves()
    assert np.all(curves["box_acc_largest_iou50"] == 0.0)  # the largest contour is always A
    assert np.all(curves["box_acc_all_iou50"][:499] == 100.0)
    assert np.all(curves["box_acc_all_iou50"][499:] == 0.0)
    assert acc.metrics()["maxboxacc"] == 0.0
    assert acc.metrics()["maxboxacc_v2"] == 100.0
    assert acc.optimal_thresholds()["maxboxacc"] == 0.0


@pytest.mark.parametrize("value,grid", [(0.0, 14), (0.5, 14), (0.7, 224), (np.nan, 14)])
def test_constant_and_nan_maps_give_the_empty_box(value, grid):
    # (a 14x14 map of 0.7 is NOT constant after the float32 bicubic resize: its rounding ripples become the
    # whole [0, 1] range after min-max normalization, in the reference as here; so 0.7 is tested at 224)
    m = np.full((grid, grid), value, np.float32)
    u = protocol_scoremap(m)[1]
    assert not u.any()
    sweep = sweep_levels(u)
    assert all(len(sweep.boxes(t, mode)) == 0 for t in (0, 999) for mode in ("largest", "all"))
    # no contour -> the protocol's box (0, 0, 0, 0): IoU with (0, 0, 0, 1) is 1 / 2 -> counted at 0.5
    assert score(m, [[0, 0, 0, 1]]).metrics()["maxboxacc"] == 100.0
    assert score(m, [[0, 0, 1, 1]]).metrics()["maxboxacc"] == 0.0  # 1 / 4
    assert score(m, [[10, 10, 50, 50]]).metrics()["maxboxacc_v2"] == 0.0


def test_several_true_boxes_best_pair_counts():
    m = blob_map((0, 0, 98, 98, 1.0), (150, 150, 169, 169, 1.0))
    far, match_a = [200, 0, 223, 20], [0, 0, 99, 99]
    assert score(m, [far, match_a]).metrics()["maxboxacc"] == 100.0
    assert score(m, [far]).metrics()["maxboxacc"] == 0.0
    # all contours: B's box matches the second true box exactly
    acc = score(m, [far, [150, 150, 170, 170]])
    assert acc.metrics()["maxboxacc"] == 0.0 and acc.metrics()["maxboxacc_v2"] == 100.0


def test_iou_exactly_half_is_correct():
    m = blob_map((0, 0, 98, 98, 1.0))  # box (0, 0, 99, 99): 100 x 100 = 10000 inclusive pixels
    assert score(m, [[0, 0, 99, 49]]).metrics()["maxboxacc"] == 100.0  # 5000 / 10000 = 0.5
    assert score(m, [[0, 0, 99, 48]]).metrics()["maxboxacc"] == 0.0  # 4900 / 10000
    acc = score(m, [[0, 0, 99, 39]])  # 0.4: right at IoU 0.3 only
    curves = acc.curves()
    assert curves["box_acc_all_iou30"].max() == 100.0 and curves["box_acc_all_iou50"].max() == 0.0
    assert acc.metrics()["maxboxacc_v2"] == pytest.approx(100 / 3)


def test_loc_metrics_need_box_and_class():
    m = blob_map((0, 0, 98, 98, 1.0))
    good, bad = [[0, 0, 99, 99]], [[150, 150, 200, 200]]
    acc = LocAccumulator(deploy_threshold=0.5)
    u = protocol_scoremap(m)[1]
    acc.add(u, good, 0, [0, 1, 2])  # box and class right
    acc.add(u, good, 1, [0, 1, 2])  # box right, class second
    acc.add(u, bad, 0, [0, 1, 2])  # class right, box wrong
    acc.add(u, good, 2, [0, 1, 3, 4, 5, 2])  # class 6th: outside top 5
    got = acc.metrics()
    assert got["gt_known_loc"] == 75.0 and got["maxboxacc"] == 75.0
    assert got["top1_loc"] == 25.0 and got["top5_loc"] == 50.0
    assert got["top1_cls"] == 50.0 and got["top5_cls"] == 75.0
    assert got["top1_loc_at_threshold"] == 25.0 and got["gt_known_loc_at_threshold"] == 75.0


def test_deployment_threshold_is_decoded_exactly():
    # u = 255 on A, 127 on B: 0.3 -> level 76 keeps both; 0.4985 -> int(127.1) = 127 drops B; 0.7 drops B.
    # Off-grid thresholds are scored at their own level, as the decoder decodes them.
    m = blob_map((0, 0, 99, 99, 1.0), (150, 150, 169, 169, 0.5))
    for tau in (0.3, 0.4985, 0.7):
        acc = LocAccumulator(deploy_threshold=tau)
        acc.add(protocol_scoremap(m)[1], [[150, 150, 170, 170]], 0, [0])
        kept = len(decode_boxes(m, tau, mode="all")) == 2
        assert kept == (tau == 0.3)
        assert acc.metrics()["maxboxacc_v2_at_threshold"] == (100.0 if kept else 0.0)


def test_pxap_by_hand():
    mask = blob_map((0, 0, 49, 49, 1.0)) > 0
    perfect = PixelAccumulator()
    perfect.add(protocol_scoremap(mask.astype(np.float32))[0], mask)
    assert perfect.pxap() == pytest.approx(100.0)
    flat = PixelAccumulator()  # every pixel scores 0: one operating point, precision = foreground fraction
    flat.add(protocol_scoremap(np.zeros((7, 7), np.float32))[0], mask)
    assert flat.pxap() == pytest.approx(100 * 2500 / 224**2)
    assert PixelAccumulator().pxap() is None


def test_topk_helpers():
    assert list(ranking_from_logits(np.array([0.1, 3.0, 3.0, -1.0]), k=3)) == [1, 2, 0]
    assert topk_hits([1, 2, 0], 1) == (True, True)
    assert topk_hits([1, 2, 0, 4, 5, 3], 3) == (False, False)


# ---------------------------------------------------------------------------------------------- fast == straight


@st.composite
def uint8_maps(draw):
    """Protocol maps of random size: smooth upsampled grids (plateaus, many levels) or raw noise (holes, nesting)."""
    kind = draw(st.sampled_from(["smooth", "noise", "few_levels"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    h, w = draw(st.integers(4, 72)), draw(st.integers(4, 72))
    if kind == "smooth":
        grid = rng.random((draw(st.integers(2, 16)), draw(st.integers(2, 16)))).astype(np.float32)
        return protocol_scoremap(grid, (h, w))[1]
    if kind == "noise":
        return rng.integers(0, 256, size=(min(h, 24), min(w, 24)), dtype=np.uint8)
    return rng.choice(rng.integers(0, 256, size=4), size=(h, w)).astype(np.uint8)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(u=uint8_maps())
def test_fast_sweep_equals_the_decoder_at_every_threshold(u):
    sweep = sweep_levels(u)
    u_max = int(u.max())
    decoded: dict[tuple[int, str], np.ndarray] = {}  # the decoder is a pure function of (level, mode): memoized
    for t, tau in enumerate(CAM_THRESHOLDS):
        level = threshold_level(tau, u_max)
        for mode in ("largest", "all"):
            if (level, mode) not in decoded:
                decoded[level, mode] = boxes_at_level(u, level, mode)
            got, want = sweep.boxes(t, mode), decoded[level, mode]
            if got.shape != want.shape or not np.array_equal(got, want):
                pytest.fail(f"tau={tau} ({mode}): fast {got.tolist()} != decoder {want.tolist()}")


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_gt=st.integers(1, 3))
def test_fast_iou_equals_straight_loop_and_decode_boxes(seed, n_gt):
    rng = np.random.default_rng(seed)
    grid = rng.random((rng.integers(2, 15), rng.integers(2, 15))).astype(np.float32)
    u = protocol_scoremap(grid)[1]
    xy = np.sort(rng.integers(0, 224, size=(n_gt, 2, 2)), axis=1)  # (x0, x1), (y0, y1) sorted
    gt = np.stack([xy[:, 0, 0], xy[:, 0, 1], xy[:, 1, 0], xy[:, 1, 1]], axis=1)
    fast, slow = best_iou(sweep_levels(u), gt), straight_best_iou(u, gt)
    for mode in ("largest", "all"):
        np.testing.assert_array_equal(fast[mode], slow[mode])
    sweep = sweep_levels(u)
    for t in (0, 137, 500, 999):  # the full decoder from the raw grid, as the runtime calls it
        np.testing.assert_array_equal(sweep.boxes(t, "all"), decode_boxes(grid, CAM_THRESHOLDS[t], mode="all"))


def test_thresholds_outside_the_sweep_decode_as_the_decoder():
    u = protocol_scoremap(blob_map((10, 10, 60, 60, 1.0), (100, 100, 140, 120, 0.3)), (160, 160))[1]
    taus = np.array([-0.5, -0.001, 0.0, 0.2999, 1.0, 1.5])
    sweep = sweep_levels(u, taus)
    for t, tau in enumerate(taus):
        for mode in ("largest", "all"):
            np.testing.assert_array_equal(sweep.boxes(t, mode), boxes_at_level(u, threshold_level(tau, int(u.max())), mode))


# ---------------------------------------------------------------------------------------------- streaming


def test_streaming_equals_batch_and_merge():
    rng = np.random.default_rng(7)
    maps = [protocol_scoremap(rng.random((7, 7)).astype(np.float32), (112, 112))[1] for _ in range(6)]
    gts = [np.array([[10, 15, 75, 90]]), np.array([[0, 0, 50, 50], [60, 60, 111, 111]])] * 3
    labels, rankings = [0, 1, 2, 0, 1, 2], [[0, 1], [0, 1], [2, 0], [1, 0], [1, 2], [0, 2]]
    whole, first, second = LocAccumulator(), LocAccumulator(), LocAccumulator()
    for i, (u, gt) in enumerate(zip(maps, gts)):
        whole.add(u, gt, labels[i], rankings[i])
        (first if i < 3 else second).add(u, gt, labels[i], rankings[i])
    first.merge(second)
    assert first.metrics() == whole.metrics()
    # batch: the straight loop's IoUs for every image at once
    straight = [straight_best_iou(u, gt) for u, gt in zip(maps, gts)]
    ious = np.stack([s["largest"] for s in straight])
    ious_all = np.stack([s["all"] for s in straight])
    top1 = np.array([r[0] == lab for r, lab in zip(rankings, labels)])
    got = whole.metrics()
    assert got["maxboxacc"] == pytest.approx((ious >= 0.5).mean(0).max() * 100)
    assert got["maxboxacc_v2"] == pytest.approx(np.mean([(ious_all >= d).mean(0).max() * 100 for d in (0.3, 0.5, 0.7)]))
    assert got["top1_loc"] == pytest.approx(((ious >= 0.5) & top1[:, None]).mean(0).max() * 100)
    assert whole.box_correct["largest"].shape == (3, T)  # memory: counts per threshold, not per image


def test_per_image_hits_average_to_the_metrics_and_survive_a_merge():
    rng = np.random.default_rng(3)
    accs = [LocAccumulator(keep_per_image=True) for _ in range(2)]
    for i in range(12):
        x0, y0 = (int(v) for v in rng.integers(0, 120, 2))
        fg_map = blob_map((x0, y0, x0 + 60, y0 + 50, 1.0), (int(rng.integers(0, 200)), 10, 223, 30, float(rng.uniform(0.2, 0.9))))
        gt = [[x0 + int(rng.integers(-20, 20)), y0, x0 + 60, y0 + 50]]
        ranking = np.array([i % 3, (i + 1) % 3])  # top-1 right for a third of the images
        accs[i % 2].add(protocol_scoremap(fg_map)[1], np.asarray(gt).clip(0, 223), 0, ranking)
    acc = accs[0]
    acc.merge(accs[1])
    hits, metrics = acc.per_image_hits(), acc.metrics()
    assert len(hits["maxboxacc"]) == len(hits["top1_loc"]) == 12
    assert hits["maxboxacc"].mean() * 100 == pytest.approx(metrics["maxboxacc"])
    assert hits["top1_loc"].mean() * 100 == pytest.approx(metrics["top1_loc"])
    assert 0 < hits["maxboxacc"].sum() < 12  # the case is not trivial
    with pytest.raises(ValueError, match="keep_per_image"):
        LocAccumulator().per_image_hits()
