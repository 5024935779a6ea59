"""The demo's recipe on several seeds: presence and the INT8 gate, measured side by side (docs/seeds.md).

    python benchmarks/seeds.py --out runs/seeds --seeds 0 1 2 [--markdown docs/seeds.md]

For each seed it runs the demo's own stages (`tedloc_edge.app.demo.plan_stages`: the same commands, sizes and
recipe as `tedloc-edge demo --seed S`), leaving out the CAM baseline, the video and the bench: the synthetic
benchmark with object-free scenes, TeD-Loc training, val calibration (box and presence thresholds), ONNX fp32
and the default INT8 export (no `--int8-allow-drop`: the export fails when the gate does), and the test-split
evaluation of torch, ONNX fp32 and INT8. A seed's folder is the demo's layout, so `--reuse` keeps stages whose
outputs exist, as the demo does: `tedloc-edge demo --out OUT/seed0` fills seed 0's folder, and the same seed gives
the same files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tedloc_edge.benchrows import markdown_table, publish_markdown  # noqa: E402
from tedloc_edge.files import atomic_write_text  # noqa: E402

SKIPPED_STAGES = ("CAM", "video", "Bench")  # stage titles that say nothing about presence or INT8
MODELS = (("torch fp32", "tedloc_torch"), ("ONNX fp32", "tedloc_fp32"), ("ONNX INT8", "tedloc_int8"))
REFUSED = "models/tedloc_int8.refused.txt"  # the export's refusal, when the gate failed


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/seeds"), help="one demo-layout folder per seed under here")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--size", default="default", help="the demo's problem size (tiny: a quick check of the script, minutes)")
    p.add_argument("--reuse", action="store_true", help="keep stages whose outputs exist (default: redo everything)")
    p.add_argument("--markdown", type=Path, help="write the tables to this file as well")
    return p.parse_args(argv)


def run_seed(out: Path, size: str, seed: int, reuse: bool) -> None:
    """The seed's stages; when the INT8 export is refused (its gate failed), the refusal is written to
    REFUSED and the stages that need the INT8 model are left out, so the seed still reports its other rows."""
    from tedloc_edge.app.demo import SIZES, plan_stages, run_stage
    from tedloc_edge.errors import UserError

    stages = [s for s in plan_stages(out, SIZES[size], seed) if not any(word in s.title for word in SKIPPED_STAGES)]
    int8 = out / "models" / "tedloc_int8.onnx"
    refused = out / REFUSED
    if not reuse:
        refused.unlink(missing_ok=True)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    for i, stage in enumerate(stages, 1):
        if str(int8) in stage.argv and refused.exists():
            continue
        try:
            run_stage(stage, i, len(stages), not reuse, out / "logs")
        except UserError:
            if stage.outputs != [int8]:
                raise
            log = (out / "logs" / f"{i:02d}.log").read_text(encoding="utf-8")
            atomic_write_text(refused, next((line for line in log.splitlines() if "int8 gate" in line and "refus" in line),
                                            "the INT8 gate refused every model the search tried") + "\n")


def seed_rows(out: Path, seed: int) -> tuple[list[list[str]], list[str]]:
    """(presence + test rows per model, the INT8 gate row) of one seed's folder; "–" where the INT8 export was
    refused."""
    from tedloc_edge.bundle import read_onnx_meta

    rows = []
    for title, name in MODELS:
        doc = _metrics(out, name)
        if doc is None:
            rows.append([str(seed), title, *["–"] * 7])
            continue
        m, p = doc["metrics"], doc.get("presence") or {}
        rows.append([str(seed), title, f"{m['maxboxacc']:.2f}", f"{m['top1_loc']:.2f}", f"{m['top1_cls']:.2f}",
                     _num(p.get("auroc"), 3), _num(p.get("false_positive_rate"), 1, "%"), _num(p.get("miss_rate"), 1, "%"),
                     _num(p.get("threshold"), 3)])
    if (out / REFUSED).exists():
        return rows, [str(seed), "–", "–", "–", "refused", "–"]
    gate = read_onnx_meta(out / "models" / "tedloc_int8.onnx").extra.get("int8_gate") or {}
    kept = (gate.get("search") or {}).get("kept_float") or []
    gate_row = [str(seed), str(gate.get("images", "?")),
                *(f"{gate['fp32'][k]:.2f} → {gate['int8'][k]:.2f}" for k in ("maxboxacc", "top1_loc")),
                "pass" if gate.get("passed") else "fail", str(len(kept))]
    return rows, gate_row


def _metrics(out: Path, name: str) -> dict[str, Any] | None:
    path = out / "eval" / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _num(value: Any, digits: int, unit: str = "") -> str:
    return f"{value:.{digits}f}{unit}" if isinstance(value, (int, float)) else "–"


def drops(out: Path, seeds: list[int]) -> list[list[str]]:
    """Test-split drop of INT8 against ONNX fp32, per seed (points; negative: INT8 is better)."""
    rows = []
    for seed in seeds:
        fp32, int8 = (_metrics(out / f"seed{seed}", n) for n in ("tedloc_fp32", "tedloc_int8"))
        if fp32 is None or int8 is None:
            rows.append([str(seed), "–", "–"])
            continue
        rows.append([str(seed), *(f"{fp32['metrics'][k] - int8['metrics'][k]:+.2f}" for k in ("maxboxacc", "top1_loc"))])
    return rows


def table(columns: list[str], rows: list[list[str]]) -> str:
    return "\n".join(markdown_table(columns, rows))


def report(out: Path, seeds: list[int], command: str) -> str:
    model_rows, gate_rows = [], []
    for seed in seeds:
        rows, gate_row = seed_rows(out / f"seed{seed}", seed)
        model_rows += rows
        gate_rows.append(gate_row)
    return "\n\n".join([
        "# The demo's recipe on several seeds: presence and the INT8 gate",
        f"Written by `{command}`. Each seed runs the stages of `tedloc-edge demo --seed S` (without the CAM "
        "baseline, the video and the bench): its synthetic benchmark, training, val calibration, ONNX fp32 and the "
        "default INT8 export.",
        "Test split (its object images + as many object-free scenes); presence at the threshold calibrated on val:",
        table(["seed", "model", "MaxBoxAcc", "Top-1 Loc", "Top-1 cls", "presence AUROC", "empty present",
               "objects lost", "presence threshold"], model_rows),
        "The default INT8 export's gate on val (no `--int8-allow-drop`):",
        table(["seed", "val images", "MaxBoxAcc fp32 → int8", "Top-1 Loc fp32 → int8", "gate", "layers kept float"],
              gate_rows),
        "INT8's test-split drop against ONNX fp32 (points; target ≤ 1):",
        table(["seed", "MaxBoxAcc drop", "Top-1 Loc drop"], drops(out, seeds)),
    ]) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for seed in args.seeds:
        run_seed(args.out / f"seed{seed}", args.size, seed, args.reuse)
    command = "python benchmarks/seeds.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = report(args.out, args.seeds, command)
    publish_markdown(text, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
