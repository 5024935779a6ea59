"""`tedloc-edge infer` and `tedloc-edge bench`: thin typer functions; the work (and onnxruntime, OpenCV,
PyAV) is imported only when a command runs, so `tedloc-edge --help` stays light and torch-free."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import List, Optional

import typer

from tedloc_edge.console import console, setup_logging, user_errors

from tedloc_edge.errors import UserError
from tedloc_edge.files import check_not_inputs, check_output


def infer(
    sources: Optional[List[str]] = typer.Argument(None, help="Video file, image, folder or glob of images, rtsp/http URL, or webcam index; several run as one batch."),
    sources_file: Optional[Path] = typer.Option(None, "--sources", help="A file of sources, one per line (# comments); outputs go to OUT/<name>/ per source."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Exported model: .onnx (ONNX Runtime) or .plan (TensorRT, + .plan.json)."),
    out: Path = typer.Option(Path("runs/infer"), "--out", "-o", help="Output folder: annotated mp4 / images, predictions.jsonl, summary.json."),
    exist_ok: bool = typer.Option(False, "--exist-ok", help="Overwrite outputs that already exist in --out."),
    stride: int = typer.Option(1, help="Run every Nth frame of a video (the mp4 plays at the source rate / N)."),
    batch: Optional[int] = typer.Option(None, help="Frames per model call, across sources (live ones batch only what is waiting). Default: 1, or one per source."),
    max_frames: Optional[int] = typer.Option(None, help="Stop after this many processed frames."),
    classes: Optional[str] = typer.Option(None, help="Restrict the class choice to these names or ids, comma separated."),
    threshold: Optional[float] = typer.Option(None, help="Box threshold in [0, 1); default: the model's calibrated one."),
    presence_threshold: Optional[float] = typer.Option(None, "--presence-threshold", help="Presence threshold in [0, 1]: below it a frame has no object (no box, no class); default: the model's calibrated one."),
    heatmap: bool = typer.Option(False, "--heatmap", help="Blend the localization map over the annotated frames."),
    queue: bool = typer.Option(False, "--queue", help="Live sources: queue every frame instead of dropping stale ones."),
    device: str = typer.Option("auto", help="cpu | cuda | auto (cuda when onnxruntime-gpu or TensorRT can use it)."),
    backend: str = typer.Option("auto", help="auto | onnxruntime | tensorrt."),
    threads: int = typer.Option(0, help="ONNX Runtime CPU threads (0: one per core); fewer leave cores to decoding and other work."),
    cuda_graph: bool = typer.Option(False, "--cuda-graph", help="Replay the model as one CUDA graph (CUDA EP; a model from `export --static-batch N`)."),
    hwaccel: Optional[str] = typer.Option(None, "--hwaccel", help="Decode videos and streams on this device through FFmpeg: cuda (NVDEC) frees the CPU."),
    timeout: float = typer.Option(10.0, help="Seconds to wait for a URL or camera to answer (open and each read)."),
    video: bool = typer.Option(True, "--video/--no-video", help="Write the annotated mp4 for video sources."),
    reconnect: Optional[str] = typer.Option(None, "--reconnect", help="Live sources: reopen a stream that ends or stalls, forever (default) or N attempts in a row; 0 is off. Files are read once."),
    segment: Optional[str] = typer.Option(None, "--segment", help="Roll the mp4 and JSONL over into complete parts of this length (30s, 10m, 1h): <name>_0000.mp4, predictions_0000.jsonl, ..."),
    smooth: int = typer.Option(0, "--smooth", help="Video: class by vote over the last K frames, best box by moving average (0: off); stated in the JSONL."),
    triton: Optional[str] = typer.Option(None, "--triton", help="Run the model on a Triton server instead: http://HOST:8000/MODEL or grpc://HOST:8001/MODEL."),
    trt_cache: Optional[Path] = typer.Option(None, "--trt-cache", help="ONNX Runtime's TensorRT EP: folder for its engine and timing caches (default: MODEL.trt-cache beside the model)."),
    metadata: Optional[Path] = typer.Option(None, "--metadata", help="A plan built elsewhere (trtexec): the .onnx it came from, or a bundle JSON; its build checks are skipped."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Run a model on a video, images, a stream or cameras: annotated outputs, JSONL, a speed summary.

    Exit codes: 0 done; 2 a user error (one line naming the fix); 75 a live source lost for good (--reconnect gave up; the cause is printed and in summary.json), so a service manager restarts it; 130 interrupted (Ctrl-C, SIGTERM), with the outputs closed cleanly.
    """
    setup_logging(verbose)
    with user_errors():
        from tedloc_edge.runtime.infer import InferOptions, run_infer
        from tedloc_edge.runtime.multi import read_sources_file, run_multi
        from tedloc_edge.runtime.reconnect import EXIT_SOURCE_LOST
        from tedloc_edge.runtime.report import print_summary

        specs = list(sources or []) + (read_sources_file(sources_file) if sources_file is not None else [])
        if not specs:
            raise UserError("infer needs a SOURCE (a video, images, a URL or a camera index), or --sources FILE")
        opts = InferOptions(
            source=specs[0], model=model, out=out, exist_ok=exist_ok, stride=stride, batch=batch or (1 if len(specs) == 1 else len(specs)),
            max_frames=max_frames, classes=classes, threshold=threshold, heatmap=heatmap, queue=queue, device=device, backend=backend,
            threads=threads, cuda_graph=cuda_graph, hwaccel=hwaccel, timeout=timeout, video=video, show_progress=sys.stderr.isatty(), triton=triton,
            trt_cache=trt_cache, metadata=metadata, reconnect=reconnect, segment=segment, smooth=smooth,
            presence_threshold=presence_threshold,
        )
        if len(specs) == 1:
            summary = run_infer(opts)
            print_summary(summary)
            lost, interrupted = [summary] if summary.lost else [], summary.interrupted
        else:
            from tedloc_edge.runtime.camera_table import print_multi_summary

            multi = run_multi(opts, specs)
            print_multi_summary(multi, opts.batch)
            lost, interrupted = multi.lost, multi.interrupted
        for gone in lost:
            console.print(f"[bold red]error:[/] {gone.source}: {gone.stream_error}; the outputs hold every frame processed before", soft_wrap=True)
        if lost:
            raise SystemExit(EXIT_SOURCE_LOST)
        if interrupted:
            raise SystemExit(130)


def _batches(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--batch {text!r}: give batch sizes as integers separated by commas, e.g. 1,8") from None
    if not sizes or min(sizes) < 1 or max(sizes) > 4096:  # 10**8 made 10**8 synthetic frames, for ever
        raise UserError(f"--batch {text!r}: batch sizes must be in 1..4096")
    return sizes


def _check_bench(seconds: float, frame_size: str, threads: int, json_out: Optional[Path], models: List[Path]) -> None:
    """Before any model runs: a duration that ends (NaN never did), a frame with pixels (0x0 was a
    ZeroDivisionError), threads >= 0, and a --json that can be written and is none of the models."""
    if not (math.isfinite(seconds) and seconds > 0):
        raise UserError(f"--seconds {seconds}: must be a positive number of seconds")
    width, _, height = frame_size.lower().partition("x")
    if not (width.isdigit() and height.isdigit() and 1 <= int(width) <= 8192 and 1 <= int(height) <= 8192):
        raise UserError(f"--frame-size {frame_size!r}: give WIDTHxHEIGHT, each 1..8192, e.g. 1280x720")
    if threads < 0:
        raise UserError(f"--threads must be 0 (one per core) or more, not {threads}")
    if json_out is not None:
        check_not_inputs([json_out], models, "choose another --json path")
        check_output(json_out, True, "choose another --json path")


def bench(
    models: Optional[List[Path]] = typer.Argument(None, help="One or more exported models (e.g. fp32, fp16 and int8 .onnx, a .plan)."),
    batch: str = typer.Option("1,8", help="Batch sizes, comma separated."),
    seconds: float = typer.Option(5.0, help="Measured seconds per model, backend and batch size (after warm-up)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results as JSON here."),
    run: Optional[Path] = typer.Option(None, "--run", help="Training run: add torch eager fp32 of the same model (needs torch)."),
    device: str = typer.Option("auto", help="cpu | cuda | auto."),
    frame_size: str = typer.Option("1280x720", help="WIDTHxHEIGHT of the synthetic frames (the resize is part of preprocess)."),
    threads: int = typer.Option(0, help="CPU threads for every backend, torch included (0: one per core)."),
    cuda_graph: bool = typer.Option(False, "--cuda-graph", help="ONNX models with a static batch on the CUDA EP: also time them with CUDA graphs."),
    triton: Optional[str] = typer.Option(None, "--triton", help="Load-test a Triton server (URL as for infer); MODEL, if given, runs in-process beside it."),
    streams: str = typer.Option("4", help="--triton: simulated cameras, a count or a list like 1,4,16."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Images/s and per-stage latency (p50/p90/p99) of each model and backend, with ratios from one run."""
    setup_logging(verbose)
    with user_errors():
        _check_bench(seconds, frame_size, threads, json_out, models or [])
        if triton:
            from tedloc_edge.runtime import triton_bench

            triton_bench.cli(triton, streams=streams, seconds=seconds, model=models[0] if models else None, json_path=json_out)
            return
        if not models:
            raise UserError("bench needs at least one MODEL (.onnx or .plan), or --triton URL")
        from tedloc_edge.runtime.bench import BenchOptions, run_bench, write_json
        from tedloc_edge.runtime.report import print_table

        opts = BenchOptions(models=list(models), batches=_batches(batch), seconds=seconds, run=run, device=device, frame_size=frame_size,
                            threads=threads, cuda_graph=cuda_graph)
        report = run_bench(opts)
        print_table(report)
        if json_out is not None:
            try:
                write_json(report, json_out)
            except OSError as exc:  # a disk that filled up during the run: the table is on the screen
                raise UserError(f"{json_out}: could not be written ({exc.strerror}); the results are printed above") from None
            console.print(f"results: {json_out}", markup=False)
