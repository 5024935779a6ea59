"""`tedloc-edge bench`: throughput and per-stage latency of each model, backend and batch size, measured in
one run so the ratios between rows mean something. Frames are synthetic (deterministic) at a camera size,
so the resize to the model input is part of "preprocess" as it is in a real pipeline.

Every row times a `Localizer` over a runner: the model files' backends, and with `--run RUN` and torch
importable, the run's torch module as `tedloc_edge.train.predict.TorchRunner` (imported dynamically here only:
the runtime never needs torch): eager fp32 on a CPU; eager fp32, eager fp16 and CUDA-graph fp16 when the models
run on a GPU. Both sides resize, infer and decode through the same Localizer, so they time the same work.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tedloc_edge.bundle import BundleMeta
from tedloc_edge.errors import UserError
from tedloc_edge.files import atomic_write_text
from tedloc_edge.runtime.localizer import Localizer

logger = logging.getLogger(__name__)

STAGES = ("preprocess", "inference", "postprocess", "total")
WARMUP_CALLS = 3


@dataclass
class BenchOptions:
    models: list[Path]
    batches: list[int] = field(default_factory=lambda: [1, 8])
    seconds: float = 5.0
    run: Path | None = None
    device: str = "auto"
    frame_size: str = "1280x720"
    threads: int = 0  # intra-op threads for every backend, torch included, so ratios compare like with like
    cuda_graph: bool = False  # static-batch ONNX on the CUDA EP: a second row with CUDA graphs


def synthetic_frames(n: int, size: str) -> list[np.ndarray]:
    """n deterministic RGB frames: a textured background with one bright object."""
    try:
        width, height = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise UserError(f"--frame-size {size!r}: give WIDTHxHEIGHT, e.g. 1280x720") from None
    rng = np.random.default_rng(0)
    frames = []
    for i in range(n):
        frame = rng.integers(0, 90, (height, width, 3), dtype=np.uint8)
        x0, y0 = (width // 5 + 13 * i) % (width // 2), (height // 5 + 7 * i) % (height // 2)
        frame[y0 : y0 + height // 3, x0 : x0 + width // 3] = (230, 180, 60)
        frames.append(frame)
    return frames


def percentiles(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {f"p{q}": round(float(np.percentile(a, q)), 3) for q in (50, 90, 99)}


def measure(call: Callable[[], dict[str, float]], seconds: float) -> tuple[list[dict[str, float]], float]:
    """Run `call` (returning per-stage ms for one batch) for `seconds` after warm-up; (samples, wall s)."""
    for _ in range(WARMUP_CALLS):
        call()
    samples: list[dict[str, float]] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        stages = call()
        stages["total"] = (time.perf_counter() - t0) * 1e3
        samples.append(stages)
        if time.perf_counter() - start >= seconds and len(samples) >= 5:
            return samples, time.perf_counter() - start


def _row(model: str, backend: str, meta: BundleMeta, batch: int, samples: list[dict[str, float]], wall: float) -> dict[str, Any]:
    stages = {s: percentiles([x[s] for x in samples]) for s in STAGES}
    return {
        "model": model,
        "backend": backend,
        "precision": meta.precision,
        "batch": batch,
        "images_per_s": round(batch * len(samples) / wall, 2),
        "latency_p50_ms": stages["total"]["p50"],
        "latency_p90_ms": stages["total"]["p90"],
        "latency_p99_ms": stages["total"]["p99"],
        "postprocess_share_pct": round(100.0 * stages["postprocess"]["p50"] / stages["total"]["p50"], 3),  # medians: robust to a busy CPU
        "calls": len(samples),
        "stages_ms": stages,
    }


def _ort_has_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def _devices(model: Path, device: str) -> list[str]:
    if device != "auto" or model.suffix.lower() != ".onnx":
        return [device]
    return ["cpu"] + (["cuda"] if _ort_has_cuda() else [])


def _variants(model: Path, device: str, graphs: bool) -> list[tuple[str, bool]]:
    """(device, cuda_graph) pairs to time: with --cuda-graph, each CUDA session also with graphs."""
    pairs = [(d, False) for d in _devices(model, device)]
    if graphs and model.suffix.lower() == ".onnx":  # TensorRT engines: no ORT graph to capture
        pairs += [(d, True) for d, _ in pairs if d == "cuda"]
    return pairs


def bench_localizer(loc: Localizer, frames: list[np.ndarray], batch: int, seconds: float) -> tuple[list[dict[str, float]], float]:
    chunk = frames[:batch]

    def call() -> dict[str, float]:
        results = loc(chunk, color="RGB")
        return {s: sum(r.speed[s] for r in results) for s in ("preprocess", "inference", "postprocess")}

    return measure(call, seconds)


def torch_variants(device: str, cuda_available: bool) -> list[tuple[str, dict[str, Any]]]:
    """(backend name, TorchRunner options) to time: on a GPU what a torch user would run there (eager fp32,
    eager fp16, CUDA-graph fp16), on a CPU eager fp32, so the baseline runs where the exported model runs."""
    if device == "cpu" or not cuda_available:
        return [("torch-eager-cpu", {"device": "cpu"})]
    return [
        ("torch-eager-cuda", {"device": "cuda"}),
        ("torch-eager-cuda", {"device": "cuda", "precision": "fp16"}),
        ("torch-cudagraph-cuda", {"device": "cuda", "precision": "fp16", "cuda_graph": True}),
    ]


def bench_torch(run: Path, frames: list[np.ndarray], batches: list[int], seconds: float, threads: int = 0,
                device: str = "cpu") -> list[dict[str, Any]]:
    try:
        predict = importlib.import_module("tedloc_edge.train.predict")
        torch = importlib.import_module("torch")
    except ImportError as exc:
        logger.warning("--run given but torch eager is not available here (%s); skipping the torch rows", exc)
        return []
    torch.set_num_threads(threads or os.cpu_count() or 1)  # ONNX Runtime's default too: one thread per core
    if device == "cuda" and not torch.cuda.is_available():
        logger.warning("torch here sees no CUDA GPU (torch %s); the torch rows run on the CPU", torch.__version__)
    model, meta = predict.load_run(run)
    rows = []
    for backend, options in torch_variants(device, torch.cuda.is_available()):
        runner = predict.TorchRunner(model, meta, max_batch=max(batches), **options)
        with Localizer(runner) as loc:
            row_meta = meta.replace(precision=runner.precision)
            rows += [_row(str(run), backend, row_meta, batch, *bench_localizer(loc, frames, batch, seconds)) for batch in batches]
    return rows


def _torch_device(opts: BenchOptions) -> str:
    """Where the torch rows run: where the models run (cuda when asked for or, with auto, when ORT has it)."""
    return opts.device if opts.device != "auto" else ("cuda" if _ort_has_cuda() else "cpu")


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """ratio = images/s over the baseline at the same batch: torch eager when measured, else the first row."""
    for row in rows:
        same = [r for r in rows if r["batch"] == row["batch"]]
        base = next((r for r in same if r["backend"].startswith("torch")), same[0])
        row["ratio"] = round(row["images_per_s"] / base["images_per_s"], 2) if base["images_per_s"] else None
        row["baseline"] = f"{base['backend']} {base['precision']}"


def run_bench(opts: BenchOptions) -> dict[str, Any]:
    if opts.seconds <= 0:
        raise UserError("--seconds must be positive")
    frames = synthetic_frames(max(opts.batches), opts.frame_size)
    rows: list[dict[str, Any]] = []
    for model in opts.models:
        for device, graph in _variants(Path(model), opts.device, opts.cuda_graph):
            try:
                loc = Localizer(model, device=device, max_batch=max(opts.batches), threads=opts.threads, cuda_graph=graph)
            except UserError as exc:
                if not graph:
                    raise
                logger.warning("no CUDA-graph row: %s", exc)  # a dynamic-batch model: its plain CUDA row stands
                continue
            with loc:
                for batch in opts.batches:
                    if loc.runner.fixed_batch is not None and batch != loc.runner.fixed_batch:
                        logger.warning("%s takes batches of exactly %d; batch %d skipped", model, loc.runner.fixed_batch, batch)
                        continue
                    samples, wall = bench_localizer(loc, frames, batch, opts.seconds)
                    rows.append(_row(str(model), loc.backend, loc.meta, batch, samples, wall))
    if opts.run is not None:
        rows.extend(bench_torch(opts.run, frames, opts.batches, opts.seconds, opts.threads, _torch_device(opts)))
    add_ratios(rows)
    return {
        "rows": rows,
        "frame_size": opts.frame_size,
        "seconds": opts.seconds,
        "threads": opts.threads or os.cpu_count(),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
    }


def write_json(report: dict[str, Any], path: Path) -> None:
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
