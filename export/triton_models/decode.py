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

import triton_python_backend_utils as pb_utils

from tedloc_edge.bundle import METADATA_KEY, BundleMeta
from tedloc_edge.runtime.postprocess import decode_one
from tedloc_edge.runtime.triton_backend import (
    BadInput, check_frame_size, decode_config, output_tensors, request_params, triton_error,
)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.meta = BundleMeta.from_json(params[METADATA_KEY], f"{args['model_name']} config.pbtxt")
        self.decode = decode_config(self.meta, params)

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
                cfg = decode_config(self.meta, request_params(request), self.decode)
                size = tuple(self.meta.input_size)
                decoded = [decode_one(fg_map[i], logits[i], tuple(int(v) for v in frame_size[i]), size, cfg) for i in range(n)]
                responses.append(pb_utils.InferenceResponse(output_tensors=output_tensors(pb_utils, decoded, logits)))
            except Exception as exc:  # one bad request gets an error; the others and the server go on
                responses.append(pb_utils.InferenceResponse(error=triton_error(pb_utils, f"tedloc_decode: {exc}", isinstance(exc, BadInput))))
        return responses
