"""What both Triton Python-backend models (`tedloc_decode`, `tedloc_python`) share: request parameters, the
decode settings they override, input checks and the padded output tensors. numpy only; the models wrap the
arrays in `pb_utils.Tensor` (Triton's module exists only inside the server)."""

from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np

from tedloc_edge.bundle import BundleMeta
from tedloc_edge.runtime.postprocess import DecodeConfig


class BadInput(ValueError):
    """The request's tensors or parameters do not fit the model: answered as INVALID_ARG (HTTP 400)."""


def request_params(request: Any) -> dict[str, Any]:
    try:
        return json.loads(request.parameters() or "{}")
    except (AttributeError, ValueError):
        return {}


def decode_config(meta: BundleMeta, params: dict[str, Any], base: DecodeConfig | None = None) -> DecodeConfig:
    """DecodeConfig from the bundle, overridden by config.pbtxt / request parameters."""
    base = base or DecodeConfig(threshold=meta.threshold, contour_mode=meta.contour_mode, map_kind=meta.map_kind)
    try:
        return DecodeConfig(
            threshold=float(params.get("threshold", base.threshold)),
            contour_mode=str(params.get("contour_mode", base.contour_mode)),
            min_box_area=int(params.get("min_box_area", base.min_box_area)),
            topk=1,
            map_kind=base.map_kind,  # box scores as the local Localizer's; no presence filter (not sent back)
        )
    except (TypeError, ValueError) as exc:
        raise BadInput(f"bad request parameters: {exc}") from None


def check_frame_size(frame_size: np.ndarray, n: int) -> None:
    if frame_size.shape != (n, 2) or (frame_size < 1).any():
        raise BadInput(f"frame_size must be (n, 2) positive (height, width), got {frame_size.tolist()}")


def pack_outputs(decoded: Sequence[Any], logits: np.ndarray) -> dict[str, np.ndarray]:
    """Padded output arrays of one request's decoded images (rows past num_boxes are padding, score -1)."""
    n = len(decoded)
    k = max([len(d.boxes) for d in decoded] + [0])
    out = {
        "boxes": np.zeros((n, k, 4), dtype=np.float32),
        "scores": np.full((n, k), -1.0, dtype=np.float32),
        "num_boxes": np.zeros((n, 1), dtype=np.int32),
        "classes": np.zeros((n, 1), dtype=np.int32),
        "probs": np.zeros((n, logits.shape[1]), dtype=np.float32),
        "logits": np.ascontiguousarray(logits, dtype=np.float32),
    }
    for i, d in enumerate(decoded):
        m = len(d.boxes)
        out["boxes"][i, :m] = d.boxes
        out["scores"][i, :m] = d.box_scores
        out["num_boxes"][i, 0] = m
        out["classes"][i, 0] = int(d.topk[0])
        out["probs"][i] = d.probs
    return out


def triton_error(pb_utils: Any, message: str, bad_input: bool) -> Any:
    """A Triton error response: INVALID_ARG (HTTP 400) for the caller's input, INTERNAL (500) otherwise."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG" if bad_input else "INTERNAL", None)
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)


def output_tensors(pb_utils: Any, decoded: Sequence[Any], logits: np.ndarray) -> list[Any]:
    return [pb_utils.Tensor(name, array) for name, array in pack_outputs(decoded, logits).items()]
