"""The demo's report.md: what a person wants to read after `tedloc-edge demo`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tedloc_edge.benchrows import markdown_table
from tedloc_edge.files import atomic_write_text
from tedloc_edge.metric_names import REPORT_COLUMNS, metric_label

EVAL_ROWS = [
    ("tedloc_torch", "TeD-Loc (torch fp32)"),
    ("cam_torch", "CAM baseline (torch fp32)"),
    ("tedloc_fp32", "TeD-Loc ONNX fp32"),
    ("tedloc_int8", "TeD-Loc ONNX INT8 (Q/DQ)"),
]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _fmt(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) else "–"


def metrics_table(eval_dir: Path) -> str:
    rows = []
    for name, title in EVAL_ROWS:
        metrics = (_read_json(eval_dir / f"{name}.json") or {}).get("metrics", {})
        rows.append([title, *(_fmt(metrics.get(key)) for key in REPORT_COLUMNS)])
    return "\n".join(markdown_table(["model", *map(metric_label, REPORT_COLUMNS)], rows))


def _pct(value: Any) -> str:
    return f"{value:.1f}%" if isinstance(value, (int, float)) else "–"


def presence_lines(eval_dir: Path) -> list[str]:
    """Presence per model on test + the test negatives: AUROC, and at the stored threshold the share of empty
    scenes reported present and of object images lost; a CAM says it has none."""
    rows = []
    for name, title in EVAL_ROWS:
        doc = _read_json(eval_dir / f"{name}.json")
        p = doc.get("presence") if isinstance(doc, dict) else None
        if isinstance(doc, dict) and p is None:
            rows.append([title, "none: the map is not a probability", "every frame present", "–", "–", "–"])
        elif isinstance(p, dict):
            threshold = "none stored" if p.get("threshold") is None else f"{p['threshold']:.3f}"
            auroc = f"{p['auroc']:.3f}" if isinstance(p.get("auroc"), (int, float)) else "–"
            rows.append([title, auroc, _pct(p.get("false_positive_rate")), _pct(p.get("miss_rate")), threshold,
                         f"{p.get('object_images')} + {p.get('empty_images')}"])
    columns = ["model", "presence AUROC", "empty scenes reported present", "object images lost",
               "presence threshold (val)", "object + empty images"]
    return markdown_table(columns, rows) if rows else ["_no evaluation results_"]


def video_presence(out: Path) -> str:
    """How many video frames the model reported present (from predictions.jsonl)."""
    try:
        lines = [json.loads(line) for line in (out / "infer" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    except (OSError, json.JSONDecodeError):
        return ""
    present = sum(1 for line in lines if line.get("present", True))
    return f"Presence on the video: {present} of {len(lines)} frames reported present (the others: no box, no class)."


def int8_gate_note(model: Path) -> str:
    """The INT8 accuracy gate's val figures, as the export stored them in the model, in one paragraph."""
    from tedloc_edge.bundle import BundleError, read_onnx_meta

    try:
        gate = read_onnx_meta(model).extra.get("int8_gate")
    except BundleError:  # a missing or unreadable model only loses this paragraph
        gate = None
    if not isinstance(gate, dict):
        return ""
    parts = []
    for key in ("maxboxacc", "top1_loc"):
        title = metric_label(key)
        flips = gate.get("flips", {}).get(key, {})
        detail = f" (int8 lost {flips['lost']} images, gained {flips['gained']}; McNemar p {flips['mcnemar_p']:.2f})" if flips else ""
        parts.append(f"{title} {gate['fp32'][key]:.2f} → {gate['int8'][key]:.2f}{detail}")
    search = gate.get("search") or {}
    kept = search.get("kept_float") or []
    fallback = f" with {len(kept)} layer(s) kept float by the sensitivity search ({', '.join(kept)})" if kept else ""
    verdict = (f"within the allowed drop{fallback}" if gate.get("passed") else
               f"over the allowed {gate.get('max_drop', 0):g}-point drop (kept with `--int8-allow-drop`)")
    return f"INT8 accuracy gate on {gate.get('images', '?')} val images: " + "; ".join(parts) + f"; {verdict}."


def bench_table(bench: Any) -> str:
    rows = bench.get("rows", []) if isinstance(bench, dict) else []
    if not rows:
        return "_no bench results_"
    columns = ["model", "backend", "precision", "batch", "images/s", "p50 ms", "p99 ms", "vs torch eager fp32"]
    lines = markdown_table(columns, ([
        Path(str(r.get("model", ""))).name, r.get("backend"), r.get("precision"), r.get("batch"), _fmt(r.get("images_per_s")),
        _fmt(r.get("latency_p50_ms")), _fmt(r.get("latency_p99_ms")),
        f"{r['ratio']:.2f}x" if isinstance(r.get("ratio"), (int, float)) else "–"] for r in rows))
    threads = bench.get("threads")
    note = f"\n\nSame {threads} CPU thread(s) for every backend; frames {bench.get('frame_size')} (the resize is timed)." if threads else ""
    return "\n".join(lines) + note


def infer_summary(out: Path) -> str:
    summary = _read_json(out / "infer" / "summary.json")
    if not isinstance(summary, dict):
        return "_no infer summary_"
    return "```json\n" + json.dumps(summary, indent=2) + "\n```"


def _image(out: Path, path: Path, alt: str) -> str:
    return f"![{alt}]({os.path.relpath(path, out)})" if path.exists() else f"_{alt}: not produced_"


def write_report(out: Path, stages: list, total_seconds: float) -> Path:
    eval_dir = out / "eval"
    steps = "\n".join(
        f"{i}. {s.title} ({'reused' if s.reused else f'{s.seconds:.1f} s'})\n   ```\n   {s.command}\n   ```"
        for i, s in enumerate(stages, 1)
    )
    text = f"""# tedloc-edge demo report

Everything below was produced by `tedloc-edge demo` in {total_seconds:.0f} s, offline, on this machine.
**Data is synthetic** (the project's WSOL benchmark: every object shares one body, the class is told only by
a small head); the CLIP text tower had random weights offline, so the class anchors carry no text semantics
(orthonormal anchors still separate the classes).

## Accuracy on the test split (percent)

{metrics_table(eval_dir)}

{int8_gate_note(out / 'models' / 'tedloc_int8.onnx')}

MaxBoxAcc: IoU 0.5, largest contour; MaxBoxAccV2: mean over IoU 0.3/0.5/0.7, all contours; each Loc metric is
maximized over the threshold on its own curve (wsolevaluation protocol); "@ stored τ" uses the threshold
calibrated on val and stored in the model: what a deployment gets.

## Presence: is there an object at all? (test split + as many object-free scenes)

{chr(10).join(presence_lines(eval_dir))}

The presence score is the mean of the top patches of the RAW foreground map (TeD-Loc's patch head gives
absolute probabilities); the threshold is picked on val and its object-free scenes (where the larger of its two error rates is smallest) and stored in
the model; below it a frame has no box and no class. Object-free scenes hold the benchmark's backgrounds and
distractors (headless bodies, lone heads) without a bird.

## Threshold curves

{_image(out, eval_dir / 'tedloc_torch.png', 'TeD-Loc curves and examples')}

{_image(out, eval_dir / 'cam_torch.png', 'CAM curves and examples')}

## What the model was taught (offline DDT cues, contrasted with the object-free scenes)

{_image(out, out / 'runs' / 'tedloc' / 'cues' / 'cues.png', 'cue maps')}

## Speed on this CPU (ONNX Runtime vs torch eager, measured in one run)

{bench_table(_read_json(out / 'bench.json'))}

## Video inference

{infer_summary(out)}

{video_presence(out)}

Annotated video: `{os.path.relpath(out / 'infer', out)}/`.

## Reproduce each step

{steps}

## The same pipeline on CUB with real CLIP weights

```
tedloc-edge train --data /data/CUB_200_2011 --clip-model ViT-B-16 --clip-pretrained openai --cue clip-es --out runs/cub
tedloc-edge eval runs/cub --data /data/CUB_200_2011 --split val --calibrate
tedloc-edge export runs/cub --format onnx --precision int8
tedloc-edge eval runs/cub/export/model_int8.onnx --data /data/CUB_200_2011 --split test --plot cub.png
```
"""
    path = out / "report.md"
    atomic_write_text(path, text)
    return path
