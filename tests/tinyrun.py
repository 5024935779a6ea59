"""A real, tiny training run for tests of later stages (export, eval, runtime): a few seconds on a CPU.

    from tinyrun import make_tiny_run
    run = make_tiny_run(tmp_path)             # TeD-Loc; make_tiny_run(tmp_path, method="cam") for the baseline
    model, meta = load_run(run)               # 64x64 input, 3 classes, patch grid 4x4

The dataset (3 classes, 24 train / 9 val / 9 test images of 64-96 px, synthetic benchmark) is written once
under `dir/data` and shared by every run made in the same `dir`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

TINY = dict(classes=3, train=24, val=9, test=9, seed=0, image_size=(64, 96))


def make_tiny_data(directory: str | os.PathLike) -> Path:
    from tedloc_edge.train.synth import generate

    root = Path(directory) / "data"
    if not (root / "classes.txt").is_file():
        generate(root, show_progress=False, **TINY)
    return root


def make_tiny_run(directory: str | os.PathLike, method: str = "tedloc", **overrides: Any) -> Path:
    """Train `method` for one epoch at 64x64 on the tiny dataset; returns the run folder (dir/run-<method>)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TEDLOC_NO_PROGRESS", "1")
    import torch

    from tedloc_edge.train.config import TrainConfig
    from tedloc_edge.train.loop import train

    torch.set_num_threads(min(2, torch.get_num_threads()))
    data = make_tiny_data(directory)
    settings: dict[str, Any] = dict(
        data=str(data), out=str(Path(directory) / f"run-{method}"), method=method, input_size=64, epochs=1,
        batch_size=8, clip_model="ViT-S-32", embed_dim=16, decoder_hidden=32, feature_batch=16, seed=0,
    )
    settings.update(overrides)
    return train(TrainConfig(**settings))
