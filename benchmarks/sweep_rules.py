"""Choose a training setting on VAL only: train one run per value, keep the one with the best val Top-1 Loc.

    python benchmarks/sweep_rules.py --data DATA --out runs/sweep --seed 0 \
        --values fg_rule=otsu,frac:0.6,frac:0.7,frac:0.8,quantile:0.85

Each value is a full `tedloc-edge train` run (the TrainConfig defaults plus `--set key=value` overrides and the
swept key), sequentially, in one process. The frozen backbone's feature cache and the cue cache of the first run
are copied into the next ones (their keys make them valid: same images, backbone and cues), so a sweep costs
the training epochs only. The score of a value is the val metric best.pt was chosen by (val Top-1 Loc, maximized
over epochs, the protocol's rule); ties go to val GT-known Loc. The test split is never read.
Writes OUT/sweep.json and OUT/sweep.md (the table docs/results.md quotes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tedloc_edge.files import atomic_write_text  # noqa: E402


def parse_value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def best_record(run: Path) -> dict[str, Any]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    best = [r for r in records if r.get("best")][-1]  # the epoch best.pt holds
    return {"epoch": best["epoch"], "val_top1_loc": best.get("val_top1_loc"),
            "val_gt_known_loc": best.get("val_gt_known_loc"), "val_top1_cls": best.get("val_top1_cls"),
            "train_top1": records[-1]["train_top1"],
            "epoch_time_s": sum(r["epoch_time_s"] for r in records) / len(records)}


def seed_caches(src: Path, dst: Path) -> None:
    """Give a new run the feature and cue caches of an earlier one on the same data and backbone."""
    if (src / "cache").is_dir() and not (dst / "cache").exists():
        shutil.copytree(src / "cache", dst / "cache")
    (dst / "cues").mkdir(parents=True, exist_ok=True)
    for f in (src / "cues").glob("*-*.*"):
        if f.suffix in (".npy", ".json") and f.name != "cues.npy":
            shutil.copy2(f, dst / "cues" / f.name)


def sweep(data: Path, out: Path, key: str, values: list[str], seed: int, overrides: dict[str, Any]) -> dict:
    from tedloc_edge.train.config import TrainConfig
    from tedloc_edge.train.loop import train

    rows, first = [], None
    for value in values:
        run = out / f"{key}={value}".replace(":", "_").replace("/", "_")
        run.mkdir(parents=True, exist_ok=True)
        if first is not None:
            seed_caches(first, run)
        cfg = TrainConfig(data=str(data.resolve()), out=str(run), seed=seed, exist_ok=True,
                          **{**overrides, key: parse_value(value)})
        train(cfg)
        first = first or run
        rows.append({"value": value, "run": str(run), **best_record(run)})
    chosen = max(rows, key=lambda r: (r["val_top1_loc"], r["val_gt_known_loc"]))
    return {"key": key, "seed": seed, "data": str(data), "overrides": overrides, "rows": rows, "chosen": chosen["value"]}


def markdown(doc: dict, argv: list[str]) -> str:
    lines = [f"Val sweep of `{doc['key']}` (seed {doc['seed']}, {len(doc['rows'])} runs; best.pt's val figures, percent):",
             "", f"| {doc['key']} | val Top-1 Loc | val GT-known Loc | val top-1 cls | best epoch | s/epoch |",
             "|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        mark = " (chosen)" if r["value"] == doc["chosen"] else ""
        lines.append(f"| {r['value']}{mark} | {r['val_top1_loc']:.1f} | {r['val_gt_known_loc']:.1f} | "
                     f"{r['val_top1_cls']:.1f} | {r['epoch']} | {r['epoch_time_s']:.1f} |")
    lines += ["", "`python " + " ".join(argv) + "`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("runs/sweep"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--values", required=True, metavar="KEY=V1,V2,...", help="a TrainConfig field and its values")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="fixed overrides, repeatable")
    args = parser.parse_args(argv)
    os.environ.setdefault("TEDLOC_NO_PROGRESS", "1")
    key, _, values = args.values.partition("=")
    overrides = {k: parse_value(v) for k, _, v in (s.partition("=") for s in args.set)}
    doc = sweep(args.data, args.out, key, values.split(","), args.seed, overrides)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "sweep.json", json.dumps(doc, indent=2))
    text = markdown(doc, ["benchmarks/sweep_rules.py", *(argv if argv is not None else sys.argv[1:])])
    atomic_write_text(args.out / "sweep.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
