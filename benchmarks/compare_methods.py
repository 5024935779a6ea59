"""Side-by-side WSOL report: several trained runs (e.g. TeD-Loc and the CAM baseline) on one dataset, as a
markdown table with the exact commands that reproduce each number.

    python benchmarks/compare_methods.py --data DATA --run TeD-Loc=runs/tedloc --run CAM=runs/cam \
        --out docs/results.md --json-dir runs/compare

For each run: calibrate the deployment threshold on val (writes RUN/threshold.json, the same as
`tedloc-edge eval RUN --data DATA --split val --calibrate`) unless one is stored and --keep-threshold is
given, then evaluate on test (`tedloc-edge eval RUN --data DATA --split test --json ...`).
Needs torch (the runs are evaluated through tedloc_edge.train.predict.TorchRunner under the Localizer).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tedloc_edge.benchrows import markdown_table  # noqa: E402
from tedloc_edge.files import atomic_write_text  # noqa: E402
from tedloc_edge.console import setup_logging  # noqa: E402
from tedloc_edge.errors import UserError  # noqa: E402
from tedloc_edge.metric_names import REPORT_COLUMNS, metric_label  # noqa: E402


def evaluate_run(name: str, run: Path, data: Path, criterion: str, keep: bool, json_dir: Path | None) -> dict[str, Any]:
    """Calibrate on val (unless kept), then evaluate on test; returns the row and the commands used."""
    from tedloc_edge.datasets import open_split
    from tedloc_edge.app.eval_cli import load_predictor
    from tedloc_edge.evaluate import calibrate_threshold, evaluate_predictor
    from tedloc_edge.rundir import RunDir

    commands = []
    if not (keep and RunDir(run).threshold_file.is_file()):
        val = evaluate_predictor(load_predictor(run, "cpu", 32), open_split(data, "val"), progress=False, source=str(run))
        RunDir(run).write_threshold(calibrate_threshold(val, criterion))
        commands.append(f"tedloc-edge eval {run} --data {data} --split val --calibrate --criterion {criterion}")
    report = evaluate_predictor(load_predictor(run, "cpu", 32), open_split(data, "test"), progress=False, source=str(run))
    test_cmd = f"tedloc-edge eval {run} --data {data} --split test"
    if json_dir is not None:
        out = json_dir / f"{name}.json"
        report.save_json(out)
        test_cmd += f" --json {out}"
    commands.append(test_cmd)
    return {"name": name, "run": run, "report": report, "commands": commands, "config": _run_config(run)}


def _run_config(run: Path) -> dict[str, Any]:
    try:
        doc = json.loads((run / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return {k: doc[k] for k in ("method", "backbone", "epochs", "input_size", "cue", "seed") if k in doc}


def markdown(rows: list[dict[str, Any]], data: Path, argv: list[str]) -> str:
    lines = [
        "# Side-by-side WSOL results",
        "",
        f"Dataset: `{data}` (test split; thresholds calibrated on val). If this is the synthetic benchmark "
        "(`tedloc-edge data synth`), these are **synthetic-data numbers**, not CUB or ILSVRC results.",
        "",
        "Metrics in percent, WSOL protocol of Choe et al. (CVPR 2020): best over the 1,000 thresholds, except the "
        "last column, which is Top-1 Loc at the threshold picked on val (what a deployed model gets).",
        "",
    ]
    columns = ["method", *map(metric_label, REPORT_COLUMNS), "calibrated tau", "test-optimal tau"]
    lines += markdown_table(columns, (_cells(row) for row in rows))
    lines += ["", "## Runs", ""]
    for row in rows:
        config = ", ".join(f"{k}={v}" for k, v in row["config"].items()) or "config.json not found"
        lines.append(f"- **{row['name']}**: `{row['run']}` ({config}), {row['report'].num_images} test images")
    lines += ["", "## Commands", "", "```bash", "python " + " ".join(argv)]
    for row in rows:
        lines += [f"# {row['name']}"] + row["commands"]
    lines += ["```", ""]
    return "\n".join(lines)


def _cells(row: dict[str, Any]) -> list[str]:
    rep = row["report"]
    best = rep.optimal_thresholds.get("top1_loc")
    return [row["name"], *(f"{rep.metrics[k]:.1f}" if k in rep.metrics else "–" for k in REPORT_COLUMNS),
            f"{rep.threshold:.3f}", "–" if best is None else f"{best:.3f}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--run", action="append", required=True, metavar="NAME=RUN", help="repeat per method")
    parser.add_argument("--out", type=Path, default=Path("docs/results.md"))
    parser.add_argument("--json-dir", type=Path, default=None, help="also keep each run's eval JSON here")
    parser.add_argument("--criterion", default="top1_loc", choices=("top1_loc", "gt_known_loc", "maxboxacc"))
    parser.add_argument("--keep-threshold", action="store_true", help="reuse RUN/threshold.json when present")
    args = parser.parse_args(argv)
    setup_logging()
    os.environ.setdefault("TEDLOC_NO_PROGRESS", "1")
    try:
        runs = [_parse_run(spec) for spec in args.run]
        rows = [evaluate_run(name, run, args.data, args.criterion, args.keep_threshold, args.json_dir) for name, run in runs]
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = markdown(rows, args.data, ["benchmarks/compare_methods.py", *(argv if argv is not None else sys.argv[1:])])
    atomic_write_text(args.out, text)
    print(text)
    return 0


def _parse_run(spec: str) -> tuple[str, Path]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise UserError(f"--run {spec!r}: write NAME=RUN_FOLDER, e.g. --run TeD-Loc=runs/tedloc")
    return name, Path(path)


if __name__ == "__main__":
    raise SystemExit(main())
