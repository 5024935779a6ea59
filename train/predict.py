"""A trained run as a model: checkpoint format, `load_run` (what export and eval use) and `TorchRunner`.

A checkpoint describes itself: format tag and version, the model args, the full state (frozen backbone
included, so a run folder needs no download to be rebuilt), optimizer and schedule, epoch, config, classes.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tedloc_edge.bundle import BundleMeta, Preprocess
from tedloc_edge.errors import UserError, first_line
from tedloc_edge.files import atomic_write_with
from tedloc_edge.rundir import RunDir
from tedloc_edge.runtime.runner import Runner
from tedloc_edge.train.model import ModelArgs, TeDLocNet, create_model

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "tedloc-edge/checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """torch.save through the atomic writer: an interrupted save never corrupts the previous checkpoint."""
    atomic_write_with(path, lambda fh: torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}, fh))


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint; train first (`tedloc-edge train --out {path.parent.parent}`)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle/zip errors come in many types
        raise UserError(f"{path}: not a readable checkpoint ({first_line(exc, 120)}); "
                        "it may be truncated: retrain or use the other checkpoint (last/best)") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: not a tedloc-edge checkpoint; pass a run folder written by `tedloc-edge train`")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise UserError(f"{path}: checkpoint version {ckpt.get('version')} is not the {CHECKPOINT_VERSION} this "
                        "tedloc-edge reads; use the tedloc-edge that trained it, or retrain")
    return ckpt


def load_run(run_dir: str | Path, checkpoint: str = "best") -> tuple[TeDLocNet, BundleMeta]:
    """Rebuild a trained model (eval mode, CPU, graph contract) and its bundle metadata from a run folder;
    `checkpoint` is "best", "last" or a path to a .pt file."""
    run = RunDir(Path(run_dir))
    if not run.path.is_dir():
        raise UserError(f"{run}: no such run folder; pass the --out folder of `tedloc-edge train`")
    ckpt = read_checkpoint(run.checkpoint(checkpoint))
    try:
        args = ModelArgs.from_dict(ckpt["model_args"])
        anchors = ckpt["model"].get("head.anchors")
        model = create_model(args, anchors, pretrained=False)
        model.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise UserError(f"{run}: checkpoint does not match its model ({first_line(exc, 120)}); "
                        "retrain with this tedloc-edge") from None
    model.eval()
    anchor_info = ckpt.get("anchor_info") or {}
    meta = BundleMeta(
        class_names=tuple(ckpt["class_names"]),
        input_size=(args.input_size, args.input_size),
        patch_grid=tuple(args.grid),
        preprocess=Preprocess(mean=args.mean, std=args.std),
        method=args.method,
        backbone=f"{args.backbone} ({ckpt.get('backbone_weights', '')})",
        anchor_source=anchor_info.get("source", "none (CAM baseline)" if args.method == "cam" else ""),
        anchors_have_text_semantics=bool(anchor_info.get("has_text_semantics", False)),
        run_id=str(ckpt.get("run_id", "")),
        extra={"epoch": int(ckpt.get("epoch", 0)), "checkpoint": checkpoint},
    )
    calibrated = run.read_threshold()
    if calibrated is not None:
        meta = meta.replace(threshold=calibrated[0], threshold_source=calibrated[1])
    presence = run.read_presence() if meta.map_kind == "probability" else None  # a CAM has no presence score
    if presence is not None:
        meta = meta.replace(presence_threshold=presence[0], presence_source=presence[1])
    return model, meta


class TorchRunner(Runner):
    """A torch module obeying the graph contract (a run's `TeDLocNet`, or any module that takes uint8 NHWC and
    returns (fg_map, logits)) as a `Runner`: host uint8 batch in, host float32 outputs out, so `Localizer(runner)`
    evaluates it and `tedloc-edge bench --run` and export verification time and compare it like any backend.

    precision "fp16" runs a half-precision copy of the module and `cuda_graph` captures one CUDA graph per batch
    shape and replays it (a static input tensor, as `torch.cuda.graphs` needs); both need a CUDA device."""

    def __init__(self, model: torch.nn.Module, meta: BundleMeta, device: str = "cpu", precision: str = "fp32",
                 cuda_graph: bool = False, max_batch: int = 32):
        self.device = torch.device(device)
        if precision not in ("fp32", "fp16"):
            raise UserError(f"torch precision must be fp32 or fp16, not {precision!r}")
        if (precision == "fp16" or cuda_graph) and self.device.type != "cuda":
            raise UserError(f"torch {precision}{' with CUDA graphs' if cuda_graph else ''} runs on a CUDA device, not {device!r}")
        if precision == "fp16":  # a copy: the caller's module stays float32
            model = copy.deepcopy(model).half()
        self.model = model.to(self.device).eval()
        self.meta, self.max_batch = meta, int(max_batch)
        self.precision, self.cuda_graph = precision, cuda_graph
        self.name = f"torch-{'cudagraph' if cuda_graph else 'eager'}-{self.device.type}"
        self.source = meta.run_id or "torch module"
        self._graphs: dict[tuple[int, ...], tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], Any]] = {}

    @classmethod
    def from_run(cls, run_dir: str | Path, checkpoint: str = "best", **options: Any) -> "TorchRunner":
        model, meta = load_run(run_dir, checkpoint)
        return cls(model, meta, **options)

    @torch.no_grad()
    def _infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch = torch.from_numpy(images)
        # graphs: one host->device copy straight into the captured input (no device tensor in between)
        m, lg = self._replay(batch) if self.cuda_graph else self.model(batch.to(self.device))
        return m.float().cpu().numpy(), lg.float().cpu().numpy()  # .cpu() waits for the device: timings are whole

    def _replay(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = tuple(images.shape)
        if shape not in self._graphs:
            self._graphs[shape] = self._capture(shape)
        static_in, outputs, graph = self._graphs[shape]
        static_in.copy_(images)
        graph.replay()
        return outputs

    def _capture(self, shape: tuple[int, ...]) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], Any]:
        """Warm up on a side stream (cuDNN picks its kernels there), then capture one forward."""
        static_in = torch.zeros(shape, dtype=torch.uint8, device=self.device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self.model(static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = self.model(static_in)
        return static_in, outputs, graph

    def close(self) -> None:
        """Give the device memory back (the caller's module goes back to the CPU it came from)."""
        self._graphs.clear()
        if self.device.type == "cuda":
            self.model.to("cpu")
            torch.cuda.empty_cache()
