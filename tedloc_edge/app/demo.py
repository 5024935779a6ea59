"""`tedloc-edge demo`: the whole toolkit end to end, offline, on defaults.

Each stage is the very CLI command a user would type (run as a subprocess, so the report's commands are
exactly what ran); a stage whose outputs exist is reused unless `--fresh`.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import typer
from rich.markup import escape

from tedloc_edge.console import console, next_commands, user_errors

from tedloc_edge.errors import UserError
from tedloc_edge.app.demo_report import write_report


@dataclass(frozen=True)
class DemoSize:
    """Dataset and schedule sizes (image counts are per split, all classes together; `negatives`: object-free
    scenes in train and test, as many as test images; val holds `val_negatives`); `tiny` is what the CI end-to-end
    test runs."""

    classes: int
    train: int
    val: int
    test: int
    negatives: int
    val_negatives: int
    epochs: int
    input_size: int
    finetune_stages: int
    ddt_contrast: float
    calib_images: int
    video_frames: int
    bench_seconds: float


SIZES = {
    # 448 px and the backbone's last 3 stages trained: presence needs birds 15-30% of the image wide to span more
    # than 2 patches, and features tuned to tell a bird from a headless body beside a lone head; contrastive DDT
    # cues (against the object-free scenes) put small birds' foreground patches on the bird; 480 + 480 val images,
    # because the presence threshold sits where a few images of each kind cross it (docs/presence.md)
    "default": DemoSize(classes=8, train=400, val=480, test=160, negatives=160, val_negatives=480, epochs=10,
                        input_size=448, finetune_stages=3, ddt_contrast=1.5, calib_images=200, video_frames=90,
                        bench_seconds=2.0),
    "tiny": DemoSize(classes=3, train=12, val=6, test=6, negatives=6, val_negatives=8, epochs=2, input_size=64,
                     finetune_stages=0, ddt_contrast=1.5, calib_images=8, video_frames=12, bench_seconds=0.3),
}


@dataclass
class Stage:
    title: str
    argv: list[str]
    outputs: list[Path]
    seconds: float = 0.0
    reused: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def command(self) -> str:
        return "tedloc-edge " + shlex.join(self.argv)


def plan_stages(out: Path, size: DemoSize, seed: int) -> list[Stage]:
    data, runs, models, evals = out / "data", out / "runs", out / "models", out / "eval"
    tedloc, cam = runs / "tedloc", runs / "cam"
    fp32, int8 = models / "tedloc_fp32.onnx", models / "tedloc_int8.onnx"
    video = out / "video" / "synthetic.mp4"
    common_train = ["--data", str(data), "--epochs", str(size.epochs), "--input-size", str(size.input_size),
                    "--finetune-stages", str(size.finetune_stages), "--seed", str(seed)]
    n = [str(size.classes), str(size.train), str(size.val), str(size.test)]

    def eval_stage(title: str, target: Path, name: str) -> Stage:
        json_out, plot = evals / f"{name}.json", evals / f"{name}.png"
        argv = ["eval", str(target), "--data", str(data), "--split", "test", "--json", str(json_out), "--plot", str(plot)]
        return Stage(title, argv, [json_out])

    return [
        Stage("Generate the synthetic WSOL benchmark",
              ["data", "synth", str(data), "--classes", n[0], "--train", n[1], "--val", n[2], "--test", n[3],
               "--negatives", str(size.negatives), "--val-negatives", str(size.val_negatives), "--seed", str(seed)],
              [data / "classes.txt"]),
        Stage("Train TeD-Loc (offline contrastive DDT cues, EfficientNet-Lite0 at 448 px, last stages fine-tuned; "
              "object-free scenes teach presence)",
              ["train", "--out", str(tedloc), "--method", "tedloc", *common_train, "--ddt-contrast", str(size.ddt_contrast)],
              [tedloc / "checkpoints" / "best.pt"]),
        Stage("Train the CAM baseline (same backbone, data, budget)",
              ["train", "--out", str(cam), "--method", "cam", *common_train], [cam / "checkpoints" / "best.pt"]),
        Stage("Calibrate the TeD-Loc box and presence thresholds on val (+ val_negatives)",
              ["eval", str(tedloc), "--data", str(data), "--split", "val", "--calibrate"], [tedloc / "threshold.json"]),
        Stage("Calibrate the CAM threshold on val",
              ["eval", str(cam), "--data", str(data), "--split", "val", "--calibrate"], [cam / "threshold.json"]),
        Stage("Export ONNX fp32 (verified against torch)",
              ["export", str(tedloc), "--format", "onnx", "--precision", "fp32", "--output", str(fp32)], [fp32]),
        Stage("Export ONNX INT8 Q/DQ (calibrated, accuracy-gated)",
              ["export", str(tedloc), "--format", "onnx", "--precision", "int8", "--output", str(int8),
               "--calib-images", str(size.calib_images)], [int8]),
        eval_stage("Evaluate TeD-Loc (torch) on test", tedloc, "tedloc_torch"),
        eval_stage("Evaluate CAM (torch) on test", cam, "cam_torch"),
        eval_stage("Evaluate TeD-Loc ONNX fp32 on test", fp32, "tedloc_fp32"),
        eval_stage("Evaluate TeD-Loc ONNX INT8 on test", int8, "tedloc_int8"),
        Stage("Make a synthetic video with known boxes",
              ["data", "video", str(video), "--frames", str(size.video_frames), "--classes", n[0], "--seed", str(seed),
               "--exist-ok"], [video]),
        Stage("Run infer on the video (ONNX INT8)",
              ["infer", str(video), "--model", str(int8), "--out", str(out / "infer"), "--exist-ok"],
              [out / "infer" / "predictions.jsonl"]),
        Stage("Bench fp32 vs INT8 (ONNX Runtime) beside torch eager",
              ["bench", str(fp32), str(int8), "--run", str(tedloc), "--batch", "1,8", "--seconds", str(size.bench_seconds),
               "--json", str(out / "bench.json")], [out / "bench.json"]),
    ]


def run_stage(stage: Stage, index: int, total: int, fresh: bool, log_dir: Path) -> None:
    header = f"[bold cyan][{index}/{total}][/] {stage.title}"
    if not fresh and stage.outputs and all(p.exists() for p in stage.outputs):
        stage.reused = True
        console.print(f"{header} [dim](reused; --fresh to redo)[/]")
        return
    console.rule(header, align="left")
    console.print(f"[dim]$ {escape(stage.command)}[/]", soft_wrap=True)
    start = time.perf_counter()
    log = log_dir / f"{index:02d}.log"
    cmd = [sys.executable, "-m", "tedloc_edge.app.cli", *stage.argv]
    with open(log, "w", encoding="utf-8") as fh:
        fh.write(f"$ {stage.command}\n")
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        fh.write(proc.stdout)
    stage.seconds = time.perf_counter() - start
    tail = "\n".join(proc.stdout.strip().splitlines()[-12:])
    if tail:
        console.print(tail, markup=False, highlight=False)
    if proc.returncode != 0:
        raise UserError(f"demo stage {index} ({stage.title}) failed; full log: {log}; rerun the stage: {stage.command}")
    console.print(f"[green]done[/] in {stage.seconds:.1f} s")


def demo(
    out: Path = typer.Option(Path("demo"), "--out", help="Folder for every artifact and report.md."),
    size: str = typer.Option("default", help="Problem size: default (about an hour on 2 CPU cores) or tiny (CI)."),
    fresh: bool = typer.Option(False, "--fresh", help="Redo every stage even when its outputs exist."),
    seed: int = typer.Option(0, help="Seed for data, training and video."),
) -> None:
    """Run the whole toolkit offline: data, cues, TeD-Loc and CAM training, calibration, ONNX fp32/INT8 export,
    evaluation, video inference and bench; writes OUT/report.md."""
    with user_errors():
        if size not in SIZES:
            raise UserError(f"unknown --size {size!r}; choose one of: {', '.join(SIZES)}")
        if fresh and out.exists():
            shutil.rmtree(out)
        (out / "logs").mkdir(parents=True, exist_ok=True)
        stages = plan_stages(out, SIZES[size], seed)
        started = time.perf_counter()
        for i, stage in enumerate(stages, 1):
            run_stage(stage, i, len(stages), fresh, out / "logs")
        total = time.perf_counter() - started
        timings = [{"title": s.title, "command": s.command, "seconds": round(s.seconds, 1), "reused": s.reused} for s in stages]
        (out / "stages.json").write_text(json.dumps(timings, indent=2), encoding="utf-8")
        report = write_report(out, stages, total)
        console.print(f"\n[bold green]Demo finished[/] in {total:.0f} s. Report: {escape(str(report))}")
        next_commands("Next:", [
            f"tedloc-edge infer YOUR_VIDEO.mp4 --model {out / 'models' / 'tedloc_int8.onnx'} --out runs/infer",
            f"tedloc-edge bench {out / 'models' / 'tedloc_fp32.onnx'} {out / 'models' / 'tedloc_int8.onnx'}",
            "tedloc-edge train --data /path/to/CUB --clip-pretrained openai --out runs/cub  (real CLIP weights, online)",
        ])
