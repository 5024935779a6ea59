"""The bundle: one self-describing model.

An ONNX file carries one `metadata_props` entry, key ``tedloc``, whose value is the JSON of `BundleMeta`.
A TensorRT plan stays a plain plan; the same document (plus a ``build`` record) lives in ``<plan>.json``.
This module is the only reader and writer of that document, so every stage agrees on it.

Format 2 keeps the preprocessing as one record (``"preprocess": {...}``); format 1 spelled it as flat fields
(``mean``, ``std``, ``input_layout``, ...) and ``extra["resize_interpolation"]``, and is still read into the record.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tedloc_edge.errors import first_line
from tedloc_edge.files import atomic_write_text

FORMAT_VERSION = 2  # 2: the preprocess record; an older reader would silently drop it, so it must refuse it
METADATA_KEY = "tedloc"
INTERPOLATIONS = ("bilinear", "area", "bicubic")  # resize_image maps them to OpenCV's; this module stays pure Python
COLOR_ORDERS = ("RGB", "BGR")
CONTOUR_MODES = ("largest", "all")  # the box decoder's (tedloc_edge.boxes)
METHODS = ("tedloc", "cam")
# Fields a document must hold: a default would silently change what the model does (the calibrated threshold of
# 0.82 read as 0.5 moves every box).
REQUIRED = ("class_names", "input_size", "patch_grid", "threshold")
TEXT_FIELDS = ("threshold_source", "backbone", "anchor_source", "precision", "run_id")
V1_PREPROCESS = {"mean": "mean", "std": "std", "input_layout": "layout", "input_dtype": "dtype",
                 "channel_order": "channel_order", "normalize_in_graph": "normalize_in_graph"}


class BundleError(ValueError):
    """A model file without readable tedloc metadata; the message is one line naming the file and the fix."""


@dataclass(frozen=True)
class Preprocess:
    """How a picture becomes the graph's input, as timm's pretrained_cfg and open_clip's preprocess config
    carry it: the whole image resized to the bundle's `input_size` with `interpolation`, `channel_order`,
    `layout`, `dtype`. `mean`/`std` (on [0, 1] pixels) are applied inside the graph (`normalize_in_graph`), so
    the runtime's `Preprocessor` never normalizes. Values the runtime cannot feed are refused here, at load."""

    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    interpolation: str = "bilinear"
    channel_order: str = "RGB"
    layout: str = "NHWC"
    dtype: str = "uint8"
    normalize_in_graph: bool = True

    def __post_init__(self) -> None:
        for name in ("mean", "std"):  # tuples from JSON lists, so records compare equal after a round trip
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        problem = self._problem()
        if problem:
            raise BundleError(f"preprocess: {problem}; re-export the model with `tedloc-edge export`")

    def _problem(self) -> str | None:
        if len(self.mean) != 3 or len(self.std) != 3 or not all(map(math.isfinite, self.mean + self.std)):
            return f"mean {self.mean} and std {self.std} must be 3 finite numbers each"
        if 0.0 in self.std:
            return f"std {self.std} has a zero entry (it divides)"
        if self.interpolation not in INTERPOLATIONS:
            return f"interpolation {self.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}"
        if self.channel_order not in COLOR_ORDERS:
            return f"channel order {self.channel_order!r} is not one of {', '.join(COLOR_ORDERS)}"
        if (self.layout, self.dtype, self.normalize_in_graph) != ("NHWC", "uint8", True):
            return (f"input {self.layout} {self.dtype} with normalize_in_graph={self.normalize_in_graph} is not what "
                    "the runtime feeds (NHWC uint8 pixels, normalized inside the graph)")
        return None


@dataclass(frozen=True)
class BundleMeta:
    """Everything the torch-free runtime needs to run a model exactly as it was trained and evaluated.

    The graph takes ``images``: (N, H, W, 3) at `input_size`, prepared as `preprocess` says (uint8 NHWC RGB,
    normalized inside the graph). Outputs: ``fg_map`` (N, gh, gw) float32 and ``logits`` (N, C).
    `presence_threshold`: a frame whose presence score (`tedloc_edge.presence`, from the raw map) is below it holds
    no object; None when presence was never calibrated (then every frame is present) and for a CAM.
    """

    class_names: tuple[str, ...]
    input_size: tuple[int, int]  # (height, width) the graph takes
    patch_grid: tuple[int, int]  # (gh, gw) of fg_map
    preprocess: Preprocess = field(default_factory=Preprocess)
    threshold: float = 0.5  # deployment threshold tau on the min-max normalized map (METHOD.md protocol)
    threshold_source: str = "default"  # e.g. "val:top1_loc" once calibrated
    contour_mode: str = "largest"  # "largest" or "all"
    presence_threshold: float | None = None  # on the presence score (a probability), picked on val + negatives
    presence_source: str = ""  # e.g. "val:minimax (80 object, 80 empty images)" once calibrated
    method: str = "tedloc"  # "tedloc" or "cam"
    backbone: str = ""
    anchor_source: str = ""
    anchors_have_text_semantics: bool = False
    precision: str = "fp32"
    run_id: str = ""
    calibration_hash: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def map_kind(self) -> str:
        """What fg_map holds, from the method: a raw class activation ("cam") or a sigmoid probability."""
        return "cam" if self.method == "cam" else "probability"

    def replace(self, **changes: Any) -> "BundleMeta":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_dict(cls, doc: dict[str, Any], source: str = "<metadata>") -> "BundleMeta":
        version = doc.get("format_version")
        if not isinstance(version, int):
            raise BundleError(f"{source}: tedloc metadata has no format_version; re-export it with `tedloc-edge export`")
        if version > FORMAT_VERSION:
            raise BundleError(
                f"{source}: tedloc metadata format {version} is newer than this tedloc-edge reads ({FORMAT_VERSION}); "
                "upgrade tedloc-edge (pip install -U tedloc-edge)"
            )
        doc = _from_v1(doc) if version == 1 else doc
        kwargs = _fields(cls, doc, skip="format_version")  # read into the current format
        missing = [key for key in REQUIRED if key not in kwargs]
        if missing:
            raise BundleError(f"{source}: tedloc metadata is incomplete (no {', '.join(missing)}); re-export it with "
                              "`tedloc-edge export`")
        problem = _field_problem(kwargs)
        if problem:
            raise BundleError(f"{source}: tedloc metadata: {problem}; re-export the model with `tedloc-edge export`")
        for key in ("class_names", "input_size", "patch_grid"):
            kwargs[key] = tuple(kwargs[key])
        try:
            kwargs["preprocess"] = Preprocess(**_fields(Preprocess, kwargs.get("preprocess", {})))
            return cls(**kwargs)
        except BundleError as exc:
            raise BundleError(f"{source}: {exc}") from None
        except (AttributeError, TypeError, ValueError) as exc:
            raise BundleError(f"{source}: tedloc metadata is incomplete ({exc}); re-export it with `tedloc-edge export`") from None

    @classmethod
    def from_json(cls, text: str, source: str = "<metadata>") -> "BundleMeta":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BundleError(f"{source}: tedloc metadata is not valid JSON ({exc.msg}); re-export the model") from None
        if not isinstance(doc, dict):
            raise BundleError(f"{source}: tedloc metadata is not a JSON object; re-export the model")
        return cls.from_dict(doc, source)


def _field_problem(doc: dict[str, Any]) -> str | None:
    """What is wrong with the values of a document's fields (types and ranges), or None: a value the runtime
    would misread (a threshold "0.5", a 0x0 input) is refused at load, never met as a traceback mid-stream."""
    names, threshold = doc["class_names"], doc["threshold"]
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) and n for n in names):
        return f"class_names must be a non-empty list of names, not {_short(names)}"
    for key in ("input_size", "patch_grid"):
        value = doc[key]
        if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(_whole(v) and v > 0 for v in value)):
            return f"{key} must be two positive whole numbers (height, width), not {_short(value)}"
    if not _number(threshold) or not 0.0 <= threshold < 1.0:  # NaN fails the comparison too
        return f"threshold must be a number in [0, 1), not {_short(threshold)}"
    choices = {"contour_mode": CONTOUR_MODES, "method": METHODS}
    for key, allowed in choices.items():
        if key in doc and doc[key] not in allowed:
            return f"{key} must be one of {', '.join(allowed)}, not {_short(doc[key])}"
    for key in TEXT_FIELDS:
        if key in doc and not isinstance(doc[key], str):
            return f"{key} must be text, not {_short(doc[key])}"
    typed = {"calibration_hash": (str, type(None)), "anchors_have_text_semantics": bool, "extra": dict, "preprocess": dict}
    for key, kind in typed.items():
        if key in doc and not isinstance(doc[key], kind):
            return f"{key} has the wrong type ({type(doc[key]).__name__})"
    return None


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _fields(cls: type, doc: dict[str, Any], skip: str = "") -> dict[str, Any]:
    """The entries of `doc` that are fields of `cls`: keys a newer writer added are ignored."""
    names = {f.name for f in dataclasses.fields(cls)} - {skip}
    return {k: v for k, v in doc.items() if k in names}


def _from_v1(doc: dict[str, Any]) -> dict[str, Any]:
    """A format-1 document with its flat preprocessing fields (and extra["resize_interpolation"]) as the record."""
    doc, extra = dict(doc), dict(doc.get("extra") or {})
    record = {new: doc.pop(old) for old, new in V1_PREPROCESS.items() if old in doc}
    if "resize_interpolation" in extra:
        record["interpolation"] = extra.pop("resize_interpolation")
    return {**doc, "preprocess": record, "extra": extra}


def sidecar_path(plan_path: str | os.PathLike) -> Path:
    """The JSON document beside a TensorRT plan: ``model.plan`` -> ``model.plan.json``."""
    return Path(str(plan_path) + ".json")


def read_onnx_meta(path: str | os.PathLike, metadata_map: dict[str, str] | None = None) -> BundleMeta:
    """Read the bundle from an ONNX file. Pass `metadata_map` (e.g. an ORT session's custom_metadata_map)
    to avoid parsing the file twice; otherwise onnxruntime reads only the model's metadata."""
    path = Path(path)
    if metadata_map is None:
        if not path.is_file():
            raise BundleError(f"{path}: no such model file; pass the .onnx written by `tedloc-edge export`")
        import onnxruntime as ort  # the runtime's own dependency; no onnx package needed

        try:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises its own Fail/InvalidProtobuf types
            raise BundleError(f"{path}: not a readable ONNX model ({first_line(exc)})") from None
        metadata_map = session.get_modelmeta().custom_metadata_map
    text = metadata_map.get(METADATA_KEY)
    if text is None:
        raise BundleError(f"{path}: ONNX has no '{METADATA_KEY}' metadata; export it with `tedloc-edge export RUN`")
    return BundleMeta.from_json(text, str(path))


def read_plan_sidecar(plan_path: str | os.PathLike) -> tuple[BundleMeta, dict[str, Any]]:
    """Read ``<plan>.json``: the bundle metadata and the TensorRT build record (``build`` key)."""
    side = sidecar_path(plan_path)
    if not side.is_file():
        raise BundleError(f"{side}: missing build record beside the engine; rebuild with `tedloc-edge export RUN --format engine`")
    try:
        doc = json.loads(side.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{side}: build record is not valid JSON ({exc}); rebuild the engine") from None
    build = doc.pop("build", None)
    if not isinstance(build, dict):
        raise BundleError(f"{side}: build record has no 'build' section; rebuild the engine")
    return BundleMeta.from_dict(doc, str(side)), build


def write_plan_sidecar(plan_path: str | os.PathLike, meta: BundleMeta, build: dict[str, Any]) -> Path:
    doc = json.loads(meta.to_json())
    doc["build"] = build
    side = sidecar_path(plan_path)
    atomic_write_text(side, json.dumps(doc, indent=2, ensure_ascii=False))
    return side


def read_meta(path: str | os.PathLike) -> BundleMeta:
    """The bundle of any model file the runtime loads (.onnx, or .plan/.engine with a sidecar)."""
    suffix = Path(path).suffix.lower()
    if suffix in (".plan", ".engine", ".trt"):
        return read_plan_sidecar(path)[0]
    return read_onnx_meta(path)
