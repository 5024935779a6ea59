"""Training set-up, before the loop: seeding, the run folder, validation split, class anchors, cue maps and the
checks that refuse a run early (undecodable classes, a resume with other settings)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from tedloc_edge.console import console
from tedloc_edge.errors import UserError
from tedloc_edge.files import atomic_write_with
from tedloc_edge.rundir import RunDir
from tedloc_edge.train import data as D
from tedloc_edge.train.config import TrainConfig
from tedloc_edge.train.distributed import Dist

log = logging.getLogger(__name__)


def seed_everything(seed: int, device: torch.device) -> None:
    """`--seed S` is bit-reproducible on CPU: seeded generators and deterministic algorithms. On CUDA, cuBLAS gets
    its deterministic workspace, but some kernels (atomics in backward) have no deterministic version: there
    torch warns instead of failing, and runs may differ in the last bits."""
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.set_float32_matmul_precision("high")
    torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")


def seed_worker(worker_id: int) -> None:
    """DataLoader workers inherit a seed derived from the loader's seeded generator."""
    import random

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def load_val_split(cfg: TrainConfig):
    if not cfg.val_split:
        return None
    try:
        return D.open_split(cfg.data, cfg.val_split)
    except UserError as exc:
        raise UserError(f"{exc} (or train without validation: --val-split '')") from None


def prepare_run_dir(cfg: TrainConfig, run: RunDir, dist: Dist) -> TrainConfig:
    """Create the run folder (rank 0 decides, every rank gets the same verdict and run id); refuse to overwrite a
    run unless --exist-ok."""
    import secrets

    problem, run_id = None, f"{run.path.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    if dist.is_main:
        if cfg.resume and not run.checkpoint("last").is_file():
            problem = f"{run}: nothing to resume (no checkpoints/last.pt); drop --resume to start this run"
        elif cfg.resume:
            run_id = TrainConfig.load(run.config).run_id
        elif run.path.exists() and any(run.path.iterdir()) and not cfg.exist_ok:
            problem = (f"{run}: run folder exists; pass --resume to continue it, --exist-ok to overwrite, "
                       "or choose another --out")
    problem, run_id = dist.broadcast((problem, run_id))
    if problem:
        raise UserError(problem)
    cfg = cfg.replace(run_id=run_id)
    if dist.is_main:
        run.start(cfg.to_dict(), fresh=not cfg.resume)
    dist.barrier()
    return cfg


def resolve_anchors(cfg: TrainConfig, run: RunDir, class_names: list[str], dist: Dist):
    """Rank 0 computes (or reads the cached / user) anchors into the run folder; every rank loads them there."""
    from tedloc_edge.train import anchors as A

    if dist.is_main:
        if cfg.anchors_file:
            anchors, info = A.file_anchors(cfg.anchors_file, class_names, cfg.embed_dim)
        else:
            anchors, info = A.text_anchors(class_names, cfg.embed_dim, clip_model=cfg.clip_model,
                                           clip_pretrained=cfg.clip_pretrained, template=cfg.prompt_template,
                                           cache_dir=anchor_cache_dir())
        A.save_anchors(run.path, anchors, info)
    dist.barrier()
    return A.load_anchors(run.path)


def anchor_cache_dir() -> Path:
    """Anchors are shared between runs: $XDG_CACHE_HOME/tedloc-edge/anchors (default ~/.cache/...)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tedloc-edge" / "anchors"


def resolve_cues(cfg: TrainConfig, run: RunDir, split, cache: D.SplitCache, grid, dist: Dist,
                 backbone=None, negatives: D.SplitCache | None = None) -> np.ndarray:
    """Cue maps (N, gh, gw) for every training image (rank 0 computes, everyone reads RUN/cues/cues.npy).
    Undecodable images get a flat (all-zero) map: they never train. The object-free images' features
    (`negatives`) serve contrastive DDT (cfg.ddt_contrast > 0)."""
    path = run.cues / "cues.npy"
    if dist.is_main and cfg.ddt_contrast > 0 and (cfg.cue != "ddt" or negatives is None):
        log.warning("--ddt-contrast %g: %s; the cues are computed without it", cfg.ddt_contrast,
                    "only --cue ddt uses it" if cfg.cue != "ddt" else "no object-free images to contrast with")
    if dist.is_main:
        from tedloc_edge.train.cues import compute_cues, save_cue_picture

        rows = np.flatnonzero(cache.ok)
        samples = [split.samples[i] for i in rows]
        found = compute_cues(cfg.cue, samples, list(split.class_names), out_size=tuple(grid),
                             features=lambda: full_features(backbone, cache, rows), features_key=cache.key,
                             cache_dir=run.cues, clip_model=cfg.clip_model, clip_pretrained=cfg.clip_pretrained,
                             cue_dir=Path(cfg.cue_dir) if cfg.cue_dir else None, device=str(dist.device), seed=cfg.seed,
                             ddt_contrast=cfg.ddt_contrast, background_key=negatives.key if negatives else None,
                             background=(lambda: full_features(backbone, negatives, np.flatnonzero(negatives.ok)))
                             if negatives is not None and cfg.ddt_contrast > 0 else None)
        cues = np.zeros((len(split.samples), *grid), dtype=np.float32)
        cues[rows] = found
        atomic_write_with(path, lambda fh: np.save(fh, cues))
        save_cue_picture(run.cues / "cues.png", samples, found, class_names=list(split.class_names))
    dist.barrier()
    return np.load(path)


def check_after_skips(split, labels: np.ndarray, ok: np.ndarray, skipped: dict[str, list[str]],
                      run: RunDir | None) -> None:
    """Say how many images failed to decode (and save which, when `run` is given); every class must keep one."""
    total = sum(len(v) for v in skipped.values())
    if total and run is not None:
        run.write_skipped(skipped)
        console.print(f"[yellow]skipped {total} undecodable image(s)[/] "
                      + ", ".join(f"{k}: {len(v)}" for k, v in skipped.items() if v) + " (listed in skipped.json)")
    counts = np.bincount(labels[ok], minlength=len(split.class_names))
    if not ok.any() or (counts == 0).any():
        name = split.class_names[int(np.argmin(counts))]
        raise UserError(f"{split.root}: no decodable training image of class {name!r}; fix or replace its images")


@torch.no_grad()
def full_features(backbone, cache: D.SplitCache, rows: np.ndarray, batch: int = 64) -> torch.Tensor:
    """The patch-grid features of cached rows (through the backbone tail, as initialized, when one is fine-tuned)."""
    x = D.features_tensor(cache, rows)
    if backbone is None or not backbone.tail_stages:
        return x
    device = next(backbone.parameters()).device
    return torch.cat([backbone.finish(x[i:i + batch].to(device)).cpu() for i in range(0, len(x), batch)])


def check_resumable(ckpt: dict, model_args: dict, run: RunDir) -> None:
    saved = ckpt.get("model_args", {})
    diff = [k for k in model_args if saved.get(k) != model_args[k] and not isinstance(model_args[k], tuple)]
    diff += [k for k in model_args if isinstance(model_args[k], tuple) and tuple(saved.get(k, ())) != model_args[k]]
    if diff:
        raise UserError(f"{run.checkpoint('last')}: trained with other {', '.join(diff)}; resume with the run's "
                        "own settings (they are in config.json) or start a new --out")
