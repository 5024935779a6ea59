"""`train(cfg)`: TeD-Loc (or the CAM baseline) from a labelled dataset to a run folder, read top to bottom.

Set-up (devices, run folder), data (split, cached backbone features, cues, sampling regions), model (anchors,
head), optimizer and schedule, then one loop: per step lr, sample patches, forward, losses, backward, clip,
step, log; per epoch validation, checkpoints (last.pt, best.pt) and a metrics line. The set-up helpers (seeding,
run folder, anchors, cues, early refusals) live in `train/setup.py`.

Multi-process: `torchrun --nproc_per_node N -m tedloc_edge.train.loop --data ... --out ...` (gloo on CPU, nccl
on CUDA). Ranks share the feature cache, DistributedSampler splits the images, only rank 0 writes the run.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from rich.markup import escape
from torch.utils.data import ConcatDataset, DataLoader, DistributedSampler

from tedloc_edge.console import console, next_commands, progress
from tedloc_edge.errors import UserError
from tedloc_edge.rundir import RunDir
from tedloc_edge.train import data as D
from tedloc_edge.train.config import TrainConfig
from tedloc_edge.train.distributed import Dist, setup_distributed
from tedloc_edge.train.losses import LossWeights, cam_loss, tedloc_loss
from tedloc_edge.train.model import args_to_dict, create_model, model_args_for
from tedloc_edge.train.predict import read_checkpoint, save_checkpoint
from tedloc_edge.train.sampling import add_negatives, flip_regions, hardest_background, patch_regions, sample_patches
from tedloc_edge.train.setup import (check_after_skips, check_resumable, load_val_split, prepare_run_dir, resolve_anchors,
                                     resolve_cues, seed_everything, seed_worker)
from tedloc_edge.train.validate import validate

log = logging.getLogger(__name__)

MIN_LR_RATIO = 0.01  # the cosine schedule ends at 1% of the peak lr


def train(cfg: TrainConfig) -> Path:
    cfg = cfg.validate()
    dist = setup_distributed(cfg.device)
    try:
        return _train(cfg, dist)
    finally:
        dist.close()


def _train(cfg: TrainConfig, dist: Dist) -> Path:
    # -- set-up -----------------------------------------------------------------------------------------
    seed_everything(cfg.seed, dist.device)
    t_start = time.perf_counter()

    # -- data (checked before anything is written) ----------------------------------------------------
    split = D.load_train_split(cfg.data, cfg.train_split)
    negatives, resolved = D.load_negatives(cfg.negatives, cfg.data, cfg.train_split) if cfg.method == "tedloc" else (None, "")
    if cfg.negatives and cfg.method != "tedloc":
        log.warning("--negatives: the %s baseline has no presence score to train; they are not used", cfg.method)
    cfg = cfg.replace(negatives=resolved)  # config.json says what was used ("" none)
    val_split = load_val_split(cfg)
    class_names = list(split.class_names)
    if val_split is not None and list(val_split.class_names) != class_names:
        raise UserError(f"{cfg.data}: splits {cfg.train_split!r} and {cfg.val_split!r} list different classes")
    cfg = cfg.resolved(len(class_names))  # the fg rule and d this run uses, as config.json keeps them
    run = RunDir(Path(cfg.out))
    cfg = prepare_run_dir(cfg, run, dist)
    device = dist.device
    if dist.is_main:
        run.write_classes(class_names)

    # -- model: frozen backbone, anchors, head ---------------------------------------------------------
    from tedloc_edge.train.backbone import create_backbone

    backbone = create_backbone(cfg.backbone, cfg.backbone_weights, input_size=cfg.input_size).to(device)
    backbone.set_tail(cfg.finetune_stages, cfg.input_size)  # 0: all frozen; N: the last N stages train
    args = model_args_for(cfg.method, backbone, cfg.input_size, len(class_names), cfg.embed_dim,
                          cfg.decoder_hidden, cfg.temperature, cfg.dropout)
    anchors, anchor_info = resolve_anchors(cfg, run, class_names, dist) if cfg.method == "tedloc" else (None, None)
    with torch.random.fork_rng(devices=[]):  # the head's init does not depend on what ran before (cached or not)
        torch.manual_seed(cfg.seed)
        model = create_model(args, None if anchors is None else torch.from_numpy(anchors), backbone).to(device)

    # -- features once per image (frozen encoder), cues, sampling regions -----------------------------
    cache = dict(normalize=model.normalize, input_size=cfg.input_size, batch_size=cfg.feature_batch, device=device,
                 rank=dist.rank, world=dist.world, barrier=dist.barrier)
    train_cache = D.build_cache(split.samples, run.cache, "train", backbone=backbone, flips=cfg.augment, **cache)
    val_cache = D.build_cache(val_split.samples, run.cache, "val", backbone=backbone, **cache) if val_split else None
    neg_cache = D.build_cache(negatives.samples, run.cache, "negatives", backbone=backbone, flips=cfg.augment,
                              **cache) if negatives else None
    skipped = {"train": train_cache.skipped, **({"val": val_cache.skipped} if val_cache else {}),
               **({"negatives": neg_cache.skipped} if neg_cache else {})}
    labels = np.array([s.label for s in split.samples])
    check_after_skips(split, labels, train_cache.ok, skipped, run if dist.is_main else None)
    regions = None
    if cfg.method == "tedloc":
        cues = resolve_cues(cfg, run, split, train_cache, args.grid, dist, backbone, neg_cache)
        regions = patch_regions(cues, cfg.bg_rule, cfg.fg_rule)
        if dist.is_main:
            log.info("cues: %d of %d training images give fg/bg patches (fg %s, bg %s; the rest have flat cue maps)",
                     int(regions.valid.sum()), len(cues), cfg.fg_rule, cfg.bg_rule)
    dataset = D.RowDataset(train_cache, labels)
    if neg_cache is not None:  # object-free rows after the split's own: every patch background
        dataset = ConcatDataset([dataset, D.RowDataset(neg_cache, None, offset=len(split.samples))])
        regions = None if regions is None else add_negatives(regions, len(negatives.samples))
        if dist.is_main:
            log.info("negatives: %d object-free images from %s", len(dataset.datasets[1]), negatives.root)
    sampler = DistributedSampler(dataset, num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=cfg.seed)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers, drop_last=False,
                        worker_init_fn=seed_worker, generator=torch.Generator().manual_seed(cfg.seed))

    # -- optimizer, schedule, precision ----------------------------------------------------------------
    head = model.head
    trained = dist.wrap(FeatureStep(model))
    optimizer = make_optimizer(cfg, head, backbone.tail_parameters())
    steps_per_epoch = len(loader)
    total_steps = cfg.epochs * steps_per_epoch
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, total_steps))
    amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if device.type == "cuda" and cfg.amp else None
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype is torch.float16)
    weights = LossWeights(cfg.w_kd, cfg.w_pcl, cfg.w_icl)

    # -- resume ---------------------------------------------------------------------------------------------
    start_epoch, step, best = 0, 0, {"metric": best_metric_name(val_split), "value": -math.inf, "epoch": -1}
    if cfg.resume:
        ckpt = read_checkpoint(run.checkpoint("last"))
        check_resumable(ckpt, args_to_dict(args), run)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch, step, best = ckpt["epoch"], ckpt["step"], ckpt["best"]
        if dist.is_main:
            log.info("resuming %s after epoch %d (step %d)", run, start_epoch, step)

    # -- the loop -----------------------------------------------------------------------------------------
    ckpt_common = dict(model_args=args_to_dict(args), config=cfg.to_dict(), class_names=class_names,
                       anchor_info=None if anchor_info is None else dataclasses.asdict(anchor_info), run_id=cfg.run_id,
                       backbone_weights=backbone.weights, skipped={k: len(v) for k, v in skipped.items()})
    if dist.is_main:
        console.print(f"[bold]training[/] {cfg.method} on {len(dataset)} images x {cfg.epochs} epochs "
                      f"({steps_per_epoch} steps/epoch, {dist.world} process(es), {device})")
    with progress(disable=None if dist.is_main else True) as bar:
        for epoch in range(start_epoch, cfg.epochs):
            sampler.set_epoch(epoch)
            gen = torch.Generator().manual_seed((cfg.seed * 100_003 + epoch) * 64 + dist.rank)
            head.train()
            sums: dict[str, float] = {}
            seen, objects, correct, t0 = 0, 0, 0, time.perf_counter()
            task = bar.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=steps_per_epoch, info="")
            for rows, y, x in loader:
                y, x = y.to(device), x.to(device)
                flip = torch.rand(len(rows), generator=gen) < 0.5 if cfg.augment else None
                if flip is not None:  # x holds [original, mirrored] features: pick one view per image
                    # (B, C, h, w) grids, or (B, D) packed rows when the backbone's tail is fine-tuned
                    x = torch.where(flip.to(device).view(-1, *[1] * (x.dim() - 2)), x[:, 1], x[:, 0])
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    out = trained(x)
                    if regions is not None:
                        reg = regions if flip is None else _flip_rows(regions, rows, flip, args.grid)
                        fg_idx, bg_idx, valid = sample_patches(reg, rows, cfg.k_fg, cfg.k_bg, gen)
                        bg_idx = hardest_background(bg_idx, out["fg_logits"], y < 0) if neg_cache else bg_idx
                        parts = tedloc_loss(out, y, fg_idx.to(device), bg_idx.to(device), valid.to(device),
                                            head.anchors, cfg.temperature, weights, cfg.label_smoothing)
                    else:
                        parts = cam_loss(out, y, cfg.label_smoothing)
                if not torch.isfinite(parts["loss"]):
                    raise UserError(f"loss is {parts['loss'].item()} at epoch {epoch + 1}, step {step + 1}; stopped "
                                    f"(last.pt keeps epoch {epoch}); lower --lr or check the cues in {run.cues}")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(parts["loss"]).backward()
                if cfg.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_([*head.parameters(), *backbone.tail_parameters()], cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step += 1
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v.item() * len(y)
                seen += len(y)
                objects += int((y >= 0).sum())  # object-free rows have no class to get right
                correct += int((out["logits"].argmax(1) == y).sum())
                rate = seen * dist.world / (time.perf_counter() - t0)
                bar.update(task, advance=1, info=" ".join(f"{k} {v / seen:.3f}" for k, v in sums.items()) + f" | {rate:.0f} img/s")
            epoch_time = time.perf_counter() - t0
            totals = dist.all_sum({**sums, "_seen": seen, "_objects": objects, "_correct": correct})
            n_seen, n_objects = max(totals.pop("_seen"), 1), max(totals.pop("_objects"), 1)
            record = {"epoch": epoch + 1, "step": step, "lr": scheduler.get_last_lr()[0],
                      **{k: v / n_seen for k, v in totals.items() if k != "_correct"},
                      "train_top1": 100.0 * totals["_correct"] / n_objects,
                      "img_per_s": n_seen / epoch_time, "epoch_time_s": epoch_time}

            # -- validation, checkpoints, metrics (rank 0 writes) --------------------------------------
            if dist.is_main:
                if val_cache is not None:
                    record.update(validate(model, val_split, val_cache, cfg.input_size, device))
                value = record.get(best["metric"], -record["loss"])
                is_best = value >= best["value"]
                if is_best:
                    best = {"metric": best["metric"], "value": value, "epoch": epoch + 1}
                record["best"] = is_best
                state = dict(ckpt_common, model=model.state_dict(), optimizer=optimizer.state_dict(),
                             scheduler=scheduler.state_dict(), scaler=scaler.state_dict(), epoch=epoch + 1,
                             step=step, best=best, metrics=record)
                save_checkpoint(run.checkpoint("last"), state)
                if is_best:
                    save_checkpoint(run.checkpoint("best"), state)
                run.append_metrics(record)
                console.print(_epoch_line(record, best))
            best = dist.broadcast(best)
            dist.barrier()

    if dist.is_main:
        total = time.perf_counter() - t_start
        console.print(f"[green]done[/] in {total:.0f} s: {escape(str(run))} (best {best['metric']} {best['value']:.2f} "
                      f"at epoch {best['epoch']})")
        next_commands("Next:", [f"tedloc-edge eval {run} --calibrate", f"tedloc-edge eval {run} --split test",
                                f"tedloc-edge export {run}"])
    return run.path


# ---------------------------------------------------------------------------------------------- helpers


def _flip_rows(regions, rows: torch.Tensor, flip: torch.Tensor, grid):
    """Regions with the rows of flipped images mirrored (only the batch rows matter to sampling)."""
    flipped = flip_regions(regions, grid)
    fg, bg = regions.fg.clone(), regions.bg.clone()
    r = rows[flip]
    fg[r], bg[r] = flipped.fg[r], flipped.bg[r]
    return type(regions)(fg, bg, regions.valid)


class FeatureStep(torch.nn.Module):
    """What a step trains: cached features -> (backbone tail ->) head outputs; one module for DDP to wrap."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.forward_features(features)


def make_optimizer(cfg: TrainConfig, module: torch.nn.Module, tail: list | None = None) -> torch.optim.Optimizer:
    """Weight decay on conv/linear weights only (not biases); fine-tuned backbone stages (`tail`) at
    --finetune-lr x --lr."""
    params = [p for p in module.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    if tail:
        lr = cfg.lr * cfg.finetune_lr
        groups += [{"params": [p for p in tail if p.ndim >= 2], "weight_decay": cfg.weight_decay, "lr": lr},
                   {"params": [p for p in tail if p.ndim < 2], "weight_decay": 0.0, "lr": lr}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999))


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1 over `warmup` steps, then cosine from 1 to MIN_LR_RATIO at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress_ = min(1.0, (step - warmup) / max(1, total - warmup))
    return MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress_))


def best_metric_name(val_split) -> str:
    """What best.pt maximizes: val Top-1 Loc when val has boxes, else val top-1 classification, else -train loss."""
    if val_split is None:
        return "neg_train_loss"
    return "val_top1_loc" if val_split.has_boxes else "val_top1_cls"


def _epoch_line(r: dict, best: dict) -> str:
    parts = " ".join(f"{k} {r[k]:.3f}" for k in ("loss", "kd", "pcl", "icl") if k in r)
    val = " ".join(f"{k} {r[k]:.1f}" for k in ("val_top1_cls", "val_top1_loc", "val_gt_known_loc") if k in r)
    star = " [green]*best[/]" if r["best"] else ""
    return f"epoch {r['epoch']}: {parts} | train_top1 {r['train_top1']:.1f} {val} | {r['img_per_s']:.0f} img/s{star}"


if __name__ == "__main__":  # torchrun --nproc_per_node N -m tedloc_edge.train.loop --data ... --out ...
    import typer

    from tedloc_edge.console import setup_logging
    from tedloc_edge.train.cli import train as train_command

    setup_logging()
    typer.run(train_command)
