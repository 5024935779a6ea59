"""A picture of cue maps over their images, saved in the run folder so a person sees what the model was taught."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from tedloc_edge.files import atomic_write_bytes
from tedloc_edge.errors import UserError
from tedloc_edge.images import load_image

PICTURE_TILE, PICTURE_CAPTION, PICTURE_COLS = 192, 20, 4


def save_cue_picture(path: Path, samples: Sequence, cues: np.ndarray, n: int = 8,
                     class_names: Sequence[str] | None = None) -> Path:
    """A PNG grid of up to `n` images (spread over the classes) with their cue overlaid (JET: red = high).

    Tiles are PICTURE_TILE px squares with a PICTURE_CAPTION px caption below, PICTURE_COLS per row.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UserError(f"{path}: the cue picture is written as PNG; name it *.png")
    if len(cues) != len(samples):
        raise ValueError(f"{len(cues)} cue maps for {len(samples)} samples")
    picks = _spread_over_classes([int(s.label) for s in samples], n)
    if not picks:
        raise UserError(f"{path}: no samples to draw; the cue picture needs at least one training image")
    cols = min(PICTURE_COLS, len(picks))
    rows = math.ceil(len(picks) / cols)
    t, cap = PICTURE_TILE, PICTURE_CAPTION
    canvas = np.full((rows * (t + cap), cols * t, 3), 255, dtype=np.uint8)
    captions = []
    for slot, i in enumerate(picks):
        r, c = divmod(slot, cols)
        y, x = r * (t + cap), c * t
        canvas[y:y + t, x:x + t] = _overlay(load_image(samples[i].path), cues[i], t)
        captions.append(((x + 3, y + t + 2), class_names[samples[i].label] if class_names else samples[i].image_id))
    canvas = _draw_captions(canvas, captions)
    ok, png = cv2.imencode(".png", cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    if not ok:
        raise UserError(f"{path}: OpenCV could not encode the cue picture; check the disk and OpenCV install")
    atomic_write_bytes(path, png.tobytes())
    return path


def _spread_over_classes(labels: list[int], n: int) -> list[int]:
    """Up to n indices, round-robin over the classes in class order: each class's first image, then its second..."""
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    queues = [by_class[y] for y in sorted(by_class)]
    picks: list[int] = []
    depth = 0
    while len(picks) < n and any(depth < len(q) for q in queues):
        picks += [q[depth] for q in queues if depth < len(q)][: n - len(picks)]
        depth += 1
    return picks


def _draw_captions(canvas: np.ndarray, captions: list[tuple[tuple[int, int], str]]) -> np.ndarray:
    """Captions in DejaVu Sans (matplotlib's font, through Pillow: unicode class names stay readable);
    OpenCV's ASCII-only font when those are not installed."""
    try:
        import matplotlib
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        for (x, y), text in captions:
            text = text.encode("ascii", "replace").decode()[:26]
            cv2.putText(canvas, text, (x, y + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        return canvas
    font = ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), 12)
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    for (x, y), text in captions:
        draw.text((x, y), text[:30], font=font, fill=(0, 0, 0))
    return np.asarray(picture).copy()


def _overlay(image: np.ndarray, cue: np.ndarray, size: int) -> np.ndarray:
    img = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    heat = cv2.resize(np.asarray(cue, dtype=np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap((np.clip(heat, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.addWeighted(img, 0.5, cv2.cvtColor(heat, cv2.COLOR_BGR2RGB), 0.5, 0)
