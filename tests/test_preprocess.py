"""The runtime's preprocessing is built from the bundle's preprocess record: it honours the interpolation and
channel order, reads format-1 models into the record, and a record it cannot feed stops the model at load."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from runtime_models import fixture_meta, write_model

from tedloc_edge.bundle import BundleError, Preprocess
from tedloc_edge.runtime import Localizer
from tedloc_edge.runtime.preprocess import Preprocessor


def frame(h: int = 37, w: int = 53) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 255, (h, w, 3), np.uint8)


@pytest.mark.parametrize("interpolation, flag", [("bilinear", cv2.INTER_LINEAR), ("area", cv2.INTER_AREA),
                                                 ("bicubic", cv2.INTER_CUBIC)])
def test_preprocessor_resizes_with_the_record_interpolation(interpolation, flag):
    pre = Preprocessor((16, 24), 2, Preprocess(interpolation=interpolation))
    np.testing.assert_array_equal(pre([frame()])[0], cv2.resize(frame(), (24, 16), interpolation=flag))


def test_preprocessor_feeds_the_record_channel_order():
    rgb = frame()
    bgr_graph = Preprocessor((16, 24), 2, Preprocess(channel_order="BGR"))
    expected = cv2.resize(rgb, (24, 16), interpolation=cv2.INTER_LINEAR)[..., ::-1]
    np.testing.assert_array_equal(bgr_graph([rgb], "RGB")[0], expected)  # RGB frames swapped for a BGR graph
    np.testing.assert_array_equal(bgr_graph([rgb[..., ::-1]], "BGR")[0], expected)  # BGR frames as they are
    rgb_graph = Preprocessor((16, 24), 2)
    np.testing.assert_array_equal(rgb_graph([rgb[..., ::-1]], "BGR")[0], expected[..., ::-1])


def format_1_text(**changes) -> str:
    """The fixture model's bundle as format 1 spelled it (flat fields, interpolation in extra)."""
    doc = json.loads(fixture_meta().to_json())
    record = doc.pop("preprocess")
    doc.update(format_version=1, mean=record["mean"], std=record["std"], input_layout="NHWC", input_dtype="uint8",
               channel_order="RGB", normalize_in_graph=True, map_kind="probability",
               extra={"resize_interpolation": "area"})
    doc.update(changes)
    return json.dumps(doc)


def test_localizer_preprocesses_a_format_1_model_as_its_record_says(tmp_path):
    model = write_model(tmp_path / "old.onnx", metadata=format_1_text())
    with Localizer(model) as loc:
        assert loc.meta.preprocess == Preprocess(interpolation="area") and loc.meta.extra == {}
        maps, _ = loc.forward_maps([frame(130, 170)])
    with Localizer(write_model(tmp_path / "new.onnx")) as loc:  # bilinear: another resize, another map
        assert loc.meta.preprocess.interpolation == "bilinear"
        assert not np.array_equal(loc.forward_maps([frame(130, 170)])[0], maps)
        same = loc.forward_maps([cv2.resize(frame(130, 170), (64, 64), interpolation=cv2.INTER_AREA)])[0]
    np.testing.assert_array_equal(maps, same)  # the area-resized picture is what the old model was fed


@pytest.mark.parametrize("changes, message", [
    ({"input_layout": "NCHW"}, "input NCHW uint8"),
    ({"normalize_in_graph": False}, "normalize_in_graph=False"),
    ({"std": [0.5, 0, 0.5]}, "has a zero entry"),
])
def test_a_record_the_runtime_cannot_feed_stops_the_model_at_load(tmp_path, changes, message):
    model = write_model(tmp_path / "m.onnx", metadata=format_1_text(**changes))
    with pytest.raises(BundleError, match=f"m.onnx: preprocess: .*{message}"):
        Localizer(model)
