"""The one image loader, lister and resize: training, evaluation, export and inference see the same pixels."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from tedloc_edge import evaluate
from tedloc_edge.images import ImageDecodeError, list_images, load_image, resize_image
from tedloc_edge.runtime.sources import open_source


def exif_rotated_jpeg(path: Path, bgr: np.ndarray, orientation: int = 6) -> Path:
    """A JPEG whose EXIF says "rotate 90 degrees clockwise to view" (orientation 6), as phone cameras write."""
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert ok
    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + b"\0\0\0\0"
    tiff = b"MM\0\x2a\0\0\0\x08" + ifd
    app1 = b"\xff\xe1" + struct.pack(">H", 8 + len(tiff)) + b"Exif\0\0" + tiff
    data = buf.tobytes()
    path.write_bytes(data[:2] + app1 + data[2:])
    return path


def photos(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    bgr = np.zeros((20, 40, 3), np.uint8)
    bgr[:, :10] = (0, 0, 255)  # a red band on the left of the stored pixels
    deep = np.dstack([np.full((8, 6), v * 256, np.uint16) for v in (50, 100, 200)])  # 16-bit BGR
    assert cv2.imwrite(str(folder / "deep.png"), deep)
    return {"rotated": exif_rotated_jpeg(folder / "rotated.jpg", bgr), "deep": folder / "deep.png"}


def test_exif_orientation_applied_and_16_bit_shifted(tmp_path):
    files = photos(tmp_path)
    rotated = load_image(files["rotated"])
    assert rotated.shape == (40, 20, 3)  # upright, as a viewer shows it
    assert rotated[2, 10, 0] > 200 and rotated[-2, 10, 0] < 50  # the left band is now on top, in RGB order
    deep = load_image(files["deep"])
    np.testing.assert_array_equal(deep[0, 0], (200, 100, 50))  # x >> 8 (rounding x / 257 gives 199), BGR -> RGB


def test_eval_and_infer_read_the_same_pixels(tmp_path):
    files = photos(tmp_path / "photos")
    assert evaluate.load_image is load_image  # evaluation reads through the one loader
    with open_source(str(tmp_path / "photos")) as source:
        frames = {f.name: f.image for f in source}
    assert sorted(frames) == ["deep.png", "rotated.jpg"]
    for name, path in files.items():
        np.testing.assert_array_equal(frames[path.name], load_image(path), err_msg=name)


def test_unreadable_files_are_one_line_errors(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(ImageDecodeError, match=r"bad.jpg: not a decodable image"):
        load_image(tmp_path / "bad.jpg")
    with pytest.raises(ImageDecodeError, match=r"nope.png: no such image file"):
        load_image(tmp_path / "nope.png")


def test_lister_folders_globs_and_files(tmp_path):
    for name in ("b.JPG", "a.png", "notes.txt", "sub/c.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.JPG"]
    assert [p.name for p in list_images(tmp_path, recursive=True)] == ["a.png", "b.JPG", "c.jpg"]
    assert [p.name for p in list_images(str(tmp_path / "**" / "*.jpg"))] == ["c.jpg"]
    assert list_images(tmp_path / "missing.jpg") == [tmp_path / "missing.jpg"]


def test_resize_is_whole_image_with_the_named_interpolation():
    image = np.random.default_rng(0).integers(0, 255, (30, 50, 3), np.uint8)
    for name, flag in (("bilinear", cv2.INTER_LINEAR), ("area", cv2.INTER_AREA), ("bicubic", cv2.INTER_CUBIC)):
        np.testing.assert_array_equal(resize_image(image, (16, 24), name), cv2.resize(image, (24, 16), interpolation=flag))
    assert resize_image(image, (30, 50)) is image  # already at the size: no resampling, no copy
    out = np.zeros((16, 24, 3), np.uint8)
    assert resize_image(image, (16, 24), out=out) is out and out.any()
