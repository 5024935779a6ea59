"""fp32 ONNX -> INT8 Q/DQ ONNX by static quantization on real images (onnxruntime.quantization).

Choices, each for the deployment targets:
- QDQ format, symmetric int8 activations and weights (`ActivationSymmetric`, `WeightSymmetric`): TensorRT
  builds Q/DQ graphs only with zero-point 0, so the same file runs in ONNX Runtime CPU and builds a
  TensorRT INT8 engine.
- per-channel weights; only Conv / MatMul / Gemm are quantized (the backbone's compute).
- the head (`head_nodes`): patch classifier, sigmoid, pooling and anchor product stay float, since INT8
  score collapse there is the failure edge toolkits report most.
- Q/DQ on the inputs of quantized ops only, never on their outputs (see `quantize_int8`).
- `quant_pre_process` (symbolic shape inference + ORT graph optimization) runs first, as ORT recommends;
  the head is found on the pre-processed graph, whose node names are the ones quantize_static sees.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from tedloc_edge.bundle import BundleMeta
from tedloc_edge.console import UserError, progress
from tedloc_edge.export.head_nodes import head_node_names
from tedloc_edge.export.onnx_export import set_metadata

logger = logging.getLogger(__name__)

QUANTIZED_OPS = ["Conv", "MatMul", "Gemm"]


def make_reader(images: np.ndarray, on_step: Callable[[], None] | None = None) -> Any:
    """A CalibrationDataReader feeding `images` (uint8 NHWC at the input size) one at a time."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.index = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.index >= len(images):
                return None
            batch = images[self.index : self.index + 1]
            self.index += 1
            if on_step is not None:
                on_step()
            return {"images": batch}

        def rewind(self) -> None:
            self.index = 0

    return _Reader()


def _pre_process(quant_pre_process: Callable[..., None], src: Path, pre: Path) -> None:
    """ORT's recommended pre-processing; its symbolic shape inference gives up on some graphs (timm's
    padding arithmetic), then ONNX shape inference alone is used, which quantize_static also accepts."""
    try:
        quant_pre_process(str(src), str(pre))
    except Exception as exc:  # noqa: BLE001 - ORT raises a bare Exception("Incomplete symbolic shape inference")
        logger.info("int8 pre-processing without symbolic shape inference (%s)", str(exc).splitlines()[0])
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)


def quantize_int8(fp32: onnx.ModelProto, meta: BundleMeta, images: np.ndarray, calibration_hash: str) -> onnx.ModelProto:
    """An INT8 Q/DQ model calibrated on `images`; its metadata records precision and calibration hash."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(images) == 0:
        raise UserError("int8 needs calibration images: pass --calib-dir FOLDER or export a run whose dataset is here")
    with tempfile.TemporaryDirectory(prefix="tedloc-int8-") as tmp:
        src, pre, out = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        onnx.save_model(fp32, str(src))
        _pre_process(quant_pre_process, src, pre)
        pre_model = onnx.load(str(pre))
        head = head_node_names(pre_model)
        onnx.save_model(pre_model, str(pre))  # unnamed nodes were named: quantize_static must see the same names
        with progress() as bar:
            task = bar.add_task("int8 calibration", total=len(images), info="")
            reader = make_reader(images, lambda: bar.advance(task))
            quantize_static(
                str(pre),
                str(out),
                reader,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=QUANTIZED_OPS,
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=head,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={
                    "ActivationSymmetric": True,
                    "WeightSymmetric": True,
                    # Q/DQ on the inputs of Conv/MatMul/Gemm only (NVIDIA's placement for TensorRT). A
                    # quantized Conv OUTPUT would span the raw pre-activation range (e.g. +-90 before ReLU6):
                    # with symmetric scales ORT cannot fold the activation into it, and the [0, 6] values
                    # the next layer sees lose most of their resolution.
                    "OpTypesToExcludeOutputQuantization": QUANTIZED_OPS,
                },
            )
        model = onnx.load(str(out))
    quantized = sum(1 for n in model.graph.node if n.op_type == "DequantizeLinear")
    logger.info("int8: %d calibration images, %d DequantizeLinear nodes, %d head nodes kept float", len(images), quantized, len(head))
    extra = dict(meta.extra, int8_calibration_images=int(len(images)), int8_float_nodes=len(head))
    return set_metadata(model, meta.replace(precision="int8", calibration_hash=calibration_hash, extra=extra))
