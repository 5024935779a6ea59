"""`tedloc-edge bench`: rows per model/backend/batch, percentiles per stage, ratios from one run, JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from runtime_models import fixture_meta, write_model
from typer.testing import CliRunner

from tedloc_edge.errors import UserError
from tedloc_edge.runtime.bench import BenchOptions, add_ratios, percentiles, run_bench, synthetic_frames, write_json


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    fp32 = write_model(folder / "fp32.onnx")
    other = write_model(folder / "fp16.onnx", meta=fixture_meta(precision="fp16"))
    return fp32, other


def test_rows_ratios_and_json(models, tmp_path):
    report = run_bench(BenchOptions(models=list(models), batches=[1, 2], seconds=0.2, device="cpu", frame_size="320x240"))
    rows = report["rows"]
    assert [(r["precision"], r["batch"]) for r in rows] == [("fp32", 1), ("fp32", 2), ("fp16", 1), ("fp16", 2)]
    for row in rows:
        assert row["backend"] == "onnxruntime-cpu" and row["images_per_s"] > 0 and row["calls"] >= 5
        assert set(row["stages_ms"]) == {"preprocess", "inference", "postprocess", "total"}
        assert row["latency_p50_ms"] <= row["latency_p90_ms"] <= row["latency_p99_ms"]
        assert 0 < row["postprocess_share_pct"] < 100
    assert rows[0]["ratio"] == rows[1]["ratio"] == 1.0  # the first model is the baseline at each batch
    path = tmp_path / "bench.json"
    write_json(report, path)
    assert json.loads(path.read_text())["rows"][2]["baseline"] == "onnxruntime-cpu fp32"


def test_torch_rows_become_the_baseline():
    rows = [
        {"backend": "onnxruntime-cpu", "precision": "int8", "batch": 1, "images_per_s": 40.0},
        {"backend": "torch-eager-cpu", "precision": "fp32", "batch": 1, "images_per_s": 10.0},
    ]
    add_ratios(rows)
    assert rows[0]["ratio"] == 4.0 and rows[0]["baseline"] == "torch-eager-cpu fp32"


def test_helpers_and_errors():
    assert percentiles([1.0, 2.0, 3.0, 4.0])["p50"] == 2.5
    frames = synthetic_frames(2, "64x48")
    assert frames[0].shape == (48, 64, 3) and not (frames[0] == frames[1]).all()
    with pytest.raises(UserError, match="WIDTHxHEIGHT"):
        synthetic_frames(1, "big")


def test_cli_table_and_batch_parsing(models, tmp_path):
    import typer

    from tedloc_edge.runtime.cli import bench

    app = typer.Typer()
    app.command()(bench)
    runner = CliRunner()
    out = tmp_path / "b.json"
    result = runner.invoke(app, [str(models[0]), "--batch", "1", "--seconds", "0.1", "--json", str(out), "--frame-size", "160x120"])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["rows"][0]["batch"] == 1
    bad = runner.invoke(app, [str(models[0]), "--batch", "one"])
    assert bad.exit_code == 2 and "give batch sizes as integers" in bad.output


def test_cuda_graph_rows_are_added_for_cuda_sessions_only(models, tmp_path):
    from tedloc_edge.runtime.bench import _variants

    assert _variants(Path("m.onnx"), "cuda", True) == [("cuda", False), ("cuda", True)]
    assert _variants(Path("m.onnx"), "cuda", False) == [("cuda", False)]
    assert _variants(Path("m.plan"), "cuda", True) == [("cuda", False)]
    assert _variants(Path("m.onnx"), "cpu", True) == [("cpu", False)]  # no CUDA here: --cuda-graph adds nothing
    report = run_bench(BenchOptions(models=[models[0]], batches=[1], seconds=0.05, device="cpu", cuda_graph=True))
    assert [r["backend"] for r in report["rows"]] == ["onnxruntime-cpu"]


def test_torch_rows_run_where_the_models_run(models, monkeypatch):
    from exportkit import TinyTedLoc, tiny_meta

    from tedloc_edge.runtime.bench import torch_variants
    from tedloc_edge.train import predict

    assert torch_variants("cpu", True) == [("torch-eager-cpu", {"device": "cpu"})]
    assert torch_variants("cuda", False) == [("torch-eager-cpu", {"device": "cpu"})]  # torch without CUDA
    on_gpu = torch_variants("cuda", True)
    assert [(name, opts.get("precision", "fp32"), opts.get("cuda_graph", False)) for name, opts in on_gpu] == [
        ("torch-eager-cuda", "fp32", False), ("torch-eager-cuda", "fp16", False), ("torch-cudagraph-cuda", "fp16", True)]
    monkeypatch.setattr(predict, "load_run", lambda run: (TinyTedLoc().eval(), tiny_meta()))
    report = run_bench(BenchOptions(models=[models[0]], batches=[1, 2], seconds=0.05, device="cpu", run=Path("run"),
                                    frame_size="320x240"))
    torch_rows = [r for r in report["rows"] if r["backend"].startswith("torch")]
    assert [(r["backend"], r["precision"], r["batch"]) for r in torch_rows] == [("torch-eager-cpu", "fp32", 1), ("torch-eager-cpu", "fp32", 2)]
    assert all(r["images_per_s"] > 0 and r["baseline"] == "torch-eager-cpu fp32" for r in report["rows"])
