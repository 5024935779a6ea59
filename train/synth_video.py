"""A short synthetic video for the demo: 1-3 benchmark birds flying across a cluttered background.

The birds come from the same renderer as the benchmark (`synth.draw`), so a model trained on the benchmark
recognises them. Each bird keeps to its own horizontal lane, so birds never occlude each other and every
ground-truth box is the box of a fully visible bird. Written as H.264 (libx264, yuv420p) with PyAV, plus
``<video>.json`` holding per-frame boxes and labels.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from tedloc_edge.files import atomic_write_text
from tedloc_edge.errors import UserError
from tedloc_edge.train.synth import CLASS_TABLE, MAX_CLASSES, Pose, background, class_names, draw, mask_box

log = logging.getLogger(__name__)

BIRD_LENGTH = 3.1  # local units from tail to beak, with room for the widest aspect: fits any rotation


@dataclass
class _Flyer:
    label: int
    x: float
    y: float
    vx: float
    vy: float
    unit: float
    aspect: float
    mirror: bool
    lane: tuple[float, float]  # (top, bottom) pixels
    phase: float

    def pose(self, t: int) -> Pose:
        # Head first along the flight direction, with a gentle wobble.
        angle = math.atan2(self.vy, self.vx) + 0.25 * math.sin(0.15 * t + self.phase)
        return Pose(self.x, self.y, self.unit, angle, self.aspect, self.mirror)

    def step(self, width: int) -> None:
        half = self.unit * BIRD_LENGTH / 2 + 2
        self.x += self.vx
        self.y += self.vy
        if not half <= self.x <= width - half:
            self.vx = -self.vx
            self.x = min(max(self.x, half), width - half)
        if not self.lane[0] + half <= self.y <= self.lane[1] - half:
            self.vy = -self.vy
            self.y = min(max(self.y, self.lane[0] + half), self.lane[1] - half)


def _flyers(rng: np.random.Generator, width: int, height: int, classes: int) -> list[_Flyer]:
    count = int(rng.integers(1, 4))
    lane_h = height / count
    flyers = []
    for i, label in enumerate(rng.choice(classes, size=count, replace=count > classes).tolist()):
        unit = rng.uniform(0.6, 0.9) * min(lane_h, width) / BIRD_LENGTH
        half = unit * BIRD_LENGTH / 2 + 2
        lane = (i * lane_h, (i + 1) * lane_h)
        speed = rng.uniform(2.0, 5.0)
        flyers.append(_Flyer(
            label=int(label),
            x=rng.uniform(half, width - half),
            y=(lane[0] + lane[1]) / 2,
            vx=speed * rng.choice([-1.0, 1.0]),
            vy=rng.uniform(-0.6, 0.6),
            unit=unit,
            aspect=rng.uniform(0.9, 1.1),
            mirror=bool(rng.integers(2)),
            lane=lane,
            phase=rng.uniform(0, 2 * math.pi),
        ))
    return flyers


def _check_args(path: Path, frames: int, size: tuple[int, int], fps: float, classes: int) -> None:
    width, height = size
    if frames < 1:
        raise UserError(f"{path}: frames must be at least 1, not {frames}")
    if width < 64 or height < 64 or width % 2 or height % 2:
        raise UserError(f"{path}: video size {width}x{height} must be even and at least 64x64 (H.264 yuv420p)")
    if fps <= 0:
        raise UserError(f"{path}: fps must be positive, not {fps}")
    if not 2 <= classes <= MAX_CLASSES:
        raise UserError(f"{path}: classes must be 2 to {MAX_CLASSES}, as in the benchmark the model was trained on")


def make_video(
    path: str | os.PathLike,
    frames: int = 90,
    size: tuple[int, int] = (640, 360),
    fps: float = 30,
    classes: int = 8,
    seed: int = 0,
) -> list[list[tuple[int, int, int, int]]]:
    """Write an H.264 mp4 of flying birds and ``<path>.json`` with its ground truth; returns the boxes per
    frame, xyxy = (xmin, ymin, xmax + 1, ymax + 1) as in the benchmark, one per bird."""
    import av  # the runtime's video dependency; imported here so `synth` stays importable without it

    path = Path(path).expanduser().resolve()
    _check_args(path, frames, size, fps, classes)
    width, height = size
    rng = np.random.default_rng([seed, 90210])
    scene = background(rng, height, width)
    flyers = _flyers(rng, width, height, classes)
    names = class_names(classes)
    truth: list[list[dict]] = []
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"crf": "18", "preset": "veryfast"}
            for t in range(frames):
                frame = scene.copy()
                objects = []
                for flyer in flyers:
                    mask = draw(frame, flyer.pose(t), flyer.label)[0]
                    box = [int(v) for v in mask_box(mask)]
                    objects.append({"label": flyer.label, "name": names[flyer.label], "box": box})
                    flyer.step(width)
                truth.append(objects)
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    doc = {
        "video": path.name, "frames": frames, "fps": fps, "width": width, "height": height, "seed": seed,
        "class_names": list(names), "heads": {n: f"{c} {p}" for n, c, p in CLASS_TABLE[:classes]},
        "box_format": "xyxy pixels, (xmin, ymin, xmax + 1, ymax + 1)",
        "objects": truth,
    }
    atomic_write_text(Path(str(path) + ".json"), json.dumps(doc, ensure_ascii=False, indent=1))
    log.info("wrote %s (%d frames, %d birds) and its ground truth %s.json", path, frames, len(flyers), path.name)
    return [[tuple(o["box"]) for o in objects] for objects in truth]
