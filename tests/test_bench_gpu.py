"""benchmarks/bench_gpu.py: the CPU pipeline end to end at a tiny size, its one-line CUDA refusal, and on a GPU
the CUDA rows (CUDA graphs included) with parity against ONNX Runtime CPU fp32."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("onnx")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"
TINY = ["--backbones", "tf_efficientnet_lite0", "--input-size", "64", "--classes", "5", "--calib-images", "8", "--parity-images", "4"]


def load_bench():
    """The script as a module (registered first: its dataclass resolves annotations through sys.modules)."""
    if "bench_gpu" in sys.modules:
        return sys.modules["bench_gpu"]
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = module
    spec.loader.exec_module(module)
    return module


def cuda_ready() -> bool:
    import onnxruntime as ort
    import torch

    return torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers()


def run_json(tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / "report.json"
    md = tmp_path / "report.md"
    assert load_bench().main([*TINY, *extra, "--out", str(tmp_path / "onnx"), "--json", str(out), "--markdown", str(md)]) == 0
    assert md.read_text().count("| tf_efficientnet_lite0 |") == len(json.loads(out.read_text())["rows"])
    return json.loads(out.read_text())


def by_key(report: dict) -> dict[tuple[str, str, int], dict]:
    return {(r["engine"], r["precision"], r["batch"]): r for r in report["rows"]}


def test_cpu_rows_ratios_and_parity(tmp_path, capsys):
    report = run_json(tmp_path, "--device", "cpu", "--batches", "1,2", "--seconds", "0.2")
    rows = by_key(report)
    expected = {(e, p, b) for b in (1, 2) for e, p in [("torch-eager", "fp32"), ("ort-cpu", "fp32"), ("ort-cpu", "fp16"), ("ort-cpu", "int8")]}
    assert set(rows) == expected and report["skipped"] == []
    for row in rows.values():
        assert row["images_per_s"] > 0 and row["calls"] >= 5 and 0 < row["p50_ms"] <= row["p99_ms"]
        assert row["baseline"] == "torch-eager fp32" and row["ratio"] > 0
        par = row["parity"]
        assert par["finite"] and set(par) >= {"fg_map_max_abs", "logits_max_abs", "top1_agree_pct", "boxes_within_1px_pct", "box_iou_min"}
    for b in (1, 2):
        assert rows[("torch-eager", "fp32", b)]["ratio"] == 1.0
        torch_vs_ort = rows[("torch-eager", "fp32", b)]["parity"]
        assert torch_vs_ort["logits_max_abs"] < 1e-3 and torch_vs_ort["fg_map_max_abs"] < 1e-4
        assert torch_vs_ort["top1_agree_pct"] == 100 and torch_vs_ort["boxes_within_1px_pct"] == 100
        assert rows[("ort-cpu", "fp32", b)]["parity"]["logits_max_abs"] < 1e-4
        assert rows[("ort-cpu", "fp16", b)]["parity"]["logits_max_abs"] < 0.5  # logits are cosines / 0.1
    assert report["targets"] == [] and report["backbones"]["tf_efficientnet_lite0"]["weights"]
    assert set(report["backbones"]["tf_efficientnet_lite0"]["files"]) == {"fp32", "fp16", "int8"}
    printed = capsys.readouterr().out
    assert "reproduce: HF_HUB_OFFLINE=1 python benchmarks/bench_gpu.py" in printed and "--device cpu" in report["command"]


def test_cuda_without_cuda_is_one_line(tmp_path):
    if cuda_ready():
        pytest.skip("this machine has CUDA for torch and onnxruntime")
    with pytest.raises(SystemExit) as info:
        load_bench().main([*TINY, "--device", "cuda", "--out", str(tmp_path)])
    message = str(info.value.code)
    assert message.startswith("error: --device cuda needs") and "\n" not in message
    assert "onnxruntime-gpu" in message or "torch" in message
    assert not any(tmp_path.iterdir())  # refused before building anything


def test_bad_arguments_exit_cleanly():
    bench = load_bench()
    for bad in (["--batches", "0,1"], ["--batches", "one"], ["--seconds", "0"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)
    with pytest.raises(SystemExit):
        bench.parse_args(["--ort-cuda-options", "prefer_nhwc"])
    args = bench.parse_args(["--classes", "200", "--device", "cpu"])
    assert args.embed_dim == 200 and args.int8_mode == "cpu" and args.batch_list == [1, 8, 64] and args.cuda_options == {}
    args = bench.parse_args(["--ort-cuda-options", "prefer_nhwc=1, cudnn_conv_algo_search=HEURISTIC"])
    assert args.cuda_options == {"prefer_nhwc": "1", "cudnn_conv_algo_search": "HEURISTIC"}
    assert "--ort-cuda-options prefer_nhwc=1,cudnn_conv_algo_search=HEURISTIC" in bench.reproduce_command(args)


@pytest.mark.gpu
def test_cuda_rows_graphs_and_parity(tmp_path):
    if not cuda_ready():
        pytest.skip("needs torch.cuda and onnxruntime-gpu's CUDAExecutionProvider")
    report = run_json(tmp_path, "--device", "cuda", "--batches", "1,8", "--seconds", "0.5", "--input-size", "224", "--classes", "20")
    rows = by_key(report)
    for b in (1, 8):
        assert ("torch-cudagraph", "fp16", b) in rows and ("ort-cuda-graph", "fp32", b) in rows and ("ort-cuda", "fp32", b) in rows
        assert rows[("torch-cudagraph", "fp16", b)]["ratio"] == 1.0
        for engine in ("ort-cuda", "ort-cuda-graph"):
            par = rows[(engine, "fp32", b)]["parity"]
            assert par["top1_agree_pct"] == 100 and par["boxes_within_1px_pct"] == 100, (engine, b, par)
    assert report["machine"]["gpu"] and [t["batch"] for t in report["targets"]] == [1, 64]


@pytest.mark.filterwarnings("ignore:Duplicate provider")  # the CPU EP stands in for the CUDA EP, so it is listed twice
def test_cuda_probe_model_loads_in_this_onnxruntime(monkeypatch):
    """The probe's one-node model must load in any onnxruntime the GPU machine carries (its IR version is
    pinned: onnx 1.23 writes IR 14, which onnxruntime 1.31 refuses); run on the CPU EP as a stand-in."""
    bench = load_bench()
    monkeypatch.setattr(bench, "CUDA_EP", bench.CPU_EP)
    assert bench.probe_ort_cuda() == [bench.CPU_EP]  # the session ran on the (stand-in) EP it asked for
