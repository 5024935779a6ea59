"""fp32 ONNX -> INT8 Q/DQ ONNX by static quantization on real images (onnxruntime.quantization).

Two placements (`--int8-mode`), because ONNX Runtime's CPU kernels and TensorRT want different files:

- ``cpu`` (the default for an ONNX export): the file ONNX Runtime runs fast on a CPU. uint8 asymmetric
  activations and int8 symmetric per-channel weights (ORT's U8S8, what its x86 kernels use), with Q/DQ
  on the inputs AND outputs of every quantized op, so that each DQ -> Conv -> Q chain becomes one
  QLinearConv (residual Add -> QLinearAdd, Concat -> QLinearConcat) when the session is built. Clip and
  Relu are quantized too: ORT's quantizer then folds them into the producing Conv, whose output takes
  the activation's range (e.g. [0, 6] after ReLU6) instead of the raw pre-activation range. Measured on
  tf_efficientnet_lite0 runs, 1 thread, batch 8: 224 px 1.73x the fp32 ONNX and 4.0x torch eager (96 px:
  1.43x and 3.1x); accuracy no worse than the tensorrt mode's (224 px: test MaxBoxAcc / Top-1 Loc within
  two points of fp32, val Top-1 Loc -2.5 points vs -3.75). Its zero points are not 0: TensorRT cannot build it.
- ``tensorrt`` (the default when the export builds an engine): NVIDIA's placement. Symmetric int8
  activations and weights (TensorRT builds Q/DQ graphs only with zero-point 0), Q/DQ on the inputs of
  Conv / MatMul / Gemm only; TensorRT fuses the activation and the output scale itself. ONNX Runtime
  cannot fuse this placement into int8 kernels: on a CPU it runs at 0.25-0.5x the fp32 ONNX. (A symmetric
  int8 file with outputs quantized too was tried for both targets: on x86 ORT then either keeps int8
  activations (session.qdqisint8allowed), whose S8S8 kernels ran at 0.2x fp32, or converts them to uint8
  only where a Q has a single consumer, leaving a third of the convs and every Add unfused: 0.7x fp32.)

Both: per-channel weights; only data-path nodes are quantized (the float shape arithmetic of timm's
"same" padding or a dynamic Resize stays float: quantizing those Concats corrupted the pad sizes and
the output); the head (`head_nodes`: patch classifier, sigmoid, pooling and anchor product) stays
float, since INT8 score collapse there is the failure edge toolkits report most. `quant_pre_process`
(symbolic shape inference + ORT graph optimization) runs first, as ORT recommends; the head is found on
the pre-processed graph, whose node names are the ones quantize_static sees. The mode is recorded in
the bundle metadata (``extra["int8_mode"]``).

Calibration is MinMax over the MEAN of the per-image ranges (ORT's ``CalibMovingAverage``: the reader
feeds one image per batch and ORT averages the per-batch min and max), so one image with an extreme
activation no longer sets the whole range. On the demo run (200 train images, val gate) it halved the val
Top-1 Loc drop (cpu mode -5.0 -> -2.5 points, tensorrt mode -6.25 -> -3.75; the tensorrt mode's top-1
classification drop went from -6.25 to 0) at the same calibration time; the percentile calibrator gave
about the same accuracy 30-40x slower (215 s vs 5 s). With 128 images both gave -5.0 (4 of 80 images).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from tedloc_edge.bundle import BundleMeta
from tedloc_edge.console import progress
from tedloc_edge.errors import UserError, first_line
from tedloc_edge.export.head_nodes import _data_producers, head_node_names
from tedloc_edge.export.onnx_export import set_metadata

logger = logging.getLogger(__name__)

INT8_MODES = ("cpu", "tensorrt")
CALIBRATION_OPTIONS = {"CalibMovingAverage": True}  # mean of per-image ranges: see the module docstring
QUANTIZED_OPS = ["Conv", "MatMul", "Gemm"]  # tensorrt mode: Q/DQ on these ops' inputs
# cpu mode: ops with ORT CPU int8 kernels (or folded into one: Clip/Relu), quantized inputs and outputs
CPU_QUANTIZED_OPS = QUANTIZED_OPS + ["Clip", "Relu", "Add", "Concat", "Resize", "Pad", "MaxPool", "AveragePool", "GlobalAveragePool"]


def check_mode(mode: str) -> str:
    if mode not in INT8_MODES:
        raise UserError(f"unknown --int8-mode '{mode}': use cpu (ONNX Runtime on a CPU) or tensorrt (TensorRT engines)")
    return mode


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
    padding arithmetic), then ONNX shape inference alone is used, which quantize_static also accepts.
    When it gives up, ORT dumps `sym_shape_infer_temp.onnx` (+ a uuid .data file) into the CURRENT folder;
    running it from the temporary folder keeps the user's folder clean."""
    try:
        with contextlib.chdir(src.parent):
            quant_pre_process(str(src), str(pre))
    except Exception as exc:  # noqa: BLE001 - ORT raises a bare Exception("Incomplete symbolic shape inference")
        logger.info("int8 pre-processing without symbolic shape inference (%s)", first_line(exc))
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)


def data_path_nodes(model: onnx.ModelProto, op_types: list[str], exclude: list[str]) -> list[str]:
    """Names of the nodes of `op_types` that compute on image data (not shape arithmetic), less `exclude`."""
    _, data_nodes = _data_producers(model.graph)
    skip = set(exclude)
    nodes = (model.graph.node[i] for i in sorted(data_nodes))
    return [n.name for n in nodes if n.op_type in op_types and n.name not in skip]


def quantize_options(mode: str, model: onnx.ModelProto, head: list[str]) -> dict[str, Any]:
    """quantize_static keyword arguments of a mode (see the module docstring)."""
    from onnxruntime.quantization import QuantType

    if check_mode(mode) == "cpu":
        return dict(
            op_types_to_quantize=CPU_QUANTIZED_OPS,
            nodes_to_quantize=data_path_nodes(model, CPU_QUANTIZED_OPS, head),
            activation_type=QuantType.QUInt8,
            extra_options={**CALIBRATION_OPTIONS, "ActivationSymmetric": False, "WeightSymmetric": True},
        )
    return dict(
        op_types_to_quantize=QUANTIZED_OPS,
        nodes_to_quantize=data_path_nodes(model, QUANTIZED_OPS, head),
        activation_type=QuantType.QInt8,
        extra_options={
            **CALIBRATION_OPTIONS,
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            # Q/DQ on the inputs of Conv/MatMul/Gemm only (NVIDIA's placement for TensorRT). A
            # quantized Conv OUTPUT would span the raw pre-activation range (e.g. +-90 before ReLU6):
            # with symmetric scales ORT cannot fold the activation into it, and the [0, 6] values
            # the next layer sees lose most of their resolution.
            "OpTypesToExcludeOutputQuantization": QUANTIZED_OPS,
        },
    )


def quantize_int8(
    fp32: onnx.ModelProto, meta: BundleMeta, images: np.ndarray, calibration_hash: str, mode: str = "cpu"
) -> onnx.ModelProto:
    """An INT8 Q/DQ model in `mode` ("cpu" or "tensorrt") calibrated on `images`; its metadata records
    precision, calibration hash and mode."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    check_mode(mode)
    if len(images) == 0:
        raise UserError("int8 needs calibration images: pass --calib-dir FOLDER or export a run whose dataset is here")
    with tempfile.TemporaryDirectory(prefix="tedloc-int8-") as tmp:
        src, pre, out = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        onnx.save_model(fp32, str(src))
        _pre_process(quant_pre_process, src, pre)
        pre_model = onnx.load(str(pre))
        head = head_node_names(pre_model)
        options = quantize_options(mode, pre_model, head)
        onnx.save_model(pre_model, str(pre))  # unnamed nodes were named: quantize_static must see the same names
        with progress() as bar:
            task = bar.add_task("int8 calibration", total=len(images), info="")
            reader = make_reader(images, lambda: bar.advance(task))
            quantize_static(
                str(pre),
                str(out),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=head,
                calibrate_method=CalibrationMethod.MinMax,
                **options,
            )
        model = onnx.load(str(out))
    quantized = sum(1 for n in model.graph.node if n.op_type == "DequantizeLinear")
    logger.info("int8 (%s): %d calibration images, %d DequantizeLinear nodes, %d head nodes kept float",
                mode, len(images), quantized, len(head))
    extra = dict(meta.extra, int8_mode=mode, int8_calibration_images=int(len(images)), int8_float_nodes=len(head))
    return set_metadata(model, meta.replace(precision="int8", calibration_hash=calibration_hash, extra=extra))
