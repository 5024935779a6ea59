"""The export's graph rewrites against onnxslim and onnxsim, and its comparator against Polygraphy's, in one run.

    python benchmarks/bench_graph.py RUN [--calib-images 200] [--batch 8] [--seconds 2] [--rounds 3] [--json OUT]

Graphs (all from the same torch trace of the run's model, TorchScript exporter, opset 17):
- ``torch export``: the trace with torch's constant folding only;
- ``hand-written``: the project's former rewrites (shape folding, Pad -> Conv pads, normalization; git
  6b81f25: read with `git show`, so this row needs the repository's history);
- ``onnxslim`` / ``onnxsim``: the libraries on the trace, at their defaults (the batch stays dynamic);
- ``<lib> + normalization``: the library, then the project's normalization-into-first-Conv rewrite; ``onnxsim +
  normalization`` is what `tedloc_edge.export.graph_opt.optimize_graph` ships (onnxsim with its batched-Gemm
  fusion skipped, as shipped).
Per graph: nodes, Shape and Pad nodes, max abs difference from torch on the val images (and whether the
decoded boxes and top-1 classes are identical: `export/verify.py`), fp32 img/s, and the cpu-mode INT8 model's
DequantizeLinear / QLinearConv counts in ONNX Runtime's optimized graph and its speed (rounds interleaved,
medians, one batch of real val images; one ONNX Runtime thread by default, timed in images per CPU-second of
the process, which the load of other jobs on a shared machine does not enter).
Then Polygraphy's `Comparator` on torch-vs-ONNX outputs of the shipped graph beside `verify.compare`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="training run folder")
    parser.add_argument("--calib-images", type=int, default=200)
    parser.add_argument("--verify-images", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per speed measurement and round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads for the speeds (0: its default)")
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def trace(model: Any, meta: Any) -> Any:
    """The torch trace without the project's rewrites (export_to_proto with optimize_graph made the identity)."""
    from tedloc_edge.export import onnx_export

    saved = onnx_export.optimize_graph
    onnx_export.optimize_graph = lambda proto: (proto, None)  # type: ignore[assignment]
    try:
        return onnx_export.export_to_proto(model, meta.replace(precision="fp32"))
    finally:
        onnx_export.optimize_graph = saved  # type: ignore[assignment]


def with_normalization(proto: Any) -> Any:
    import onnx

    from tedloc_edge.export.graph_opt import fold_input_normalization
    from tedloc_edge.export.graph_utils import remove_dead_nodes

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    fold_input_normalization(out.graph)
    remove_dead_nodes(out.graph)
    return out


HAND_WRITTEN = "6b81f25"  # the last commit with the hand-written shape folding


def hand_written(raw: Any) -> Any:
    """The former `optimize_graph` (graph_opt, shape_fold, graph_utils at HAND_WRITTEN), loaded from git."""
    import importlib
    import subprocess

    root = Path(__file__).resolve().parent.parent
    folder = Path(tempfile.mkdtemp(prefix="hand-written-")) / "hand_written"
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    for name in ("graph_opt", "shape_fold", "graph_utils"):
        text = subprocess.run(["git", "-C", str(root), "show", f"{HAND_WRITTEN}:export/{name}.py"], check=True,
                              capture_output=True, text=True).stdout
        (folder / f"{name}.py").write_text(text.replace("tedloc_edge.export.", "hand_written."))
    sys.path.insert(0, str(folder.parent))
    try:
        return importlib.import_module("hand_written.graph_opt").optimize_graph(raw)[0]
    finally:
        sys.path.remove(str(folder.parent))


def variants(raw: Any) -> dict[str, Callable[[], Any]]:
    import onnxslim
    import onnxsim

    def slim() -> Any:
        return onnxslim.slim(raw)

    def sim() -> Any:
        from tedloc_edge.export.graph_opt import SKIPPED

        model, ok = onnxsim.simplify(raw, skipped_optimizers=SKIPPED)
        if not ok:
            raise RuntimeError("onnxsim's own check failed")
        return model

    return {
        "torch export": lambda: raw,
        "hand-written (before)": lambda: hand_written(raw),
        "onnxslim": slim,
        "onnxsim": sim,
        "onnxslim + normalization": lambda: with_normalization(slim()),
        "onnxsim + normalization (shipped)": lambda: with_normalization(sim()),
    }


def optimized_ops(path: Path) -> list[str]:
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.optimized_model_filepath = str(Path(tmp, "opt.onnx"))
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]


def speeds(paths: list[Path], batch: np.ndarray, seconds: float, rounds: int, threads: int) -> list[float]:
    import onnxruntime as ort

    from tedloc_edge.export.int8_search import session_rates

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sessions = [ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for p in paths]
    # one thread: images per CPU-second of this process, which other jobs on a shared machine do not enter
    clock = time.process_time if threads == 1 else time.perf_counter
    return session_rates(sessions, batch, rounds, seconds, clock)


def polygraphy_check(model: Any, path: Path, meta: Any, images: np.ndarray) -> dict[str, Any]:
    """Polygraphy's comparator (ONNX Runtime runner vs the torch outputs fed as a second run) beside verify.compare."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import CompareFunc, Comparator, RunResults
    from polygraphy.comparator.struct import IterationResult

    from tedloc_edge.export.verify import TOLERANCES, compare, run_batched, torch_runner

    batches = [images[i : i + 8] for i in range(0, len(images), 8)]
    start = time.perf_counter()
    ref_iters = [IterationResult(torch_runner(model)(b), runner_name="torch") for b in batches]
    torch_s = time.perf_counter() - start
    start = time.perf_counter()
    with OnnxrtRunner(SessionFromOnnx(str(path), providers=["cpu"]), name="onnxruntime") as runner:
        ort_iters = [IterationResult(dict(runner.infer({"images": b})), runner_name="onnxruntime") for b in batches]
    results = RunResults([("torch", ref_iters), ("onnxruntime", ort_iters)])
    tol = TOLERANCES["fp32"]
    import polygraphy.comparator as comparator

    simple = getattr(comparator, "SimpleCompareFunc", None) or CompareFunc.simple  # the name since 0.53
    accuracy = Comparator.compare_accuracy(results, compare_func=simple(atol=tol.atol, rtol=tol.rtol, check_error_stat="max"))
    poly_s = time.perf_counter() - start
    start = time.perf_counter()
    ref = run_batched(torch_runner(model), images)
    got = run_batched(lambda b: {k: np.asarray(v) for k, v in zip(("fg_map", "logits"), _ort(path)(b))}, images)
    ours = compare(ref, got, meta, "fp32")
    ours_s = time.perf_counter() - start
    return {
        "polygraphy_passed": bool(accuracy), "polygraphy_s": round(poly_s, 2), "torch_s": round(torch_s, 2),
        "verify_passed": ours.passed, "verify_s": round(ours_s, 2), "verify_summary": ours.summary(),
    }


def _ort(path: Path) -> Callable[[np.ndarray], list[np.ndarray]]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda batch: session.run(["fg_map", "logits"], {"images": batch})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import onnx

    from tedloc_edge.console import setup_logging
    from tedloc_edge.export.images import batch_hash, load_batch, split_paths, spread
    from tedloc_edge.export.int8 import Int8Quantizer
    from tedloc_edge.export.verify import verify_export
    from tedloc_edge.train.predict import load_run

    setup_logging(False)
    model, meta = load_run(args.run)
    val = load_batch(spread(split_paths(args.run, "val", "verification images"), args.verify_images), meta)
    calib_paths = spread(split_paths(args.run, "train", "calibration images"), args.calib_images)
    calib = load_batch(calib_paths, meta)
    raw = trace(model, meta)
    rows, paths, int8_paths = [], [], []
    out = Path(tempfile.mkdtemp(prefix="bench-graph-"))
    for name, make in variants(raw).items():
        start = time.perf_counter()
        try:
            proto = make()
        except Exception as exc:  # noqa: BLE001 - a library that fails on this graph is a finding, not a crash
            rows.append({"graph": name, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"})
            continue
        seconds = time.perf_counter() - start
        path = out / f"{len(paths)}.onnx"
        onnx.save_model(proto, str(path))
        report = verify_export(model, path, meta, val, "fp32")
        ops = [n.op_type for n in proto.graph.node]
        with Int8Quantizer(proto, meta, calib, batch_hash(calib, calib_paths), "cpu") as quantizer:
            int8 = out / f"{len(paths)}_int8.onnx"
            onnx.save_model(quantizer.quantize(), str(int8))
        fused = optimized_ops(int8)
        rows.append({
            "graph": name, "seconds": round(seconds, 2), "nodes": len(ops), "shape_nodes": ops.count("Shape"), "pads": ops.count("Pad"),
            "fg_map_max_abs": report.outputs[0].max_abs, "logits_max_abs": report.outputs[1].max_abs,
            "boxes_identical": f"{report.boxes_identical}/{report.num_images}", "top1_agree": f"{report.top1_agree}/{report.num_images}",
            "int8_dq": fused.count("DequantizeLinear"), "int8_qlinearconv": fused.count("QLinearConv"),
        })
        paths.append(path)
        int8_paths.append(int8)
    batch = val[: args.batch]
    rates = speeds(paths + int8_paths, batch, args.seconds, args.rounds, args.threads)
    ok = [r for r in rows if "error" not in r]
    for row, fp32_rate, int8_rate in zip(ok, rates[: len(paths)], rates[len(paths) :]):
        row["fp32_img_s"], row["int8_img_s"] = round(fp32_rate, 1), round(int8_rate, 1)
    unit = "img per CPU-second" if args.threads == 1 else "img/s"
    print(f"\n{args.run} | {len(val)} val images | batch {args.batch} | {args.threads or 'default'} thread(s), {unit} | "
          f"{args.rounds} rounds x {args.seconds} s, medians\n")
    print("| graph | nodes | Shape | Pad | fg_map max abs vs torch | logits max abs | boxes identical | top-1 agree | "
          "fp32 img/s | INT8 DequantizeLinear left | INT8 QLinearConv | INT8 img/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['graph']} | failed: {r['error']} |")
            continue
        print(f"| {r['graph']} | {r['nodes']} | {r['shape_nodes']} | {r['pads']} | {r['fg_map_max_abs']:.1e} | {r['logits_max_abs']:.1e} | "
              f"{r['boxes_identical']} | {r['top1_agree']} | {r['fp32_img_s']} | {r['int8_dq']} | {r['int8_qlinearconv']} | {r['int8_img_s']} |")
    poly = polygraphy_check(model, paths[-1], meta, val)
    print(f"\nPolygraphy Comparator (shipped graph, {len(val)} val images, atol/rtol of verify's fp32): passed "
          f"{poly['polygraphy_passed']} in {poly['polygraphy_s']} s (+ torch {poly['torch_s']} s); export/verify.py: passed "
          f"{poly['verify_passed']} in {poly['verify_s']} s: {poly['verify_summary']}")
    if args.json:
        args.json.write_text(json.dumps({"run": str(args.run), "rows": rows, "polygraphy": poly}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
