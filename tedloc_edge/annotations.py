"""Annotation records (`Sample`, `Split`) and the readers of annotation text files: the wsolevaluation
metadata layout and CUB-200-2011's native files. Every error names the file and line (or image id).

The public entry point is `tedloc_edge.datasets.open_split`, which detects the layout and calls these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tedloc_edge.errors import UserError

SPLIT_FOLDERS = ("train", "val", "test")
NO_BOXES = np.zeros((0, 4), dtype=np.float64)
NEGATIVES_SUFFIX = "_negatives"  # metadata/<split>_negatives: object-free images that go with <split>
NO_OBJECT = -1  # the label of an object-free image: it has no class


def negatives_split(split: str) -> str:
    """The wsol split holding `split`'s object-free images: ``val`` -> ``val_negatives``."""
    return f"{split}{NEGATIVES_SUFFIX}"


@dataclass(frozen=True, eq=False)  # eq=False: holds arrays, compared by identity
class Sample:
    image_id: str  # path relative to images/ (wsol, cub) or to the split folder (folders)
    path: Path  # absolute image path
    label: int  # NO_OBJECT (-1) for an object-free image
    boxes: np.ndarray  # (K, 4) float64 xyxy in original pixels; (0, 4) when unknown
    size: tuple[int, int] | None  # (width, height) in original pixels, when the metadata gives it
    mask_path: Path | None = None


@dataclass
class Split:
    root: Path
    name: str
    class_names: tuple[str, ...]
    samples: list[Sample]
    layout: str
    warnings: dict[str, int] = field(default_factory=dict)  # e.g. {"boxes_clipped": 3}

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def has_boxes(self) -> bool:
        return bool(self.samples) and all(len(s.boxes) for s in self.samples)

    @property
    def has_masks(self) -> bool:
        return bool(self.samples) and all(s.mask_path is not None for s in self.samples)


# ---------------------------------------------------------------------------------------------- text files


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, stripped text) for every non-blank line."""
    if not path.is_file():
        raise UserError(f"{path}: missing file; see the dataset layout in docs (METHOD.md)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _fields(path: Path, lineno: int, line: str, count: int, sep: str | None) -> list[str]:
    # Split from the right so that an image id may itself hold the separator.
    parts = line.rsplit(sep, count - 1) if sep else line.split(None, count - 1)
    if len(parts) != count or not all(p.strip() for p in parts):
        raise UserError(f"{path}:{lineno}: expected {count} {'comma-separated ' if sep else ''}fields, got {line!r}")
    return [p.strip() for p in parts]


def _number(path: Path, lineno: int, text: str, kind: type) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        raise UserError(f"{path}:{lineno}: {text!r} is not a{'n integer' if kind is int else ' number'}") from None
    if kind is float and not np.isfinite(value):
        raise UserError(f"{path}:{lineno}: {text!r} is not a finite number")
    return value


def _label(path: Path, lineno: int, text: str, num_classes: int, offset: int = 0) -> int:
    label = int(_number(path, lineno, text, int)) - offset
    if not 0 <= label < num_classes:
        lo, hi = offset, num_classes - 1 + offset
        raise UserError(f"{path}:{lineno}: class {label + offset} is outside {lo}..{hi} (classes.txt has {num_classes})")
    return label


# ---------------------------------------------------------------------------------------------- boxes


class _BoxChecker:
    """Validates boxes, clips them to the image (counting how many needed it) and names the file on errors."""

    def __init__(self) -> None:
        self.clipped = 0

    def check(self, where: str, image_id: str, box: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
        """`where` is "file:line" of the box."""
        x0, y0, x1, y1 = box
        if x1 <= x0 or y1 <= y0:
            raise UserError(f"{where}: box {box.tolist()} of {image_id!r} has zero area; fix or remove that line")
        if size is None:
            return box
        w, h = size
        clipped = np.array([min(max(x0, 0), w), min(max(y0, 0), h), min(max(x1, 0), w), min(max(y1, 0), h)])
        if not np.array_equal(clipped, box):
            if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
                raise UserError(f"{where}: box {box.tolist()} of {image_id!r} lies outside its {w}x{h} image; fix that line")
            self.clipped += 1
        return clipped

    def warnings(self) -> dict[str, int]:
        return {"boxes_clipped": self.clipped} if self.clipped else {}


# ---------------------------------------------------------------------------------------------- wsol layout


def read_class_names(path: Path) -> tuple[str, ...]:
    """One class name per line; line i is class i."""
    names = tuple(line for _, line in _read_lines(path))
    if not names:
        raise UserError(f"{path}: no class names; write one class name per line")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise UserError(f"{path}: class name {dup!r} appears twice; class names must be unique")
    return names


def open_wsol(root: Path, split: str) -> Split:
    """One split; a ``<split>_negatives`` split lists object-free images (image_ids.txt, optional image_sizes.txt;
    no class_labels.txt or localization.txt is read): every sample gets label NO_OBJECT and no box."""
    meta = root / "metadata" / split
    if not meta.is_dir():
        found = sorted(p.name for p in (root / "metadata").iterdir() if p.is_dir())
        raise UserError(f"{meta}: no such split folder; splits here: {', '.join(found) or 'none'}")
    class_names = read_class_names(root / "classes.txt")
    ids = _wsol_ids(meta / "image_ids.txt")
    negative = split.endswith(NEGATIVES_SUFFIX)
    labels = dict.fromkeys(ids, NO_OBJECT) if negative else _wsol_labels(meta / "class_labels.txt", len(class_names))
    sizes = _wsol_sizes(meta / "image_sizes.txt") if (meta / "image_sizes.txt").is_file() else {}
    needs_boxes, loc_path = split != "train" and not negative, meta / "localization.txt"
    raw_boxes = _wsol_boxes(loc_path) if needs_boxes or (loc_path.is_file() and not negative) else {}
    checker, mask_dir = _BoxChecker(), root / "masks" / split
    has_masks = mask_dir.is_dir()
    samples = []
    for image_id in ids:
        if image_id not in labels:
            raise UserError(f"{meta / 'class_labels.txt'}: no class for image {image_id!r}; add '{image_id},<class>'")
        size = sizes.get(image_id)
        if image_id not in raw_boxes and needs_boxes:
            raise UserError(f"{loc_path}: no box for image {image_id!r}; add '{image_id},x0,y0,x1,y1'")
        boxes = raw_boxes.get(image_id, [])
        boxes = np.array([checker.check(f"{loc_path}:{n}", image_id, b, size) for n, b in boxes]).reshape(-1, 4)
        mask = mask_dir / Path(image_id).with_suffix(".png") if has_masks else None
        samples.append(
            Sample(image_id, root / "images" / image_id, labels[image_id], boxes.astype(np.float64), size,
                   mask if mask is not None and mask.is_file() else None)
        )
    return Split(root, split, class_names, samples, "wsol", checker.warnings())


def _wsol_ids(path: Path) -> list[str]:
    ids, seen = [], {}
    for lineno, line in _read_lines(path):
        if line in seen:
            raise UserError(f"{path}:{lineno}: image {line!r} already listed on line {seen[line]}; remove the duplicate")
        seen[line] = lineno
        ids.append(line)
    return ids


def _wsol_labels(path: Path, num_classes: int) -> dict[str, int]:
    labels = {}
    for lineno, line in _read_lines(path):
        image_id, label = _fields(path, lineno, line, 2, ",")
        labels[image_id] = _label(path, lineno, label, num_classes)
    return labels


def _wsol_sizes(path: Path) -> dict[str, tuple[int, int]]:
    sizes = {}
    for lineno, line in _read_lines(path):
        image_id, w, h = _fields(path, lineno, line, 3, ",")
        width, height = int(_number(path, lineno, w, int)), int(_number(path, lineno, h, int))
        if width <= 0 or height <= 0:
            raise UserError(f"{path}:{lineno}: image size {width}x{height} must be positive")
        sizes[image_id] = (width, height)
    return sizes


def _wsol_boxes(path: Path) -> dict[str, list[tuple[int, np.ndarray]]]:
    """image id -> [(line number, box)]; an image may have several boxes."""
    boxes: dict[str, list[tuple[int, np.ndarray]]] = {}
    for lineno, line in _read_lines(path):
        image_id, *coords = _fields(path, lineno, line, 5, ",")
        box = np.array([_number(path, lineno, c, float) for c in coords], dtype=np.float64)
        boxes.setdefault(image_id, []).append((lineno, box))
    return boxes


# ---------------------------------------------------------------------------------------------- CUB layout


def cub_class_name(folder_name: str) -> str:
    """``001.Black_footed_Albatross`` -> ``Black footed Albatross``."""
    _, dot, rest = folder_name.partition(".")
    return (rest if dot and _.isdigit() else folder_name).replace("_", " ")


def _cub_table(path: Path) -> dict[int, tuple[int, str]]:
    """CUB's "<image or class number> <value>" files: number -> (line number, value)."""
    table = {}
    for lineno, line in _read_lines(path):
        key, value = _fields(path, lineno, line, 2, None)
        table[int(_number(path, lineno, key, int))] = (lineno, value)
    return table


def open_cub(root: Path, split: str) -> Split:
    if split not in SPLIT_FOLDERS:
        raise UserError(f"{root}: CUB-200-2011 has splits train, val (held out of train) and test, not {split!r}")
    class_names = tuple(cub_class_name(name) for _, (_, name) in sorted(_cub_table(root / "classes.txt").items()))
    paths = {k: v for k, (_, v) in _cub_table(root / "images.txt").items()}
    label_file = root / "image_class_labels.txt"
    labels = {k: _label(label_file, n, v, len(class_names), offset=1) for k, (n, v) in _cub_table(label_file).items()}
    is_train = {k: v == "1" for k, (_, v) in _cub_table(root / "train_test_split.txt").items()}
    box_file = root / "bounding_boxes.txt"
    boxes = _cub_boxes(box_file) if box_file.is_file() else {}
    chosen = _cub_select(split, sorted(paths), labels, is_train, root)
    checker = _BoxChecker()
    seg_dir = root / "segmentations"
    samples = []
    for key in chosen:
        image_id = paths[key]
        if split != "train" and key not in boxes:
            raise UserError(f"{box_file}: no box for image {key} ({image_id}); add '{key} x y width height'")
        box = [checker.check(f"{box_file}:{boxes[key][0]}", image_id, boxes[key][1], None)] if key in boxes else []
        mask = seg_dir / Path(image_id).with_suffix(".png")
        samples.append(Sample(image_id, root / "images" / image_id, labels[key], np.array(box).reshape(-1, 4),
                              None, mask if seg_dir.is_dir() and mask.is_file() else None))
    return Split(root, split, class_names, samples, "cub", checker.warnings())


def _cub_select(split: str, keys: list[int], labels: dict, is_train: dict, root: Path) -> list[int]:
    for key in keys:
        for table, name in ((labels, "image_class_labels.txt"), (is_train, "train_test_split.txt")):
            if key not in table:
                raise UserError(f"{root / name}: no entry for image {key}; add a line '{key} <value>'")
    if split == "test":
        return [k for k in keys if not is_train[k]]
    per_class: dict[int, list[int]] = {}
    for key in keys:
        if is_train[key]:
            per_class.setdefault(labels[key], []).append(key)
    held_out = {k for members in per_class.values() for k in members[9::10]}  # every tenth: about 10% per class
    return [k for k in keys if is_train[k] and ((k in held_out) == (split == "val"))]


def _cub_boxes(path: Path) -> dict[int, tuple[int, np.ndarray]]:
    boxes = {}
    for lineno, line in _read_lines(path):
        key, *xywh = _fields(path, lineno, line, 5, None)
        x, y, w, h = (float(_number(path, lineno, v, float)) for v in xywh)
        boxes[int(_number(path, lineno, key, int))] = (lineno, np.array([x, y, x + w, y + h], dtype=np.float64))
    return boxes
