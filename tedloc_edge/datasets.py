"""Dataset readers (torch-free): one `Split` of labelled images with boxes, from any of three layouts.

`open_split(root, split)` detects the layout:

* ``wsol``: the wsolevaluation metadata layout (METHOD.md): ``classes.txt``, ``images/``,
  ``metadata/<split>/{image_ids,class_labels,image_sizes,localization}.txt`` and optional
  ``masks/<split>/<id>.png``. Train needs only ids and labels; other splits need boxes.
* ``cub``: CUB-200-2011 as downloaded (``images.txt``, ``image_class_labels.txt``,
  ``train_test_split.txt``, ``bounding_boxes.txt``, ``classes.txt``, ``images/``). Splits ``train``,
  ``val`` and ``test``. CUB has no validation split, so ``val`` is held out of the official train split,
  deterministically: within each class, the train images sorted by CUB image id, the ones at positions
  9, 19, 29, ... (every tenth, about 10%). ``train`` then excludes them; ``test`` is the official test split.
  A ``<split>_negatives`` split (e.g. ``val_negatives``) lists object-free images that go with ``<split>``:
  ``image_ids.txt`` and optionally ``image_sizes.txt``, no class labels (an image without an object has no
  class: its samples get label ``NO_OBJECT`` = -1), boxes or masks. `dataset_negatives` reads it (the default
  for training, calibration and evaluation); `open_negatives` reads what the user names (--negatives: such a
  dataset, or any folder of images).
* ``folders``: a class-per-folder tree, ``ROOT/<split>/<class>/*`` when a ``train``, ``val`` or ``test``
  folder exists, else ``ROOT/<class>/*`` (then every split name reads the same images). Labels only.

Boxes are xyxy floats in original pixels. Images are not decoded (nor even checked) when a split is opened;
`tedloc_edge.images.load_image` checks and decodes one file when it is needed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np

from tedloc_edge.annotations import (NO_BOXES, NO_OBJECT, SPLIT_FOLDERS, Sample, Split, negatives_split, open_cub,
                                    open_wsol)
from tedloc_edge.errors import UserError
from tedloc_edge.images import decode, list_images

__all__ = [
    "LAYOUTS", "NO_BOXES", "NO_OBJECT", "SPLIT_FOLDERS", "Sample", "Split", "dataset_negatives", "detect_layout",
    "load_mask", "negatives_split", "open_negatives", "open_split", "resize_boxes",
]
log = logging.getLogger(__name__)

LAYOUTS = ("wsol", "cub", "folders")

# ---------------------------------------------------------------------------------------------- public API


def open_split(root: str | os.PathLike, split: str) -> Split:
    """Read one split's labels, boxes and sizes (fast: no image is opened). Raises UserError on bad input."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise UserError(f"{root}: no such dataset folder; pass the folder that holds classes.txt (or class folders)")
    layout = detect_layout(root)
    reader = {"wsol": open_wsol, "cub": open_cub, "folders": _open_folders}[layout]
    result = reader(root, split)
    _check_split(result)
    if result.warnings:
        log.warning("%s [%s]: %s", root, split, ", ".join(f"{k}={v}" for k, v in sorted(result.warnings.items())))
    return result


def dataset_negatives(root: str | os.PathLike, split: str) -> Split | None:
    """The dataset's own object-free images for `split` (its ``<split>_negatives``, wsol layout), or None."""
    path = Path(root).expanduser().resolve()
    if not (path / "metadata" / negatives_split(split)).is_dir():
        return None
    return open_split(path, negatives_split(split))


def open_negatives(source: str | os.PathLike, split: str) -> Split:
    """Object-free images the user named for `split`: a dataset root with a ``<split>_negatives`` split, or a
    folder of images (read recursively, every one an object-free image)."""
    path = Path(source).expanduser().resolve()
    if (path / "metadata").is_dir():
        found = dataset_negatives(path, split)
        if found is None:
            raise UserError(f"{path}: this dataset has no metadata/{negatives_split(split)}; pass a folder of "
                            "object-free images, or generate them (`tedloc-edge data synth --negatives N`)")
        return found
    if not path.is_dir():
        raise UserError(f"{path}: no such folder; --negatives takes a folder of object-free images or a dataset root "
                        f"with metadata/{negatives_split(split)}")
    samples = [Sample(p.relative_to(path).as_posix(), p, NO_OBJECT, NO_BOXES, None) for p in list_images(path, recursive=True)]
    if not samples:
        raise UserError(f"{path}: no images in this --negatives folder; put object-free images (.jpg, .png) in it")
    return Split(path, "negatives", (), samples, "images")


def detect_layout(root: Path) -> str:
    if (root / "metadata").is_dir():
        return "wsol"
    if (root / "images.txt").is_file() and (root / "image_class_labels.txt").is_file():
        return "cub"
    if any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir()):
        return "folders"
    raise UserError(
        f"{root}: not a dataset: expected metadata/ (wsolevaluation layout), images.txt (CUB-200-2011) "
        "or one folder per class"
    )


def resize_boxes(boxes: np.ndarray, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
    """Boxes from a (width, height) image to another (width, height), int64, truncated exactly as
    wsolevaluation's ``resize_bbox`` does: ``int(x0 * new_w / w)`` for every coordinate."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    fw, fh = (float(v) for v in from_size)
    tw, th = (float(v) for v in to_size)
    out = np.empty_like(b)
    out[:, 0::2] = b[:, 0::2] * tw / fw  # same operation order as the reference, for bit-equal floats
    out[:, 1::2] = b[:, 1::2] * th / fh
    return np.trunc(out).astype(np.int64)


def load_mask(sample: Sample, size: tuple[int, int] | None = None) -> np.ndarray:
    """The sample's foreground mask, bool (h, w); resized (nearest) to `size` = (h, w) when given."""
    if sample.mask_path is None:
        raise UserError(f"{sample.image_id}: this dataset has no mask for the image; evaluate without PxAP")
    raw = decode(sample.mask_path, "mask")
    if raw.ndim == 3:
        raw = raw.max(axis=2)  # a colour mask: any non-black channel is foreground
    mask = _binarize(raw)
    if size is not None:
        h, w = size
        mask = cv2.resize(mask.astype(np.uint8), (int(w), int(h)), interpolation=cv2.INTER_NEAREST) > 0
    return mask


# ---------------------------------------------------------------------------------------------- masks


def _binarize(raw: np.ndarray) -> np.ndarray:
    """0/1 masks, 0/255 masks and soft masks (CUB segmentations: 0..255) alike: above half is foreground."""
    if raw.dtype.kind == "f":
        return raw > 0.5
    if raw.max() <= 1:
        return raw > 0
    return raw > np.iinfo(raw.dtype).max // 2


# ---------------------------------------------------------------------------------------------- folders layout


def _class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _open_folders(root: Path, split: str) -> Split:
    present = [name for name in SPLIT_FOLDERS if (root / name).is_dir()]
    if present:
        base = root / split
        if not base.is_dir():
            raise UserError(f"{base}: no such split folder; splits here: {', '.join(present)}")
        # classes from every split folder, so that a label means the same class in train and test
        class_names = tuple(sorted({c for name in present for c in _class_folders(root / name)}))
    else:
        base = root
        class_names = tuple(_class_folders(root))
        if split != "train":
            log.warning("%s has no split folders: split %r reads the same images as train", root, split)
    samples = []
    for label, name in enumerate(class_names):
        folder = base / name
        if folder.is_dir():
            samples += [Sample(p.relative_to(base).as_posix(), p, label, NO_BOXES, None) for p in list_images(folder, recursive=True)]
    return Split(root, split, class_names, samples, "folders", {})


# ---------------------------------------------------------------------------------------------- checks


def _check_split(split: Split) -> None:
    where = split.root / "metadata" / split.name if split.layout == "wsol" else split.root
    if not split.samples:
        raise UserError(f"{where}: split {split.name!r} has no images; list its images or choose another split")
    if split.name == "train":
        counts = np.bincount([s.label for s in split.samples], minlength=split.num_classes)
        missing = [split.class_names[i] for i in np.flatnonzero(counts == 0)]
        if missing:
            shown = ", ".join(repr(m) for m in missing[:3]) + (" ..." if len(missing) > 3 else "")
            raise UserError(f"{where}: {len(missing)} class(es) have no training image ({shown}); add images or drop them")
