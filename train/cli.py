"""`tedloc-edge data synth` and `tedloc-edge train`. Thin typer commands: torch and friends are imported inside
the functions, so `tedloc-edge --help` stays light. The train options are TrainConfig's fields (train/config.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from tedloc_edge.cli_options import param, typer_command
from tedloc_edge.console import setup_logging, user_errors
from tedloc_edge.train.config import RESUMABLE, TrainConfig


def synth(
    out: Path = typer.Argument(..., help="Folder to write the benchmark to (wsolevaluation layout)."),
    classes: int = typer.Option(8, "--classes", help="Number of classes (objects share a body; a small head tells the class)."),
    train: int = typer.Option(480, "--train", help="Training images in total (classes balanced)."),
    val: int = typer.Option(96, "--val", help="Validation images (threshold calibration, best checkpoint)."),
    test: int = typer.Option(192, "--test", help="Test images."),
    negatives: int = typer.Option(0, "--negatives", help="Object-free scenes per split (same backgrounds and distractors, no object), in metadata/<split>_negatives: presence training, calibration and testing."),
    val_negatives: int | None = typer.Option(None, "--val-negatives", help="Object-free scenes in val instead of --negatives: the presence threshold is picked there, and more scenes pick it more surely.", show_default="--negatives"),
    seed: int = typer.Option(0, "--seed", help="Same seed and counts give byte-identical files."),
    min_size: int = typer.Option(200, "--min-size", help="Smallest image side drawn, pixels."),
    max_size: int = typer.Option(320, "--max-size", help="Largest image side drawn, pixels."),
    exist_ok: bool = typer.Option(False, "--exist-ok", help="Replace OUT if it exists."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Generate the synthetic WSOL benchmark: boxes and masks for every split, hard the way WSOL is hard."""
    with user_errors():
        setup_logging(verbose)
        from tedloc_edge.console import next_commands
        from tedloc_edge.train.synth import generate

        root = generate(out, classes=classes, train=train, val=val, test=test, seed=seed,
                        image_size=(min_size, max_size), exist_ok=exist_ok, negatives=negatives,
                        val_negatives=val_negatives)
        next_commands("Next:", [f"tedloc-edge train --data {root} --out runs/tedloc",
                                f"tedloc-edge train --data {root} --out runs/cam --method cam"])


def _train(options: dict[str, Any], verbose: bool) -> None:
    """Train TeD-Loc (or the CAM baseline) on class labels only; writes a run folder `tedloc-edge export` takes.

    Multi-GPU / multi-process: torchrun --nproc_per_node N -m tedloc_edge.train.loop --data ... --out ..."""
    with user_errors():
        setup_logging(verbose)
        from tedloc_edge.train.loop import train as run_training

        cfg = TrainConfig(**options)
        if cfg.resume:  # the run's own settings; only the epoch total, device and workers may change
            saved = TrainConfig.load(Path(cfg.out) / "config.json")
            cfg = saved.replace(resume=True, exist_ok=False, **{k: options[k] for k in RESUMABLE if k in options})
        run_training(cfg)


train = typer_command(TrainConfig, _train, after=[param("verbose", bool, typer.Option(False, "--verbose", "-v"))])
