"""The bundle: one self-describing model.

An ONNX file carries one `metadata_props` entry, key ``tedloc``, whose value is the JSON of `BundleMeta`.
A TensorRT plan stays a plain plan; the same document (plus a ``build`` record) lives in ``<plan>.json``.
This module is the only reader and writer of that document, so every stage agrees on it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tedloc_edge.errors import first_line
from tedloc_edge.files import atomic_write_text

FORMAT_VERSION = 1
METADATA_KEY = "tedloc"


class BundleError(ValueError):
    """A model file without readable tedloc metadata; the message is one line naming the file and the fix."""


@dataclass(frozen=True)
class BundleMeta:
    """Everything the torch-free runtime needs to run a model exactly as it was trained and evaluated.

    The graph takes ``images``: uint8, NHWC, RGB, (N, H, W, 3) at `input_size`; normalization by `mean`/`std`
    (on [0,1] pixels) happens inside the graph. Outputs: ``fg_map`` (N, gh, gw) float32 and ``logits`` (N, C).
    """

    class_names: tuple[str, ...]
    input_size: tuple[int, int]  # (height, width) the graph takes
    patch_grid: tuple[int, int]  # (gh, gw) of fg_map
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    input_layout: str = "NHWC"
    input_dtype: str = "uint8"
    channel_order: str = "RGB"
    normalize_in_graph: bool = True
    threshold: float = 0.5  # deployment threshold tau on the min-max normalized map (METHOD.md protocol)
    threshold_source: str = "default"  # e.g. "val:top1_loc" once calibrated
    contour_mode: str = "largest"  # "largest" or "all"
    method: str = "tedloc"  # "tedloc" or "cam"
    map_kind: str = "probability"  # "probability" (sigmoid fg map) or "cam" (raw class activation)
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
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in doc.items() if k in known}
        for key in ("class_names", "input_size", "patch_grid", "mean", "std"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        try:
            return cls(**kwargs)
        except TypeError as exc:
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
