"""The runtime on a GPU against torch, per backbone and batch, measured in one run: images/s, p50/p99, parity.

    HF_HUB_OFFLINE=1 python benchmarks/bench_gpu.py [--backbones tf_efficientnet_lite0,vit_small_patch16_224]
        [--batches 1,8,64] [--seconds 3] [--device cuda|cpu] [--classes 200] [--input-size 224]
        [--out DIR] [--json FILE] [--markdown FILE]

The model. Per backbone, a TeD-Loc `Localizer` from the project's own code (`train.backbone.create_backbone`,
`train.model.create_model`). Backbone weights come from what is on the machine (the pip package for
tf_efficientnet_lite0, a cached timm copy otherwise), else seeded random init; the output says which. The head
is seeded random init and the class anchors are seeded Gaussian vectors QR-orthonormalized by
`train.anchors.orthonormalize` (no CLIP): speed does not depend on training, and parity compares two
executions of the same weights. It is exported by the real export path: fp32 (`export_to_proto`), fp16
(`convert_fp16`), int8 Q/DQ (`quantize_int8` calibrated on --calib-images photo crops) and, on CUDA, a
static-batch copy of each per batch (`make_static_batch`), which CUDA graphs need.

What is timed (model only: no resize, no box decoding): the project's runners (`Runner.infer`, the graph
contract). One fixed uint8 (N, H, W, 3) batch in pageable host memory goes to the device, the model runs,
fg_map and logits come back to host memory. Every engine does exactly that work, the copies included, since
that is what a camera pipeline pays:

- torch-eager fp32; torch-eager fp16 (a .half() copy of the model); torch-cudagraph fp16 (one CUDA graph per
  batch shape over a static input tensor, warmed up on a side stream; each call copies the batch into it and
  replays): `tedloc_edge.train.predict.TorchRunner`, as `tedloc-edge bench --run` uses on a GPU.
  cudnn.benchmark is on, TF32 settings are torch's defaults.
- ort-cuda fp32/fp16/int8: the runtime's `OnnxRuntimeRunner(..., device="cuda")` (CUDA EP, IO binding) on the
  dynamic-batch model; ort-cuda-graph: the same on the static-batch model with cuda_graph=True.
- On --device cpu: torch-eager fp32 and ort-cpu fp32/fp16/int8 (no CUDA graphs, no torch fp16).

Each row: warm-up calls, then calls for --seconds (at least 5), each timed by the runner itself (its outputs
are host arrays, so a call ends when the device work has): p50/p99 of the per-call latency; images/s = batch
x calls / measured wall time.
Torch is timed before any ONNX Runtime session of the backbone exists. The ratio is images/s over
torch-cudagraph fp16 (on CPU: torch-eager fp32) at the same backbone and batch.

Parity: each row's engine also runs --parity-images photo crops (scikit-image's photos, else synthetic frames)
at its own batch, and is compared with ONNX Runtime CPU fp32 of the same model on the same images: max abs
error of fg_map and of logits, top-1 agreement, the share of images whose decoded boxes
(`tedloc_edge.boxes.decode_boxes`, the runtime's and evaluation's decoder, at the bundle's threshold) all lie
within 1 pixel, and the smallest best-box IoU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tedloc_edge.errors import first_line
from tedloc_edge.runtime.runner import Runner

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CUDA_EP, CPU_EP = "CUDAExecutionProvider", "CPUExecutionProvider"
PRECISIONS = ("fp32", "fp16", "int8")
ENGINE_ORDER = ("torch-eager", "torch-cudagraph", "ort-cpu", "ort-cuda", "ort-cuda-graph")
MIN_CALLS = 5
WARMUP = {"cuda": 10, "cpu": 5}  # CUDA: cudnn autotuning and ORT's graph capture; CPU: torch's first calls build oneDNN kernels
TARGETS = ((1, 1.0), (64, 0.9))  # (batch, minimum images/s ratio to torch-cudagraph fp16), from the issue
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "camera", "coins", "page")
SCRIPT = "benchmarks/bench_gpu.py"
TIMED = {
    "cuda": "model only: uint8 batch host->device (pageable memory), model, fg_map + logits device->host; same for torch and ORT",
    "cpu": "model only: uint8 batch in, model, fg_map + logits out (host memory); same for torch and ORT",
}


# ----------------------------------------------------------------------------------------------- options


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="tf_efficientnet_lite0,vit_small_patch16_224", help="timm names, comma-separated")
    parser.add_argument("--batches", default="1,8,64", help="batch sizes, comma-separated")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per row (after warm-up)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--classes", type=int, default=200, help="number of classes (200: CUB-like)")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--embed-dim", type=int, default=0, help="head width d (0: max(128, classes); anchors need d >= classes)")
    parser.add_argument("--calib-images", type=int, default=32, help="int8 calibration images")
    parser.add_argument("--parity-images", type=int, default=16, help="images of the parity check")
    parser.add_argument("--int8-mode", choices=("auto", "cpu", "tensorrt"), default="auto",
                        help="Q/DQ placement (export/int8.py); auto: tensorrt on cuda, cpu on cpu")
    parser.add_argument("--ort-cuda-options", default="", metavar="K=V,...",
                        help="ONNX Runtime CUDA EP provider options for the ort-cuda rows, e.g. prefer_nhwc=1")
    parser.add_argument("--out", type=Path, default=None, help="folder for the ONNX files (default: a temporary folder, removed)")
    parser.add_argument("--json", type=Path, default=None, help="write the report as JSON")
    parser.add_argument("--markdown", type=Path, default=None, help="write the table as markdown (for docs/performance.md)")
    args = parser.parse_args(argv)
    args.backbone_list = [b.strip() for b in args.backbones.split(",") if b.strip()]
    args.batch_list = parse_batches(parser, args.batches)
    if args.seconds <= 0 or args.classes < 2 or args.calib_images < 1 or args.parity_images < 1 or not args.backbone_list:
        parser.error("--seconds must be positive, --classes at least 2, --calib-images/--parity-images at least 1, one backbone or more")
    args.embed_dim = args.embed_dim or max(128, args.classes)
    if args.int8_mode == "auto":
        args.int8_mode = "tensorrt" if args.device == "cuda" else "cpu"
    args.cuda_options = parse_options(parser, args.ort_cuda_options)
    return args


def parse_options(parser: argparse.ArgumentParser, text: str) -> dict[str, str]:
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    if any(len(pair) != 2 or not pair[0].strip() for pair in pairs):
        parser.error(f"--ort-cuda-options {text!r}: give KEY=VALUE pairs separated by commas, e.g. prefer_nhwc=1")
    return {key.strip(): value.strip() for key, value in pairs}


def parse_batches(parser: argparse.ArgumentParser, text: str) -> list[int]:
    try:
        batches = sorted({int(b) for b in text.split(",") if b.strip()})
    except ValueError:
        parser.error(f"--batches {text!r}: give integers separated by commas, e.g. 1,8,64")
    if not batches or batches[0] < 1:
        parser.error(f"--batches {text!r}: every batch must be at least 1")
    return batches


def reproduce_command(args: argparse.Namespace) -> str:
    """The exact command line of this run, every setting explicit."""
    parts = ["python", SCRIPT, "--backbones", ",".join(args.backbone_list), "--batches", ",".join(map(str, args.batch_list)),
             "--seconds", f"{args.seconds:g}", "--device", args.device, "--classes", str(args.classes),
             "--input-size", str(args.input_size), "--embed-dim", str(args.embed_dim), "--calib-images", str(args.calib_images),
             "--parity-images", str(args.parity_images), "--int8-mode", args.int8_mode]
    if args.cuda_options:
        parts += ["--ort-cuda-options", ",".join(f"{k}={v}" for k, v in args.cuda_options.items())]
    for flag, value in (("--out", args.out), ("--json", args.json), ("--markdown", args.markdown)):
        if value is not None:
            parts += [flag, str(value)]
    return "HF_HUB_OFFLINE=1 " + shlex.join(parts)


def say(text: str) -> None:
    """A progress line on stderr (the run is long; the table goes to stdout)."""
    print(f"[bench_gpu {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ device


def check_device(device: str) -> None:
    """--device cuda needs torch with CUDA and onnxruntime-gpu whose CUDA EP loads; one line (no traceback) if not."""
    if device != "cuda":
        return
    problems = []
    try:
        import torch  # imported before onnxruntime: its CUDA and cuDNN libraries are then the ones loaded

        if not torch.cuda.is_available():
            problems.append(f"a CUDA build of torch that sees a GPU (torch {torch.__version__}: torch.cuda.is_available() is False)")
    except ImportError:
        problems.append("torch with CUDA (pip install torch)")
    import onnxruntime as ort

    available = ort.get_available_providers()
    if CUDA_EP not in available:
        problems.append(f"onnxruntime-gpu (this onnxruntime {ort.__version__} offers {', '.join(available)}): "
                        "pip uninstall -y onnxruntime && pip install onnxruntime-gpu")
    if problems:
        raise SystemExit(f"error: --device cuda needs {'; and '.join(problems)}; or run with --device cpu")
    probe_ort_cuda()


def probe_ort_cuda() -> list[str]:
    """A one-node session on the CUDA EP: onnxruntime-gpu falls back to the CPU when its CUDA libraries are missing."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # onnx 1.23 writes IR 14 by default, newer than onnxruntime 1.31 reads; opset 17 needs 8
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=[CUDA_EP, CPU_EP])
        used = session.get_providers()
    except Exception as exc:  # noqa: BLE001 - ORT raises its own types
        raise SystemExit(f"error: onnxruntime-gpu cannot start its CUDA EP ({first_line(exc, 240)}); "
                         "install the CUDA and cuDNN versions it was built for, or run with --device cpu") from None
    if CUDA_EP not in used:
        raise SystemExit(f"error: onnxruntime-gpu {ort.__version__} fell back to {used}: its CUDA EP did not load "
                         "(CUDA / cuDNN libraries it was built for not found); install them, or run with --device cpu")
    return used


def machine_info(device: str) -> dict[str, Any]:
    import onnx
    import onnxruntime as ort
    import timm
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "onnxruntime": ort.__version__, "onnx": onnx.__version__, "timm": timm.__version__,
    }
    if device == "cuda":
        info.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    torch_cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                    torch_matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    return info


# ------------------------------------------------------------------------------------------------ images


def photos() -> tuple[list[np.ndarray], str]:
    """RGB photos shipped with scikit-image (no download); seeded synthetic frames when it is not installed."""
    from tedloc_edge.runtime.preprocess import as_uint8_3ch

    found = []
    try:
        from skimage import data

        for name in PHOTOS:
            try:
                found.append(as_uint8_3ch(np.asarray(getattr(data, name)()), "RGB", name))
            except Exception:  # noqa: BLE001 - a photo that needs a download (or is absent) is left out
                continue
    except ImportError:
        pass
    if found:
        return found, f"seeded crops of {len(found)} scikit-image photos"
    from tedloc_edge.runtime.bench import synthetic_frames

    return synthetic_frames(len(PHOTOS), "320x240"), f"seeded crops of {len(PHOTOS)} synthetic frames (scikit-image not installed)"


def photo_crops(sources: list[np.ndarray], n: int, size: int, seed: int) -> np.ndarray:
    """n seeded crops (50-100% of a side) of the photos, resized by the runtime's Preprocessor: (n, size, size, 3)."""
    from tedloc_edge.runtime.preprocess import Preprocessor

    rng = np.random.default_rng(seed)
    crops = []
    for i in range(n):
        photo = sources[i % len(sources)]
        h, w = photo.shape[:2]
        scale = rng.uniform(0.5, 1.0)
        ch, cw = max(8, int(h * scale)), max(8, int(w * scale))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crops.append(np.ascontiguousarray(photo[y : y + ch, x : x + cw]))
    return Preprocessor((size, size), n)(crops).copy()


def tile(images: np.ndarray, start: int, batch: int) -> np.ndarray:
    """`batch` images from index `start`, wrapping around: every call gets exactly `batch` (static-batch models)."""
    return np.ascontiguousarray(images[np.arange(start, start + batch) % len(images)])


# ------------------------------------------------------------------------------------------ model, export


@dataclass
class Built:
    """One backbone's model and exports: ONNX paths by (precision, static batch or None)."""

    name: str
    model: Any
    meta: Any
    weights: str
    files: dict[tuple[str, int | None], Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    export_s: float = 0.0


def seeded_anchors(classes: int, dim: int, seed: int = 0) -> "Any":
    """(classes, dim) orthonormal rows: a seeded Gaussian matrix through the project's QR (no CLIP)."""
    import torch

    from tedloc_edge.train.anchors import orthonormalize

    gauss = np.random.default_rng(seed).standard_normal((classes, dim))
    return torch.from_numpy(orthonormalize(gauss, dim, seed))


def make_backbone(name: str, input_size: int) -> Any:
    """The offline default weights when this machine has them, else seeded random init."""
    import torch

    from tedloc_edge.errors import UserError
    from tedloc_edge.train.backbone import RANDOM, create_backbone

    try:
        return create_backbone(name, None, input_size=input_size)
    except (UserError, ImportError) as exc:
        if "unknown backbone" in str(exc):
            raise
        say(f"{name}: no offline weights here ({first_line(exc, 120)}); using seeded random init")
        torch.manual_seed(0)
        return create_backbone(name, RANDOM, input_size=input_size)


def build_model(name: str, args: argparse.Namespace) -> Built:
    import torch

    from tedloc_edge.bundle import BundleMeta, Preprocess
    from tedloc_edge.train.model import create_model, model_args_for

    backbone = make_backbone(name, args.input_size)
    margs = model_args_for("tedloc", backbone, args.input_size, args.classes, args.embed_dim, 256, 0.1)
    torch.manual_seed(0)
    model = create_model(margs, seeded_anchors(args.classes, args.embed_dim), backbone=backbone).eval()
    meta = BundleMeta(
        class_names=tuple(f"class_{i:03d}" for i in range(args.classes)), input_size=(args.input_size, args.input_size),
        patch_grid=tuple(margs.grid), preprocess=Preprocess(mean=margs.mean, std=margs.std), method="tedloc",
        backbone=f"{name} ({backbone.weights})", anchor_source="seeded random QR (bench_gpu)", run_id="bench_gpu",
    )
    return Built(name, model, meta, backbone.weights)


def export_all(built: Built, out: Path, calib: np.ndarray, args: argparse.Namespace) -> None:
    """fp32 / fp16 / int8 ONNX, and on CUDA their static-batch copies; a variant that fails is noted, not fatal."""
    from tedloc_edge.export.fp16 import convert_fp16
    from tedloc_edge.export.images import batch_hash
    from tedloc_edge.export.int8 import quantize_int8
    from tedloc_edge.export.onnx_export import export_to_proto, save_model
    from tedloc_edge.export.static_batch import make_static_batch

    start = time.perf_counter()
    stem = out / f"{built.name}_{args.input_size}"
    fp32 = export_to_proto(built.model, built.meta.replace(precision="fp32"))
    protos = {"fp32": fp32}
    calib_hash = batch_hash(calib, [f"crop{i}" for i in range(len(calib))])
    makers = {"fp16": lambda: convert_fp16(fp32, built.meta),
              "int8": lambda: quantize_int8(fp32, built.meta, calib, calib_hash, mode=args.int8_mode)}
    for precision, make in makers.items():
        say(f"{built.name}: exporting {precision}")
        try:
            protos[precision] = make()
        except Exception as exc:  # noqa: BLE001 - one precision failing leaves the others to measure
            built.notes.append(f"{precision} export failed: {first_line(exc, 240)}")
            say(built.notes[-1])
    static = args.batch_list if args.device == "cuda" else []
    for precision, proto in protos.items():
        built.files[(precision, None)] = save_model(proto, f"{stem}_{precision}.onnx")
        for batch in static:
            try:
                built.files[(precision, batch)] = save_model(make_static_batch(proto, batch), f"{stem}_{precision}_b{batch}.onnx")
            except Exception as exc:  # noqa: BLE001
                built.notes.append(f"{precision} static batch {batch} failed: {first_line(exc, 240)}")
                say(built.notes[-1])
    built.export_s = time.perf_counter() - start
    say(f"{built.name}: {len(built.files)} ONNX files in {built.export_s:.1f} s ({out})")


# ------------------------------------------------------------------------------------------------ engines


@dataclass
class Engine:
    """One engine and precision: the runner for a batch size, opened when its first batch comes. A static-batch
    model (`per_batch`) has a runner per batch, the previous one closed first; any other serves every batch."""

    name: str
    precision: str
    open: Callable[[int], Runner]
    per_batch: bool = False
    current: Runner | None = None

    def runner(self, batch: int) -> Runner:
        if self.current is None or self.per_batch:
            self.close()
            self.current = self.open(batch)
        return self.current

    def close(self) -> None:
        """Give the device memory back before the next engine (a torch runner returns the shared module to the CPU)."""
        if self.current is not None:
            self.current.close()
            self.current = None


def torch_runner(built: Built, device: str, precision: str, graph: bool, max_batch: int, batch: int) -> Runner:
    """The shared module as a TorchRunner (one serves every batch; graphs are captured per batch shape)."""
    from tedloc_edge.train.predict import TorchRunner

    return TorchRunner(built.model, built.meta, device=device, precision=precision, cuda_graph=graph, max_batch=max_batch)


def ort_runner(built: Built, precision: str, graph: bool, device: str, max_batch: int, cuda_options: dict[str, str] | None,
               batch: int) -> Runner:
    """The runtime's ONNX Runtime runner on exactly the CUDA EP (+ CPU), never silently on the CPU only: the
    dynamic-batch model, or with `graph` the static-batch copy of `batch`, replayed as a CUDA graph."""
    from tedloc_edge.runtime.backend_onnxruntime import OnnxRuntimeRunner

    path = built.files.get((precision, batch if graph else None))
    if path is None:
        raise RuntimeError(f"no {precision} model{f' with static batch {batch}' if graph else ''} (export failed)")
    runner = OnnxRuntimeRunner(path, device=device, providers=[CUDA_EP, CPU_EP] if device == "cuda" else [CPU_EP],
                               max_batch=batch if graph else max_batch, cuda_graph=graph,
                               cuda_options=cuda_options if device == "cuda" else None)
    if device == "cuda" and CUDA_EP not in runner.providers:
        runner.close()
        raise RuntimeError(f"the session fell back to {runner.providers}: the CUDA EP did not load")
    return runner


def engines_for(built: Built, args: argparse.Namespace) -> list[Engine]:
    """Every engine in measuring order: torch first, before any ORT session of the backbone."""
    dev, top = args.device, max(args.batch_list)
    plan = [Engine("torch-eager", "fp32", partial(torch_runner, built, dev, "fp32", False, top))]
    if dev == "cuda":
        plan += [Engine("torch-eager", "fp16", partial(torch_runner, built, dev, "fp16", False, top)),
                 Engine("torch-cudagraph", "fp16", partial(torch_runner, built, dev, "fp16", True, top))]
    ort_kinds = [("ort-cpu", False)] if dev == "cpu" else [("ort-cuda", False), ("ort-cuda-graph", True)]
    for name, graph in ort_kinds:
        plan += [Engine(name, p, partial(ort_runner, built, p, graph, dev, top, args.cuda_options), per_batch=graph) for p in PRECISIONS]
    return plan


# ------------------------------------------------------------------------------------------- measurement


def time_calls(runner: Runner, images: np.ndarray, seconds: float, warmup: int) -> dict[str, Any]:
    """Warm-up, then calls for `seconds` (at least MIN_CALLS): the runner's own per-call time, images/s over the window."""
    from tedloc_edge.runtime.bench import percentiles

    for _ in range(warmup):
        runner.infer(images)
    latencies: list[float] = []
    start = time.perf_counter()
    while True:
        runner.infer(images)
        latencies.append(runner.last_inference_ms)
        if time.perf_counter() - start >= seconds and len(latencies) >= MIN_CALLS:
            break
    wall = time.perf_counter() - start
    pct = percentiles(latencies)
    return {"images_per_s": round(len(images) * len(latencies) / wall, 2), "p50_ms": pct["p50"], "p99_ms": pct["p99"],
            "calls": len(latencies)}


def outputs_on(runner: Runner, images: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Run `images` through `runner` in batches of exactly `batch`; copies of (fg_map, logits) for each image once."""
    maps, logits = [], []
    for start in range(0, len(images), batch):
        fg, lg = runner.infer(tile(images, start, batch))
        keep = min(batch, len(images) - start)
        maps.append(np.array(fg[:keep], dtype=np.float32))
        logits.append(np.array(lg[:keep], dtype=np.float32))
    return np.concatenate(maps), np.concatenate(logits)


def measure_engine(engine: Engine, args: argparse.Namespace, images: np.ndarray, backbone: str) -> tuple[list[dict], list[dict]]:
    """Every batch of one engine: (rows with raw parity outputs, skipped)."""
    rows, skipped = [], []
    for batch in args.batch_list:
        label = f"{backbone} {engine.name} {engine.precision} batch {batch}"
        try:
            runner = engine.runner(batch)
            timing = time_calls(runner, tile(images, 0, batch), args.seconds, WARMUP[args.device])
            outputs = outputs_on(runner, images, batch)
        except Exception as exc:  # noqa: BLE001 - a row that cannot run is skipped with its reason
            skipped.append({"backbone": backbone, "engine": engine.name, "precision": engine.precision, "batch": batch,
                            "reason": first_line(exc, 240)})
            say(f"SKIP {label}: {first_line(exc, 240)}")
            continue
        rows.append({"backbone": backbone, "engine": engine.name, "precision": engine.precision, "batch": batch,
                     **timing, "_outputs": outputs})
        say(f"{label}: {timing['images_per_s']:.1f} images/s, p50 {timing['p50_ms']:.2f} ms, p99 {timing['p99_ms']:.2f} ms "
            f"({timing['calls']} calls)")
    return rows, skipped


def reference_outputs(built: Built, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ONNX Runtime CPU fp32 of the dynamic-batch model: the path every row is compared with."""
    with ort_runner(built, "fp32", False, "cpu", len(images), None, len(images)) as runner:
        return outputs_on(runner, images, len(images))


# ------------------------------------------------------------------------------------------------ parity


def boxes_agreement(ref_maps: np.ndarray, got_maps: np.ndarray, meta: Any) -> tuple[float, float]:
    """(% of images whose decoded boxes all lie within 1 px of the reference's, smallest best-box IoU)."""
    from tedloc_edge.export.verify import compare_boxes

    within, ious = compare_boxes(ref_maps, got_maps, meta, pixels=1)
    return 100.0 * within / len(ref_maps), float(ious.min())


def parity(ref: tuple[np.ndarray, np.ndarray], got: tuple[np.ndarray, np.ndarray], meta: Any) -> dict[str, float]:
    (ref_map, ref_logits), (got_map, got_logits) = ref, got
    within, iou = boxes_agreement(ref_map, got_map, meta)
    return {
        "fg_map_max_abs": float(np.abs(got_map.astype(np.float64) - ref_map).max()),
        "logits_max_abs": float(np.abs(got_logits.astype(np.float64) - ref_logits).max()),
        "top1_agree_pct": round(100.0 * float((got_logits.argmax(1) == ref_logits.argmax(1)).mean()), 2),
        "boxes_within_1px_pct": round(within, 2),
        "box_iou_min": round(iou, 4),
        "finite": bool(np.isfinite(got_map).all() and np.isfinite(got_logits).all()),
    }


# ---------------------------------------------------------------------------------------------- the run


def bench_backbone(name: str, args: argparse.Namespace, out: Path, pool: list[np.ndarray]) -> tuple[dict, list[dict], list[dict]]:
    """Build, export, time every engine, then parity against ORT CPU fp32: (backbone info, rows, skipped)."""
    say(f"{name}: building the model ({args.classes} classes, {args.input_size} px, d={args.embed_dim})")
    built = build_model(name, args)
    calib = photo_crops(pool, args.calib_images, args.input_size, seed=1)
    images = photo_crops(pool, args.parity_images, args.input_size, seed=2)
    export_all(built, out, calib, args)
    rows, skipped = [], []
    for engine in engines_for(built, args):
        try:
            got, missed = measure_engine(engine, args, images, name)
        finally:
            engine.close()
        rows += got
        skipped += missed
    ref = reference_outputs(built, images)
    for row in rows:
        row["parity"] = parity(ref, row.pop("_outputs"), built.meta)
    spread = ref[0].reshape(len(ref[0]), -1)
    info = {"weights": built.weights, "export_s": round(built.export_s, 1), "notes": built.notes,
            "patch_grid": list(built.meta.patch_grid), "threshold": built.meta.threshold,
            "fg_map_range_median": round(float(np.median(spread.max(1) - spread.min(1))), 5),
            "files": {f"{p}{'' if b is None else f'_b{b}'}": str(path) for (p, b), path in built.files.items()}}
    return info, rows, skipped


def add_ratios(rows: list[dict], device: str) -> None:
    """ratio = images/s over the baseline (torch-cudagraph fp16 on CUDA, torch-eager fp32 on CPU) at the same
    backbone and batch; None when the baseline row was skipped."""
    base_engine, base_precision = ("torch-cudagraph", "fp16") if device == "cuda" else ("torch-eager", "fp32")
    for row in rows:
        base = next((r for r in rows if r["backbone"] == row["backbone"] and r["batch"] == row["batch"]
                     and r["engine"] == base_engine and r["precision"] == base_precision), None)
        row["ratio"] = round(row["images_per_s"] / base["images_per_s"], 3) if base else None
        row["baseline"] = f"{base_engine} {base_precision}"


def check_targets(rows: list[dict], backbones: list[str]) -> list[dict]:
    """The issue's targets on CUDA: the runtime's best row at batch 1 >= 1.0x and at batch 64 >= 0.9x torch-cudagraph fp16;
    the best fp16 row (like for like) is reported beside it."""
    found = []
    for backbone in backbones:
        for batch, need in TARGETS:
            runtime = [r for r in rows if r["backbone"] == backbone and r["batch"] == batch and r["engine"].startswith("ort-")
                       and r["ratio"] is not None]
            if not runtime:
                found.append({"backbone": backbone, "batch": batch, "need": need, "met": None, "text": "not measured"})
                continue
            best = max(runtime, key=lambda r: r["ratio"])
            fp16 = max((r for r in runtime if r["precision"] == "fp16"), key=lambda r: r["ratio"], default=None)
            text = f"best {best['engine']} {best['precision']} {best['ratio']:.2f}x (top-1 agree {best['parity']['top1_agree_pct']:.0f}%)"
            if fp16 is not None:
                text += f"; best fp16 {fp16['engine']} {fp16['ratio']:.2f}x"
            found.append({"backbone": backbone, "batch": batch, "need": need, "met": best["ratio"] >= need, "text": text,
                          "best": f"{best['engine']} {best['precision']}", "ratio": best["ratio"]})
    return found


def sort_rows(rows: list[dict], backbones: list[str]) -> list[dict]:
    order = {name: i for i, name in enumerate(ENGINE_ORDER)}
    return sorted(rows, key=lambda r: (backbones.index(r["backbone"]), r["batch"], order[r["engine"]], PRECISIONS.index(r["precision"])))


def run(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    import torch

    check_device(args.device)
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True  # torch picks its fastest conv kernels, as ORT's CUDA EP searches its own
    else:
        torch.set_num_threads(os.cpu_count() or 1)  # ONNX Runtime's default too: one thread per core
    pool, image_source = photos()
    report: dict[str, Any] = {"command": reproduce_command(args), "device": args.device, "machine": machine_info(args.device),
                              "settings": settings(args, image_source), "backbones": {}, "rows": [], "skipped": []}
    for name in args.backbone_list:
        info, rows, skipped = bench_backbone(name, args, out, pool)
        report["backbones"][name] = info
        report["rows"] += rows
        report["skipped"] += skipped
    report["rows"] = sort_rows(report["rows"], args.backbone_list)
    add_ratios(report["rows"], args.device)
    report["targets"] = check_targets(report["rows"], args.backbone_list) if args.device == "cuda" else []
    return report


def settings(args: argparse.Namespace, image_source: str) -> dict[str, Any]:
    return {
        "backbones": args.backbone_list, "batches": args.batch_list, "seconds": args.seconds, "classes": args.classes,
        "input_size": args.input_size, "embed_dim": args.embed_dim, "int8_mode": args.int8_mode, "ort_cuda_options": args.cuda_options,
        "calib_images": args.calib_images, "parity_images": args.parity_images, "images": image_source,
        "warmup_calls": WARMUP[args.device], "min_calls": MIN_CALLS,
        "timed": TIMED[args.device],
        "parity_reference": "ONNX Runtime CPU fp32, dynamic batch, same model and images",
    }


# ----------------------------------------------------------------------------------------------- output


COLUMNS = ("backbone", "engine", "precision", "batch", "images/s", "p50 ms", "p99 ms", "ratio",
           "map err", "logits err", "top-1 %", "boxes ≤1px %", "min IoU")


def row_cells(row: dict) -> list[str]:
    p = row["parity"]
    ratio = f"{row['ratio']:.2f}x" if row["ratio"] is not None else "–"
    return [row["backbone"], row["engine"], row["precision"], str(row["batch"]), f"{row['images_per_s']:.1f}",
            f"{row['p50_ms']:.2f}", f"{row['p99_ms']:.2f}", ratio, f"{p['fg_map_max_abs']:.1e}", f"{p['logits_max_abs']:.1e}",
            f"{p['top1_agree_pct']:.0f}", f"{p['boxes_within_1px_pct']:.0f}", f"{p['box_iou_min']:.3f}"]


def header_lines(report: dict) -> list[str]:
    m, s = report["machine"], report["settings"]
    where = m.get("gpu", f"CPU ({m['cpu_count']} cores)")
    lines = [f"{where} | torch {m['torch']} | onnxruntime {m['onnxruntime']} | timm {m['timm']} | {s['classes']} classes, "
             f"{s['input_size']}x{s['input_size']}, int8 mode {s['int8_mode']} | {s['seconds']:g} s per row"
             + (f" | ORT CUDA EP options {s['ort_cuda_options']}" if s["ort_cuda_options"] else ""),
             f"timed: {s['timed']}",
             f"parity: vs {s['parity_reference']}, on {s['parity_images']} {s['images']}; ratio = images/s over "
             f"{report['rows'][0]['baseline'] if report['rows'] else 'the baseline'} at the same backbone and batch"]
    lines += [f"{name}: weights {b['weights']}, map range (median over images) {b['fg_map_range_median']}"
              + (f"; {'; '.join(b['notes'])}" if b["notes"] else "") for name, b in report["backbones"].items()]
    return lines


def footer_lines(report: dict) -> list[str]:
    lines = []
    for t in report["targets"]:
        verdict = {True: "MET", False: "NOT MET", None: "not measured"}[t["met"]]
        lines.append(f"target {t['backbone']} batch {t['batch']} (runtime >= {t['need']:.1f}x torch-cudagraph fp16): {verdict}: {t['text']}")
    lines += [f"skipped {s['backbone']} {s['engine']} {s['precision']} batch {s['batch']}: {s['reason']}" for s in report["skipped"]]
    return lines


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, width=max(160, Console().width))
    table = Table(title="TeD-Loc runtime vs torch (model only)")
    for col in COLUMNS:
        table.add_column(col, justify="left" if col in ("backbone", "engine", "precision") else "right")
    for row in report["rows"]:
        table.add_row(*row_cells(row))
    for line in header_lines(report):
        console.print(line, soft_wrap=True)
    console.print(table)
    for line in footer_lines(report):
        console.print(line, soft_wrap=True)
    console.print(f"reproduce: {report['command']}", soft_wrap=True)


def markdown(report: dict) -> str:
    lines = [f"`{report['command']}`", ""] + [f"{line}  " for line in header_lines(report)] + [""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row_cells(row)) + " |" for row in report["rows"]]
    footer = footer_lines(report)
    return "\n".join(lines + ([""] + [f"- {line}" for line in footer] if footer else [])) + "\n"


def write_outputs(report: dict, args: argparse.Namespace) -> None:
    from tedloc_edge.files import atomic_write_text

    if args.json is not None:
        atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
        say(f"wrote {args.json}")
    if args.markdown is not None:
        atomic_write_text(args.markdown, markdown(report))
        say(f"wrote {args.markdown}")


def main(argv: list[str] | None = None) -> int:
    import logging

    from tedloc_edge.console import setup_logging

    from tedloc_edge.errors import UserError

    args = parse_args(argv)
    setup_logging(False)
    project_log = logging.getLogger("tedloc_edge")
    level = project_log.level
    project_log.setLevel(logging.WARNING)  # the progress lines come from here; the export's info lines are noise
    say(f"start: {reproduce_command(args)}")
    try:
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            report = run(args, args.out)
        else:
            with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
                report = run(args, Path(tmp))
    except UserError as exc:
        raise SystemExit(f"error: {exc}") from None
    finally:
        project_log.setLevel(level)
    print_table(report)
    write_outputs(report, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
