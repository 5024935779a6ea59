"""Media for the runtime tests, made by code: short H.264 clips, a truncated copy, real photos from
scikit-image in every pixel format a camera or a disk hands over, and readers for what `infer` wrote."""

from __future__ import annotations

import json
from pathlib import Path

import av
import cv2
import numpy as np


def make_clip(path: Path, frames: int = 30, size: tuple[int, int] = (160, 120), fps: int = 25, faststart: bool = True,
              pix_fmt: str = "yuv420p") -> Path:
    """A clip of a bright square moving over a dark textured ground (width, height = size)."""
    width, height = size
    options = {"movflags": "faststart"} if faststart else {}
    rng = np.random.default_rng(1)
    with av.open(str(path), "w", options=options) as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.options = {"preset": "ultrafast", "g": "10"}
        for i in range(frames):
            image = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
            x = (i * 3) % (width // 2)
            image[height // 4 : height // 4 + height // 3, x : x + width // 3] = (240, 60, 40)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def truncate(src: Path, dst: Path, keep: float = 0.6) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def count_frames(path: Path) -> int:
    """Frames PyAV decodes from the file (what a player shows)."""
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def read_jsonl(path: Path) -> list[dict]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def write_photos(folder: Path) -> dict[str, Path]:
    """Real photos (scikit-image) as JPEG/PNG: colour, grayscale, RGBA, 16-bit; plus one corrupt file."""
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        paths[name] = folder / f"{name}.jpg"
        cv2.imwrite(str(paths[name]), cv2.cvtColor(getattr(data, name)(), cv2.COLOR_RGB2BGR))
    paths["camera_gray"] = folder / "camera_gray.png"
    cv2.imwrite(str(paths["camera_gray"]), data.camera())
    rgba = np.dstack([data.coffee(), np.full(data.coffee().shape[:2], 200, np.uint8)])
    paths["coffee_rgba"] = folder / "coffee_rgba.png"
    cv2.imwrite(str(paths["coffee_rgba"]), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    paths["astronaut_16bit"] = folder / "astronaut_16bit.png"
    cv2.imwrite(str(paths["astronaut_16bit"]), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)
    paths["corrupt"] = folder / "corrupt.jpg"
    paths["corrupt"].write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    return paths
