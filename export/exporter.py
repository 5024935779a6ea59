"""Export orchestration: source -> ONNX (fp32 / fp16 / int8), verified and gated -> engine -> Triton repository.

Each product is written under a temporary name in its final folder, checked, then renamed, so an
interrupted or refused export never leaves a model where a user (or the runtime) would pick it up.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from tedloc_edge.bundle import BundleMeta, sidecar_path
from tedloc_edge.errors import UserError
from tedloc_edge.export import formats as fmts
from tedloc_edge.export.images import batch_hash, load_batch, paths_from_args, run_data_root, split_paths, spread
from tedloc_edge.export.int8_gate import GateResult
from tedloc_edge.export.source import Source, load_model, onnx_meta, resolve_source
from tedloc_edge.export.verify import VerifyReport

if TYPE_CHECKING:
    import onnx
    import torch

logger = logging.getLogger(__name__)

SUFFIX = {"fp32": "", "fp16": "_fp16", "int8": "_int8"}


@dataclass(frozen=True)
class ExportOptions:
    format: str = "onnx"
    precision: str | None = None  # None: fp32, or the precision of an ONNX source
    output: Path | None = None  # file (onnx, engine) or folder (triton); default RUN/export/
    checkpoint: str = "best"
    opset: int = 17
    verify: bool = True
    images: tuple[str, ...] = ()  # verification images (default: the run's val split)
    verify_images: int = 32
    calib_images: int = 200
    calib_dir: tuple[str, ...] = ()  # calibration images (default: the run's train split)
    int8_max_drop: float = 1.0
    int8_allow_drop: bool = False
    int8_mode: str | None = None  # cpu | tensorrt (export/int8.py); None: tensorrt when an engine is built, else cpu
    int8_search: bool | None = None  # layer sensitivity search (export/int8_search.py); None: when the gate fails
    int8_max_float: int | None = None  # most layers the search keeps float; None: int8_search.DEFAULT_MAX_FLOAT
    batch_min: int | None = None
    batch_opt: int | None = None
    batch_max: int | None = None
    workspace_gib: float | None = None
    timing_cache: Path | None = None
    triton_backend: str | None = None  # onnxruntime (default) or tensorrt: what tedloc_model runs on
    triton_variants: tuple[str, ...] | None = None  # triton_repo variants; None: all
    exist_ok: bool | None = None  # replace existing Triton model folders
    static_batch: int | None = None  # onnx: also write <model>_b<N>.onnx with a fixed batch (CUDA graphs)

    def format_options(self) -> dict[str, object]:
        keys = ("batch_min", "batch_opt", "batch_max", "workspace_gib", "timing_cache", "triton_backend", "triton_variants", "exist_ok",
                "static_batch")
        return {k: getattr(self, k) for k in keys}


@dataclass
class Artifact:
    kind: str  # "onnx", "engine", "triton"
    precision: str
    path: Path
    seconds: float
    verified: str  # "yes", "skipped (--no-verify)", "-" (not compared: engines, repositories)

    @property
    def size_bytes(self) -> int:
        if self.path.is_dir():
            return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())
        return self.path.stat().st_size if self.path.exists() else 0


@dataclass
class ExportResult:
    meta: BundleMeta
    source: Source
    artifacts: list[Artifact] = field(default_factory=list)
    verify: VerifyReport | None = None
    gate: GateResult | None = None

    @property
    def final(self) -> Artifact:
        return self.artifacts[-1]


def check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".tedloc-write-test-"):
            pass
    except OSError as exc:
        raise UserError(f"{folder}: output folder is not writable ({exc.strerror}); choose another --output") from None


@contextmanager
def staged(final: Path) -> Iterator[Path]:
    """A temporary path beside `final`; renamed to `final` only if the block succeeds, removed otherwise."""
    tmp = final.with_name(f".{final.stem}.partial{final.suffix}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def onnx_output(source: Source, opts: ExportOptions, fmt: fmts.ExportFormat, precision: str) -> Path:
    """Where the ONNX goes: --output for --format onnx, else beside the engine / in the run's export folder."""
    name = f"model{SUFFIX[precision]}.onnx"
    if opts.output is not None and fmt.name == "onnx":
        out = Path(opts.output)
        return out / name if out.is_dir() else out
    if opts.output is not None and fmt.name == "engine":
        return Path(opts.output).with_suffix(".onnx")
    return source.default_output_dir() / name


def load_images(specs: tuple[str, ...], source: Source, split: str, limit: int, what: str, meta: BundleMeta) -> tuple[np.ndarray, list[Path]]:
    paths = paths_from_args(specs, "--calib-dir" if split == "train" else "--images") if specs else split_paths(source.run_dir, split, what)
    paths = spread(paths, limit)
    logger.info("%s: %d images", what, len(paths))
    return load_batch(paths, meta), paths


def export_onnx_stage(
    source: Source, opts: ExportOptions, fmt: fmts.ExportFormat, precision: str, result: ExportResult
) -> tuple[Path, "torch.nn.Module"]:
    """torch run -> ONNX at the precision, verified against torch and (int8) accuracy-gated, then renamed."""
    from tedloc_edge.export.onnx_export import export_to_proto, save_model

    out = onnx_output(source, opts, fmt, precision)
    check_writable(out.parent)
    start = time.perf_counter()
    model, meta = load_model(source)
    fp32 = export_to_proto(model, meta.replace(precision="fp32"), opts.opset)
    proto = fp32
    if precision == "fp16":
        from tedloc_edge.export.fp16 import convert_fp16

        proto = convert_fp16(fp32, meta)
    elif precision == "int8":  # quantized, gated on val, layers kept float when the gate needs it
        from tedloc_edge.export.int8_search import quantize_gated

        calib, names = load_images(opts.calib_dir, source, "train", opts.calib_images, "calibration images", meta)
        proto, result.gate = quantize_gated(fp32, meta, calib, batch_hash(calib, names), opts, run_data_root(source.run_dir), out)
    verified = "skipped (--no-verify)"
    with staged(out) as tmp:
        save_model(proto, tmp)
        if opts.verify:
            verified = _verify(model, tmp, out, meta, precision, source, opts, result)
        if precision == "int8" and result.gate is not None:  # int8 tensors are reported, not bounded: the gate is the check
            verified = f"gate {'passed' if result.gate.passed else 'drop accepted'}" + ("" if opts.verify else ", tensors not compared")
    result.meta = meta.replace(precision=precision)
    result.artifacts.append(Artifact("onnx", precision, out, time.perf_counter() - start, verified))
    return out, model


def _verify(
    model: "torch.nn.Module", tmp: Path, final: Path, meta: BundleMeta, precision: str, source: Source, opts: ExportOptions, result: ExportResult
) -> str:
    from tedloc_edge.export.verify import require_passed, verify_export

    images, _ = load_images(opts.images, source, "val", opts.verify_images, "verification images", meta)
    report = verify_export(model, tmp, meta, images, precision)
    result.verify = report
    require_passed(report, final)
    return "yes"


def engine_stage(
    onnx_path: Path, plan: Path, precision: str, opts: ExportOptions, result: ExportResult, model: "torch.nn.Module | None"
) -> Path:
    """Build the plan; with the torch model at hand (run source) and verification on, compare the engine
    (through the runtime's TensorRT runner) with torch on the same images, then rename it into place."""
    from tedloc_edge.export.tensorrt_build import EngineSpec, build_engine
    from tedloc_edge.export.verify import ENGINE_TOLERANCE, require_passed, runtime_runner, verify_export

    check_writable(plan.parent)
    spec = EngineSpec(
        *fmts.check_batch_range(opts.batch_min or 1, opts.batch_opt or 1, opts.batch_max or 8),
        workspace_gib=opts.workspace_gib or 2.0,
        timing_cache=opts.timing_cache or plan.with_name("timing.cache"),
        rebuild_command=f"tedloc-edge export {onnx_path} --format engine --batch-min {opts.batch_min or 1} "
        f"--batch-opt {opts.batch_opt or 1} --batch-max {opts.batch_max or 8}",
    )
    start = time.perf_counter()
    verified = "-" if model is None else "skipped (--no-verify)"
    with staged(plan) as tmp:
        try:
            build_engine(onnx_path, tmp, spec)
            if model is not None and opts.verify:
                meta = result.meta
                images, _ = load_images(opts.images, result.source, "val", opts.verify_images, "verification images", meta)
                batch = min(8, spec.batch_max)
                runner = runtime_runner(tmp, "tensorrt", batch)
                report = verify_export(model, tmp, meta, images, precision, runner, batch, ENGINE_TOLERANCE[precision])
                require_passed(report, plan)
                result.verify, verified = report, "yes"
            if precision == "int8":  # scored on val like the int8 ONNX (export/int8_gate.py)
                from tedloc_edge.export.int8_gate import gate_plan

                gated = gate_plan(onnx_path, tmp, result.source, opts, plan)
                if gated is not None:
                    result.gate, verified = gated, f"{verified}, gate {'passed' if gated.passed else 'drop accepted'}"
            os.replace(sidecar_path(tmp), sidecar_path(plan))
        finally:
            sidecar_path(tmp).unlink(missing_ok=True)
    result.artifacts.append(Artifact("engine", precision, plan, time.perf_counter() - start, verified))
    return plan


def static_batch_stage(onnx_path: Path, batch: int, result: ExportResult) -> Path:
    """<model>_b<N>.onnx beside the dynamic model: the same graph at a fixed batch, compared with it."""
    import onnx

    from tedloc_edge.export.onnx_export import save_model
    from tedloc_edge.export.static_batch import compare_with_dynamic, make_static_batch

    out = onnx_path.with_name(f"{onnx_path.stem}_b{batch}.onnx")
    start = time.perf_counter()
    fixed = make_static_batch(onnx.load(str(onnx_path)), batch)
    with staged(out) as tmp:
        save_model(fixed, tmp)
        diffs = compare_with_dynamic(onnx_path, tmp, batch, result.meta)
    logger.info("%s: batch %d, max abs difference from the dynamic model %s", out, batch,
                ", ".join(f"{k} {v:.2g}" for k, v in diffs.items()))
    result.meta = result.meta.replace(extra={**result.meta.extra, "static_batch": batch})
    result.artifacts.append(Artifact("onnx", result.meta.precision, out, time.perf_counter() - start, "= dynamic"))
    return out


def triton_stage(model_path: Path, onnx_path: Path, backend: str, opts: ExportOptions, result: ExportResult) -> Path:
    """The model repository of `tedloc_edge.export.triton_repo` (docs/triton.md) around the exported model."""
    from tedloc_edge.export.triton_repo import TritonOptions, write_repository

    repo_dir = Path(opts.output) if opts.output is not None else result.source.default_output_dir() / "triton"
    options = TritonOptions(max_batch_size=opts.batch_max or 8, instance_kind="KIND_GPU" if backend == "tensorrt" else "KIND_AUTO")
    start = time.perf_counter()
    repo = write_repository(repo_dir, model_path, result.meta, variants=opts.triton_variants, options=options,
                            onnx=onnx_path, exist_ok=bool(opts.exist_ok))
    logger.info("Triton repository %s: %s", repo.root, ", ".join(repo.models))
    result.artifacts.append(Artifact("triton", result.meta.precision, repo.root, time.perf_counter() - start, "-"))
    return repo.root


def _resolve_int8_mode(opts: ExportOptions, needs_trt: bool) -> ExportOptions:
    """--int8-mode: cpu (fast in ONNX Runtime on a CPU) unless the export builds a TensorRT engine."""
    from dataclasses import replace

    from tedloc_edge.export.int8 import check_mode

    if opts.int8_mode is None:
        return replace(opts, int8_mode="tensorrt" if needs_trt else "cpu")
    if check_mode(opts.int8_mode) == "cpu" and needs_trt:
        raise UserError("--int8-mode cpu makes uint8 activations with zero points, which TensorRT cannot build; "
                        "use --int8-mode tensorrt (the default for engines)")
    return opts


def export(source_path: str | Path, opts: ExportOptions = ExportOptions()) -> ExportResult:
    """Run one export; returns what was written (the last artifact is the requested product)."""
    fmt = fmts.get_format(opts.format)
    fmts.check_options(fmt, opts.format_options())
    source = resolve_source(source_path, opts.checkpoint)
    backend = opts.triton_backend or "onnxruntime"
    if fmt.name == "triton" and backend not in fmts.TRITON_BACKENDS:
        raise UserError(f"unknown --triton-backend '{backend}': {fmts.close_match_hint(backend, fmts.TRITON_BACKENDS)}")
    if fmt.name == "triton" and opts.triton_variants:
        from tedloc_edge.export.triton_repo import check_variants

        check_variants(opts.triton_variants)  # before any export work
    needs_trt = fmt.name == "engine" or (fmt.name == "triton" and backend == "tensorrt")
    opts = _resolve_int8_mode(opts, needs_trt)
    if needs_trt:
        from tedloc_edge.export.tensorrt_build import preflight

        preflight()
    if opts.static_batch is not None:
        from tedloc_edge.export.static_batch import check_static_batch

        check_static_batch(opts.static_batch)
    if opts.calib_images < 1:
        raise UserError(f"--calib-images {opts.calib_images} must be >= 1")
    if source.is_onnx:
        meta = onnx_meta(source)
        precision = fmts.check_precision(fmt, opts.precision or meta.precision)
        if (fmt.name == "onnx" and opts.static_batch is None) or precision != meta.precision:
            raise UserError(
                f"{source.path} is already a {meta.precision} ONNX; export the run folder for another ONNX precision, "
                "or use it with --format engine / triton (or --static-batch N)"
            )
        if needs_trt and meta.precision == "int8" and meta.extra.get("int8_mode") == "cpu":
            raise UserError(
                f"{source.path} is a cpu-mode int8 ONNX (uint8 activations with zero points TensorRT cannot build); "
                "export the run with --precision int8 --int8-mode tensorrt for an engine"
            )
        result = ExportResult(meta, source)
        onnx_path, model = source.path, None
    else:
        precision = fmts.check_precision(fmt, opts.precision or "fp32")
        result = ExportResult(BundleMeta(class_names=(), input_size=(0, 0), patch_grid=(0, 0)), source)
        onnx_path, model = export_onnx_stage(source, opts, fmt, precision, result)
    if opts.static_batch is not None:
        onnx_path = static_batch_stage(onnx_path, opts.static_batch, result)
    model_path = onnx_path
    if needs_trt:
        plan = Path(opts.output) if (opts.output is not None and fmt.name == "engine") else onnx_path.with_suffix(".plan")
        model_path = engine_stage(onnx_path, plan, precision, opts, result, model)
    if fmt.name == "triton":
        triton_stage(model_path, onnx_path, backend, opts, result)
    return result
