"""Training data: the split's images, resized once, through the frozen backbone once, cached on disk.

The encoder is frozen, so its patch descriptors of an un-augmented image never change: they are computed once
per image into ``RUN/cache/features-<split>.npy`` (float16 memory map) and the decoder and head train on them.
That is what makes training fit in minutes on a CPU. With ``--augment`` the resized uint8 images are cached
instead and the backbone runs every step on flipped copies.

Images that fail to decode are skipped and counted; the ids land in ``RUN/skipped.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from tedloc_edge.bundle import atomic_write_text
from tedloc_edge.console import UserError, progress
from tedloc_edge.datasets import ImageDecodeError, Sample, Split, load_image, open_split

log = logging.getLogger(__name__)


def load_train_split(root: str, name: str) -> Split:
    """The training split, with every class present (an empty class is an error before any work starts)."""
    if not root:
        raise UserError("no dataset given; pass --data DATASET (make one with `tedloc-edge data synth OUT`)")
    split = open_split(root, name)
    counts = np.bincount([s.label for s in split.samples], minlength=split.num_classes)
    empty = [split.class_names[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise UserError(f"{split.root}: split {name!r} has no image of class {empty[0]!r} "
                        f"({len(empty)} empty class(es)); add images or remove the class from classes.txt")
    return split


def resize_rgb(image: np.ndarray, size: int) -> np.ndarray:
    """The one resize every stage uses: whole image to size x size, bilinear (cv2 INTER_LINEAR), no crop."""
    if image.shape[:2] == (size, size):
        return np.ascontiguousarray(image)
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)


@dataclass
class SplitCache:
    """Per-image arrays of one split: `features` (N, C, gh, gw) float16 or `images` (N, S, S, 3) uint8, and
    `ok` (N,) bool, False where the image did not decode."""

    features: np.ndarray | None
    images: np.ndarray | None
    ok: np.ndarray
    skipped: list[str]
    key: str  # names the contents (backbone, weights, size, images): a cue cache keyed by it stays valid


def _cache_key(samples: list[Sample], what: dict) -> str:
    h = hashlib.sha256(json.dumps(what, sort_keys=True).encode())
    for s in samples:
        h.update(f"{s.image_id}\0{s.label}\n".encode("utf-8"))
    return h.hexdigest()[:16]


def build_cache(samples: list[Sample], cache_dir: Path, tag: str, *, backbone: torch.nn.Module | None,
                normalize, input_size: int, batch_size: int, device: torch.device, rank: int = 0, world: int = 1,
                barrier=lambda: None, keep_images: bool = False, show: bool = True) -> SplitCache:
    """Fill (or reuse) the split's cache. Ranks split the images (rows rank::world) and write to one shared
    memory map; rank 0 creates the files, `barrier` synchronizes. `backbone=None` caches images only."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    what = {"tag": tag, "size": input_size, "backbone": getattr(backbone, "name", None),
            "weights": getattr(backbone, "weights", None), "images": keep_images}
    key = _cache_key(samples, what)
    done = cache_dir / f"{tag}.json"
    feat_path, img_path, ok_path = (cache_dir / f"{tag}-{n}.npy" for n in ("features", "images", "ok"))
    n = len(samples)
    if done.is_file() and json.loads(done.read_text()).get("key") == key:
        log.info("reusing cached %s features/images (%s)", tag, cache_dir)
        return _open(feat_path if backbone is not None else None, img_path if keep_images else None, ok_path, samples, key)
    shape = None
    if backbone is not None:
        with torch.no_grad():
            probe = backbone(normalize(torch.zeros(1, input_size, input_size, 3, dtype=torch.uint8, device=device)))
        shape = (n, *probe.shape[1:])
    if rank == 0:
        done.unlink(missing_ok=True)
        if shape is not None:
            np.lib.format.open_memmap(feat_path, mode="w+", dtype=np.float16, shape=shape).flush()
        if keep_images:
            np.lib.format.open_memmap(img_path, mode="w+", dtype=np.uint8, shape=(n, input_size, input_size, 3)).flush()
        np.lib.format.open_memmap(ok_path, mode="w+", dtype=np.bool_, shape=(n,)).flush()
    barrier()
    feats = np.load(feat_path, mmap_mode="r+") if shape is not None else None
    imgs = np.load(img_path, mmap_mode="r+") if keep_images else None
    ok = np.load(ok_path, mmap_mode="r+")
    mine = list(range(rank, n, world))
    started = time.perf_counter()
    with progress(transient=True, disable=None if (show and rank == 0) else True) as bar:
        task = bar.add_task(f"{tag}: encode" if backbone is not None else f"{tag}: load", total=len(mine), info="")
        for start in range(0, len(mine), batch_size):
            rows = mine[start:start + batch_size]
            batch, good = [], []
            for i in rows:
                try:
                    batch.append(resize_rgb(load_image(samples[i].path), input_size))
                    good.append(i)
                except ImageDecodeError as exc:
                    log.warning("skipping undecodable image: %s", exc)
            if good:
                arr = np.stack(batch)
                ok[good] = True
                if imgs is not None:
                    imgs[good] = arr
                if feats is not None:
                    with torch.no_grad():
                        x = normalize(torch.from_numpy(arr).to(device))
                        feats[good] = backbone(x).float().cpu().numpy().astype(np.float16)
            bar.update(task, advance=len(rows))
    for arr in (feats, imgs, ok):
        if arr is not None:
            arr.flush()
    if rank == 0:
        seconds = time.perf_counter() - started
        log.info("%s: %s %d images in %.1f s (%.1f img/s per process)", tag,
                 "encoded" if feats is not None else "loaded", len(mine), seconds, len(mine) / max(seconds, 1e-9))
    barrier()
    if rank == 0:
        atomic_write_text(done, json.dumps({"key": key, **what, "count": n}))
    barrier()
    return _open(feat_path if shape is not None else None, img_path if keep_images else None, ok_path, samples, key)


def _open(feat_path: Path | None, img_path: Path | None, ok_path: Path, samples: list[Sample], key: str) -> SplitCache:
    ok = np.array(np.load(ok_path), dtype=bool)
    feats = np.load(feat_path, mmap_mode="r") if feat_path is not None else None
    imgs = np.load(img_path, mmap_mode="r") if img_path is not None else None
    skipped = [s.image_id for s, good in zip(samples, ok) if not good]
    return SplitCache(feats, imgs, ok, skipped, key)


class RowDataset(Dataset):
    """Items (row index, label, features or uint8 image) over the decodable rows of a split cache."""

    def __init__(self, cache: SplitCache, labels: np.ndarray, use_images: bool = False):
        self.rows = np.flatnonzero(cache.ok)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.source = cache.images if use_images else cache.features
        if self.source is None:
            raise ValueError("the cache holds no " + ("images" if use_images else "features"))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[int, int, torch.Tensor]:
        row = int(self.rows[i])
        x = torch.from_numpy(np.array(self.source[row]))
        return row, int(self.labels[row]), (x.float() if x.dtype == torch.float16 else x)


def features_tensor(cache: SplitCache, rows: np.ndarray | None = None) -> torch.Tensor:
    """The cached features of `rows` (default: all decodable) as one float32 tensor."""
    rows = np.flatnonzero(cache.ok) if rows is None else rows
    return torch.from_numpy(np.asarray(cache.features[rows], dtype=np.float32))


def write_skipped(run_dir: Path, skipped: dict[str, list[str]]) -> None:
    atomic_write_text(run_dir / "skipped.json", json.dumps(
        {"count": {k: len(v) for k, v in skipped.items()}, "images": skipped}, indent=2, ensure_ascii=False))
