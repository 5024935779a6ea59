"""fp32 / fp16 / int8 ONNX beside torch eager, in one run: accuracy on a split, model size, CPU images/s.

    python benchmarks/bench_export.py RUN [--split test] [--calib-images 200] [--batch 8] [--seconds 5]
        [--threads 0] [--out RUN/export/bench] [--json bench_export.json]

Each ONNX is made by the real export path (`tedloc_edge.export.exporter.export`: verification against torch
on the val split, int8 calibrated on the train split; the int8 gate is reported, not enforced, so the table
always appears). Accuracy: `tedloc_edge.evaluate.evaluate_predictor` on `--split` with the bundle's stored
threshold for the ``*_at_threshold`` figures; MaxBoxAcc and Top-1 Loc are the protocol's maxima over tau.
Every model runs as a runner under the runtime's `Localizer`: torch eager as `TorchRunner`, the ONNX files on ONNX
Runtime's CPU.
Speed: model forward only (no decode, no resize) on one fixed uint8 batch of real split images, after a
warm-up, repeated for `--seconds`; ``--threads 0`` leaves both frameworks at their defaults.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from tedloc_edge.benchrows import markdown_table, write_json
from tedloc_edge.metric_names import metric_label

if TYPE_CHECKING:
    import torch

    from tedloc_edge.bundle import BundleMeta

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ACCURACY = ("maxboxacc", "top1_loc")  # the metrics of each row


def images_per_second(run: Callable[[np.ndarray], object], batch: np.ndarray, seconds: float) -> float:
    run(batch)  # warm-up (allocations, kernel selection)
    run(batch)
    count, start = 0, time.perf_counter()
    while True:
        run(batch)
        count += len(batch)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return count / elapsed


def torch_size_bytes(model: "torch.nn.Module") -> int:
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def photo_checks(model: "torch.nn.Module", made: dict[str, tuple[Path, float, str]], meta: "BundleMeta") -> list[str]:
    """Each ONNX against torch on real photos shipped with scikit-image (no download), if it is installed."""
    try:
        from skimage import data
    except ImportError:
        return ["scikit-image not installed: no real-photo check"]
    from tedloc_edge.export.verify import verify_export
    from tedloc_edge.runtime.preprocess import Preprocessor

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.camera(), data.immunohistochemistry()]
    batch = Preprocessor(meta.input_size, len(photos))(photos).copy()
    return [verify_export(model, path, meta, batch, precision).summary() + " (scikit-image photos)"
            for precision, (path, _, _) in made.items()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="training run folder")
    parser.add_argument("--split", default="test", help="split to score on (default test)")
    parser.add_argument("--calib-images", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8, help="batch size of the speed measurement")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per speed measurement")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads for torch and ORT (0: defaults)")
    parser.add_argument("--out", type=Path, default=None, help="where the ONNX files go (default RUN/export/bench)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    return parser.parse_args(argv)


def export_all(run: Path, out: Path, calib_images: int) -> dict[str, tuple[Path, float, str]]:
    """precision -> (onnx path, export seconds, verification/gate note)."""
    from tedloc_edge.export.exporter import ExportOptions, export

    made = {}
    for precision in ("fp32", "fp16", "int8"):
        opts = ExportOptions(precision=precision, output=out / f"model_{precision}.onnx", calib_images=calib_images, int8_allow_drop=True)
        start = time.perf_counter()
        result = export(run, opts)
        note = result.verify.summary() if result.verify else ""
        if result.gate is not None:
            note += f" | gate: {result.gate.summary()}"
        made[precision] = (result.final.path, time.perf_counter() - start, note)
    return made


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from tedloc_edge.console import setup_logging
    from tedloc_edge.datasets import open_split
    from tedloc_edge.evaluate import evaluate_predictor
    from tedloc_edge.export.images import load_batch, run_data_root, spread
    from tedloc_edge.runtime import Localizer
    from tedloc_edge.runtime.backends import load_runner
    from tedloc_edge.train.predict import TorchRunner, load_run

    setup_logging(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or args.run / "export" / "bench"
    root = run_data_root(args.run)
    if root is None:
        print(f"{args.run}: its dataset (config.json 'data') is not on this machine", file=sys.stderr)
        return 2
    split = open_split(root, args.split)
    model, meta = load_run(args.run)
    batch = load_batch(spread([s.path for s in split.samples], args.batch), meta)
    made = export_all(args.run, out, args.calib_images)

    rows: list[dict[str, Any]] = []
    report = evaluate_predictor(Localizer(TorchRunner(model, meta)), split, progress=False)
    speed = images_per_second(TorchRunner(model, meta, max_batch=len(batch)).infer, batch, args.seconds)
    rows.append(dict(model="torch eager fp32", file="", size_mb=torch_size_bytes(model) / 1e6, images_per_s=speed,
                     export_s=0.0, note="", **{k: report.metrics[k] for k in ACCURACY}))
    for precision, (path, seconds, note) in made.items():
        report = evaluate_predictor(Localizer(path, backend="onnxruntime", device="cpu"), split, progress=False)
        speed = images_per_second(load_runner(path, "onnxruntime", "cpu", max_batch=len(batch), threads=args.threads).infer,
                                  batch, args.seconds)
        rows.append(dict(model=f"ONNX Runtime CPU {precision}", file=str(path), size_mb=path.stat().st_size / 1e6,
                         images_per_s=speed, export_s=seconds, note=note, **{k: report.metrics[k] for k in ACCURACY}))

    base = float(rows[0]["images_per_s"])
    print(f"\n{args.run} | split {args.split} ({len(split)} images) | batch {args.batch} | threads {args.threads or 'default'}\n")
    columns = ["model", *map(metric_label, ACCURACY), "size (MB)", "images/s", "vs torch"]
    print("\n".join(markdown_table(columns, ([r["model"], *(f"{r[k]:.2f}" for k in ACCURACY), f"{r['size_mb']:.2f}",
                                             f"{r['images_per_s']:.1f}", f"{r['images_per_s'] / base:.2f}x"] for r in rows))))
    print()
    for r in rows[1:]:
        print(f"{r['model']}: {r['note']} (val split)")
    for line in photo_checks(model, made, meta):
        print(line)
    if args.json:
        write_json(args.json, {"run": str(args.run), "split": args.split, "batch": args.batch, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
