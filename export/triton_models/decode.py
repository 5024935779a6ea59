"""Triton Python-backend model ``tedloc_decode``: one image's fg_map + logits -> boxes, scores, classes.

Copied into ``REPO/tedloc_decode/1/model.py`` by `tedloc_edge.export.triton_repo`. It decodes with the
runtime's own `decode_one` (which calls `tedloc_edge.boxes.decode_boxes`, the evaluator's decoder), so a
box from the server is the box the local Localizer and the evaluation give. The server's Python needs
``tedloc_edge`` importable: ``pip install --no-deps tedloc-edge`` (plus numpy<2, opencv-python-headless, rich).

Per request: inputs fg_map (n, gh, gw) FP32, logits (n, C) FP32, frame_size (n, 2) INT32 (height, width);
outputs boxes (n, K, 4) FP32 frame pixels, scores (n, K) FP32 (-1 on padding rows), num_boxes (n, 1) INT32,
classes (n, 1) INT32, probs (n, C) FP32, logits (n, C) FP32. Request parameters ``threshold``,
``contour_mode``, ``min_box_area`` override the model's stored values for that request.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from tedloc_edge.bundle import METADATA_KEY, BundleMeta
from tedloc_edge.runtime.postprocess import DecodeConfig, decode_one


def config_from(meta, params, base=None):
    """DecodeConfig from the bundle, overridden by config / request parameters."""
    base = base or DecodeConfig(threshold=meta.threshold, contour_mode=meta.contour_mode)
    return DecodeConfig(
        threshold=float(params.get("threshold", base.threshold)),
        contour_mode=str(params.get("contour_mode", base.contour_mode)),
        min_box_area=int(params.get("min_box_area", base.min_box_area)),
        topk=1,
    )


def error(message, bad_input):
    """A Triton error response: INVALID_ARG (HTTP 400) for the caller's input, INTERNAL (500) otherwise."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG" if bad_input else "INTERNAL", None)
    if code is None:
        return pb_utils.TritonError(message)
    return pb_utils.TritonError(message, code)


class BadInput(ValueError):
    """The request's tensors do not fit the model (shape, values)."""


def request_params(request):
    try:
        return json.loads(request.parameters() or "{}")
    except (AttributeError, ValueError):
        return {}


def pack(decoded, logits):
    """Padded output tensors of one request's decoded images."""
    n = len(decoded)
    k = max([len(d.boxes) for d in decoded] + [0])
    boxes = np.zeros((n, k, 4), dtype=np.float32)
    scores = np.full((n, k), -1.0, dtype=np.float32)
    counts = np.zeros((n, 1), dtype=np.int32)
    classes = np.zeros((n, 1), dtype=np.int32)
    probs = np.zeros((n, logits.shape[1]), dtype=np.float32)
    for i, d in enumerate(decoded):
        m = len(d.boxes)
        boxes[i, :m] = d.boxes
        scores[i, :m] = d.box_scores
        counts[i, 0] = m
        classes[i, 0] = int(d.topk[0])
        probs[i] = d.probs
    return [
        pb_utils.Tensor("boxes", boxes), pb_utils.Tensor("scores", scores), pb_utils.Tensor("num_boxes", counts),
        pb_utils.Tensor("classes", classes), pb_utils.Tensor("probs", probs),
        pb_utils.Tensor("logits", np.ascontiguousarray(logits, dtype=np.float32)),
    ]


def check_frame_size(frame_size, n):
    if frame_size.shape != (n, 2) or (frame_size < 1).any():
        raise BadInput(f"frame_size must be (n, 2) positive (height, width), got {frame_size.tolist()}")


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.meta = BundleMeta.from_json(params[METADATA_KEY], f"{args['model_name']} config.pbtxt")
        self.decode = config_from(self.meta, params)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                fg_map = pb_utils.get_input_tensor_by_name(request, "fg_map").as_numpy()
                logits = pb_utils.get_input_tensor_by_name(request, "logits").as_numpy()
                frame_size = pb_utils.get_input_tensor_by_name(request, "frame_size").as_numpy()
                n = fg_map.shape[0]
                check_frame_size(frame_size, n)
                if logits.shape != (n, self.meta.num_classes):
                    raise BadInput(f"logits must be ({n}, {self.meta.num_classes}), got {logits.shape}")
                try:
                    cfg = config_from(self.meta, request_params(request), self.decode)
                except Exception as exc:
                    raise BadInput(f"bad request parameters: {exc}") from None
                size = tuple(self.meta.input_size)
                decoded = [decode_one(fg_map[i], logits[i], tuple(int(v) for v in frame_size[i]), size, cfg) for i in range(n)]
                responses.append(pb_utils.InferenceResponse(output_tensors=pack(decoded, logits)))
            except Exception as exc:  # one bad request gets an error; the others and the server go on
                responses.append(pb_utils.InferenceResponse(error=error(f"tedloc_decode: {exc}", isinstance(exc, BadInput))))
        return responses
