"""How well DDT cues land on the object, plain and contrasted with object-free scenes, by object size.

    python benchmarks/cue_quality.py runs/seeds/seed0/runs/tedloc [RUN ...] [--contrast 0 1.5] [--markdown FILE]

For each trained TeD-Loc run (its cached features are reused; the run must have been trained with object-free
images) and each contrast (0 = plain DDT), the cue maps of the training split are computed as training does
(`train.cues.compute_cues`, `--fg-rule` as the run used) and compared with the boxes the synthetic benchmark
writes for its training images (training never reads them). Per size bin (box side / shorter image side):

- fg in box: the share of the foreground patches (the fg rule's region, what P_CL and L_KD are taught) whose
  centre lies inside the box, averaged over images;
- peak in box: the share of images whose cue maximum lies inside the box;
- wrong: images whose foreground patches are mostly (over half) outside the box.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tedloc_edge.benchrows import markdown_table, publish_markdown  # noqa: E402

SIZE_BINS = ((0.0, 0.3), (0.3, 0.45), (0.45, 2.0))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path, nargs="+", help="trained TeD-Loc run folders (with cache/ and config.json)")
    p.add_argument("--contrast", type=float, nargs="+", default=[0.0, 1.5], help="DDT contrasts to compare (0: plain)")
    p.add_argument("--markdown", type=Path, help="write the table to this file as well")
    return p.parse_args(argv)


def run_features(run: Path):
    """(training split, its features (N, C, h, w), the object-free images' features, config) of a trained run."""
    import torch

    import tedloc_edge.train.data as D
    from tedloc_edge.errors import UserError
    from tedloc_edge.train.backbone import create_backbone
    from tedloc_edge.train.setup import full_features

    cfg = json.loads((run / "config.json").read_text(encoding="utf-8"))
    if not cfg.get("negatives"):
        raise UserError(f"{run}: trained without object-free images; contrastive DDT needs them")
    split = D.load_train_split(cfg["data"], cfg["train_split"])
    negatives, _ = D.load_negatives(cfg["negatives"], cfg["data"], cfg["train_split"])
    backbone = create_backbone(cfg["backbone"], cfg["backbone_weights"], input_size=cfg["input_size"]).eval()
    backbone.set_tail(cfg["finetune_stages"], cfg["input_size"])

    def cached(samples, tag):
        def no_encoding(images):
            raise UserError(f"{run / 'cache'}: no cached {tag} features for these settings; train the run first")

        cache = D.build_cache(samples, run / "cache", tag, backbone=backbone, normalize=no_encoding,
                              input_size=cfg["input_size"], batch_size=32, device=torch.device("cpu"), show=False)
        with torch.no_grad():
            return full_features(backbone, cache, np.flatnonzero(cache.ok))

    return split, cached(split.samples, "train"), cached(negatives.samples, "negatives"), cfg


def quality_rows(run: Path, contrasts: list[float]) -> list[list[str]]:
    from tedloc_edge.train.cues import compute_cues
    from tedloc_edge.train.sampling import patch_regions

    split, feats, background, cfg = run_features(run)
    n, _, h, w = feats.shape
    sizes, inside = _box_patches(split.samples, (h, w))
    rows = []
    for contrast in contrasts:
        maps = compute_cues("ddt", split.samples, list(split.class_names), features=feats, out_size=(h, w),
                            background=background, ddt_contrast=contrast, progress=False)
        fg = patch_regions(maps, cfg["bg_rule"], cfg["fg_rule"]).fg.numpy()
        share = (fg & inside).sum(1) / np.maximum(fg.sum(1), 1)
        peak = inside[np.arange(n), maps.reshape(n, -1).argmax(1)]
        cells = []
        for lo, hi in SIZE_BINS:
            sel = (sizes >= lo) & (sizes < hi)
            cells.append(f"{share[sel].mean():.2f} / {peak[sel].mean():.2f} / {int((share[sel] < 0.5).sum())} of "
                         f"{int(sel.sum())}" if sel.any() else "–")
        rows.append([str(run), "plain" if contrast == 0 else f"{contrast:g}", *cells])
    return rows


def _box_patches(samples, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(box side / shorter image side (N,), whether each patch centre lies in the image's first box (N, h*w))."""
    from tedloc_edge.images import load_image

    h, w = grid
    sizes, inside = [], []
    for s in samples:
        width, height = s.size or load_image(s.path).shape[1::-1]
        x0, y0, x1, y1 = np.asarray(s.boxes[0], dtype=np.float64)
        sizes.append(max(x1 - x0, y1 - y0) / min(width, height))
        ys, xs = (np.arange(h) + 0.5) / h * height, (np.arange(w) + 0.5) / w * width
        inside.append(((xs[None] >= x0) & (xs[None] <= x1) & (ys[:, None] >= y0) & (ys[:, None] <= y1)).ravel())
    return np.array(sizes), np.array(inside)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = [row for run in args.runs for row in quality_rows(run, args.contrast)]
    bins = [f"box side {lo:.2f}-{hi:.2f}" if hi < 1 else f"box side ≥ {lo:.2f}" for lo, hi in SIZE_BINS]
    text = (f"Written by `python benchmarks/cue_quality.py {' '.join(map(str, args.runs))} --contrast "
            f"{' '.join(f'{c:g}' for c in args.contrast)}`. Each cell: fg in box / peak in box / wrong of images.\n\n"
            + "\n".join(markdown_table(["run", "DDT contrast", *bins], rows)) + "\n")
    publish_markdown(text, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
