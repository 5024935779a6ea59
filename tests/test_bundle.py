import json

import pytest

from tedloc_edge.bundle import (
    FORMAT_VERSION,
    BundleError,
    BundleMeta,
    Preprocess,
    atomic_write_text,
    read_plan_sidecar,
    write_plan_sidecar,
)


def _meta(**kw):
    base = dict(class_names=("cat", "rouge-gorgé"), input_size=(224, 224), patch_grid=(14, 14))
    base.update(kw)
    return BundleMeta(**base)


def test_json_round_trip_keeps_tuples_and_unicode():
    meta = _meta(threshold=0.31, extra={"note": "x"})
    back = BundleMeta.from_json(meta.to_json())
    assert back == meta
    assert back.class_names[1] == "rouge-gorgé"
    assert isinstance(back.input_size, tuple)


def test_newer_format_is_refused_with_upgrade_hint():
    doc = json.loads(_meta().to_json())
    doc["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(BundleError, match="newer than this tedloc-edge reads.*upgrade"):
        BundleMeta.from_dict(doc, "m.onnx")


def test_missing_version_and_bad_json_name_the_source():
    with pytest.raises(BundleError, match="m.onnx: .*no format_version"):
        BundleMeta.from_dict({"class_names": ["a"]}, "m.onnx")
    with pytest.raises(BundleError, match="m.onnx: .*not valid JSON"):
        BundleMeta.from_json("{", "m.onnx")


def test_incomplete_metadata_is_one_clear_error():
    with pytest.raises(BundleError, match="incomplete"):
        BundleMeta.from_dict({"format_version": 1}, "m.onnx")


def test_plan_sidecar_round_trip(tmp_path):
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"plan")
    write_plan_sidecar(plan, _meta(precision="int8"), {"tensorrt_version": "10.13.3", "compute_capability": "8.7"})
    meta, build = read_plan_sidecar(plan)
    assert meta.precision == "int8" and build["compute_capability"] == "8.7"
    assert plan.read_bytes() == b"plan"  # the plan stays a plain plan


def test_plan_without_sidecar_names_the_rebuild(tmp_path):
    with pytest.raises(BundleError, match="model.plan.json: missing build record.*--format engine"):
        read_plan_sidecar(tmp_path / "model.plan")


def test_atomic_write_leaves_no_temp_files(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    atomic_write_text(target, "hello")
    assert target.read_text() == "hello"
    assert [p.name for p in target.parent.iterdir()] == ["a.txt"]


# ---------------------------------------------------------------------------------------------- the preprocess record


def v1_doc(**changes):
    """A document as format 1 wrote it: the preprocessing as flat fields, the interpolation in extra."""
    doc = {"format_version": 1, "class_names": ["cat", "dog"], "input_size": [224, 224], "patch_grid": [14, 14],
           "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "input_layout": "NHWC", "input_dtype": "uint8",
           "channel_order": "RGB", "normalize_in_graph": True, "map_kind": "cam", "method": "cam",
           "threshold": 0.4, "extra": {"epoch": 3, "resize_interpolation": "area"}}
    return {**doc, **changes}


def test_format_1_documents_load_into_the_record():
    meta = BundleMeta.from_dict(v1_doc(), "old.onnx")
    assert meta.preprocess == Preprocess(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), interpolation="area")
    assert meta.extra == {"epoch": 3} and meta.map_kind == "cam" and meta.threshold == 0.4
    doc = json.loads(meta.to_json())  # written back in the current format, with the record nested
    assert doc["format_version"] == FORMAT_VERSION == 2 and doc["preprocess"]["interpolation"] == "area"
    assert not {"mean", "std", "input_layout", "channel_order", "map_kind"} & set(doc)
    assert BundleMeta.from_json(meta.to_json()) == meta


def test_record_round_trip_and_map_kind():
    meta = _meta(preprocess=Preprocess(mean=(0.1, 0.2, 0.3), channel_order="BGR", interpolation="bicubic"))
    assert BundleMeta.from_json(meta.to_json()) == meta and meta.map_kind == "probability"
    assert isinstance(BundleMeta.from_json(meta.to_json()).preprocess.mean, tuple)


@pytest.mark.parametrize("changes, message", [
    ({"std": [0.229, 0.0, 0.225]}, r"std \(0.229, 0.0, 0.225\) has a zero entry"),
    ({"mean": [0.5, 0.5]}, "must be 3 finite numbers"),
    ({"input_layout": "NCHW"}, "input NCHW uint8 .* is not what the runtime feeds"),
    ({"input_dtype": "float32"}, "input NHWC float32 .* is not what the runtime feeds"),
    ({"normalize_in_graph": False}, "normalize_in_graph=False is not what the runtime feeds"),
    ({"channel_order": "GBR"}, "channel order 'GBR'"),
    ({"extra": {"resize_interpolation": "lanczos"}}, "interpolation 'lanczos' is not one of bilinear, area, bicubic"),
])
def test_record_values_the_runtime_cannot_feed_are_refused_at_load(changes, message):
    with pytest.raises(BundleError, match=f"^m.onnx: preprocess: .*{message}.*re-export") as info:
        BundleMeta.from_dict(v1_doc(**changes), "m.onnx")
    assert "\n" not in str(info.value)


def test_zero_std_is_refused_in_a_current_document_and_in_code():
    doc = json.loads(_meta().to_json())
    doc["preprocess"]["std"] = [0.5, 0.5, 0]
    with pytest.raises(BundleError, match=r"m.plan.json: preprocess: std \(0.5, 0.5, 0.0\) has a zero entry"):
        BundleMeta.from_dict(doc, "m.plan.json")
    with pytest.raises(BundleError, match="zero entry"):
        Preprocess(std=(1.0, 0.0, 1.0))
