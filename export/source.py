"""What `tedloc-edge export SOURCE` was given: a run folder, a checkpoint inside one, or an exported ONNX.

A run or checkpoint is rebuilt with `tedloc_edge.train.predict.load_run` (torch); an ONNX file (e.g. the one
an engine's build record names for a rebuild on the device) needs no torch and can become an engine or a
Triton repository, but not another ONNX precision: that needs the torch model for verification.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tedloc_edge.bundle import BundleMeta, read_onnx_meta
from tedloc_edge.errors import UserError
from tedloc_edge.rundir import RunDir

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


@dataclass
class Source:
    path: Path
    run_dir: Path | None  # the training run folder (dataset root, default output folder)
    checkpoint: str  # "best", "last" or a .pt path; "" for an ONNX source
    onnx: Path | None = None  # set when the source is an exported ONNX file

    @property
    def is_onnx(self) -> bool:
        return self.onnx is not None

    def default_output_dir(self) -> Path:
        return RunDir(self.run_dir).export if self.run_dir is not None else self.path.parent


def resolve_source(path: str | Path, checkpoint: str = "best") -> Source:
    """Classify SOURCE; one-line error when it is none of a run folder, a .pt checkpoint or a .onnx file."""
    path = Path(path).expanduser()
    if path.is_dir():
        if not RunDir(path).checkpoints.is_dir():
            raise UserError(f"{path}: not a training run (no checkpoints/ folder); pass the --out folder of `tedloc-edge train`")
        return Source(path, path, checkpoint)
    if path.is_file() and path.suffix == ".pt":
        return Source(path, RunDir.of(path).path, str(path))
    if path.is_file() and path.suffix == ".onnx":
        return Source(path, None, "", onnx=path)
    if path.exists():
        raise UserError(f"{path}: export takes a run folder, a checkpoint (.pt) or an exported .onnx, not this file")
    raise UserError(f"{path}: no such run folder or checkpoint; pass the --out folder of `tedloc-edge train`")


def load_model(source: Source) -> tuple["torch.nn.Module", BundleMeta]:
    """The torch model (eval mode) and its bundle; the checkpoint's own errors are already one line."""
    from tedloc_edge.train.predict import load_run

    if source.run_dir is None:
        raise UserError(f"{source.path}: an exported ONNX has no torch model; pass the training run folder")
    model, meta = load_run(source.run_dir, source.checkpoint)
    return model.eval(), meta


def onnx_meta(source: Source) -> BundleMeta:
    return read_onnx_meta(source.onnx or source.path)
