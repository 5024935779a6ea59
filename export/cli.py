"""`tedloc-edge export`: thin CLI over `tedloc_edge.export.exporter`; torch is imported only when it runs."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from tedloc_edge.console import console, next_commands, setup_logging, user_errors


def export(
    source: Path = typer.Argument(..., help="Training run folder (or a checkpoint .pt in it, or an exported .onnx for engine/triton)."),
    format: str = typer.Option("onnx", "--format", "-f", help="onnx | engine (TensorRT plan) | triton (model repository)."),
    precision: Optional[str] = typer.Option(None, "--precision", "-p", help="fp32 | fp16 | int8 (Q/DQ). Default fp32."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output file (onnx, engine) or folder (triton). Default RUN/export/."),
    checkpoint: str = typer.Option("best", help="best | last | path to a .pt."),
    opset: int = typer.Option(17, help="ONNX opset, 17..20."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Compare ONNX Runtime with torch on real images after export."),
    images: Optional[List[str]] = typer.Option(None, "--images", help="Images (files, folders, globs) to verify on. Default: the run's val split."),
    verify_images: int = typer.Option(32, help="How many images to verify on."),
    calib_images: int = typer.Option(200, help="int8: how many calibration images."),
    calib_dir: Optional[List[str]] = typer.Option(None, "--calib-dir", help="int8: calibration images (files, folders, globs). Default: the run's train split."),
    int8_max_drop: float = typer.Option(1.0, help="int8: largest allowed drop of MaxBoxAcc and of Top-1 Loc on val, in points."),
    int8_allow_drop: bool = typer.Option(False, "--int8-allow-drop", help="int8: keep the model even when the drop is larger (still printed)."),
    int8_mode: Optional[str] = typer.Option(None, "--int8-mode", help="int8: cpu (uint8 activations, fast in ONNX Runtime on a CPU) | tensorrt (symmetric, zero point 0, for engines). Default: tensorrt when an engine is built, else cpu."),
    int8_search: Optional[bool] = typer.Option(None, "--int8-search/--no-int8-search", help="int8: rank the layers by sensitivity on val and keep the fewest worst ones float until the gate passes. Default: only when the gate fails."),
    int8_max_float: Optional[int] = typer.Option(None, help="int8: most layers the search may keep float (8)."),
    batch_min: Optional[int] = typer.Option(None, help="engine/triton: smallest batch of the TensorRT profile (1)."),
    batch_opt: Optional[int] = typer.Option(None, help="engine/triton: batch TensorRT tunes for (1)."),
    batch_max: Optional[int] = typer.Option(None, help="engine/triton: largest batch (8); Triton's max_batch_size."),
    workspace_gib: Optional[float] = typer.Option(None, help="engine: TensorRT workspace limit in GiB (2)."),
    timing_cache: Optional[Path] = typer.Option(None, help="engine: persistent timing cache file (default beside the plan)."),
    triton_backend: Optional[str] = typer.Option(None, help="triton: what tedloc_model runs on: onnxruntime (default) | tensorrt."),
    triton_variant: Optional[List[str]] = typer.Option(None, "--triton-variant", help="triton: model | decode | ensemble | python (repeat; default all). See docs/triton.md."),
    exist_ok: Optional[bool] = typer.Option(None, "--exist-ok", help="triton: replace existing model folders in the repository."),
    static_batch: Optional[int] = typer.Option(None, help="onnx: also write <model>_b<N>.onnx with a fixed batch of N (what ONNX Runtime's CUDA graphs need; `infer --cuda-graph`)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Export a trained run: verified ONNX (fp32/fp16/int8), a TensorRT engine, or a Triton repository."""
    setup_logging(verbose)
    with user_errors():
        from tedloc_edge.export.exporter import ExportOptions
        from tedloc_edge.export.exporter import export as run_export
        from tedloc_edge.export.report import next_steps, print_result

        opts = ExportOptions(
            format=format, precision=precision, output=output, checkpoint=checkpoint, opset=opset, verify=verify,
            images=tuple(images or ()), verify_images=verify_images, calib_images=calib_images,
            calib_dir=tuple(calib_dir or ()), int8_max_drop=int8_max_drop, int8_allow_drop=int8_allow_drop, int8_mode=int8_mode,
            int8_search=int8_search, int8_max_float=int8_max_float,
            batch_min=batch_min, batch_opt=batch_opt, batch_max=batch_max, workspace_gib=workspace_gib,
            timing_cache=timing_cache, triton_backend=triton_backend,
            triton_variants=tuple(triton_variant) if triton_variant else None, exist_ok=exist_ok, static_batch=static_batch,
        )
        result = run_export(source, opts)
        print_result(result, console)
        next_commands("Next:", next_steps(result))

