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

Calibrators (`CALIBRATORS`, measured side by side by `benchmarks/bench_int8.py` on three runs, docs/performance.md):
``minmax-mean`` is MinMax over the MEAN of the per-image ranges (ORT's ``CalibMovingAverage``: the reader feeds
one image per batch and ORT averages the per-batch min and max), so one image with an extreme activation does
not set a whole range; the cpu mode's default (it passed the 1-point val gate on 2 of the 3 runs, plain MinMax
on 1, percentile on none). The tensorrt mode's default is ``percentile`` (99.999%: 3 of 3, the others 1 or
0), at 4-10x the calibration time. ``entropy`` is ORT's with TensorRT's histogram sizes (HISTOGRAM_OPTIONS).
Calibration runs once per `Int8Quantizer`: re-quantizing with layers kept float reuses ORT's cache.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from tedloc_edge.bundle import BundleMeta
from tedloc_edge.console import progress
from tedloc_edge.errors import UserError, first_line
from tedloc_edge.export.graph_utils import remove_dead_nodes
from tedloc_edge.export.head_nodes import _data_producers, head_node_names
from tedloc_edge.export.onnx_export import set_metadata

logger = logging.getLogger(__name__)

INT8_MODES = ("cpu", "tensorrt")
# calibrator name -> (ORT CalibrationMethod, its extra options); measured in benchmarks/bench_int8.py
CALIBRATORS: dict[str, tuple[str, dict[str, Any]]] = {
    "minmax-mean": ("MinMax", {"CalibMovingAverage": True}),  # mean of per-image ranges: see the module docstring
    "minmax": ("MinMax", {}),
    "entropy": ("Entropy", {}),
    "percentile": ("Percentile", {"CalibPercentile": 99.999}),
}
# per mode, the calibrator that passed the 1-point val gate on most of three runs (docs/performance.md)
DEFAULT_CALIBRATOR = {"cpu": "minmax-mean", "tensorrt": "percentile"}
# the histogram calibrators' options as ORT's create_calibrator names them; entropy gets TensorRT's histogram sizes
# (2048 bins, 8-bit levels over the window)
HISTOGRAM_OPTIONS = {"entropy": {"num_bins": 2048, "num_quantized_bins": 256}, "percentile": {"percentile": 99.999}}
# images per collect_data call of a histogram calibrator: ORT holds every activation of one call in memory until
# the call ends (200 images at 448 px: over 20 GiB, killed by the OOM killer); histograms merge across calls
HISTOGRAM_CHUNK = 16
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
        with _working_folder(src.parent):
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
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    return dict(
        op_types_to_quantize=QUANTIZED_OPS,
        nodes_to_quantize=data_path_nodes(model, QUANTIZED_OPS, head),
        activation_type=QuantType.QInt8,
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


class Int8Quantizer:
    """Calibrate once, quantize many times: the fp32 graph is pre-processed and calibrated on the first
    `quantize`, whose tensor ranges (ORT's calibration cache) every later call reuses, so quantizing with
    some layers kept float (`keep_float`) or only some quantized (`only`) costs no new calibration.
    A context manager: its temporary folder holds the pre-processed graph and the cache."""

    def __init__(self, fp32: onnx.ModelProto, meta: BundleMeta, images: np.ndarray, calibration_hash: str,
                 mode: str = "cpu", calibrator: str | None = None, cache: Path | None = None) -> None:
        check_mode(mode)
        if len(images) == 0:
            raise UserError("int8 needs calibration images: pass --calib-dir FOLDER or export a run whose dataset is here")
        self.fp32, self.meta, self.images, self.calibration_hash, self.mode = fp32, meta, images, calibration_hash, mode
        self.calibrator = check_calibrator(calibrator or DEFAULT_CALIBRATOR[mode])
        self.calibration_seconds = 0.0
        self.cache = cache  # the calibration cache file (default: in the temporary folder); reused if it exists
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.head: list[str] = []
        self.options: dict[str, Any] = {}
        self.pre_model: onnx.ModelProto | None = None

    def __enter__(self) -> "Int8Quantizer":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    @property
    def folder(self) -> Path:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="tedloc-int8-")
        return Path(self._tmp.name)

    def _prepare(self) -> None:
        if self.pre_model is not None:
            return
        from onnxruntime.quantization.shape_inference import quant_pre_process

        src, pre = self.folder / "fp32.onnx", self.folder / "pre.onnx"
        onnx.save_model(self.fp32, str(src))
        _pre_process(quant_pre_process, src, pre)
        self.pre_model = onnx.load(str(pre))
        self.head = head_node_names(self.pre_model)
        self.options = quantize_options(self.mode, self.pre_model, self.head)
        onnx.save_model(self.pre_model, str(pre))  # unnamed nodes were named: quantize_static must see the same names

    def units(self) -> list[tuple[str, ...]]:
        """The quantized layers, as groups of node names that are kept float or quantized together."""
        self._prepare()
        assert self.pre_model is not None
        return quantized_units(self.pre_model, self.options["nodes_to_quantize"])

    def quantize(self, keep_float: Sequence[str] = (), only: Sequence[str] | None = None) -> onnx.ModelProto:
        """The INT8 Q/DQ model with the nodes of `keep_float` left float (or with only the nodes of `only`
        quantized); its metadata records precision, calibration hash, mode, calibrator and kept-float nodes."""
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        self._prepare()
        method, calib_options = CALIBRATORS[self.calibrator]
        options = dict(self.options, extra_options={**self.options["extra_options"], **calib_options})
        skip = set(keep_float)
        options["nodes_to_quantize"] = [n for n in (only if only is not None else options["nodes_to_quantize"]) if n not in skip]
        cache, out = self.cache or self.folder / "calibration.json", self.folder / "int8.onnx"
        cached = cache.is_file()
        start = time.perf_counter()
        if _has_calibration_cache(quantize_static):  # newer ORT; older ones calibrate on every call
            options["calibration_cache_path"] = str(cache)
            if not cached and self.calibrator in HISTOGRAM_OPTIONS:
                self._histogram_cache(cache, options["op_types_to_quantize"], method)
        with contextlib.ExitStack() as stack:
            reader = None
            if not cache.is_file():
                bar = stack.enter_context(progress())
                task = bar.add_task(f"int8 calibration ({self.calibrator})", total=len(self.images), info="")
                reader = make_reader(self.images, lambda: bar.advance(task))
            quantize_static(str(self.folder / "pre.onnx"), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            weight_type=QuantType.QInt8, nodes_to_exclude=self.head + sorted(skip),
                            calibrate_method=_method(method), **options)
        if not cached:
            self.calibration_seconds = time.perf_counter() - start
        model = onnx.load(str(out))
        guarded = keep_float_layers_float(model, self.mode)
        quantized = sum(1 for n in model.graph.node if n.op_type == "DequantizeLinear")
        logger.debug("int8 (%s, %s): %d DequantizeLinear nodes, %d head nodes and %d more kept float (%d float layers "
                     "guarded)", self.mode, self.calibrator, quantized, len(self.head), len(skip), guarded)
        extra = dict(self.meta.extra, int8_mode=self.mode, int8_calibration_images=int(len(self.images)),
                     int8_float_nodes=len(self.head), int8_calibrator=self.calibrator)
        if keep_float:
            extra["int8_kept_float"] = sorted(skip)
        return set_metadata(model, self.meta.replace(precision="int8", calibration_hash=self.calibration_hash, extra=extra))


    def _histogram_cache(self, cache: Path, op_types: list[str], method: str) -> None:
        """A histogram calibrator (entropy, percentile) run HISTOGRAM_CHUNK images per call, written as the
        calibration cache quantize_static then reads: one call over every image holds all their activations in
        memory. Entropy also gets its bin counts here: quantize_static passes none, and at ORT's default (128
        bins, 128 quantized) the entropy search has a single candidate, the full range (MinMax's ranges)."""
        from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data

        with progress() as bar:
            task = bar.add_task(f"int8 calibration ({self.calibrator})", total=len(self.images), info="")
            calibrator = create_calibrator(self.folder / "pre.onnx", op_types, augmented_model_path=str(self.folder / "augmented.onnx"),
                                           calibrate_method=getattr(CalibrationMethod, method),
                                           extra_options=HISTOGRAM_OPTIONS[self.calibrator])
            for start in range(0, len(self.images), HISTOGRAM_CHUNK):
                calibrator.collect_data(make_reader(self.images[start : start + HISTOGRAM_CHUNK], lambda: bar.advance(task)))
            save_tensors_data(calibrator.compute_data(), cache)


def keep_float_layers_float(model: onnx.ModelProto, mode: str) -> int:
    """Stop ONNX Runtime from quantizing the layers left float (kept-float layers); returns how many it guarded.

    ORT's session optimizer (WeightBiasQuantization, level 1, ORT >= 1.21) gives a Conv/Gemm with float weights
    that sits between a per-tensor DequantizeLinear and a QuantizeLinear (a float layer inside the quantized
    backbone) int8 PER-TENSOR weights at load time: worse than the per-channel weights of the layers the
    quantizer quantizes (keeping the first depthwise Conv of EfficientNet-Lite0 "float" tripled the fg_map
    error). The rewrite is exact. tensorrt mode: the layer reads the tensor before its Q/DQ (the Q's input is the
    float value there: no activation is folded into an output range). cpu mode: the Q's input may be a Conv
    output whose Clip was folded into that range, so the layer gets its own DequantizeLinear with the same
    scale repeated per channel (axis 1), which the optimizer leaves alone."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    inits = {t.name: t for t in graph.initializer}
    added: list[tuple[int, onnx.NodeProto]] = []
    count = 0
    for index, node in enumerate(graph.node):
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2 or node.input[1] not in inits:
            continue  # quantized weights come from a DequantizeLinear, not an initializer
        dq = producer.get(node.input[0])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[1] not in inits or inits[dq.input[1]].dims not in ([], [1]):
            continue
        q = producer.get(dq.input[0])
        if mode == "tensorrt" and q is not None and q.op_type == "QuantizeLinear":
            node.input[0] = q.input[0]
            count += 1
            continue
        channels = _input_channels(node, inits[node.input[1]])
        if channels < 2:
            logger.warning("int8: %s reads a per-tensor DequantizeLinear and has one input channel; ONNX Runtime may "
                           "quantize its weights", node.name)
            continue
        scale = numpy_helper.to_array(inits[dq.input[1]]).reshape(())
        names = [f"{node.name}_float_input_scale", f"{node.name}_float_input_zero_point", f"{node.name}_float_input"]
        graph.initializer.append(numpy_helper.from_array(np.full(channels, scale, scale.dtype), names[0]))
        inputs = [dq.input[0], names[0]]
        if len(dq.input) > 2 and dq.input[2]:
            zero = numpy_helper.to_array(inits[dq.input[2]]).reshape(())
            graph.initializer.append(numpy_helper.from_array(np.full(channels, zero, zero.dtype), names[1]))
            inputs.append(names[1])
        added.append((index, onnx.helper.make_node("DequantizeLinear", inputs, [names[2]], name=names[2], axis=1)))
        node.input[0] = names[2]
        count += 1
    for index, new in reversed(added):
        graph.node.insert(index, new)
    if count and mode == "tensorrt":
        remove_dead_nodes(graph)  # the Q/DQ pairs no layer reads any more
    return count


def _input_channels(node: onnx.NodeProto, weight: onnx.TensorProto) -> int:
    """Input channels of a Conv (weight (M, C/group, ...)) or features of a Gemm (B (K, N), or (N, K) transposed)."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Conv":
        return int(weight.dims[1]) * int(attrs.get("group", 1))
    return int(weight.dims[1] if attrs.get("transB", 0) else weight.dims[0])


def quantized_units(model: onnx.ModelProto, nodes: Sequence[str]) -> list[tuple[str, ...]]:
    """`nodes` grouped into layers: a Conv/MatMul/Gemm with the Clip or Relu that alone reads its output
    (ORT folds that activation into the layer's output range), every other node on its own; graph order."""
    chosen = set(nodes)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    units: list[tuple[str, ...]] = []
    taken: set[str] = set()
    for node in model.graph.node:
        if node.name not in chosen or node.name in taken:
            continue
        group = [node.name]
        after = readers.get(node.output[0], [])
        if node.op_type in QUANTIZED_OPS and len(after) == 1 and after[0].op_type in ("Clip", "Relu") and after[0].name in chosen:
            group.append(after[0].name)
        taken.update(group)
        units.append(tuple(group))
    return units


def _has_calibration_cache(quantize_static: Callable[..., Any]) -> bool:
    import inspect

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def _method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    return getattr(CalibrationMethod, name)


def check_calibrator(name: str) -> str:
    if name not in CALIBRATORS:
        raise UserError(f"unknown int8 calibrator '{name}': choose one of {', '.join(CALIBRATORS)}")
    return name


def quantize_int8(fp32: onnx.ModelProto, meta: BundleMeta, images: np.ndarray, calibration_hash: str, mode: str = "cpu",
                  calibrator: str | None = None, keep_float: Sequence[str] = ()) -> onnx.ModelProto:
    """An INT8 Q/DQ model in `mode` ("cpu" or "tensorrt") calibrated on `images` (see `Int8Quantizer`)."""
    with Int8Quantizer(fp32, meta, images, calibration_hash, mode, calibrator) as quantizer:
        model = quantizer.quantize(keep_float)
    logger.info("int8 (%s): %d calibration images (%s, %.1f s), %d head nodes kept float", mode, len(images),
                quantizer.calibrator, quantizer.calibration_seconds, len(quantizer.head))
    return model


@contextlib.contextmanager
def _working_folder(path: Path) -> Iterator[None]:
    """Run a block in `path`, then return to the current folder (contextlib.chdir, which needs Python 3.11)."""
    here = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(here)
