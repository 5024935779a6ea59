"""Image files to RGB uint8 pixels, one way for every stage: training, evaluation, export and inference.

* `load_image(path)`: RGB uint8 (H, W, 3) with EXIF orientation applied (the picture as a viewer shows it);
  grayscale is repeated to 3 channels, alpha is dropped, 16-bit samples keep their top 8 bits (x >> 8) and
  float images are taken as [0, 1] (NaN, infinity or values beyond it are refused, as is an empty 0xN image).
  Eval and infer thus see the same pixels for the same file.
* `IMAGE_SUFFIXES` and `list_images(spec)`: what counts as an image, in a folder, a glob or one file.
* `resize_image(image, (h, w), interpolation)`: the one resize to the model input (whole image, no crop, as
  the evaluation protocol does), with the interpolation the bundle's preprocessing record names.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from tedloc_edge.bundle import INTERPOLATIONS
from tedloc_edge.errors import UserError

__all__ = ["IMAGE_SUFFIXES", "ImageDecodeError", "as_uint8_3ch", "decode", "image_base", "is_pattern", "list_images",
           "load_image", "relative_name", "resize_image"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm", ".jp2")
CV2_INTERPOLATIONS = dict(zip(INTERPOLATIONS, (cv2.INTER_LINEAR, cv2.INTER_AREA, cv2.INTER_CUBIC)))


class ImageDecodeError(UserError):
    """An image (or mask) file is missing or cannot be decoded."""


def load_image(path: str | os.PathLike) -> np.ndarray:
    """RGB uint8 (H, W, 3) of an image file; a one-line ImageDecodeError naming the file when it cannot be read."""
    # ANYCOLOR|ANYDEPTH (not UNCHANGED): OpenCV applies the EXIF orientation and drops alpha, keeping 16 bits
    raw = decode(Path(path), "image", cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH)
    if raw.ndim == 3 and raw.shape[2] in (3, 4):  # OpenCV decodes BGR(A)
        raw = cv2.cvtColor(raw, cv2.COLOR_BGR2RGB if raw.shape[2] == 3 else cv2.COLOR_BGRA2RGB)
    try:
        return as_uint8_3ch(raw, "RGB", str(path))
    except UserError as exc:  # an exotic sample type (e.g. int32 TIFF): skipped like any undecodable file
        raise ImageDecodeError(str(exc)) from None


def decode(path: Path, what: str = "image", flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """The array OpenCV decodes from an image or mask file, or a one-line ImageDecodeError naming the file."""
    try:
        data = np.fromfile(path, dtype=np.uint8)  # not cv2.imread: it fails silently and on non-ASCII paths
    except FileNotFoundError:
        raise ImageDecodeError(f"{path}: no such {what} file; check the path (or the dataset's metadata)") from None
    except OSError as exc:
        raise ImageDecodeError(f"{path}: cannot read the {what} ({exc.strerror}); check the file's permissions") from None
    raw = cv2.imdecode(data, flags) if data.size else None
    if raw is None:
        raise ImageDecodeError(f"{path}: not a decodable {what} (empty or corrupt); replace the file or drop it")
    return raw


def as_uint8_3ch(image: np.ndarray, color: str = "RGB", source: str = "frame") -> np.ndarray:
    """Any common image array as HxWx3 uint8 in the SAME channel order `color` (no copy when it already is).

    Grayscale (HxW or HxWx1) is repeated to 3 channels, a 4th (alpha) channel is dropped, 16-bit samples
    keep their top 8 bits (x >> 8), float images are taken as [0, 1] and scaled by 255.
    """
    img = np.asarray(image)
    if img.ndim in (2, 3) and 0 in img.shape[:2]:
        raise UserError(f"{source}: empty image ({img.shape[0]}x{img.shape[1]} pixels); pass a picture with pixels")
    if img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        img = (np.clip(_unit_floats(img, source), 0.0, 1.0) * 255.0).astype(np.uint8)
    elif img.dtype == np.bool_:
        img = img.astype(np.uint8) * 255
    elif img.dtype != np.uint8:
        raise UserError(f"{source}: pixel type {img.dtype} is not supported; pass uint8, uint16 or float [0, 1] images")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        return np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2))
    if img.ndim == 3 and img.shape[2] == 4:
        return np.ascontiguousarray(img[:, :, :3])
    if img.ndim == 3 and img.shape[2] == 3:
        return img
    raise UserError(f"{source}: image of shape {tuple(np.shape(image))} is not HxW, HxWx1, HxWx3 or HxWx4; pass a picture")


def _unit_floats(img: np.ndarray, source: str) -> np.ndarray:
    """Float pixels must be finite and in [0, 1] (a rounding step of 1/255 either side is allowed): NaN read as
    black, or 0..255 floats read as white, would be a silently wrong picture."""
    if img.size == 0:
        return img
    lo, hi = float(img.min()), float(img.max())  # NaN propagates into both
    if not (np.isfinite(lo) and np.isfinite(hi)):
        bad = int(np.count_nonzero(~np.isfinite(img)))
        raise UserError(f"{source}: float image with {bad} of {img.size} values NaN or infinite; pass finite pixels "
                        "(np.nan_to_num) or uint8")
    if lo < -1 / 255 or hi > 1 + 1 / 255:
        raise UserError(f"{source}: float image with values in [{lo:g}, {hi:g}]; float pixels are read as [0, 1]: "
                        "divide 0..255 values by 255, or pass uint8")
    return img


def resize_image(image: np.ndarray, size: tuple[int, int], interpolation: str = "bilinear",
                 out: np.ndarray | None = None) -> np.ndarray:
    """The whole image to `size` = (h, w), no crop; into `out` when given (the runtime's batch buffer row).
    An image already at the size is taken as is (copied into `out`), never resampled."""
    h, w = (int(v) for v in size)
    if image.shape[:2] == (h, w):
        if out is None:
            return np.ascontiguousarray(image)
        np.copyto(out, image)
        return out
    return cv2.resize(image, (w, h), dst=out, interpolation=CV2_INTERPOLATIONS[interpolation])


def is_pattern(spec: str) -> bool:
    return any(ch in spec for ch in "*?[")


def list_images(spec: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Image files (by suffix, sorted) in a folder (with `recursive`, its subfolders too) or matching a glob
    (``**`` recurses); any other spec names one file, returned as given whether or not it exists.

    Symbolic links are followed, but every real folder is read once, so a link loop (``ln -s .. up``) ends, and
    a file reached under two names (a link to it, a folder seen twice) is listed once, under its first name."""
    path = Path(spec).expanduser()
    if path.is_dir():
        found = _walk(path, ("**", "*") if recursive else ("*",), set())
    elif is_pattern(str(spec)) and not path.exists():  # "clip[1].jpg" that exists is that file
        found = _walk(*_split_pattern(path), set())
    else:
        return [path]
    return _unique(sorted(p for p in found if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()))


def image_base(spec: str | os.PathLike) -> Path:
    """The folder the names of `list_images(spec)` are relative to: the folder itself, the part of a glob before
    its first wildcard, or a single file's folder."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    return _split_pattern(path)[0] if is_pattern(str(spec)) and not path.exists() else path.parent


def relative_name(path: Path, base: Path) -> str:
    """`path` relative to `base` (posix), e.g. "a/x.jpg", so same-named images in two folders stay apart; the
    file name when it lies outside `base`."""
    rel = os.path.relpath(os.path.normpath(path), os.path.normpath(base))
    return path.name if rel.startswith("..") or os.path.isabs(rel) else Path(rel).as_posix()


def _split_pattern(path: Path) -> tuple[Path, tuple[str, ...]]:
    parts = path.parts
    first = next(i for i, part in enumerate(parts) if is_pattern(part) or part == "**")
    return Path(*parts[:first]) if first else Path("."), parts[first:]


def _walk(folder: Path, parts: tuple[str, ...], seen: set[tuple[int, int]]) -> Iterator[Path]:
    """Paths under `folder` matching the glob `parts` (glob.glob's rules: ``**`` is any number of folders, a
    wildcard matches no leading dot); each real folder `**` enters is entered once (`seen`), so links cannot loop."""
    head, rest = parts[0], parts[1:]
    if head == "**":
        try:
            key = (folder.stat().st_dev, folder.stat().st_ino)
        except OSError:
            return
        if key in seen:
            return
        seen.add(key)
        yield from _walk(folder, rest or ("*",), seen)
        for child in _children(folder, "*"):
            if child.is_dir():
                yield from _walk(child, parts, seen)
        return
    for child in _children(folder, head):
        if not rest:
            yield child
        elif child.is_dir():
            yield from _walk(child, rest, seen)


def _children(folder: Path, pattern: str) -> list[Path]:
    if not is_pattern(pattern):
        return [folder / pattern] if os.path.lexists(folder / pattern) else []
    try:
        names = sorted(entry.name for entry in os.scandir(folder))
    except OSError:  # unreadable, or a dangling or looping link
        return []
    hidden_ok = pattern.startswith(".")
    return [folder / n for n in names if (hidden_ok or not n.startswith(".")) and fnmatch.fnmatchcase(n, pattern)]


def _unique(paths: list[Path]) -> list[Path]:
    """The first of the paths naming each real file."""
    seen: set[tuple[int, int]] = set()
    out = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:  # gone since it was listed
            continue
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            out.append(path)
    return out
