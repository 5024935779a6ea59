"""The synthetic WSOL benchmark: one "bird" per image, where only a small head tells the class.

Every object has the same body (shape family, feather texture and colour); its class is the head's colour
and pattern, and the head covers well under a quarter of the object. A classifier therefore needs only the
head, and a CAM fires on it, while the box to find covers the whole bird. Clutter makes it harder still:
textured backgrounds, headless bodies and free heads of random classes (so a part detector is fooled).
Objects vary in position, scale (15% to 70% of the image's shorter side), aspect, rotation and mirror.

`generate()` writes the wsolevaluation layout (METHOD.md) with boxes and masks for every split; the same
seed gives byte-identical files. `negatives=N` adds N object-free scenes per split (same backgrounds and
distractors, no bird) as the splits ``<split>_negatives`` (`tedloc_edge.datasets.NEGATIVES`): image ids and
sizes only, no class, box or mask. numpy + OpenCV only, so the demo can make data without torch.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from tedloc_edge.console import progress
from tedloc_edge.datasets import negatives_split
from tedloc_edge.errors import UserError
from tedloc_edge.train.synth_readme import README_TITLE, readme

log = logging.getLogger(__name__)

# RGB head colours and patterns; a class is one (colour, pattern) pair.
HEAD_COLOURS = {
    "red": (220, 30, 30), "blue": (30, 70, 225), "yellow": (240, 210, 20),
    "green": (30, 165, 50), "magenta": (205, 40, 200), "cyan": (20, 200, 215),
}
HEAD_PATTERNS = ("solid", "striped", "dotted", "ringed")
# Ordered so that any first n >= 4 classes share colours and patterns: neither alone tells the class.
CLASS_TABLE = (
    ("rouge-gorgé", "red", "solid"), ("striped redcap", "red", "striped"),
    ("blue jay", "blue", "solid"), ("dotted bluecap", "blue", "dotted"),
    ("striped goldcap", "yellow", "striped"), ("ringed goldcap", "yellow", "ringed"),
    ("dotted greencap", "green", "dotted"), ("grünkopf", "green", "ringed"),
    ("magenta finch", "magenta", "solid"), ("ringed magenta", "magenta", "ringed"),
    ("cyan tit", "cyan", "striped"), ("dotted cyan", "cyan", "dotted"),
    ("dotted redcap", "red", "dotted"), ("ringed bluecap", "blue", "ringed"),
    ("yellowhammer", "yellow", "solid"), ("striped greencap", "green", "striped"),
    ("striped magenta", "magenta", "striped"), ("ringed cyan", "cyan", "ringed"),
    ("ringed redcap", "red", "ringed"), ("striped bluecap", "blue", "striped"),
    ("dotted goldcap", "yellow", "dotted"), ("greenfinch", "green", "solid"),
    ("dotted magenta", "magenta", "dotted"), ("cyan finch", "cyan", "solid"),
)
MAX_CLASSES = len(CLASS_TABLE)
SCALE_RANGE = (0.15, 0.70)  # the object's box, longer side, as a fraction of the image's shorter side
ASPECT_RANGE = (0.8, 1.25)  # stretch across the body axis (areas scale alike, so the head share is fixed)
BODY_RGB = np.array((150, 122, 92), dtype=np.float32)
WING_RGB = np.array((104, 84, 66), dtype=np.float32)
BEAK_RGB = np.array((232, 150, 50), dtype=np.float32)
LONE_HEAD_SCALE = 0.29  # head + beak span 0.9 of the bird's 3.1 units: lone heads match real birds' heads
MARGIN = 2  # pixels kept free around the object, so its box is never clipped by the image edge

# The bird in local units: u along the body axis (tail -1.5 .. beak tip 1.55), v across it.
BODY_B = 0.42  # body ellipse: u^2 + (v / BODY_B)^2 <= 1
HEAD_U, HEAD_R = 1.05, 0.35  # head disk centre on the axis, radius
TAIL_U = (-1.5, -0.75)
BEAK_U = (1.28, 1.62)


def class_names(classes: int) -> tuple[str, ...]:
    return tuple(name for name, _, _ in CLASS_TABLE[:classes])


@dataclass(frozen=True)
class Pose:
    cx: float  # centre in image pixels
    cy: float
    unit: float  # pixels per local unit (the bird is about 3 units long)
    angle: float  # radians; direction the beak points in image coordinates
    aspect: float = 1.0
    mirror: bool = False


# ---------------------------------------------------------------------------------------------- geometry


def _parts(u: np.ndarray, v: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean masks of the bird's parts at local coordinates (u, v)."""
    tail = (u >= TAIL_U[0]) & (u <= TAIL_U[1]) & (np.abs(v) <= 0.08 + 0.5 * (TAIL_U[1] - u) / 0.75)
    body = u * u + (v / BODY_B) ** 2 <= 1.0
    head = (u - HEAD_U) ** 2 + v * v <= HEAD_R * HEAD_R
    beak = (u >= BEAK_U[0]) & (u <= BEAK_U[1]) & (np.abs(v) <= 0.1 * (BEAK_U[1] - u) / (BEAK_U[1] - BEAK_U[0]))
    return {"tail": tail, "body": body, "head": head & ~beak, "beak": beak}


@cache
def _hull(kind: str) -> np.ndarray:
    """Convex hull (N, 2) of a whole bird, a headless body or a lone head, in local units."""
    u, v = np.meshgrid(np.linspace(-1.6, 1.6, 321), np.linspace(-0.7, 0.7, 141))
    parts = _parts(u, v)
    inside = {"bird": parts["tail"] | parts["body"] | parts["head"] | parts["beak"],
              "body": parts["tail"] | parts["body"], "head": parts["head"] | parts["beak"]}[kind]
    pts = np.stack([u[inside], v[inside]], axis=1).astype(np.float32)
    return cv2.convexHull(pts).reshape(-1, 2).astype(np.float64)


def extent(pose: Pose, kind: str = "bird") -> tuple[float, float, float, float]:
    """Image-space (x0, y0, x1, y1) that the shape covers at `pose`."""
    hull = _hull(kind)
    c, s = math.cos(pose.angle), math.sin(pose.angle)
    v = hull[:, 1] * pose.aspect * (-1 if pose.mirror else 1)
    x = pose.cx + pose.unit * (hull[:, 0] * c - v * s)
    y = pose.cy + pose.unit * (hull[:, 0] * s + v * c)
    return float(x.min()), float(y.min()), float(x.max()), float(y.max())


def fit_pose(rng: np.random.Generator, region: tuple[float, float, float, float], frac: float,
             side: float, kind: str = "bird") -> Pose:
    """A random rotation, aspect and mirror, scaled so the shape's box has longer side `frac * side`,
    placed at random inside `region` = (x0, y0, x1, y1)."""
    pose = Pose(0.0, 0.0, 1.0, rng.uniform(0, 2 * math.pi), rng.uniform(*ASPECT_RANGE), bool(rng.integers(2)))
    x0, y0, x1, y1 = extent(pose, kind)
    unit = frac * side / max(x1 - x0, y1 - y0)
    lo_x, hi_x = region[0] + MARGIN - x0 * unit, region[2] - MARGIN - 1 - x1 * unit
    lo_y, hi_y = region[1] + MARGIN - y0 * unit, region[3] - MARGIN - 1 - y1 * unit
    cx = rng.uniform(lo_x, hi_x) if hi_x > lo_x else (lo_x + hi_x) / 2
    cy = rng.uniform(lo_y, hi_y) if hi_y > lo_y else (lo_y + hi_y) / 2
    return Pose(cx, cy, unit, pose.angle, pose.aspect, pose.mirror)


# ---------------------------------------------------------------------------------------------- drawing


def _head_colour(label: int, hu: np.ndarray, hv: np.ndarray) -> np.ndarray:
    """(N, 3) head pixels at head-local coordinates (unit disk) for class `label`."""
    _, colour, pattern = CLASS_TABLE[label]
    rgb = np.tile(np.array(HEAD_COLOURS[colour], dtype=np.float32), (len(hu), 1))
    if pattern == "striped":  # two wide dark bands across the body axis
        rgb[np.floor((hu + 1.0) * 2.0).astype(int) % 2 == 1] *= 0.25
    elif pattern == "dotted":  # a few large white dots
        gu, gv = hu * 1.4 - np.round(hu * 1.4), hv * 1.4 - np.round(hv * 1.4)
        rgb[gu * gu + gv * gv < 0.09] = 245
    elif pattern == "ringed":  # a thick white ring around a coloured core
        r = np.hypot(hu, hv)
        rgb[(r > 0.35) & (r < 0.75)] = 245
    eye = (hu - 0.3) ** 2 + (hv + 0.45) ** 2 < 0.035  # the same small dark eye on every head
    rgb[eye] = 15
    return rgb


def _body_colour(part: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(N, 3) shared body texture: feather bands on the body, a darker wing, streaks on the tail."""
    if part == "beak":
        return np.tile(BEAK_RGB, (len(u), 1))
    if part == "tail":
        shade = 0.75 + 0.2 * np.sin(v * 40.0)
        return WING_RGB[None] * shade[:, None]
    bands = 0.82 + 0.18 * np.sin(u * 16.0 + 3.0 * np.sin(v * 9.0))
    rgb = BODY_RGB[None] * bands[:, None]
    wing = ((u + 0.15) / 0.62) ** 2 + (v / (0.62 * BODY_B)) ** 2 <= 1.0
    rgb[wing] = WING_RGB * (0.85 + 0.15 * np.sin(u[wing] * 30.0))[:, None]
    return rgb


def draw(image: np.ndarray, pose: Pose, label: int, kind: str = "bird", light: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Paint a bird (or a headless `body`, or a lone `head`) on RGB `image` in place, brightness scaled by
    `light`; returns the bool masks (image-sized) of what was painted and of the head alone."""
    height, width = image.shape[:2]
    x0, y0, x1, y1 = extent(pose, kind)
    x0, y0 = max(int(math.floor(x0)) - 1, 0), max(int(math.floor(y0)) - 1, 0)
    x1, y1 = min(int(math.ceil(x1)) + 2, width), min(int(math.ceil(y1)) + 2, height)
    masks = np.zeros((2, height, width), dtype=bool)
    if x1 <= x0 or y1 <= y0:
        return masks[0], masks[1]
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5  # pixel centres
    dx, dy = (xs - pose.cx) / pose.unit, (ys - pose.cy) / pose.unit
    c, s = math.cos(pose.angle), math.sin(pose.angle)
    u = dx * c + dy * s
    v = (dy * c - dx * s) / pose.aspect * (-1 if pose.mirror else 1)
    parts = _parts(u, v)
    hidden = {"bird": (), "body": ("head", "beak"), "head": ("tail", "body")}[kind]
    for name in hidden:
        parts[name][:] = False
    crop = image[y0:y1, x0:x1]
    for name in ("tail", "body", "head", "beak"):  # back to front
        sel = parts[name]
        if not sel.any():
            continue
        if name == "head":
            rgb = _head_colour(label, (u[sel] - HEAD_U) / HEAD_R, v[sel] / HEAD_R)
        else:
            rgb = _body_colour(name, u[sel], v[sel])
        crop[sel] = np.clip(rgb * light, 0, 255).astype(np.uint8)
        masks[0, y0:y1, x0:x1] |= sel
    masks[1, y0:y1, x0:x1] = parts["head"]
    return masks[0], masks[1]


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Clutter: a colour gradient, low-frequency noise, optional stripes, translucent blobs and grain."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    theta = rng.uniform(0, 2 * math.pi)
    ramp = (xs * math.cos(theta) + ys * math.sin(theta)) / max(height, width)
    a, b = rng.uniform(40, 215, size=(2, 3)).astype(np.float32)
    img = a + (b - a) * (ramp - ramp.min())[..., None] / max(float(np.ptp(ramp)), 1e-6)
    coarse = rng.normal(0, 1, size=(max(height // 24, 2), max(width // 24, 2), 3)).astype(np.float32)
    img += 28 * cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    if rng.random() < 0.6:
        phi, period = rng.uniform(0, math.pi), rng.uniform(6, 40)
        wave = np.sin(2 * math.pi * (xs * math.cos(phi) + ys * math.sin(phi)) / period)
        img += rng.uniform(12, 35) * wave[..., None] * rng.uniform(0.3, 1.0, size=3).astype(np.float32)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(3, 9))):
        overlay = img.copy()
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(6, width // 4)), int(rng.integers(6, height // 4)))
        colour = tuple(int(c) for c in rng.integers(30, 226, size=3))
        cv2.ellipse(overlay, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
        alpha = float(rng.uniform(0.35, 0.85))
        img = cv2.addWeighted(overlay, alpha, img, 1 - alpha, 0)
    grain = rng.normal(0, 5, size=img.shape).astype(np.float32)
    return np.clip(img + grain, 0, 255).astype(np.uint8)


def _overlaps(a: tuple[float, ...], b: tuple[float, ...], pad: float) -> bool:
    return not (a[2] + pad < b[0] or b[2] + pad < a[0] or a[3] + pad < b[1] or b[3] + pad < a[1])


def add_distractors(rng: np.random.Generator, image: np.ndarray, keep_clear: tuple[float, ...], classes: int) -> int:
    """Headless bodies and lone heads of random classes, away from the `keep_clear` box; returns how many."""
    height, width = image.shape[:2]
    drawn = 0
    kinds = ["body"] * int(rng.choice(3, p=(0.4, 0.4, 0.2))) + ["head"] * int(rng.choice(3, p=(0.6, 0.3, 0.1)))
    for kind in kinds:
        # lone heads as large as the heads of real birds; headless bodies up to half the largest bird
        frac = rng.uniform(*SCALE_RANGE) * (LONE_HEAD_SCALE if kind == "head" else 0.5)
        for _ in range(8):  # rejection sampling: distractors never touch the object, so its mask stays exact
            pose = fit_pose(rng, (0, 0, width, height), frac, min(height, width), kind)
            if not _overlaps(extent(pose, kind), keep_clear, pad=4):
                draw(image, pose, int(rng.integers(classes)), kind, light=rng.uniform(0.85, 1.1))
                drawn += 1
                break
    return drawn


def render(rng: np.random.Generator, height: int, width: int, label: int, classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One benchmark image: (RGB uint8 image, bool object mask, int box xyxy as the protocol decoder draws it)."""
    image = background(rng, height, width)
    pose = fit_pose(rng, (0, 0, width, height), rng.uniform(*SCALE_RANGE), min(height, width))
    add_distractors(rng, image, extent(pose), classes)
    mask = draw(image, pose, label, light=rng.uniform(0.85, 1.1))[0]
    return image, mask, mask_box(mask)


def render_empty(rng: np.random.Generator, height: int, width: int, classes: int) -> np.ndarray:
    """An object-free scene (RGB uint8): `render`'s background and distractors, no bird."""
    image = background(rng, height, width)
    add_distractors(rng, image, (-1e6, -1e6, -1e6, -1e6), classes)  # nothing to keep clear of
    return image


def mask_box(mask: np.ndarray) -> np.ndarray:
    """(x0, y0, x1, y1) = (xmin, ymin, xmax + 1, ymax + 1), what cv2.boundingRect gives for the mask."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.int64)


# ---------------------------------------------------------------------------------------------- the dataset


def generate(
    out: str | os.PathLike,
    classes: int = 8,
    train: int = 480,
    val: int = 96,
    test: int = 192,
    seed: int = 0,
    image_size: tuple[int, int] = (200, 320),
    exist_ok: bool = False,
    show_progress: bool = True,
    negatives: int = 0,
    val_negatives: int | None = None,
) -> Path:
    """Write the benchmark to `out` (wsolevaluation layout, boxes and masks for every split) and return it.

    `train`, `val`, `test` are image counts (classes balanced; a split of 0 is left out); every image's
    width and height are drawn from `image_size` = (min, max) pixels; `negatives` object-free scenes go to
    each non-empty split's ``<split>_negatives`` (`val_negatives` of them to val when given: presence calibration
    wants more than training does). Built in a temporary folder beside
    `out` and renamed into place, so `out` is never half-written. Same arguments -> byte-identical files.
    """
    out = Path(out).expanduser().resolve()
    counts = {"train": train, "val": val, "test": test}
    empty = {split: negatives for split in counts} | ({} if val_negatives is None else {"val": val_negatives})
    _check_args(out, classes, {**counts, "negatives": negatives, "val_negatives": empty["val"]}, image_size, exist_ok)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the finished dataset is an ordinary folder
    try:
        (tmp / "classes.txt").write_text("".join(f"{n}\n" for n in class_names(classes)), encoding="utf-8")
        with progress(disable=None if show_progress else True) as bar:
            for split_index, (split, count) in enumerate(counts.items()):
                for name, n, negative in ((split, count, False), (negatives_split(split), empty[split], True)):
                    if count > 0 and n > 0:  # a split left out gets no negatives either
                        task = bar.add_task(f"synth {name}", total=n, info="")
                        _write_split(tmp, name, split_index + 3 * negative, n, classes, seed, image_size,
                                     lambda: bar.advance(task), negative)
        (tmp / "README.txt").write_text(readme(CLASS_TABLE[:classes], SCALE_RANGE, counts, seed, image_size, empty), encoding="utf-8")
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote the synthetic benchmark to %s (%s)", out, ", ".join(f"{k} {v}" for k, v in counts.items() if v))
    return out


def _check_args(out: Path, classes: int, counts: dict[str, int], image_size: tuple[int, int], exist_ok: bool) -> None:
    if not 2 <= classes <= MAX_CLASSES:
        raise UserError(f"--classes {classes}: the benchmark has 2 to {MAX_CLASSES} classes (head colour x pattern)")
    if counts["train"] < classes:
        raise UserError(f"--train {counts['train']}: every class needs a training image; pass --train {classes} or more")
    for split, count in counts.items():
        if count < 0:
            raise UserError(f"--{split.replace('_', '-')} {count}: image counts cannot be negative (0 leaves the split out)")
    lo, hi = image_size
    if not 64 <= lo <= hi:
        raise UserError(f"image sides {lo}..{hi} (--min-size/--max-size): need 64 <= min-size <= max-size")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not exist_ok:
            raise UserError(f"{out}: already exists and is not empty; pick a new folder or pass --exist-ok to replace it")
        readme = out / "README.txt"  # --exist-ok replaced any folder (or file) wholesale
        if not (readme.is_file() and readme.read_text(encoding="utf-8", errors="replace").startswith(README_TITLE)):
            raise UserError(f"{out}: is not a synthetic benchmark written by `tedloc-edge data synth` (no README.txt of "
                            "one); --exist-ok replaces only those: pick a new or empty folder")


def _replace_dir(tmp: Path, out: Path) -> None:
    """Swap the finished folder into place; an old `out` is moved aside first and removed after."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


def _write_split(root: Path, split: str, split_index: int, count: int, classes: int, seed: int,
                 image_size: tuple[int, int], advance: Callable[[], None], negative: bool = False) -> None:
    # Balanced labels in a seeded order; each image has its own generator, so images don't depend on each other.
    labels = np.random.default_rng([seed, split_index]).permutation(np.arange(count) % classes)
    rows: dict[str, list[str]] = {"image_ids": [], "image_sizes": []}
    if not negative:  # an object-free scene has no class, box or mask
        rows.update(class_labels=[], localization=[])
    for index, label in enumerate(labels.tolist()):
        rng = np.random.default_rng([seed, split_index, index])
        width, height = (int(v) for v in rng.integers(image_size[0], image_size[1] + 1, size=2))
        if negative:
            image = render_empty(rng, height, width, classes)
        else:
            image, mask, box = render(rng, height, width, label, classes)
        image_id = f"{split}/{index:05d}{'.jpg' if rng.random() < 0.7 else '.png'}"
        _write_png_or_jpg(root / "images" / image_id, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        rows["image_ids"].append(image_id)
        rows["image_sizes"].append(f"{image_id},{width},{height}")
        if not negative:
            _write_png_or_jpg(root / "masks" / split / Path(image_id).with_suffix(".png"), mask.astype(np.uint8) * 255)
            rows["class_labels"].append(f"{image_id},{label}")
            rows["localization"].append(f"{image_id},{box[0]},{box[1]},{box[2]},{box[3]}")
        advance()
    meta = root / "metadata" / split
    meta.mkdir(parents=True, exist_ok=True)
    for name, lines in rows.items():
        (meta / f"{name}.txt").write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def _write_png_or_jpg(path: Path, pixels: np.ndarray) -> None:
    params = [cv2.IMWRITE_JPEG_QUALITY, 92] if path.suffix == ".jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    ok, data = cv2.imencode(path.suffix, pixels, params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.tobytes())
