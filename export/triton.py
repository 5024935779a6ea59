"""Triton model repository: ``REPO/<name>/1/model.onnx`` (or ``model.plan``) and ``REPO/<name>/config.pbtxt``.

The config declares the graph contract (uint8 ``images`` H x W x 3, float ``fg_map`` gh x gw and ``logits``
C, batch dimension implicit through max_batch_size), dynamic batching, and the bundle as a parameter, so a
Triton client can read class names, threshold and preprocessing from the model's config alone.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from tedloc_edge.bundle import BundleMeta, atomic_write_text, sidecar_path
from tedloc_edge.console import UserError
from tedloc_edge.export.formats import TRITON_BACKENDS

logger = logging.getLogger(__name__)

PLATFORMS = {"onnxruntime": ("onnxruntime_onnx", "model.onnx"), "tensorrt": ("tensorrt_plan", "model.plan")}


def _quote(text: str) -> str:
    """A protobuf text-format string literal (UTF-8 kept; quotes, backslashes and control bytes escaped)."""
    out = []
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\{ord(ch):03o}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _tensor(name: str, dtype: str, dims: tuple[int, ...]) -> str:
    return f'  {{\n    name: "{name}"\n    data_type: {dtype}\n    dims: [ {", ".join(str(d) for d in dims)} ]\n  }}'


def config_pbtxt(meta: BundleMeta, name: str, backend: str, max_batch: int, preferred: tuple[int, ...] = ()) -> str:
    """The config.pbtxt text (Triton's ModelConfig protobuf in text format)."""
    platform, filename = PLATFORMS[backend]
    h, w = meta.input_size
    gh, gw = meta.patch_grid
    preferred = tuple(b for b in preferred if 1 <= b <= max_batch) or (max_batch,)
    params = {
        "tedloc": meta.to_json(),
        "class_names": json.dumps(list(meta.class_names), ensure_ascii=False),
        "threshold": repr(float(meta.threshold)),
        "precision": meta.precision,
    }
    param_text = "\n".join(
        f"parameters {{\n  key: {_quote(k)}\n  value: {{ string_value: {_quote(v)} }}\n}}" for k, v in params.items()
    )
    return (
        f'name: {_quote(name)}\nplatform: "{platform}"\ndefault_model_filename: "{filename}"\nmax_batch_size: {max_batch}\n'
        f"input [\n{_tensor('images', 'TYPE_UINT8', (h, w, 3))}\n]\n"
        f"output [\n{_tensor('fg_map', 'TYPE_FP32', (gh, gw))},\n{_tensor('logits', 'TYPE_FP32', (meta.num_classes,))}\n]\n"
        f"dynamic_batching {{\n  preferred_batch_size: [ {', '.join(str(b) for b in preferred)} ]\n"
        f"  max_queue_delay_microseconds: 2000\n}}\n"
        f"instance_group [\n  {{\n    count: 1\n    kind: {'KIND_GPU' if backend == 'tensorrt' else 'KIND_AUTO'}\n  }}\n]\n"
        f"{param_text}\n"
    )


def write_repository(
    model_path: str | os.PathLike, repo: str | os.PathLike, meta: BundleMeta, backend: str = "onnxruntime",
    name: str = "tedloc", max_batch: int = 8, preferred: tuple[int, ...] = (),
) -> Path:
    """Copy the model into REPO/<name>/1/ and write config.pbtxt; returns the model's folder."""
    if backend not in TRITON_BACKENDS:
        raise UserError(f"unknown Triton backend '{backend}': choose one of {', '.join(TRITON_BACKENDS)}")
    if max_batch < 1:
        raise UserError(f"Triton max batch {max_batch} must be >= 1; fix --batch-max")
    if not name or any(c in name for c in '/\\:') or name.startswith("."):
        raise UserError(f"Triton model name {name!r} must be a plain folder name; fix --model-name")
    _, filename = PLATFORMS[backend]
    folder = Path(repo) / name
    target = folder / "1" / filename
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{filename}.tmp")
        shutil.copyfile(model_path, tmp)
        os.replace(tmp, target)
        side = sidecar_path(model_path)
        if backend == "tensorrt" and side.is_file():  # the build record travels with the plan
            shutil.copyfile(side, sidecar_path(target))
        atomic_write_text(folder / "config.pbtxt", config_pbtxt(meta, name, backend, max_batch, preferred))
    except OSError as exc:
        raise UserError(f"{folder}: cannot write the Triton repository ({exc.strerror}); choose a writable --output") from None
    logger.info("Triton repository %s (%s, max batch %d)", folder, backend, max_batch)
    return folder
