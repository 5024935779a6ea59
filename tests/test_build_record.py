"""The TensorRT build record and its compatibility check (pure python: runs on any machine, no GPU)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tedloc_edge.build_record import (
    BuildRecordError,
    check_build_record,
    make_build_record,
    normalize_compute_capability,
    version_tuple,
)
from tedloc_edge.bundle import BundleError, BundleMeta, read_plan_sidecar, write_plan_sidecar

REBUILD = "tedloc-edge export runs/t/export/model_fp16.onnx --format engine --batch-min 1 --batch-opt 1 --batch-max 8"


def record(version: str = "10.13.3.9", cc: str = "8.7", **kw) -> dict:
    return make_build_record(
        tensorrt_version=version, gpu_name="Orin", compute_capability=cc, cuda_version="12.6",
        precision="fp16", input_shapes={"images": {"min": [1, 224, 224, 3], "opt": [1, 224, 224, 3], "max": [8, 224, 224, 3]}},
        onnx_sha256="ab" * 32, workspace_bytes=1 << 31, rebuild=REBUILD, built_at="2026-11-25T00:00:00+00:00", **kw,
    )


def test_same_version_and_gpu_pass():
    check_build_record(record(), "10.13.3.9", (8, 7))
    check_build_record(record(), "10.13.3.9.post1", "sm_87")  # build number and wheel tags are not compared


def test_other_major_version_is_refused_with_the_rebuild_command():
    with pytest.raises(BuildRecordError) as err:
        check_build_record(record("10.13.3.9"), "11.4.0.106", "8.7", source="model.plan")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("model.plan: ")
    assert "TensorRT 10.13.3.9 (major 10)" in msg and "11.4.0.106 (major 11)" in msg
    assert msg.endswith(REBUILD)


def test_other_minor_version_is_refused():
    with pytest.raises(BuildRecordError, match="plans load only on the release that built them"):
        check_build_record(record("10.13.3.9"), "10.7.0.23", "8.7")


def test_other_compute_capability_is_refused():
    with pytest.raises(BuildRecordError) as err:
        check_build_record(record(cc="8.7"), "10.13.3.9", "9.0")
    assert "compute capability 8.7 (Orin), this GPU is 9.0" in str(err.value)
    assert REBUILD in str(err.value)


def test_incomplete_record_is_refused():
    rec = record()
    del rec["onnx_sha256"]
    with pytest.raises(BuildRecordError, match="lacks onnx_sha256"):
        check_build_record(rec, "10.13.3.9", "8.7")


def test_old_record_without_command_gets_a_generic_one():
    rec = record()
    del rec["rebuild_command"]
    with pytest.raises(BuildRecordError, match="tedloc-edge export RUN --format engine --precision fp16"):
        check_build_record(rec, "11.4.0", "8.7")


@pytest.mark.parametrize("raw, want", [("8.7", "8.7"), ((8, 7), "8.7"), ("sm_87", "8.7"), ("87", "8.7"), (12.1, "12.1"), ("100", "10.0")])
def test_compute_capability_forms(raw, want):
    assert normalize_compute_capability(raw) == want


def test_bad_compute_capability():
    with pytest.raises(BuildRecordError):
        normalize_compute_capability("ampere")


def test_version_tuple():
    assert version_tuple("10.13.3.9.post1") == (10, 13, 3, 9)
    assert version_tuple("11.4.0.106") == (11, 4, 0, 106)


def test_record_travels_in_the_plan_sidecar(tmp_path):
    meta = BundleMeta(class_names=("a", "b"), input_size=(224, 224), patch_grid=(14, 14), precision="fp16")
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"plan")
    write_plan_sidecar(plan, meta, record())
    meta2, build = read_plan_sidecar(plan)
    assert meta2 == meta and build == record()
    check_build_record(build, "10.13.3.9", "8.7")
    assert isinstance(BuildRecordError("x"), BundleError)  # the CLI's user_errors() prints it as one line


def test_core_module_is_pure_python():
    code = "import sys, tedloc_edge.build_record; print(sorted(m for m in ('numpy', 'torch', 'tensorrt') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
