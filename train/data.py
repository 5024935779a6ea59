"""Training data: the split's images, resized once, through the frozen backbone once, cached on disk.

The encoder is frozen, so its patch descriptors of an image never change: they are computed once per image
into ``RUN/cache/<split>-features.npy`` (float16 memory map) and the decoder and head train on them. That is
what makes training fit in minutes on a CPU. With ``--augment`` (random horizontal flips) the features of the
mirrored images are cached too and each step picks one of the two views per image: the same augmentation as
flipping every step, at twice the one-off encoding cost instead of an encoder pass per step.

Images that fail to decode are skipped and counted; the ids land in ``RUN/skipped.json`` (`RunDir.write_skipped`).
Object-free images (`load_negatives`) are cached the same way and join the training rows after the split's own,
with label NO_OBJECT (-1).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from tedloc_edge.files import atomic_write_text
from tedloc_edge.console import progress
from tedloc_edge.errors import UserError
from tedloc_edge.datasets import NO_OBJECT, Sample, Split, dataset_negatives, open_negatives, open_split
from tedloc_edge.images import ImageDecodeError, load_image, resize_image

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


def load_negatives(negatives: str | None, data: str, split: str) -> tuple[Split | None, str]:
    """(object-free images, the resolved setting for config.json): `negatives` None takes the dataset's own
    ``<split>_negatives`` when it has one; "" is none; else a folder of images or a dataset root."""
    if negatives == "":
        return None, ""
    found = open_negatives(negatives, split) if negatives else dataset_negatives(data, split)
    return found, "" if found is None else str(found.root)


@dataclass
class SplitCache:
    """Per-image arrays of one split: `features` (N, C, gh, gw) float16, `flipped` the same for the horizontally
    flipped images (with --augment) or None, and `ok` (N,) bool, False where the image did not decode."""

    features: np.ndarray
    flipped: np.ndarray | None
    ok: np.ndarray
    skipped: list[str]
    key: str  # names the un-flipped features (backbone, weights, size, images): cue caches keyed by it stay valid


def _cache_key(samples: list[Sample], what: dict) -> str:
    h = hashlib.sha256(json.dumps(what, sort_keys=True).encode())
    for s in samples:
        h.update(f"{s.image_id}\0{s.label}\n".encode("utf-8"))
    return h.hexdigest()[:16]


def build_cache(samples: list[Sample], cache_dir: Path, tag: str, *, backbone: torch.nn.Module, normalize,
                input_size: int, batch_size: int, device: torch.device, rank: int = 0, world: int = 1,
                barrier=lambda: None, flips: bool = False, show: bool = True) -> SplitCache:
    """Fill (or reuse) the split's feature cache; with `flips` also the features of the mirrored images (a flip
    is the only augmentation, so its two views are cached once rather than encoded every step). Ranks split
    the images (rows rank::world) and write one shared memory map; rank 0 creates the files."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    what = {"tag": tag, "size": input_size, "backbone": backbone.name, "weights": backbone.weights}
    if getattr(backbone, "tail_stages", 0):  # the cache holds the input of the fine-tuned stages instead
        what["tail_stages"] = backbone.tail_stages
    encode = getattr(backbone, "encode", backbone)
    key = _cache_key(samples, what)
    done = cache_dir / f"{tag}.json"
    paths = {name: cache_dir / f"{tag}-{name}.npy" for name in ("features", "flipped", "ok")}
    if done.is_file():
        doc = json.loads(done.read_text())
        if doc.get("key") == key and (doc.get("flips") or not flips):
            log.info("reusing cached %s features (%s)", tag, cache_dir)
            return _open(paths, flips, samples, key)
    n = len(samples)
    with torch.no_grad():
        probe = encode(normalize(torch.zeros(1, input_size, input_size, 3, dtype=torch.uint8, device=device)))
    if rank == 0:
        done.unlink(missing_ok=True)
        for name in ("features", "flipped") if flips else ("features",):
            np.lib.format.open_memmap(paths[name], mode="w+", dtype=np.float16, shape=(n, *probe.shape[1:])).flush()
        np.lib.format.open_memmap(paths["ok"], mode="w+", dtype=np.bool_, shape=(n,)).flush()
    barrier()
    feats = np.load(paths["features"], mmap_mode="r+")
    flipped = np.load(paths["flipped"], mmap_mode="r+") if flips else None
    ok = np.load(paths["ok"], mmap_mode="r+")
    mine = list(range(rank, n, world))
    started = time.perf_counter()
    with progress(transient=True, disable=None if (show and rank == 0) else True) as bar:
        task = bar.add_task(f"{tag}: encode", total=len(mine), info="")
        for start in range(0, len(mine), batch_size):
            rows = mine[start:start + batch_size]
            batch, good = [], []
            for i in rows:
                try:
                    batch.append(resize_image(load_image(samples[i].path), (input_size, input_size)))
                    good.append(i)
                except ImageDecodeError as exc:
                    log.warning("skipping undecodable image: %s", exc)
            if good:
                images = torch.from_numpy(np.stack(batch)).to(device)
                ok[good] = True
                with torch.no_grad():
                    feats[good] = encode(normalize(images)).float().cpu().numpy().astype(np.float16)
                    if flipped is not None:
                        mirrored = encode(normalize(images.flip(2))).float().cpu().numpy()
                        flipped[good] = mirrored.astype(np.float16)
            bar.update(task, advance=len(rows))
    for arr in (feats, flipped, ok):
        if arr is not None:
            arr.flush()
    if rank == 0:
        seconds = time.perf_counter() - started
        log.info("%s: encoded %d images%s in %.1f s (%.1f img/s per process)", tag, len(mine),
                 " and their mirror images" if flips else "", seconds, len(mine) / max(seconds, 1e-9))
    barrier()
    if rank == 0:
        atomic_write_text(done, json.dumps({"key": key, **what, "flips": flips, "count": n}))
    barrier()
    return _open(paths, flips, samples, key)


def _open(paths: dict[str, Path], flips: bool, samples: list[Sample], key: str) -> SplitCache:
    ok = np.array(np.load(paths["ok"]), dtype=bool)
    feats = np.load(paths["features"], mmap_mode="r")
    flipped = np.load(paths["flipped"], mmap_mode="r") if flips else None
    skipped = [s.image_id for s, good in zip(samples, ok) if not good]
    return SplitCache(feats, flipped, ok, skipped, key)


class RowDataset(Dataset):
    """Items (row index + `offset`, label, features) over the decodable rows of a split cache; with the flipped view
    cached, features are (2, C, gh, gw): [original, mirrored]. Object-free images: `labels` None (NO_OBJECT) and
    `offset` the number of rows before them."""

    def __init__(self, cache: SplitCache, labels: np.ndarray | None, offset: int = 0):
        self.rows = np.flatnonzero(cache.ok)
        self.labels = np.full(len(cache.ok), NO_OBJECT, np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
        self.cache, self.offset = cache, offset

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[int, int, torch.Tensor]:
        row = int(self.rows[i])
        x = np.asarray(self.cache.features[row], dtype=np.float32)
        if self.cache.flipped is not None:
            x = np.stack([x, np.asarray(self.cache.flipped[row], dtype=np.float32)])
        return row + self.offset, int(self.labels[row]), torch.from_numpy(x)


def features_tensor(cache: SplitCache, rows: np.ndarray | None = None) -> torch.Tensor:
    """The cached features of `rows` (default: all decodable) as one float32 tensor."""
    rows = np.flatnonzero(cache.ok) if rows is None else rows
    return torch.from_numpy(np.asarray(cache.features[rows], dtype=np.float32))
