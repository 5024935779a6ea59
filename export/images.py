"""Real images for verification and int8 calibration: the run's dataset split, or files the user names.

Images are resized with the runtime's own `Preprocessor`, so what is verified and calibrated on is exactly
what the deployed model receives.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from tedloc_edge.bundle import BundleMeta
from tedloc_edge.errors import UserError
from tedloc_edge.datasets import open_split
from tedloc_edge.images import IMAGE_SUFFIXES, list_images, load_image
from tedloc_edge.rundir import RunDir
from tedloc_edge.runtime.preprocess import Preprocessor

logger = logging.getLogger(__name__)


def paths_from_args(specs: Sequence[str], what: str = "--images") -> list[Path]:
    """Files, folders (searched recursively) or glob patterns -> sorted image paths; none is an error."""
    found: list[Path] = []
    for spec in specs:
        files = list_images(spec, recursive=True)
        if not Path(spec).expanduser().is_dir() and not any(p.exists() for p in files):
            raise UserError(f"{spec}: no such image file or folder; fix {what}")
        found += files
    if not found:
        raise UserError(f"{what} {' '.join(specs)}: no images found ({', '.join(IMAGE_SUFFIXES)}); name image files or folders")
    return found


def run_data_root(run_dir: Path | None) -> Path | None:
    """The dataset root recorded in RUN/config.json (``data``), if the run has one that exists here."""
    root = None if run_dir is None else RunDir(run_dir).data_root()
    return root if root is not None and root.is_dir() else None


def split_paths(run_dir: Path | None, split: str, what: str) -> list[Path]:
    """Image paths of `split` of the run's dataset; one-line error naming the fix when there is none."""
    root = run_data_root(run_dir)
    if root is None:
        raise UserError(
            f"{run_dir or 'model'}: its dataset (config.json 'data') is not on this machine, so there are no {what}; "
            f"pass {'--calib-dir' if what.startswith('calib') else '--images'} FOLDER with real images"
        )
    return [s.path for s in open_split(root, split).samples]


def spread(paths: Sequence[Path], limit: int) -> list[Path]:
    """At most `limit` paths, evenly spread over the list (classes are usually contiguous), deterministic."""
    if limit <= 0 or len(paths) <= limit:
        return list(paths)
    idx = np.linspace(0, len(paths) - 1, limit).round().astype(int)
    return [paths[i] for i in idx]


def load_batch(paths: Sequence[Path], meta: BundleMeta) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB at the bundle's input size, resized as the runtime resizes."""
    pre = Preprocessor(meta.input_size, max_batch=max(1, len(paths)), preprocess=meta.preprocess)
    frames = [load_image(p) for p in paths]
    return pre(frames).copy() if frames else np.zeros((0, *meta.input_size, 3), np.uint8)


def batch_hash(batch: np.ndarray, names: Sequence[str | os.PathLike]) -> str:
    """sha256 over the resized pixels and the file names, in order: identifies a calibration set."""
    digest = hashlib.sha256()
    digest.update(str(batch.shape).encode())
    for name in names:
        digest.update(Path(name).name.encode("utf-8", "surrogateescape"))
    digest.update(np.ascontiguousarray(batch).tobytes())
    return digest.hexdigest()
