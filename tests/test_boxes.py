"""The decoder itself: protocol details worked out by hand (the metrics tests cover the sweep)."""

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tedloc_edge.boxes import (
    box_iou,
    boxes_at_level,
    boxes_from_mask,
    decode_boxes,
    map_to_uint8,
    normalize_map,
    scale_boxes,
    threshold_level,
)


def test_normalize_constant_and_nan_maps_become_zero():
    assert not normalize_map(np.full((4, 4), 3.0)).any()
    m = np.ones((4, 4))
    m[0, 0] = np.nan
    assert not normalize_map(m).any()


def test_square_blob_box_is_exact_at_native_size():
    m = np.zeros((224, 224), np.float32)
    m[50:100, 60:120] = 1.0
    boxes = decode_boxes(m, 0.5)
    # bicubic resize at the same size is the identity; rectangle covers columns 60..119 -> x1 = x + w = 120
    assert boxes.tolist() == [[60, 50, 120, 100]]


def test_largest_vs_all_contours():
    m = np.zeros((224, 224), np.float32)
    m[10:30, 10:30] = 1.0
    m[100:200, 100:200] = 1.0
    assert decode_boxes(m, 0.5, mode="largest").tolist() == [[100, 100, 200, 200]]
    assert len(decode_boxes(m, 0.5, mode="all")) == 2


def test_box_clipped_to_last_pixel_and_empty_map_gives_no_box():
    m = np.zeros((224, 224), np.float32)
    m[200:, 200:] = 1.0
    assert decode_boxes(m, 0.5).tolist() == [[200, 200, 223, 223]]
    assert decode_boxes(np.zeros((7, 7)), 0.5).shape == (0, 4)


def test_threshold_is_strictly_above_truncated_level():
    u = map_to_uint8(np.linspace(0, 1, 224 * 224).reshape(224, 224), (224, 224))
    assert u.max() == 255
    assert threshold_level(0.5, 255) == 127


def test_iou_is_inclusive_and_exact_half():
    # 10x10 box vs a box sharing half of it: inter 50, union 100 + 100 - 50 = 150 -> 1/3
    assert np.isclose(box_iou(np.array([[0, 0, 9, 9]]), np.array([[5, 0, 14, 9]]))[0, 0], 50 / 150)
    # pred inside gt with half the area -> IoU exactly 0.5
    assert box_iou(np.array([[0, 0, 9, 4]]), np.array([[0, 0, 9, 9]]))[0, 0] == 0.5


def test_scale_boxes_maps_inclusive_edges():
    out = scale_boxes(np.array([[0, 0, 223, 111]]), (224, 224), (448, 896))
    assert out.tolist() == [[0.0, 0.0, 895.0, 223.0]]


def _reference_uint8(fg_map: np.ndarray, size: int) -> np.ndarray:
    """wsolevaluation's normalize_scoremap after a bicubic resize, written out as the reference does it."""
    cam = cv2.resize(fg_map.astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    if np.isnan(cam).any() or cam.min() == cam.max():
        return np.zeros((size, size), np.uint8)
    cam -= cam.min()
    cam /= cam.max()
    return (cam * 255).astype(np.uint8)


@pytest.mark.parametrize("seed", range(20))
def test_decoder_is_bit_identical_to_the_reference_formulation(seed):
    rng = np.random.default_rng(seed)
    fg_map = (rng.random((14, 14)) ** rng.uniform(0.2, 5) * 10.0 ** rng.uniform(-6, 6)).astype(np.float32)
    u = map_to_uint8(fg_map, (224, 224))
    np.testing.assert_array_equal(u, _reference_uint8(fg_map, 224))
    for level in (0, int(rng.integers(1, 255)), 254, 255):
        mask = np.where(u > level, np.uint8(255), np.uint8(0))
        np.testing.assert_array_equal(boxes_at_level(u, level), boxes_from_mask(mask))


@settings(max_examples=200, deadline=None)
@given(
    box=st.tuples(st.integers(0, 223), st.integers(0, 223), st.integers(0, 223), st.integers(0, 223)),
    frame=st.tuples(st.integers(1, 2000), st.integers(1, 2000)),
)
def test_scaled_boxes_stay_inside_any_frame_and_ordered(box, frame):
    x0, x1 = sorted(box[0::2])
    y0, y1 = sorted(box[1::2])
    out = scale_boxes(np.array([[x0, y0, x1, y1]]), (224, 224), frame)[0]
    h, w = frame
    assert 0 <= out[0] <= out[2] <= w - 1 and 0 <= out[1] <= out[3] <= h - 1


@pytest.mark.parametrize("frame", [(1, 1), (7, 9), (9, 7), (2, 300)])
def test_tiny_frames_get_ordered_boxes(frame):
    out = scale_boxes(np.array([[100, 100, 100, 100], [0, 0, 223, 223], [150, 20, 160, 30]]), (224, 224), frame)
    assert (out[:, 0] <= out[:, 2]).all() and (out[:, 1] <= out[:, 3]).all()
    assert out.min() >= 0 and (out[:, 2] <= frame[1] - 1).all() and (out[:, 3] <= frame[0] - 1).all()
