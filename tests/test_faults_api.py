"""Issue 23, the model's metadata and the Python API: a value the runtime would misread is refused at load or at
the call, as one line naming the fix, never a traceback mid-stream or a silently different result."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from faultkit import cli, one_line_error
from runtime_models import fixture_meta, write_model

from tedloc_edge.bundle import BundleError, BundleMeta, Preprocess
from tedloc_edge.errors import UserError
from tedloc_edge.runtime import Localizer


def doc_with(**changes) -> dict:
    doc = json.loads(fixture_meta().to_json())
    doc.update(changes)
    return doc


def model_with(path: Path, doc: dict) -> Path:
    return write_model(path, metadata=json.dumps(doc))


@pytest.mark.parametrize("threshold", ["0.5", None, True, math.nan, 1.0, -0.1, [0.5]])
def test_a_threshold_that_is_not_a_number_in_0_1_is_refused_at_load(tmp_path, threshold):
    with pytest.raises(BundleError, match=r"m.onnx: tedloc metadata: threshold must be a number in \[0, 1\).*re-export"):
        Localizer(model_with(tmp_path / "m.onnx", doc_with(threshold=threshold)))


def test_a_string_threshold_through_the_cli_is_one_line_error(tmp_path):
    """It was a ValueError traceback from tedloc_edge/boxes.py on the first frame."""
    model = model_with(tmp_path / "m.onnx", doc_with(threshold="0.5"))
    (tmp_path / "in").mkdir()
    import cv2

    cv2.imwrite(str(tmp_path / "in" / "a.png"), np.full((32, 32, 3), 128, np.uint8))
    one_line_error(cli("infer", tmp_path / "in", "--model", model, "--out", tmp_path / "out"), "threshold must be a number")


def test_metadata_without_a_threshold_is_refused_not_read_as_0_5(tmp_path):
    doc = doc_with(threshold=0.82)
    del doc["threshold"]
    with pytest.raises(BundleError, match=r"m.onnx: tedloc metadata is incomplete \(no threshold\); re-export"):
        Localizer(model_with(tmp_path / "m.onnx", doc))
    v1 = {"format_version": 1, "class_names": ["a"], "input_size": [64, 64], "patch_grid": [8, 8]}
    with pytest.raises(BundleError, match=r"incomplete \(no threshold\)"):
        BundleMeta.from_dict(v1, "old.onnx")
    assert BundleMeta.from_dict({**v1, "threshold": 0.82}, "old.onnx").threshold == 0.82


@pytest.mark.parametrize("changes, message", [
    ({"input_size": [0, 64]}, "input_size must be two positive whole numbers"),
    ({"input_size": [64.5, 64]}, "input_size must be two positive whole numbers"),
    ({"patch_grid": [8]}, "patch_grid must be two positive whole numbers"),
    ({"class_names": []}, "class_names must be a non-empty list"),
    ({"class_names": "red,green,blue"}, "class_names must be a non-empty list"),
    ({"contour_mode": "biggest"}, "contour_mode must be one of largest, all"),
    ({"method": "gradcam"}, "method must be one of tedloc, cam"),
    ({"precision": 16}, "precision must be text"),
    ({"extra": []}, "extra has the wrong type"),
    ({"preprocess": "imagenet"}, "preprocess has the wrong type"),
])
def test_other_fields_of_the_wrong_type_or_range_are_refused_at_load(changes, message):
    with pytest.raises(BundleError, match=f"m.onnx: tedloc metadata: {message}") as info:
        BundleMeta.from_dict(doc_with(**changes), "m.onnx")
    assert "\n" not in str(info.value)


# -- channel_order, input_layout, std (merge of branch `prep`): honoured, or refused at load --------------------


def red_frame() -> np.ndarray:
    frame = np.zeros((64, 64, 3), np.uint8)
    frame[..., 0] = 220  # red in RGB
    return frame


def test_channel_order_bgr_is_honoured_end_to_end(tmp_path):
    """The fixture scores the mean colour: an RGB frame fed to a BGR model must reach it as BGR (the model's
    'red' input channel is its third), so the same frame gets the same class from both models."""
    rgb_model = write_model(tmp_path / "rgb.onnx")
    bgr_meta = fixture_meta(preprocess=Preprocess(channel_order="BGR"))
    bgr_model = write_model(tmp_path / "bgr.onnx", meta=bgr_meta)
    with Localizer(rgb_model) as rgb, Localizer(bgr_model) as bgr:
        assert rgb(red_frame()).class_name == "red"
        assert bgr(red_frame()).class_name == "blue"  # the graph reads channel 0 as blue: it was given B, G, R
        assert bgr(red_frame()[..., ::-1], color="BGR").class_name == "blue"
        assert rgb(red_frame()[..., ::-1].copy(), color="BGR").class_name == "red"


@pytest.mark.parametrize("record, message", [
    ({"layout": "NCHW"}, "input NCHW uint8"),
    ({"std": [0.5, 0.0, 0.5]}, "has a zero entry"),
    ({"dtype": "float32"}, "input NHWC float32"),
    ({"channel_order": "RGBA"}, "channel order 'RGBA'"),
])
def test_input_layout_and_std_the_runtime_cannot_feed_are_refused_at_load(tmp_path, record, message):
    doc = doc_with()
    doc["preprocess"].update(record)
    with pytest.raises(BundleError, match=f"m.onnx: preprocess: .*{message}"):
        Localizer(model_with(tmp_path / "m.onnx", doc))


# -- frames through the Python API --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loc(tmp_path_factory):
    with Localizer(write_model(tmp_path_factory.mktemp("m") / "tiny.onnx")) as localizer:
        yield localizer


@pytest.mark.parametrize("shape", [(0, 0, 3), (0, 7, 3), (7, 0, 3), (0, 0), (5, 0)])
def test_an_empty_frame_is_one_line_error(loc, shape):
    """A 0x0 frame was a raw cv2.error from the resize."""
    with pytest.raises(UserError, match=r"frame 0: empty image \(\d+x\d+ pixels\)"):
        loc(np.zeros(shape, np.uint8))
    with pytest.raises(UserError, match=r"image 1: empty image"):
        loc.forward_maps([np.zeros((8, 8, 3), np.uint8), np.zeros(shape, np.uint8)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_nan_frame_is_refused_not_read_as_black(loc, dtype):
    nan = np.full((20, 20, 3), np.nan, dtype)
    with pytest.raises(UserError, match=r"frame 0: float image with 1200 of 1200 values NaN or infinite"):
        loc(nan)
    one_inf = np.zeros((20, 20), dtype)
    one_inf[3, 4] = np.inf
    with pytest.raises(UserError, match="1 of 400 values NaN or infinite"):
        loc(one_inf)


def test_float_frames_in_0_255_are_refused_not_read_as_white(loc):
    with pytest.raises(UserError, match=r"values in \[0, 255\]; float pixels are read as \[0, 1\]"):
        loc(np.linspace(0, 255, 300, dtype=np.float32).reshape(10, 10, 3))
    ok = loc(np.linspace(0, 1, 300, dtype=np.float32).reshape(10, 10, 3))  # [0, 1] floats still work
    assert ok.orig_shape == (10, 10)
