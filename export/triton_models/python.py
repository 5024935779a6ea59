"""Triton Python-backend model ``tedloc_python``: the whole runtime (ONNX Runtime) behind the ensemble's
inputs and outputs, for Triton servers without the ONNX Runtime backend (e.g. the nvidia-pytriton wheel).

Copied into ``REPO/tedloc_python/1/model.py`` with ``model.onnx`` beside it. Requests the dynamic batcher
groups are run as one ONNX Runtime batch (the runtime's own `OnnxRuntimeRunner`), then each image is decoded
with the runtime's `decode_one` (the evaluator's decoder), so results equal the local Localizer's.
The server's Python needs ``tedloc_edge`` importable (``pip install --no-deps tedloc-edge``) with
numpy<2, onnxruntime (or onnxruntime-gpu), opencv-python-headless and rich.

Per request: images (n, H, W, 3) UINT8 RGB at the model's input size, frame_size (n, 2) INT32 (height,
width of the original frames); outputs as ``tedloc_decode``. Request parameters ``threshold``,
``contour_mode``, ``min_box_area`` override the stored values for that request.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

from tedloc_edge.runtime.backend_onnxruntime import OnnxRuntimeRunner
from tedloc_edge.runtime.postprocess import decode_one
from tedloc_edge.runtime.triton_backend import (
    BadInput, check_frame_size, decode_config, output_tensors, request_params, triton_error,
)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.max_batch = max(1, int(config.get("max_batch_size", 1)))
        self.runner = OnnxRuntimeRunner(path, device="cpu", max_batch=self.max_batch,
                                        threads=int(params.get("intra_op_threads", "0") or 0))
        self.meta = self.runner.meta
        self.decode = decode_config(self.meta, params)

    def _read(self, request):
        images = pb_utils.get_input_tensor_by_name(request, "images").as_numpy()
        frame_size = pb_utils.get_input_tensor_by_name(request, "frame_size").as_numpy()
        h, w = self.meta.input_size
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (h, w, 3):
            raise BadInput(f"images must be uint8 (n, {h}, {w}, 3) RGB at the model input size, got {images.dtype} {images.shape}")
        n = images.shape[0]
        check_frame_size(frame_size, n)
        cfg = decode_config(self.meta, request_params(request), self.decode)
        return images, frame_size, cfg

    def execute(self, requests):
        responses = [None] * len(requests)
        good = []  # (request index, images, frame_size, decode config)
        for i, request in enumerate(requests):
            try:
                good.append((i, *self._read(request)))
            except Exception as exc:
                responses[i] = pb_utils.InferenceResponse(error=triton_error(pb_utils, f"tedloc_python: {exc}", isinstance(exc, BadInput)))
        start = 0
        while start < len(good):  # one ONNX Runtime batch per max_batch images
            chunk, n = [], 0
            while start < len(good) and (not chunk or n + len(good[start][1]) <= self.max_batch):
                chunk.append(good[start])
                n += len(good[start][1])
                start += 1
            try:
                batch = np.concatenate([c[1] for c in chunk]) if len(chunk) > 1 else chunk[0][1]
                fg_all, logits_all = (a.copy() for a in self.runner.infer(batch))
            except Exception as exc:
                for c in chunk:
                    responses[c[0]] = pb_utils.InferenceResponse(error=triton_error(pb_utils, f"tedloc_python: {exc}", False))
                continue
            offset = 0
            size = tuple(self.meta.input_size)
            for idx, images, frame_size, cfg in chunk:
                m = len(images)
                try:
                    fg, lg = fg_all[offset:offset + m], logits_all[offset:offset + m]
                    decoded = [decode_one(fg[j], lg[j], tuple(int(v) for v in frame_size[j]), size, cfg) for j in range(m)]
                    responses[idx] = pb_utils.InferenceResponse(output_tensors=output_tensors(pb_utils, decoded, lg))
                except Exception as exc:
                    responses[idx] = pb_utils.InferenceResponse(error=triton_error(pb_utils, f"tedloc_python: {exc}", False))
                offset += m
        return responses

    def finalize(self):
        self.runner.close()
