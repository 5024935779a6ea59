"""The export format table: one source of truth, close-match hints, options a format does not take."""

from __future__ import annotations

import pytest

from tedloc_edge.errors import UserError
from tedloc_edge.export.formats import FORMATS, check_batch_range, check_options, check_precision, get_format


def test_table():
    assert set(FORMATS) == {"onnx", "engine", "triton"}
    assert FORMATS["engine"].needs_gpu and not FORMATS["onnx"].needs_gpu
    assert get_format("TensorRT").name == "engine" and get_format("plan").suffix == ".plan"


def test_unknown_format_gets_a_hint():
    with pytest.raises(UserError, match=r"unknown export format 'onxx': choose one of onnx, engine, triton; did you mean 'onnx'\?"):
        get_format("onxx")


def test_unknown_precision_gets_a_hint():
    with pytest.raises(UserError, match="did you mean 'int8'"):
        check_precision(FORMATS["onnx"], "int9")
    assert check_precision(FORMATS["engine"], "FP16") == "fp16"


def test_option_for_another_format_is_rejected():
    with pytest.raises(UserError, match=r"--batch-max does not apply to --format onnx \(it applies to --format engine or triton\)"):
        check_options(FORMATS["onnx"], {"batch_max": 8})
    check_options(FORMATS["onnx"], {"batch_max": None, "opset": 17})  # unset options are fine
    check_options(FORMATS["engine"], {"batch_max": 8, "workspace_gib": 1.0})


def test_batch_range():
    assert check_batch_range(1, 4, 8) == (1, 4, 8)
    with pytest.raises(UserError, match="1 <= min <= opt <= max"):
        check_batch_range(4, 2, 8)


def test_export_cli_import_is_light():
    """`tedloc-edge --help` imports the export CLI: that must not pull torch, onnx or onnxruntime."""
    import subprocess
    import sys

    code = ("import sys, tedloc_edge.export.cli, tedloc_edge.export; "
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'tensorrt') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
