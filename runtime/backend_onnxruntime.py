"""ONNX Runtime runner: CPU everywhere; CUDA and TensorRT execution providers when onnxruntime-gpu is installed.

Inputs and outputs go through IO binding: the input is bound to the preprocessor's buffer (CPU) or copied
into a device tensor allocated once per batch size (CUDA), and the outputs land in host arrays allocated
once at the largest batch, so a steady stream of frames allocates nothing model-sized.

With `cuda_graph=True` (CUDA EP only) ORT captures the whole model as one CUDA graph on its first runs and
replays it after: one launch per batch instead of one per kernel. A graph replays fixed device addresses
and shapes, so the model must have a static batch (`tedloc-edge export RUN --static-batch N`), and the
input and both outputs are device tensors allocated once; each call copies the frame batch in and the
small map and logits out.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from tedloc_edge.bundle import BundleMeta, read_onnx_meta
from tedloc_edge.contract import INPUT_NAME, OUTPUT_NAMES
from tedloc_edge.errors import UserError, first_line
from tedloc_edge.runtime.ort_providers import (
    CUDA_EP,
    GRAPH_FIX,
    TRT_EP,
    choose_providers,
    graph_providers,
    preload_cuda_libraries,
    with_cuda_options,
    with_tensorrt_options,
)
from tedloc_edge.runtime.runner import Runner

logger = logging.getLogger(__name__)

ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class OnnxRuntimeRunner(Runner):
    """Runs the exported ``.onnx``; reads its bundle from the session's metadata (one parse of the file)."""

    def __init__(
        self,
        path: str | Path,
        device: str = "auto",
        providers: Sequence[str] | None = None,
        max_batch: int = 8,
        threads: int = 0,
        spin: bool = False,
        cuda_graph: bool = False,
        cuda_options: Mapping[str, str] | None = None,
        trt_cache: str | Path | None = None,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.source = str(self.path)
        names = choose_providers(device, providers, ort.get_available_providers())
        self.cuda_graph = bool(cuda_graph)
        options = dict(cuda_options or {})
        if self.cuda_graph:
            names = graph_providers(self.path, device, names)
            options["enable_cuda_graph"] = "1"
        chosen = with_cuda_options(names, options)
        chosen = with_tensorrt_options(ort, chosen, self.path, max_batch, None if trt_cache is None else Path(trt_cache))
        wants_cuda = CUDA_EP in names
        preload_notes = preload_cuda_libraries(ort) if wants_cuda else ""
        self.session = self._open_session(ort, chosen, threads, spin)
        self.meta: BundleMeta = read_onnx_meta(self.path, self.session.get_modelmeta().custom_metadata_map)
        self.providers = self.session.get_providers()
        if wants_cuda and CUDA_EP not in self.providers:
            self._cuda_did_not_start(device, preload_notes)
        self.on_cuda = any(p in (CUDA_EP, TRT_EP) for p in self.providers)
        self.device_id = 0
        self.io_device = "cuda"  # where device-resident I/O lives (OrtValue device type)
        self.name = f"onnxruntime-{'cuda' if self.on_cuda else 'cpu'}{'-graph' if self.cuda_graph else ''}"
        self.fixed_batch = self._check_io()
        if self.cuda_graph and self.fixed_batch is None:
            raise UserError(f"{self.path}: CUDA graphs need a model with a fixed batch; {GRAPH_FIX}")
        self.max_batch = self.fixed_batch or max(1, int(max_batch))
        dtypes = {o.name: ORT_TYPES.get(o.type, np.float32) for o in self.session.get_outputs()}
        self._outputs = {name: np.empty(self.contract.shape(name, self.max_batch), dtypes[name]) for name in OUTPUT_NAMES}
        self._bindings: dict[int, Any] = {}
        self._device_inputs: dict[int, Any] = {}
        self._device_outputs: dict[str, Any] = {}
        logger.debug("%s: %s providers=%s max_batch=%d", self.path, self.name, self.providers, self.max_batch)

    def _open_session(self, ort: Any, chosen: list[Any], threads: int, spin: bool) -> Any:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = int(threads)
        options.log_severity_level = 3
        # Idle worker threads sleep instead of spinning: the decoder, encoder and other processes need the
        # same cores (on a busy 2-core machine this doubled pipeline fps; see docs/performance.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        try:
            return ort.InferenceSession(str(self.path), sess_options=options, providers=chosen)
        except Exception as exc:  # noqa: BLE001 - ORT raises Fail / InvalidProtobuf / RuntimeException
            first = first_line(exc)
            fix = f"CUDA graphs need every node on the CUDA EP at fixed shapes: {GRAPH_FIX}" if self.cuda_graph \
                else "re-export it with `tedloc-edge export RUN`"
            raise UserError(f"{self.path}: onnxruntime cannot load this model ({first}); {fix}") from None

    def _cuda_did_not_start(self, device: str, preload_notes: str) -> None:
        """ORT drops a CUDA EP whose CUDA / cuDNN libraries do not load and runs on the CPU without an error:
        asked for explicitly, that is a one-line error; with --device auto, a warning."""
        why = f" ({preload_notes.splitlines()[0]})" if preload_notes else ""
        if device == "cuda" or self.cuda_graph:
            raise UserError(
                f"{self.path}: onnxruntime-gpu could not start its CUDA execution provider{why}; it needs the CUDA and "
                "cuDNN 9 libraries it was built for (from torch with CUDA, the nvidia-* pip packages, or the system's "
                "library path; `python -c 'import onnxruntime; onnxruntime.print_debug_info()'` says which), or use --device cpu"
            )
        logger.warning("%s: onnxruntime-gpu's CUDA execution provider did not start%s; running on the CPU", self.path, why)

    def _check_io(self) -> int | None:
        """Check the graph against the contract (tedloc_edge/contract.py); returns its static batch, if any."""
        inputs = {i.name: (i.type.removeprefix("tensor(").removesuffix(")"), i.shape) for i in self.session.get_inputs()}
        outputs = {o.name: o.shape for o in self.session.get_outputs()}
        return self.contract.check_graph(inputs, outputs, str(self.path), "re-export it with `tedloc-edge export RUN`")

    def _binding(self, n: int) -> Any:
        io = self._bindings.get(n)
        if io is None and self.cuda_graph:
            io = self._graph_binding(n)
        if io is None:
            io = self.session.io_binding()
            for name, array in self._outputs.items():
                view = array[:n]
                io.bind_output(name, "cpu", 0, view.dtype, view.shape, view.ctypes.data)
            if self.on_cuda:
                import onnxruntime as ort

                shape = self.contract.shape(INPUT_NAME, n)
                value = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.uint8, self.io_device, self.device_id)
                io.bind_ortvalue_input(INPUT_NAME, value)
                self._device_inputs[n] = value
            self._bindings[n] = io
        return io

    def _graph_binding(self, n: int) -> Any:
        """Input and outputs as device tensors at fixed addresses: what a captured graph replays."""
        import onnxruntime as ort

        # the outputs take the host buffers' dtypes; every shape is the contract's at this batch
        layouts = {INPUT_NAME: (self.contract.shape(INPUT_NAME, n), np.uint8),
                   **{name: (self.contract.shape(name, n), out.dtype) for name, out in self._outputs.items()}}
        values = {k: ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, self.io_device, self.device_id)
                  for k, (shape, dtype) in layouts.items()}
        io = self.session.io_binding()
        io.bind_ortvalue_input(INPUT_NAME, values[INPUT_NAME])
        for name in OUTPUT_NAMES:
            io.bind_ortvalue_output(name, values[name])
        self._device_inputs[n] = values[INPUT_NAME]
        self._device_outputs = {name: values[name] for name in OUTPUT_NAMES}
        self._bindings[n] = io
        return io

    def _infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = images.shape[0]
        io = self._binding(n)
        if self.on_cuda or self.cuda_graph:
            self._device_inputs[n].update_inplace(images)
        else:
            io.bind_input(INPUT_NAME, "cpu", 0, np.uint8, images.shape, images.ctypes.data)
        self.session.run_with_iobinding(io)
        if self.cuda_graph:  # the outputs stayed on the device: copy the small map and logits to the host
            return self._device_outputs["fg_map"].numpy(), self._device_outputs["logits"].numpy()
        return self._outputs["fg_map"][:n], self._outputs["logits"][:n]

    def close(self) -> None:
        self._bindings.clear()
        self._device_inputs.clear()
        self._device_outputs = {}
