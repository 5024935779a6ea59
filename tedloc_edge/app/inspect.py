"""`tedloc-edge inspect MODEL`: what is inside an exported model, and whether this machine can run it.

MODEL is an .onnx, a TensorRT plan (with its ``<plan>.json``, or `--metadata` for a plan built elsewhere) or a
Triton model repository (each model file in it is inspected). Shown: classes, input size and layout, thresholds
(the box threshold; a presence threshold only when the bundle has one), precision and INT8 mode, the INT8
gate's figures, the anchors' source and text-semantics flag, the build record, whether this machine can run it,
and the I/O names and shapes. `--json` prints the same as one JSON document. Nothing here starts a GPU: a plan's
I/O comes from its build record and bundle, and "runs here" compares the record with this machine's TensorRT
version and GPU (`tedloc_edge.build_record.check_build_record`, as the runtime does before loading).
"""

from __future__ import annotations

import dataclasses

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from tedloc_edge.console import user_errors
from tedloc_edge.errors import UserError, first_line

if TYPE_CHECKING:
    from tedloc_edge.bundle import BundleMeta

ENGINE_SUFFIXES = (".plan", ".engine", ".trt")


def _bundle(meta: "BundleMeta") -> dict[str, Any]:
    extra = dict(meta.extra)
    h, w = meta.input_size
    thresholds: dict[str, Any] = {"box": meta.threshold, "box_source": meta.threshold_source, "contour_mode": meta.contour_mode}
    if meta.presence_threshold is not None:  # only when the bundle carries one; never invented here
        thresholds.update(presence=meta.presence_threshold, presence_source=meta.presence_source)
    int8 = None
    if meta.precision == "int8":
        int8 = {"mode": extra.get("int8_mode"), "calibration_images": extra.get("int8_calibration_images"),
                "float_nodes": extra.get("int8_float_nodes"), "gate": extra.get("int8_gate")}
    return {
        "classes": list(meta.class_names),
        "input": {"name": "images", "size": [h, w], **dataclasses.asdict(meta.preprocess)},
        "patch_grid": list(meta.patch_grid),
        "thresholds": thresholds,
        "precision": meta.precision,
        "int8": int8,
        "anchors": {"source": meta.anchor_source, "text_semantics": meta.anchors_have_text_semantics},
        "method": meta.method, "map_kind": meta.map_kind, "backbone": meta.backbone, "run_id": meta.run_id,
        "static_batch": extra.get("static_batch"),
    }


def _onnx(path: Path) -> dict[str, Any]:
    import onnxruntime as ort

    from tedloc_edge.bundle import read_onnx_meta

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises Fail / InvalidProtobuf
        raise UserError(f"{path}: not a readable ONNX model ({first_line(exc)})") from None
    meta = read_onnx_meta(path, session.get_modelmeta().custom_metadata_map)
    dtypes = {"float": "float32", "double": "float64"}
    io = {kind: [{"name": t.name, "dtype": dtypes.get(t.type[7:-1], t.type[7:-1]), "shape": list(t.shape)}
                 for t in tensors]
          for kind, tensors in (("inputs", session.get_inputs()), ("outputs", session.get_outputs()))}
    providers = ort.get_available_providers()
    how = f"yes: onnxruntime {ort.__version__} ({', '.join(providers)})"
    if meta.precision == "int8" and meta.extra.get("int8_mode") == "cpu":
        how += "; cpu-mode INT8 (uint8 activations): ONNX Runtime's CPU kernels, not TensorRT"
    return {"kind": "onnx", "model": _bundle(meta), "io": io, "io_from": "the graph", "build": None,
            "runs_here": {"ok": True, "why": how}}


def _plan_runs_here(build: dict[str, Any] | None) -> dict[str, Any]:
    from tedloc_edge.build_record import BuildRecordError, check_build_record
    from tedloc_edge.runtime.gpu_facts import gpu_facts

    try:
        import tensorrt
    except (ImportError, OSError):
        return {"ok": False, "why": "no: TensorRT is not installed here (engines run on the GPU they were built for)"}
    version = str(tensorrt.__version__)
    try:
        gpu = gpu_facts()
    except UserError as exc:
        return {"ok": False, "why": f"no: TensorRT {version} is here but {exc}"}
    if build is None:
        return {"ok": None, "why": f"unknown: no build record (a plan built elsewhere); TensorRT {version} on {gpu.name} "
                                   f"(sm {gpu.compute_capability}) will try"}
    try:
        check_build_record(build, version, gpu.compute_capability, source="plan")
    except BuildRecordError as exc:
        return {"ok": False, "why": f"no: {str(exc).removeprefix('plan: ')}"}
    dla = f", DLA core {build['dla_core']}" if build.get("dla_core") is not None else ""
    return {"ok": True, "why": f"yes: TensorRT {version} on {gpu.name} (sm {gpu.compute_capability}{dla})"}


def _plan(path: Path, metadata: Path | None) -> dict[str, Any]:
    from tedloc_edge.build_record import plan_bundle

    meta, build = plan_bundle(path, metadata)
    gh, gw = meta.patch_grid
    shapes = (build or {}).get("input_shapes", {}).get("images")
    batch = f"{shapes['min'][0]}..{shapes['max'][0]}" if shapes else "N"
    h, w = meta.input_size
    io = {"inputs": [{"name": "images", "dtype": "uint8", "shape": [batch, h, w, 3]}],
          "outputs": [{"name": "fg_map", "dtype": "float32", "shape": [batch, gh, gw]},
                      {"name": "logits", "dtype": "float32", "shape": [batch, meta.num_classes]}]}
    return {"kind": "plan", "model": _bundle(meta), "io": io, "io_from": "the build record and bundle (a plan is opened only on its GPU)",
            "build": build, "runs_here": _plan_runs_here(build)}


def _triton(root: Path) -> dict[str, Any]:
    configs = sorted(root.glob("*/config.pbtxt"))
    if not configs:
        raise UserError(f"{root}: a folder, but not a Triton model repository (no */config.pbtxt); pass a model file or the repository")
    models = {}
    for config in configs:
        files = sorted(p for p in (config.parent / "1").glob("model.*") if p.suffix in (".onnx", *ENGINE_SUFFIXES))
        models[config.parent.name] = [str(p.relative_to(root)) for p in files]
    inspected = {f: describe(root / f) for files in models.values() for f in files}
    return {"kind": "triton", "models": models, "files": inspected}


def describe(path: str | Path, metadata: str | Path | None = None) -> dict[str, Any]:
    """Everything `inspect` shows, as one JSON-ready document."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such model file or repository")
    if path.is_dir():
        doc = _triton(path)
    elif path.suffix.lower() in ENGINE_SUFFIXES:
        doc = _plan(path, None if metadata is None else Path(metadata))
    elif path.suffix.lower() == ".onnx":
        if metadata is not None:
            raise UserError(f"{path}: --metadata is for a plan built elsewhere; an .onnx carries its own")
        doc = _onnx(path)
    else:
        raise UserError(f"{path}: inspect takes an .onnx, a .plan/.engine or a Triton repository folder")
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
    return {"path": str(path), "bytes": size, **doc}


def _gate_text(gate: dict[str, Any]) -> str:
    names = {"maxboxacc": "MaxBoxAcc", "top1_loc": "Top-1 Loc"}
    parts = []
    for key, label in names.items():
        flips = gate.get("flips", {}).get(key, {})
        parts.append(f"{label} {gate['fp32'][key]:.2f} -> {gate['int8'][key]:.2f} (lost {flips.get('lost', '?')}, "
                     f"gained {flips.get('gained', '?')}, McNemar p {flips.get('mcnemar_p', float('nan')):.2f})")
    verdict = "passed" if gate.get("passed") else "drop accepted (--int8-allow-drop)"
    return f"{gate.get('split', 'val')}, {gate.get('images')} images, allowed drop {gate.get('max_drop')}: {'; '.join(parts)}; {verdict}"


def rows(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """The human view of one model file's document: (label, text) rows."""
    m = doc["model"]
    inp = m["input"]
    th = m["thresholds"]
    shown = ", ".join(m["classes"][:12]) + (f", ... (+{len(m['classes']) - 12})" if len(m["classes"]) > 12 else "")
    out = [
        ("file", f"{doc['path']} ({doc['kind']}, {doc['bytes'] / 1e6:.1f} MB)"),
        (f"classes ({len(m['classes'])})", shown),
        ("input", f"{inp['name']} {inp['dtype']} {inp['layout']} {inp['channel_order']} {inp['size'][0]}x{inp['size'][1]}"
                  + (f", normalized in the graph (mean {inp['mean']}, std {inp['std']})" if inp["normalize_in_graph"] else "")),
        ("box threshold", f"{th['box']:.3g} ({th['box_source']}), {th['contour_mode']} contour"),
    ]
    if "presence" in th:
        out.append(("presence threshold", f"{th['presence']:.4g}" + (f" ({th['presence_source']})" if th["presence_source"] else "")))
    precision = m["precision"]
    if m["int8"]:
        i8 = m["int8"]
        precision += f", INT8 mode {i8['mode']}" + (f", {i8['calibration_images']} calibration images" if i8["calibration_images"] else "")
    if m["static_batch"]:
        precision += f", static batch {m['static_batch']}"
    out.append(("precision", precision))
    if m["int8"]:
        out.append(("INT8 gate", _gate_text(m["int8"]["gate"]) if m["int8"]["gate"] else "no record (gate not run)"))
    out.append(("anchors", f"{m['anchors']['source'] or '-'}; text semantics: {'yes' if m['anchors']['text_semantics'] else 'no'}"))
    out.append(("method", f"{m['method']} ({m['map_kind']} map), backbone {m['backbone'] or '-'}, run {m['run_id'] or '-'}"))
    build = doc["build"]
    if doc["kind"] == "plan":
        out.append(("build record", "none (a plan built elsewhere)" if build is None else
                    f"TensorRT {build['tensorrt_version']}, {build['gpu_name']} (sm {build['compute_capability']}), CUDA "
                    f"{build['cuda_version']}, {build['precision']}, "
                    + ("GPU" if build.get("dla_core") is None else f"DLA core {build['dla_core']}"
                       + (" + GPU fallback" if build.get("gpu_fallback") else ""))
                    + f", built {build['built_at']}; rebuild: {build['rebuild_command']}"))
    out.append(("runs here", doc["runs_here"]["why"]))
    for kind in ("inputs", "outputs"):
        out.append((kind, "; ".join(f"{t['name']} {t['dtype']} ({', '.join(str(d) for d in t['shape'])})" for t in doc["io"][kind])))
    return out


def print_doc(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    stdout = Console(highlight=False, soft_wrap=False)
    docs = [doc] if doc["kind"] != "triton" else list(doc["files"].values())
    if doc["kind"] == "triton":
        stdout.print(f"Triton repository {doc['path']}: " + ", ".join(f"{name} ({', '.join(files) or 'no model file'})"
                                                                      for name, files in doc["models"].items()))
    for i, one in enumerate(docs):
        if i:
            stdout.print()
        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold", no_wrap=True)
        table.add_column(overflow="fold")
        for label, text in rows(one):
            table.add_row(label, text)
        stdout.print(table)


def inspect_model(
    model: Path = typer.Argument(..., help="An exported .onnx, a TensorRT .plan (+ .plan.json), or a Triton model repository."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document instead of the table."),
    metadata: Optional[Path] = typer.Option(None, "--metadata", help="A plan built elsewhere (trtexec): the .onnx it came from, or a bundle JSON."),
) -> None:
    """What is inside a model file (classes, input, thresholds, precision, INT8 gate, build record, I/O) and whether it runs here."""
    with user_errors():
        doc = describe(model, metadata)
        if json_out:
            print(json.dumps(doc, indent=2, ensure_ascii=False))
        else:
            print_doc(doc)
