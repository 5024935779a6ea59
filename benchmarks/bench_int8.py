"""INT8 calibrators measured, not assumed: each mode x calibrator on the same run, images and gate, in one run.

    python benchmarks/bench_int8.py RUN [--modes cpu,tensorrt] [--calibrators minmax-mean,minmax,percentile,entropy]
        [--modelopt-python PY] [--calib-images 200] [--cache-dir DIR] [--json OUT]

Per row: calibration seconds; the gate's figures on val (MaxBoxAcc and Top-1 Loc drops in points, the images
lost/gained, pass at the 1-point rule); the same drops on test; label-free errors on val against fp32 (min-max
normalized fg_map, KL of the class posterior, top-1 agreement: `export/int8_search.py`); images/s of the int8
model beside the fp32 ONNX (ONNX Runtime CPU, batch 8, rounds interleaved, medians). No layer is kept float:
this is the calibrator alone. The calibrators are ONNX Runtime's (`export/int8.py` CALIBRATORS); with
``--modelopt-python`` the TensorRT placement is also quantized by NVIDIA Model Optimizer's ONNX PTQ
(`modelopt.onnx.quantization.quantize`, max and entropy calibration, fp32 elsewhere) in that interpreter:
nvidia-modelopt[onnx] pins onnxruntime-gpu and another onnx, so it lives in its own virtual environment.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="training run folder (or, with --modelopt-worker, the fp32 ONNX)")
    parser.add_argument("--modes", default="cpu,tensorrt")
    parser.add_argument("--calibrators", default="minmax-mean,minmax,percentile,entropy")
    parser.add_argument("--modelopt-python", default=None, help="python of a venv with nvidia-modelopt[onnx]")
    parser.add_argument("--calib-images", type=int, default=200)
    parser.add_argument("--cache-dir", type=Path, default=None, help="keep calibration caches here (reused when present)")
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--modelopt-worker", nargs=4, metavar=("CALIB_NPY", "EXCLUDE_JSON", "METHOD", "OUT"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def modelopt_worker(fp32: Path, calib: Path, exclude: Path, method: str, out: Path) -> None:
    """Runs in the modelopt interpreter: NVIDIA's ONNX PTQ, int8, TensorRT placement, fp32 outside Q/DQ."""
    from modelopt.onnx.quantization import quantize

    quantize(str(fp32), quantize_mode="int8", calibration_data={"images": np.load(calib)}, calibration_method=method,
             calibration_eps=["cpu"], nodes_to_exclude=json.loads(exclude.read_text()), high_precision_dtype="fp32",
             output_path=str(out), log_level="WARNING")


def run_modelopt(python: str, fp32_path: Path, calib: np.ndarray, head: list[str], method: str, folder: Path) -> tuple[Path, float]:
    np.save(folder / "calib.npy", calib)
    (folder / "exclude.json").write_text(json.dumps([f"^{re.escape(n)}$" for n in head]))
    out = folder / f"modelopt_{method}.onnx"
    start = time.perf_counter()
    subprocess.run([python, __file__, str(fp32_path), "--modelopt-worker", str(folder / "calib.npy"), str(folder / "exclude.json"),
                    method, str(out)], check=True)
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.modelopt_worker:
        calib, exclude, method, out = args.modelopt_worker
        modelopt_worker(args.run, Path(calib), Path(exclude), method, Path(out))
        return 0
    import onnx

    from tedloc_edge.bundle import read_onnx_meta
    from tedloc_edge.console import setup_logging
    from tedloc_edge.datasets import open_split
    from tedloc_edge.export.images import batch_hash, load_batch, run_data_root, split_paths, spread
    from tedloc_edge.export.int8 import Int8Quantizer
    from tedloc_edge.export.int8_gate import evaluate_model, score_gate
    from tedloc_edge.export.int8_search import images_per_second, output_errors, run_model
    from tedloc_edge.export.onnx_export import export_to_proto, set_metadata
    from tedloc_edge.train.predict import load_run

    setup_logging(False)
    model, meta = load_run(args.run)
    fp32 = export_to_proto(model, meta.replace(precision="fp32"))
    folder = Path(tempfile.mkdtemp(prefix="bench-int8-"))
    fp32_path = folder / "fp32.onnx"
    onnx.save_model(fp32, str(fp32_path))
    paths = spread(split_paths(args.run, "train", "calibration images"), args.calib_images)
    calib = load_batch(paths, meta)
    root = run_data_root(args.run)
    val, test = open_split(root, "val"), open_split(root, "test")
    val_images = load_batch([s.path for s in val.samples], meta)
    ref = run_model(fp32_path, val_images)
    val_fp32, test_fp32 = evaluate_model(fp32_path, val), evaluate_model(fp32_path, test)
    made: list[tuple[str, str, Path, float]] = []
    for mode in args.modes.split(","):
        for name in args.calibrators.split(","):
            cache = args.cache_dir / f"{args.run.name}_{mode}_{name}.json" if args.cache_dir else None
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
            cached = cache is not None and cache.is_file()
            start = time.perf_counter()
            with Int8Quantizer(fp32, meta, calib, batch_hash(calib, paths), mode, name, cache=cache) as quantizer:
                proto = quantizer.quantize()
                head = quantizer.head
            timing = cache.with_suffix(".seconds") if cache is not None else None
            if cached:  # the calibration seconds of the run that wrote the cache
                seconds = float(timing.read_text()) if timing is not None and timing.is_file() else float("nan")
            else:
                seconds = quantizer.calibration_seconds
                if timing is not None:
                    timing.write_text(f"{seconds:.1f}")
            path = folder / f"{mode}_{name}.onnx"
            onnx.save_model(proto, str(path))
            made.append((mode, name, path, seconds))
            print(f"{mode} {name}: {time.perf_counter() - start:.0f} s", flush=True)
    if args.modelopt_python and "tensorrt" in args.modes.split(","):
        for method in ("max", "entropy"):
            out, seconds = run_modelopt(args.modelopt_python, fp32_path, calib, head, method, folder)
            proto = set_metadata(onnx.load(str(out)), read_onnx_meta(made[0][2]).replace(extra={**meta.extra, "int8_mode": "tensorrt"}))
            onnx.save_model(proto, str(out))
            made.append(("tensorrt", f"modelopt {method}", out, seconds))
    rows = []
    for mode, name, path, seconds in made:
        gate_val = score_gate(val_fp32, path, val, 1.0)
        gate_test = score_gate(test_fp32, path, test, 1.0)
        got = run_model(path, val_images)
        map_err, kl = output_errors(ref, got)
        rows.append({"mode": mode, "calibrator": name, "calibration_s": seconds, "val": gate_val.to_dict(), "val_drops": gate_val.drops,
                     "passed": gate_val.passed, "test_drops": gate_test.drops, "map_err": map_err, "kl": kl,
                     "top1_agree": float((got[1].argmax(1) == ref[1].argmax(1)).mean()), "path": str(path)})
    batch = val_images[:8]
    protos = [onnx.load(str(fp32_path))] + [onnx.load(r["path"]) for r in rows]
    rates = images_per_second(protos, batch, args.rounds, args.seconds)
    print(f"\n{args.run} | calibration {len(calib)} train images | val {len(val)}, test {len(test)} images | "
          f"fp32 ONNX {rates[0]:.1f} img/s (batch 8)\n")
    print("| mode | calibrator | calibration s | val MaxBoxAcc drop | val Top-1 Loc drop (lost/gained) | 1-point gate | "
          "test MaxBoxAcc drop | test Top-1 Loc drop | fg_map err | logits KL | top-1 agree | img/s (vs fp32 ONNX) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r, rate in zip(rows, rates[1:]):
        lost, gained = r["val"]["flips"]["top1_loc"]["lost"], r["val"]["flips"]["top1_loc"]["gained"]
        print(f"| {r['mode']} | {r['calibrator']} | {r['calibration_s']:.0f} | {r['val_drops']['maxboxacc']:+.2f} | "
              f"{r['val_drops']['top1_loc']:+.2f} ({lost}/{gained}) | {'pass' if r['passed'] else 'fail'} | "
              f"{r['test_drops']['maxboxacc']:+.2f} | {r['test_drops']['top1_loc']:+.2f} | {r['map_err']:.4f} | {r['kl']:.4f} | "
              f"{r['top1_agree']:.3f} | {rate:.1f} ({rate / rates[0]:.2f}x) |")
        r["img_s"] = rate
    if args.json:
        args.json.write_text(json.dumps({"run": str(args.run), "fp32_img_s": rates[0], "rows": rows}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
