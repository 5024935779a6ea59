"""Issue 23, property-based: whatever the bundle metadata, the options or the frames hold, the answer is a result
or one UserError/BundleError line, never another exception; what loads is usable; the image lister ends, agrees
with glob.glob where there are no links, and names every file once."""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from runtime_models import fixture_meta, write_model

from tedloc_edge.bundle import BundleError, BundleMeta
from tedloc_edge.errors import UserError
from tedloc_edge.images import image_base, list_images, relative_name
from tedloc_edge.runtime import Localizer
from tedloc_edge.runtime.postprocess import DecodeConfig, decode_one
from tedloc_edge.runtime.preprocess import Preprocessor

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
VALID = json.loads(fixture_meta().to_json())


def mutated(draw_doc: dict, key: str, value: object, nested: bool) -> dict:
    doc = json.loads(json.dumps(draw_doc))
    target = doc["preprocess"] if nested else doc
    if value is ...:
        target.pop(key, None)
    else:
        target[key] = value
    return doc


# -- the bundle metadata -------------------------------------------------------------------------------------------


@SETTINGS
@given(key=st.sampled_from(sorted(VALID)), nested_key=st.sampled_from(sorted(VALID["preprocess"])),
       nested=st.booleans(), value=json_values | st.just(...))
def test_any_metadata_loads_into_a_usable_bundle_or_is_one_bundle_error(key, nested_key, nested, value):
    doc = mutated(VALID, nested_key if nested else key, value, nested)
    try:
        meta = BundleMeta.from_json(json.dumps(doc), "m.onnx")
    except BundleError as exc:
        assert str(exc).startswith("m.onnx: ") and "\n" not in str(exc)
        return
    assert BundleMeta.from_json(meta.to_json()) == meta  # what loads writes back the same
    config = DecodeConfig(meta.threshold, meta.contour_mode)  # the runtime's own checks accept it
    gh, gw = meta.patch_grid
    fg = np.random.default_rng(0).random((gh, gw), dtype=np.float32)
    decoded = decode_one(fg, np.zeros(meta.num_classes, np.float32), (30, 40), meta.input_size, config)
    assert decoded.boxes.shape[1] == 4 and decoded.topk[0] < meta.num_classes
    pre = Preprocessor(meta.input_size, 1, meta.preprocess)
    assert pre([np.zeros((5, 7, 3), np.uint8)]).shape == (1, *meta.input_size, 3)


# -- frames through the Python API ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loc(tmp_path_factory):
    with Localizer(write_model(tmp_path_factory.mktemp("m") / "tiny.onnx"), max_batch=2) as localizer:
        yield localizer


DTYPES = [np.uint8, np.uint16, np.float32, np.float64, np.bool_, np.int8, np.int32, np.float16]


@st.composite
def frames(draw):
    ndim = draw(st.integers(0, 4))
    shape = tuple(draw(st.lists(st.integers(0, 33), min_size=ndim, max_size=ndim)))
    dtype = draw(st.sampled_from(DTYPES))
    size = int(np.prod(shape)) if shape else 1
    if np.issubdtype(dtype, np.floating):
        values = draw(st.sampled_from(["unit", "nan", "big", "inf"]))
        rng = np.random.default_rng(size)
        data = rng.random(size)
        if values == "nan" and size:
            data[rng.integers(0, size)] = np.nan
        elif values == "big":
            data *= 255
        elif values == "inf" and size:
            data[0] = np.inf
        array = data.astype(dtype).reshape(shape)
    else:
        array = np.random.default_rng(size).integers(0, 2 if dtype is np.bool_ else 120, size).astype(dtype).reshape(shape)
    if draw(st.booleans()) and array.ndim >= 2:  # a view with negative strides, as a flipped camera frame
        array = array[::-1, ::-1]
    return array


@SETTINGS
@given(frame=frames(), color=st.sampled_from(["RGB", "BGR", "bgr"]))
def test_any_array_is_a_result_in_the_frame_or_one_user_error(loc, frame, color):
    try:
        out = loc(frame, color=color)
    except UserError as exc:
        assert "\n" not in str(exc)
        return
    results = out if isinstance(out, list) else [out]
    assert frame.ndim in (2, 3, 4) and (frame.ndim != 4 or len(results) == frame.shape[0])
    for result in results:
        h, w = result.orig_shape
        assert h > 0 and w > 0 and 0 <= result.class_id < 3
        boxes = result.boxes
        assert np.all(boxes[:, 0] <= boxes[:, 2]) and np.all(boxes[:, 1] <= boxes[:, 3])
        assert np.all(boxes >= 0) and np.all(boxes[:, 2] <= w - 1) and np.all(boxes[:, 3] <= h - 1)
    if frame.dtype in (np.float32, np.float64) and frame.size:
        assert np.isfinite(frame).all() and frame.min() >= -1 / 255 and frame.max() <= 1 + 1 / 255


# -- options ---------------------------------------------------------------------------------------------------------


def _train_fields():
    from tedloc_edge.train.config import TrainConfig

    return TrainConfig, [f for f in dataclasses.fields(TrainConfig) if f.name not in ("run_id",)]


@SETTINGS
@given(data=st.data())
def test_a_config_json_with_any_values_is_one_user_error_or_a_valid_config(tmp_path, data):
    """--resume reads RUN/config.json back: a hand-edited value of the wrong type must not be a TypeError."""
    config_cls, fields = _train_fields()
    doc = {f.name: f.default for f in fields}
    doc.update(data=str(tmp_path), out=str(tmp_path / "run"))
    for field in data.draw(st.lists(st.sampled_from(fields), min_size=1, max_size=3, unique_by=lambda f: f.name)):
        doc[field.name] = data.draw(json_values)
    try:
        cfg = config_cls.from_dict(doc, "config.json").validate()
    except UserError as exc:
        assert "\n" not in str(exc)
        return
    for field in fields:
        value = getattr(cfg, field.name)
        if isinstance(field.default, float):
            assert isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)
        elif isinstance(field.default, bool):
            assert isinstance(value, bool)
        elif isinstance(field.default, int):
            assert isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(field.default, str):
            assert isinstance(value, str)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stride=st.integers(-2, 5), batch=st.integers(-1, 4), max_frames=st.none() | st.integers(-1, 4),
       threshold=st.none() | st.floats(-1, 2) | st.just(float("nan")), timeout=st.floats(-1, 30) | st.just(float("nan")),
       threads=st.integers(-2, 2), classes=st.none() | st.sampled_from(["red", "0,2", "", "purple", "7", " , "]))
def test_any_infer_options_run_or_stop_with_one_user_error_before_writing(tmp_path_factory, stride, batch, max_frames,
                                                                         threshold, timeout, threads, classes):
    from runtime_media import read_jsonl

    from tedloc_edge.runtime.infer import InferOptions, run_infer

    root = tmp_path_factory.mktemp("opts")
    model = write_model(root / "m.onnx")
    (root / "in").mkdir()
    for i in range(3):
        import cv2

        cv2.imwrite(str(root / "in" / f"{i}.png"), np.full((20 + i, 30, 3), 60 * i, np.uint8))
    opts = InferOptions(source=str(root / "in"), model=model, out=root / "out", stride=stride, batch=batch,
                        max_frames=max_frames, threshold=threshold, timeout=timeout, threads=threads, classes=classes,
                        show_progress=False)
    try:
        summary = run_infer(opts)
    except UserError as exc:
        assert "\n" not in str(exc)
        assert not (root / "out").exists() or not any((root / "out").iterdir())
        return
    expected = len(range(0, 3, stride))
    if max_frames is not None:
        expected = min(expected, max_frames)
    assert summary.frames_processed == expected == len(read_jsonl(root / "out" / "predictions.jsonl"))


# -- the image lister --------------------------------------------------------------------------------------------------


names = st.sampled_from(["a", "b", ".h", "c.jpg", "d.PNG", "e.png", "x.jpg", ".x.jpg", "f.txt"])
trees = st.lists(st.lists(names, min_size=1, max_size=4), min_size=1, max_size=12)
patterns = st.sampled_from(["**/*", "**/*.jpg", "*/*.jpg", "*", "a/**/*.png", "**/x.jpg", "*/**/*", "**", ".h/*"])


def build(root: Path, tree: list[list[str]]) -> None:
    for parts in tree:
        path = root.joinpath(*parts)
        if any(p.is_file() for p in [root.joinpath(*parts[:i]) for i in range(1, len(parts) + 1)]):
            continue
        if path.suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                path.write_bytes(b"x")
        else:
            path.mkdir(parents=True, exist_ok=True)


@SETTINGS
@given(tree=trees, pattern=patterns)
def test_the_lister_agrees_with_glob_where_there_are_no_links(tmp_path_factory, tree, pattern):
    root = tmp_path_factory.mktemp("tree")
    build(root, tree)
    spec = str(root / pattern)
    expected = sorted(p for p in map(Path, glob.glob(spec, recursive=True)) if p.suffix.lower() in
                      (".jpg", ".png") and p.is_file())
    assert list_images(spec) == expected


@SETTINGS
@given(tree=trees, pattern=patterns, links=st.lists(st.tuples(st.sampled_from(["a", "b", "a/b", "c"]),
                                                           st.sampled_from([".", "..", "../..", "a", "/"])), max_size=4))
def test_the_lister_ends_through_any_links_and_names_each_file_once(tmp_path_factory, tree, pattern, links):
    root = tmp_path_factory.mktemp("links")
    build(root / "top", tree)
    for where, target in links:
        link = root / "top" / where / "ln"
        if link.parent.is_dir() and not os.path.lexists(link):
            link.symlink_to(target if target != "/" else str(root))  # never the real file system root
    found = list_images(str(root / "top" / pattern))
    ids = [(p.stat().st_dev, p.stat().st_ino) for p in found]
    assert len(ids) == len(set(ids))
    base = image_base(str(root / "top" / pattern))
    rel = [relative_name(p, base) for p in found]
    assert len(rel) == len(set(rel)) and not any(r.startswith("..") or os.path.isabs(r) for r in rel)


class Reached(Exception):
    """Raised by a stand-in for the first piece of real export work (loading the checkpoint)."""


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fmt=st.sampled_from(["onnx", "triton", "triton", "ONNX", "onxx"]), precision=st.sampled_from([None, "fp32", "fp16", "int8", "int9"]),
       opset=st.sampled_from([17, 18, 20, 16, 99]), verify_images=st.sampled_from([1, 32, 0, -3]),
       calib_images=st.sampled_from([1, 200, 0]), int8_max_drop=st.sampled_from([1.0, -100.0, float("nan"), float("inf")]),
       static_batch=st.none() | st.sampled_from([1, 8, 4096, 0, 5000]), batch_max=st.none() | st.sampled_from([8, 1, 0, -1, 2000]),
       int8_mode=st.sampled_from([None, "cpu", "tensorrt", "gpu"]))
def test_any_export_options_stop_with_one_user_error_before_any_work(tmp_path_factory, monkeypatch, fmt, precision,
                                                                     opset, verify_images, calib_images, int8_max_drop,
                                                                     static_batch, batch_max, int8_mode):
    from tedloc_edge.export import exporter
    from tedloc_edge.export.exporter import ExportOptions, export

    run = tmp_path_factory.mktemp("run")
    (run / "checkpoints").mkdir()

    def reached(source):
        raise Reached

    monkeypatch.setattr(exporter, "load_model", reached)
    opts = ExportOptions(format=fmt, precision=precision, opset=opset, verify_images=verify_images,
                         calib_images=calib_images, int8_max_drop=int8_max_drop, static_batch=static_batch,
                         batch_max=batch_max, int8_mode=int8_mode)
    try:
        export(run, opts)
    except UserError as exc:
        assert "\n" not in str(exc)
        return
    except Reached:  # every option passed its check: each is one the export can use
        assert 17 <= opset <= 20 and verify_images >= 1 and calib_images >= 1 and np.isfinite(int8_max_drop)
        assert static_batch is None or 1 <= static_batch <= 4096
        assert batch_max is None or 1 <= batch_max <= 1024
        assert precision != "int9" and fmt.lower() != "onxx" and int8_mode != "gpu"
        return
    pytest.fail("export ran to the end with a stand-in model")
