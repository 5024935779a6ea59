"""`tedloc-edge data synth` and `tedloc-edge train`. Thin typer commands: torch and friends are imported inside
the functions, so `tedloc-edge --help` stays light."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tedloc_edge.console import setup_logging, user_errors

DATA, MODEL, ANCHORS, CUES, LOSS, OPTIM, RUN = ("Data", "Model", "Class anchors", "Localization cues",
                                                "Sampling and losses", "Optimization", "Run folder")


def synth(
    out: Path = typer.Argument(..., help="Folder to write the benchmark to (wsolevaluation layout)."),
    classes: int = typer.Option(8, "--classes", help="Number of classes (objects share a body; a small head tells the class)."),
    train: int = typer.Option(480, "--train", help="Training images in total (classes balanced)."),
    val: int = typer.Option(96, "--val", help="Validation images (threshold calibration, best checkpoint)."),
    test: int = typer.Option(192, "--test", help="Test images."),
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
                        image_size=(min_size, max_size), exist_ok=exist_ok)
        next_commands("Next:", [f"tedloc-edge train --data {root} --out runs/tedloc",
                                f"tedloc-edge train --data {root} --out runs/cam --method cam"])


def train(
    data: Path = typer.Option(None, "--data", help="Dataset root: wsolevaluation layout, CUB-200-2011, or class folders.", rich_help_panel=DATA),
    out: Path = typer.Option(Path("runs/tedloc"), "--out", help="Run folder (checkpoints, anchors, cues, metrics).", rich_help_panel=RUN),
    method: str = typer.Option("tedloc", "--method", help="tedloc, or cam: the CAM baseline in the same harness.", rich_help_panel=MODEL),
    train_split: str = typer.Option("train", "--train-split", rich_help_panel=DATA),
    val_split: str = typer.Option("val", "--val-split", help="Validation split for best.pt; '' for none.", rich_help_panel=DATA),
    backbone: str = typer.Option("tf_efficientnet_lite0", "--backbone", help="Frozen timm encoder (CNN or ViT).", rich_help_panel=MODEL),
    backbone_weights: Optional[str] = typer.Option(None, "--backbone-weights", help="timm tag, local file, or 'random'. Default: offline ImageNet weights for tf_efficientnet_lite0.", rich_help_panel=MODEL),
    input_size: int = typer.Option(224, "--input-size", help="Square input side, a multiple of the backbone stride.", rich_help_panel=MODEL),
    embed_dim: int = typer.Option(0, "--embed-dim", help="d: patch embedding and anchor width (>= classes); 0: max(128, next multiple of 64 >= classes).", rich_help_panel=MODEL),
    decoder_hidden: int = typer.Option(256, "--decoder-hidden", rich_help_panel=MODEL),
    temperature: float = typer.Option(0.1, "--temperature", help="Cosine logits are divided by T.", rich_help_panel=MODEL),
    clip_model: str = typer.Option("ViT-B-16", "--clip-model", help="open_clip model for anchors (and clip-es cues).", rich_help_panel=ANCHORS),
    clip_pretrained: Optional[str] = typer.Option(None, "--clip-pretrained", help="open_clip tag (e.g. openai) or a local file. Default: random, NO text semantics.", rich_help_panel=ANCHORS),
    prompt_template: str = typer.Option("Image of a {}.", "--prompt-template", rich_help_panel=ANCHORS),
    anchors: Optional[Path] = typer.Option(None, "--anchors", help="Bring your own (classes, d) .npy anchors.", rich_help_panel=ANCHORS),
    cue: str = typer.Option("ddt", "--cue", help="ddt (offline), cam, clip-es, or files.", rich_help_panel=CUES),
    cue_dir: Optional[Path] = typer.Option(None, "--cue-dir", help="With --cue files: one map per image.", rich_help_panel=CUES),
    k_fg: int = typer.Option(10, "--k-fg", help="Foreground patches per image per step.", rich_help_panel=LOSS),
    k_bg: int = typer.Option(10, "--k-bg", help="Background patches per image per step.", rich_help_panel=LOSS),
    fg_rule: str = typer.Option("auto", "--fg-rule", help="Foreground patches: otsu, frac:F (cue > F x max) or quantile:Q; auto: otsu, or the val-chosen rule for ddt cues.", rich_help_panel=LOSS),
    bg_rule: str = typer.Option("quantile:0.2", "--bg-rule", help="Background patches: quantile:Q (lowest Q of the map, ties kept), frac:F (cue <= F x max) or otsu.", rich_help_panel=LOSS),
    w_kd: float = typer.Option(1.0, "--w-kd", rich_help_panel=LOSS),
    w_pcl: float = typer.Option(1.0, "--w-pcl", rich_help_panel=LOSS),
    w_icl: float = typer.Option(1.0, "--w-icl", rich_help_panel=LOSS),
    label_smoothing: float = typer.Option(0.0, "--label-smoothing", help="Label smoothing of the image-level cross-entropy (I_CL).", rich_help_panel=LOSS),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Default 10; with --resume, the new total.", rich_help_panel=OPTIM),
    batch_size: int = typer.Option(32, "--batch-size", help="Per process.", rich_help_panel=OPTIM),
    optimizer: str = typer.Option("adamw", "--optimizer", help="adamw or sgd.", rich_help_panel=OPTIM),
    lr: float = typer.Option(1e-3, "--lr", rich_help_panel=OPTIM),
    weight_decay: float = typer.Option(0.05, "--weight-decay", rich_help_panel=OPTIM),
    warmup_epochs: float = typer.Option(1.0, "--warmup-epochs", rich_help_panel=OPTIM),
    grad_clip: float = typer.Option(1.0, "--grad-clip", help="Max gradient norm; 0 disables.", rich_help_panel=OPTIM),
    augment: bool = typer.Option(False, "--augment", help="Random horizontal flips (mirrored images are encoded once too: 2x the feature time).", rich_help_panel=OPTIM),
    seed: int = typer.Option(0, "--seed", rich_help_panel=OPTIM),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1 ...", rich_help_panel=OPTIM),
    amp: bool = typer.Option(True, "--amp/--no-amp", help="Mixed precision on CUDA.", rich_help_panel=OPTIM),
    workers: int = typer.Option(0, "--workers", help="DataLoader workers (features are cached; 0 is usually best).", rich_help_panel=OPTIM),
    exist_ok: bool = typer.Option(False, "--exist-ok", help="Overwrite an existing run folder.", rich_help_panel=RUN),
    resume: bool = typer.Option(False, "--resume", help="Continue OUT from checkpoints/last.pt with its saved settings (--epochs may raise the total).", rich_help_panel=RUN),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Train TeD-Loc (or the CAM baseline) on class labels only; writes a run folder `tedloc-edge export` takes.

    Multi-GPU / multi-process: torchrun --nproc_per_node N -m tedloc_edge.train.loop --data ... --out ..."""
    with user_errors():
        setup_logging(verbose)
        from tedloc_edge.train.config import TrainConfig
        from tedloc_edge.train.loop import train as run_training

        if resume:  # the run's own settings; only the epoch total, device and workers may change
            saved = TrainConfig.load(out / "config.json")
            cfg = saved.replace(resume=True, exist_ok=False, out=str(out), epochs=epochs or saved.epochs,
                                device=device, workers=workers)
        else:
            cfg = TrainConfig(
                # absolute, so eval/export find the dataset from any working folder
                data=str(data.resolve()) if data else "", out=str(out), train_split=train_split, val_split=val_split,
                method=method, backbone=backbone, backbone_weights=backbone_weights, input_size=input_size,
                embed_dim=embed_dim, decoder_hidden=decoder_hidden, temperature=temperature, clip_model=clip_model,
                clip_pretrained=clip_pretrained, prompt_template=prompt_template,
                anchors_file=str(anchors.resolve()) if anchors else None, cue=cue,
                cue_dir=str(cue_dir.resolve()) if cue_dir else None,
                k_fg=k_fg, k_bg=k_bg, fg_rule=fg_rule, bg_rule=bg_rule, w_kd=w_kd, w_pcl=w_pcl, w_icl=w_icl,
                label_smoothing=label_smoothing, epochs=epochs or 10,
                batch_size=batch_size, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
                warmup_epochs=warmup_epochs, grad_clip=grad_clip, augment=augment, seed=seed, device=device,
                amp=amp, workers=workers, exist_ok=exist_ok,
            )
        run_training(cfg)
