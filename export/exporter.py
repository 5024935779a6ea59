"""Export orchestration: source -> ONNX (fp32 / fp16 / int8), verified and gated -> engine -> Triton repository.

Each product is written under a temporary name in its final folder, checked, then renamed, so an
interrupted or refused export never leaves a model where a user (or the runtime) would pick it up. Every file it
will write is known before any work: an existing one is replaced only with --exist-ok, the source never.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from tedloc_edge.bundle import BundleMeta, sidecar_path
from tedloc_edge.errors import UserError
from tedloc_edge.files import check_not_inputs, check_output
from tedloc_edge.export import formats as fmts
from tedloc_edge.export.formats import ExportOptions
from tedloc_edge.export.images import batch_hash, load_batch, paths_from_args, run_data_root, split_paths, spread
from tedloc_edge.export.int8_gate import GateResult
from tedloc_edge.export.source import Source, load_model, onnx_meta, resolve_source
from tedloc_edge.export.verify import VerifyReport
from tedloc_edge.rundir import RunDir

if TYPE_CHECKING:
    import onnx
    import torch

    from tedloc_edge.export.tensorrt_build import EngineSpec

logger = logging.getLogger(__name__)

SUFFIX = {"fp32": "", "fp16": "_fp16", "int8": "_int8"}
OUTPUT_FIX = "choose another --output"


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


def planned_outputs(source: Source, opts: ExportOptions, fmt: fmts.ExportFormat, steps: tuple[fmts.ExportFormat, ...],
                    precision: str) -> list[Path]:
    """Every model file the export will write, known before any work (a Triton repository checks its folders)."""
    model_path = source.path if source.is_onnx else onnx_output(source, opts, fmt, precision)
    files = [] if source.is_onnx else [model_path]
    if opts.static_batch is not None:
        model_path = static_batch_path(model_path, opts.static_batch)
        files.append(model_path)
    for step in steps[1:]:
        model_path = product_path(step, fmt, model_path, opts, source)
        if step.suffix != "/":
            files.append(model_path)
    return files


def check_outputs(files: list[Path], source: Source, exist_ok: bool) -> None:
    """As infer: an existing file is replaced (atomically) only with --exist-ok, the source never."""
    inputs = [source.path] + ([RunDir(source.run_dir).checkpoint(source.checkpoint)] if source.run_dir else [])
    check_not_inputs(files, inputs, OUTPUT_FIX)
    for path in files:
        check_output(path, exist_ok, OUTPUT_FIX)


def static_batch_path(onnx_path: Path, batch: int) -> Path:
    return onnx_path.with_name(f"{onnx_path.stem}_b{batch}.onnx")


def onnx_output(source: Source, opts: ExportOptions, fmt: fmts.ExportFormat, precision: str) -> Path:
    """Where the ONNX goes: --output when it is the product, beside a product file, else in the run's export folder."""
    name = f"model{SUFFIX[precision]}{fmts.ONNX.suffix}"
    if opts.output is None or fmt.suffix == "/":
        return source.default_output_dir() / name
    out = Path(opts.output)
    if fmt is not fmts.ONNX:
        return out.with_suffix(fmts.ONNX.suffix)
    return out / name if out.is_dir() else out


def product_path(step: fmts.ExportFormat, fmt: fmts.ExportFormat, model_path: Path, opts: ExportOptions, source: Source) -> Path:
    """Where a step writes: --output for the product, else beside the model, or (a folder) in the export folder."""
    if step is fmt and opts.output is not None:
        return Path(opts.output)
    return source.default_output_dir() / step.name if step.suffix == "/" else model_path.with_suffix(step.suffix)


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


def engine_spec(opts: ExportOptions, onnx_path: Path | None = None, plan: Path | None = None) -> "EngineSpec":
    """The TensorRT build settings the user set; EngineSpec's own defaults (batch 1..8, 2 GiB) for the rest, and a
    DLA build defaults to batch 1 (a DLA takes one batch size)."""
    from tedloc_edge.export.tensorrt_build import EngineSpec

    given = {k: v for k in fmts.ENGINE_OPTIONS | fmts.DLA_OPTIONS if (v := getattr(opts, k)) is not None}
    if opts.dla_core is not None:
        given.setdefault("batch_max", 1)
    spec = EngineSpec(**given)
    fmts.check_batch_range(spec.batch_min, spec.batch_opt, spec.batch_max)
    dla = "" if spec.dla_core is None else f" --dla-core {spec.dla_core}" + (" --gpu-fallback" if spec.gpu_fallback else "")
    cache = spec.timing_cache or (plan.with_name("timing.cache") if plan is not None else None)
    return replace(spec, timing_cache=cache,
                   rebuild_command=f"tedloc-edge export {onnx_path} --format engine --batch-min {spec.batch_min} "
                   f"--batch-opt {spec.batch_opt} --batch-max {spec.batch_max}{dla}")


# The steps after the ONNX, named by the format table (`ExportFormat.stage`), share one signature: (the model
# before it, where to write, the ONNX, the torch model or None, options, result) -> what it wrote.


def engine_stage(
    onnx_path: Path, plan: Path, _onnx: Path, model: "torch.nn.Module | None", opts: ExportOptions, result: ExportResult
) -> Path:
    """Build the plan; with the torch model at hand (run source) and verification on, compare the engine
    (through the runtime's TensorRT runner) with torch on the same images, then rename it into place."""
    from tedloc_edge.export.tensorrt_build import build_engine
    from tedloc_edge.export.verify import ENGINE_TOLERANCE, require_passed, runtime_runner, verify_export

    check_writable(plan.parent)
    spec = engine_spec(opts, onnx_path, plan)
    precision = result.meta.precision
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

    out = static_batch_path(onnx_path, batch)
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


def triton_stage(
    model_path: Path, repo_dir: Path, onnx_path: Path, _model: "torch.nn.Module | None", opts: ExportOptions, result: ExportResult
) -> Path:
    """The model repository of `tedloc_edge.export.triton_repo` (docs/triton.md) around the exported model."""
    from tedloc_edge.export.tensorrt_build import EngineSpec
    from tedloc_edge.export.triton_repo import TritonOptions, write_repository

    on_gpu = model_path.suffix != fmts.ONNX.suffix  # a TensorRT plan (--triton-backend tensorrt) runs on a GPU instance
    options = TritonOptions(max_batch_size=opts.batch_max or EngineSpec.batch_max, instance_kind="KIND_GPU" if on_gpu else "KIND_AUTO")
    start = time.perf_counter()
    repo = write_repository(repo_dir, model_path, result.meta, variants=opts.triton_variants, options=options,
                            onnx=onnx_path, exist_ok=bool(opts.exist_ok))
    logger.info("Triton repository %s: %s", repo.root, ", ".join(repo.models))
    result.artifacts.append(Artifact("triton", result.meta.precision, repo.root, time.perf_counter() - start, "-"))
    return repo.root


def _resolve_int8_mode(opts: ExportOptions, needs_trt: bool) -> ExportOptions:
    """--int8-mode: cpu (fast in ONNX Runtime on a CPU) unless the export builds a TensorRT engine."""
    if opts.int8_mode is None:
        return replace(opts, int8_mode="tensorrt" if needs_trt else "cpu")
    from tedloc_edge.export.int8 import check_mode  # imports onnx: only when the mode is given

    if check_mode(opts.int8_mode) == "cpu" and needs_trt:
        raise UserError("--int8-mode cpu makes uint8 activations with zero points, which TensorRT cannot build; "
                        "use --int8-mode tensorrt (the default for engines)")
    return opts


def export(source_path: str | Path, opts: ExportOptions = ExportOptions()) -> ExportResult:
    """Run one export; returns what was written (the last artifact is the requested product)."""
    fmt = fmts.get_format(opts.format)
    fmts.check_options(fmt, opts.format_options())
    source = resolve_source(source_path, opts.checkpoint)
    steps = fmts.route(fmt, opts.triton_backend)  # ONNX first, the product last
    if opts.triton_variants:  # only triton takes them (check_options)
        from tedloc_edge.export.triton_repo import check_variants

        check_variants(opts.triton_variants)  # before any export work
    needs_trt = any(step.needs_gpu for step in steps)  # a TensorRT engine is built
    opts = _resolve_int8_mode(opts, needs_trt)
    if needs_trt:
        from tedloc_edge.export.tensorrt_build import preflight

        preflight(engine_spec(opts), opts.precision or (None if source.is_onnx else "fp32"))
    if opts.static_batch is not None:
        from tedloc_edge.export.static_batch import check_static_batch

        check_static_batch(opts.static_batch)
    if opts.calib_images < 1:
        raise UserError(f"--calib-images {opts.calib_images} must be >= 1")
    if "batch_max" in fmt.options:  # engine, triton: the batch range, before the ONNX is made (it failed after)
        engine_spec(opts, Path("model.onnx"), Path("model.plan"))
        if fmt.wraps_backend:
            from tedloc_edge.export.triton_repo import TritonOptions

            TritonOptions(max_batch_size=opts.batch_max or 8).check()
    if not source.is_onnx:
        from tedloc_edge.export.onnx_export import check_opset

        check_opset(opts.opset)  # before the checkpoint loads
    if opts.verify_images < 1:  # 0 or less verified on every image, silently
        raise UserError(f"--verify-images {opts.verify_images} must be >= 1 (--no-verify skips the comparison)")
    if not math.isfinite(opts.int8_max_drop):
        raise UserError(f"--int8-max-drop {opts.int8_max_drop} must be a number of points, e.g. 1")
    for specs, flag in ((opts.images, "--images"), (opts.calib_dir, "--calib-dir")):
        if specs:  # a missing folder is found now, not after the model is exported
            paths_from_args(specs, flag)
    if source.is_onnx:
        meta = onnx_meta(source)
        precision = fmts.check_precision(fmt, opts.precision or meta.precision)
        if (len(steps) == 1 and opts.static_batch is None) or precision != meta.precision:
            raise UserError(
                f"{source.path} is already a {meta.precision} ONNX; export the run folder for another ONNX precision, "
                "or use it with --format engine / triton (or --static-batch N)"
            )
        if needs_trt and meta.precision == "int8" and meta.extra.get("int8_mode") == "cpu":
            raise UserError(
                f"{source.path} is a cpu-mode int8 ONNX (uint8 activations with zero points TensorRT cannot build); "
                "export the run with --precision int8 --int8-mode tensorrt for an engine"
            )
        check_outputs(planned_outputs(source, opts, fmt, steps, precision), source, opts.exist_ok)
        result = ExportResult(meta, source)
        onnx_path, model = source.path, None
    else:
        precision = fmts.check_precision(fmt, opts.precision or "fp32")
        check_outputs(planned_outputs(source, opts, fmt, steps, precision), source, opts.exist_ok)
        result = ExportResult(BundleMeta(class_names=(), input_size=(0, 0), patch_grid=(0, 0)), source)
        onnx_path, model = export_onnx_stage(source, opts, fmt, precision, result)
    if opts.static_batch is not None:
        onnx_path = static_batch_stage(onnx_path, opts.static_batch, result)
    model_path = onnx_path
    for step in steps[1:]:  # an engine from the ONNX, a repository around the model: the table names each function
        out = product_path(step, fmt, model_path, opts, source)
        model_path = globals()[step.stage](model_path, out, onnx_path, model, opts, result)
    return result
