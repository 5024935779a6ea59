"""The full Triton model repository: the model on Triton's own backend, a box decoder, an ensemble, and an
all-Python variant for servers without the ONNX Runtime backend.

```
REPO/tedloc_model/1/model.onnx|model.plan   platform onnxruntime_onnx | tensorrt_plan, dynamic batching
REPO/tedloc_decode/1/model.py               Python backend: fg_map + logits -> boxes (tedloc_edge.boxes)
REPO/tedloc/1/                              ensemble: images + frame_size -> boxes, scores, classes
REPO/tedloc_python/1/model.py + model.onnx  the whole runtime (ONNX Runtime) in the Python backend
```

`tedloc` and `tedloc_python` take and return the same tensors (the wire contract, `WIRE_INPUTS` and
`WIRE_OUTPUTS`): the client resizes each frame to the model's input size itself (a 224x224 frame is
~150 KB on the wire instead of ~6 MB for 1080p) and sends the frame's own (height, width), so boxes come
back in frame pixels. Every config carries the bundle metadata as the parameter ``tedloc`` (JSON).

Which to load where (`TritonRepository.load_on`): a GPU Triton server (NGC ``tritonserver`` image) loads
``tedloc`` (it pulls in ``tedloc_model`` and ``tedloc_decode``); a server with only the Python backend (the
``nvidia-pytriton`` wheel, a CPU box) loads ``tedloc_python``. Python-backend models import
``tedloc_edge`` from the server's Python: ``pip install --no-deps tedloc-edge`` there (with numpy < 2,
opencv-python-headless and, for ``tedloc_python``, onnxruntime).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from tedloc_edge.bundle import METADATA_KEY, BundleMeta, sidecar_path

from tedloc_edge.files import atomic_write_text
from tedloc_edge.errors import UserError

logger = logging.getLogger(__name__)

VARIANTS = ("model", "decode", "ensemble", "python")
MODEL_NAMES = {"model": "tedloc_model", "decode": "tedloc_decode", "ensemble": "tedloc", "python": "tedloc_python"}
PLATFORMS = {".onnx": ("onnxruntime_onnx", "model.onnx"), ".plan": ("tensorrt_plan", "model.plan"),
             ".engine": ("tensorrt_plan", "model.plan"), ".trt": ("tensorrt_plan", "model.plan")}
INSTANCE_KINDS = ("KIND_GPU", "KIND_CPU", "KIND_AUTO")
MODEL_SOURCES = Path(__file__).resolve().parent / "triton_models"


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str  # Triton TYPE_*
    dims: tuple[int, ...]  # per item (the batch dimension is implicit: max_batch_size > 0)


def wire_inputs(meta: BundleMeta) -> tuple[Tensor, ...]:
    """What a client sends to ``tedloc`` / ``tedloc_python``: frames at the input size and their own size."""
    h, w = meta.input_size
    return (Tensor("images", "TYPE_UINT8", (h, w, 3)), Tensor("frame_size", "TYPE_INT32", (2,)))


def wire_outputs(meta: BundleMeta) -> tuple[Tensor, ...]:
    """What comes back: boxes (K padded per request) in frame pixels, their scores, their count, the top-1
    class, every class's probability and the raw logits."""
    return (
        Tensor("boxes", "TYPE_FP32", (-1, 4)),  # xyxy, inclusive frame pixels; rows >= num_boxes are padding
        Tensor("scores", "TYPE_FP32", (-1,)),  # box score; -1 on padding
        Tensor("num_boxes", "TYPE_INT32", (1,)),
        Tensor("classes", "TYPE_INT32", (1,)),  # top-1 class id
        Tensor("probs", "TYPE_FP32", (meta.num_classes,)),  # softmax over all classes
        Tensor("logits", "TYPE_FP32", (meta.num_classes,)),  # raw, for a client restricting the classes
    )


def model_outputs(meta: BundleMeta) -> tuple[Tensor, ...]:
    gh, gw = meta.patch_grid
    return (Tensor("fg_map", "TYPE_FP32", (gh, gw)), Tensor("logits", "TYPE_FP32", (meta.num_classes,)))


@dataclass(frozen=True)
class TritonOptions:
    max_batch_size: int = 8
    instances: int = 1  # instance_group count of the model (and of the Python variant)
    instance_kind: str | None = None  # of tedloc_model: None = KIND_GPU for a plan, KIND_AUTO for ONNX; Python models run KIND_CPU
    decode_instances: int = 2
    max_queue_delay_us: int = 500  # how long the dynamic batcher waits to fill a preferred batch
    python_threads: int = 0  # ONNX Runtime intra-op threads inside tedloc_python (0: ORT's default)

    def check(self) -> "TritonOptions":
        if not 1 <= self.max_batch_size <= 1024:
            raise UserError(f"max batch size must be 1..1024, not {self.max_batch_size}")
        if self.instances < 1 or self.decode_instances < 1:
            raise UserError("instance counts must be at least 1")
        if self.instance_kind is not None and self.instance_kind not in INSTANCE_KINDS:
            raise UserError(f"instance kind must be one of {', '.join(INSTANCE_KINDS)}, not {self.instance_kind!r}")
        if self.max_queue_delay_us < 0 or self.python_threads < 0:
            raise UserError("queue delay and thread count must not be negative")
        return self


@dataclass(frozen=True)
class TritonRepository:
    root: Path
    models: dict[str, Path] = field(default_factory=dict)  # Triton model name -> its folder

    def load_on(self) -> dict[str, list[str]]:
        """Which model to load (and query) on which kind of server."""
        out: dict[str, list[str]] = {}
        if "tedloc" in self.models:
            out["GPU Triton server (onnxruntime or tensorrt backend + python backend)"] = ["tedloc"]
        if "tedloc_python" in self.models:
            out["Triton with only the Python backend (e.g. the nvidia-pytriton wheel, CPU)"] = ["tedloc_python"]
        if "tedloc_decode" in self.models and "tedloc" not in self.models:
            out["any server, decoding maps computed elsewhere"] = ["tedloc_decode"]
        return out

    def describe(self) -> list[str]:
        """Lines to print after export: what was written and which model to load where."""
        lines = [f"Triton repository {self.root}: {', '.join(self.models)}"]
        for where, names in self.load_on().items():
            lines.append(f"  {where}: load {', '.join(names)}  (tritonserver --model-repository {self.root} "
                         f"--model-control-mode explicit {' '.join('--load-model ' + n for n in names)})")
        if any(n in self.models for n in ("tedloc_decode", "tedloc_python")):
            lines.append("  the Python-backend models import tedloc_edge: pip install --no-deps tedloc-edge (with numpy<2, "
                         "opencv-python-headless, rich, onnxruntime) in the server's Python")
        return lines


def check_variants(variants: Iterable[str] | None) -> tuple[str, ...]:
    """Variant names (or their Triton model names); the ensemble needs the model and the decoder."""
    if variants is None:
        return VARIANTS
    by_model = {v: k for k, v in MODEL_NAMES.items()}
    chosen: list[str] = []
    for v in variants:
        key = by_model.get(v, v)
        if key not in MODEL_NAMES:
            raise UserError(f"unknown Triton variant {v!r}; choose from {', '.join(VARIANTS)} (or 'all')")
        if key not in chosen:
            chosen.append(key)
    if "ensemble" in chosen:
        chosen += [k for k in ("model", "decode") if k not in chosen]
    return tuple(k for k in VARIANTS if k in chosen)


def write_repository(
    out: str | Path,
    model: str | Path,
    meta: BundleMeta,
    variants: Sequence[str] | None = None,
    options: TritonOptions | None = None,
    onnx: str | Path | None = None,
    exist_ok: bool = False,
) -> TritonRepository:
    """Write the model folders `variants` picks (default: all) into `out`; returns where each went.

    `model` is the ``.onnx`` or TensorRT ``.plan`` for ``tedloc_model``; ``tedloc_python`` needs an ONNX
    (`model` itself, or `onnx` beside a plan). Files are written atomically; an existing model folder is
    replaced only with `exist_ok`.
    """
    opts = (options or TritonOptions()).check()
    chosen = check_variants(variants)
    model = Path(model)
    if not model.is_file():
        raise UserError(f"{model}: no such model file; export it first with `tedloc-edge export RUN --format onnx`")
    suffix = model.suffix.lower()
    if suffix not in PLATFORMS:
        raise UserError(f"{model}: a Triton model must be .onnx or a TensorRT .plan/.engine, not '{suffix}'")
    onnx_path = Path(onnx) if onnx is not None else (model if suffix == ".onnx" else None)
    if not all((MODEL_SOURCES / f).is_file() for f in ("decode.py", "python.py")):
        raise UserError(f"{MODEL_SOURCES}: the Triton Python-backend sources are missing from this install; reinstall tedloc-edge")
    if "python" in chosen and onnx_path is None:
        raise UserError(f"{model}: the tedloc_python variant runs ONNX Runtime; pass the .onnx too (or leave that variant out)")
    root = Path(out)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{root}: cannot create the repository folder ({exc.strerror})") from None
    written: dict[str, Path] = {}
    for key in chosen:
        name = MODEL_NAMES[key]
        folder = root / name
        if folder.exists():
            if not exist_ok:
                raise UserError(f"{folder} exists; pass --exist-ok to replace it")
            shutil.rmtree(folder)
        (folder / "1").mkdir(parents=True)
        if key == "model":
            platform, filename = PLATFORMS[suffix]
            _copy(model, folder / "1" / filename)
            side = sidecar_path(model)
            if platform == "tensorrt_plan" and side.is_file():  # the build record travels with the plan
                _copy(side, sidecar_path(folder / "1" / filename))
            text = model_config(meta, opts, platform)
        elif key == "decode":
            _copy(MODEL_SOURCES / "decode.py", folder / "1" / "model.py")
            text = decode_config(meta, opts)
        elif key == "ensemble":
            text = ensemble_config(meta, opts)
        else:
            _copy(MODEL_SOURCES / "python.py", folder / "1" / "model.py")
            _copy(onnx_path, folder / "1" / "model.onnx")
            text = python_config(meta, opts)
        atomic_write_text(folder / "config.pbtxt", text)
        written[name] = folder
        logger.debug("wrote %s", folder)
    return TritonRepository(root, written)


def _copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(dst)


# --- config.pbtxt text (protobuf text format of inference.ModelConfig) ---------------------------------


def pbtxt_string(text: str) -> str:
    """A protobuf text-format string literal (UTF-8 passes through; quotes, backslashes, newlines escaped)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r") + '"'


def _tensors(section: str, tensors: Sequence[Tensor]) -> str:
    rows = ",\n".join(
        f'  {{ name: "{t.name}" data_type: {t.data_type} dims: [ {", ".join(str(d) for d in t.dims)} ] }}' for t in tensors
    )
    return f"{section} [\n{rows}\n]\n"


def _parameters(params: dict[str, str]) -> str:
    return "".join(f"parameters {{ key: {pbtxt_string(k)} value {{ string_value: {pbtxt_string(v)} }} }}\n" for k, v in params.items())


def _batching(opts: TritonOptions) -> str:
    preferred = sorted({b for b in (opts.max_batch_size // 2, opts.max_batch_size) if b > 1})
    pref = f"preferred_batch_size: [ {', '.join(map(str, preferred))} ] " if preferred else ""
    return f"dynamic_batching {{ {pref}max_queue_delay_microseconds: {opts.max_queue_delay_us} }}\n"


def _header(name: str, engine: str, opts: TritonOptions) -> str:
    return f'name: "{name}"\n{engine}\nmax_batch_size: {opts.max_batch_size}\n'


def model_config(meta: BundleMeta, opts: TritonOptions, platform: str = "onnxruntime_onnx") -> str:
    h, w = meta.input_size
    kind = opts.instance_kind or ("KIND_GPU" if platform == "tensorrt_plan" else "KIND_AUTO")
    return (
        _header(MODEL_NAMES["model"], f'platform: "{platform}"', opts)
        + _tensors("input", (Tensor("images", "TYPE_UINT8", (h, w, 3)),))
        + _tensors("output", model_outputs(meta))
        + _batching(opts)
        + f"instance_group [ {{ count: {opts.instances} kind: {kind} }} ]\n"
        + _parameters({METADATA_KEY: meta.to_json()})
    )


def decode_config(meta: BundleMeta, opts: TritonOptions) -> str:
    gh, gw = meta.patch_grid
    inputs = (*model_outputs(meta), Tensor("frame_size", "TYPE_INT32", (2,)))
    return (
        _header(MODEL_NAMES["decode"], 'backend: "python"', opts)
        + _tensors("input", inputs)
        + _tensors("output", wire_outputs(meta))
        + f"instance_group [ {{ count: {opts.decode_instances} kind: KIND_CPU }} ]\n"
        + _parameters({METADATA_KEY: meta.to_json()})
    )


def python_config(meta: BundleMeta, opts: TritonOptions) -> str:
    return (
        _header(MODEL_NAMES["python"], 'backend: "python"', opts)
        + _tensors("input", wire_inputs(meta))
        + _tensors("output", wire_outputs(meta))
        + _batching(opts)
        + f"instance_group [ {{ count: {opts.instances} kind: KIND_CPU }} ]\n"
        + _parameters({METADATA_KEY: meta.to_json(), "intra_op_threads": str(opts.python_threads)})
    )


def ensemble_config(meta: BundleMeta, opts: TritonOptions) -> str:
    def maps(kind: str, pairs: Sequence[tuple[str, str]]) -> str:
        return " ".join(f'{kind} {{ key: "{k}" value: "{v}" }}' for k, v in pairs)

    model_step = (
        f'  {{ model_name: "{MODEL_NAMES["model"]}" model_version: -1 '
        + maps("input_map", [("images", "images")]) + " "
        + maps("output_map", [("fg_map", "_fg_map"), ("logits", "_logits")]) + " }"
    )
    decode_step = (
        f'  {{ model_name: "{MODEL_NAMES["decode"]}" model_version: -1 '
        + maps("input_map", [("fg_map", "_fg_map"), ("logits", "_logits"), ("frame_size", "frame_size")]) + " "
        + maps("output_map", [(t.name, t.name) for t in wire_outputs(meta)]) + " }"
    )
    return (
        _header(MODEL_NAMES["ensemble"], 'platform: "ensemble"', opts)
        + _tensors("input", wire_inputs(meta))
        + _tensors("output", wire_outputs(meta))
        + f"ensemble_scheduling {{ step [\n{model_step},\n{decode_step}\n] }}\n"
        + _parameters({METADATA_KEY: meta.to_json()})
    )
