import json

import pytest

from tedloc_edge.bundle import (
    FORMAT_VERSION,
    BundleError,
    BundleMeta,
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
