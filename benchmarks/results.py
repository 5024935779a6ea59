"""Regenerate docs/results.md and the README's figures line: train, evaluate, write the tables, in one command.

    python benchmarks/results.py --out runs/results --sweep runs/sweep0/sweep.md --tries runs/tries0/sweep.md

For each seed (default 0 and 1): the synthetic benchmark (`tedloc-edge data synth DATA --classes 8 --train 400
--val 80 --test 160 --seed S`), TeD-Loc and the CAM baseline with the default TrainConfig and `--seed S`
(`tedloc-edge train --data DATA --out RUN --method M --seed S`), the deployment threshold calibrated on val and
one evaluation on test (benchmarks/compare_methods.py's `evaluate_run`, the same as `tedloc-edge eval`). The
tables give the mean of the seeds and each seed's figure. `--sweep` / `--tries` paste the val tables written
by benchmarks/sweep_rules.py (each carries its own command). `--reuse` keeps runs that already have best.pt.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from tedloc_edge.files import atomic_write_text  # noqa: E402

SIZES = dict(classes=8, train=400, val=80, test=160, negatives=160)  # as the demo: object-free scenes per split
METHODS = (("TeD-Loc", "tedloc"), ("CAM", "cam"))
COLUMNS = (("maxboxacc", "MaxBoxAcc"), ("maxboxacc_v2", "MaxBoxAccV2"), ("gt_known_loc", "GT-known Loc"),
           ("top1_loc", "Top-1 Loc"), ("top5_loc", "Top-5 Loc"), ("top1_cls", "Top-1 cls"), ("pxap", "PxAP"),
           ("top1_loc_at_threshold", "Top-1 Loc @ val τ"))
NOTES = {
    "sweep": "Each row is one 10-epoch run on seed 0's val split only (test untouched); `otsu` is the old default "
             "with the background-tie fix. The chosen rule is `AUTO_FG_RULES` in `train/config.py` (what "
             "`--fg-rule auto` gives DDT cues); CLIP-ES and the other cues keep Otsu, the paper's rule.",
    "tries": "A setting replaces the default only when it beats it on val Top-1 Loc by more than one image "
             "(1.25 points on 80 images) without losing GT-known Loc; the defaults in `train/config.py` are what was "
             "kept. \"(chosen)\" marks the sweep's best row, not the default. The 0 rows of `finetune_stages` and "
             "`dropout` are the default run (bit-reproducible). `finetune_stages=1` trains the backbone's last stage "
             "(the cache holds its input): it costs about 2.2x the head's step on this CPU (timed alone, same batch), "
             "over the 1.5x budget, and loses on val; `finetune_stages=2` (5 more blocks per step) was stopped "
             "before it finished, unmeasured. "
             "Not tried: cached random-resized-crop views (each view needs its own cue crop and feature cache).",
}
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def run_seed(seed: int, out: Path, reuse: bool) -> list[dict[str, Any]]:
    from compare_methods import evaluate_run
    from sweep_rules import seed_caches

    from tedloc_edge.train.config import TrainConfig
    from tedloc_edge.train.loop import train
    from tedloc_edge.train.synth import generate

    data = out / f"seed{seed}" / "data"
    if not (data / "classes.txt").is_file():
        generate(data, seed=seed, show_progress=False, exist_ok=True, **SIZES)
    rows, first = [], None
    for name, method in METHODS:
        run = out / f"seed{seed}" / method
        if first is not None:  # same images and backbone: the frozen features are encoded once per seed
            run.mkdir(parents=True, exist_ok=True)
            seed_caches(first, run)
        first = run
        if not (reuse and (run / "checkpoints" / "best.pt").is_file()):
            train(TrainConfig(data=str(data.resolve()), out=str(run), method=method, seed=seed, exist_ok=True))
        row = evaluate_run(name, run, data, "top1_loc", keep=False, json_dir=None)
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        config = json.loads((run / "config.json").read_text())
        rows.append({"name": name, "seed": seed, "metrics": row["report"].metrics,
                     "threshold": row["report"].threshold,
                     "epoch_s": sum(r["epoch_time_s"] for r in records) / len(records),
                     "fg_rule": config.get("fg_rule"), "bg_rule": config.get("bg_rule"),
                     "best_epoch": max((r for r in records if r.get("best")), key=lambda r: r["epoch"])["epoch"]})
    return rows


def cell(values: list[float]) -> str:
    mean = sum(values) / len(values)
    return f"**{mean:.1f}** ({' / '.join(f'{v:.1f}' for v in values)})"


def tables(rows: list[dict[str, Any]], seeds: list[int]) -> tuple[str, dict[str, dict[str, float]]]:
    lines = ["| method | " + " | ".join(t for _, t in COLUMNS) + " | val τ | s/epoch |", "|---" * (len(COLUMNS) + 3) + "|"]
    means: dict[str, dict[str, float]] = {}
    for name, _ in METHODS:
        mine = [next(r for r in rows if r["name"] == name and r["seed"] == s) for s in seeds]
        cells = [cell([r["metrics"][k] for r in mine]) if all(k in r["metrics"] for r in mine) else "–" for k, _ in COLUMNS]
        taus = " / ".join(f"{r['threshold']:.3f}" for r in mine)
        secs = " / ".join(f"{r['epoch_s']:.1f}" for r in mine)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {taus} | {secs} |")
        means[name] = {k: sum(r["metrics"][k] for r in mine) / len(mine) for k, _ in COLUMNS if all(k in r["metrics"] for r in mine)}
    return "\n".join(lines), means


def document(rows: list[dict[str, Any]], seeds: list[int], argv: list[str], extras: dict[str, str]) -> tuple[str, dict]:
    table, means = tables(rows, seeds)
    ted = next(r for r in rows if r["name"] == "TeD-Loc")
    seed_list = " and ".join(str(s) for s in seeds)
    parts = [
        "# Results: TeD-Loc vs the CAM baseline (synthetic benchmark)",
        "",
        f"Written by `python {' '.join(argv)}`; do not edit by hand, rerun it.",
        "",
        "**These are synthetic-data numbers**, not CUB or ILSVRC results. No CUB, ILSVRC or CLIP weights are "
        "available on the machines this project is built on, so accuracy is measured on the project's own WSOL "
        "benchmark (`tedloc-edge data synth`): every object shares one body; the class is told only by a small head "
        "(18% of the object's pixels); objects vary in position, scale, aspect and rotation; backgrounds are "
        "cluttered, with headless bodies and lone heads as distractors.",
        "",
        f"Both methods: the same frozen backbone (`tf_efficientnet_lite0`, offline ImageNet weights), data "
        f"({SIZES['classes']} classes; {SIZES['train']} train / {SIZES['val']} val / {SIZES['test']} test images, plus "
        f"{SIZES['negatives']} object-free scenes per split: TeD-Loc's P_CL learns them as background, as `tedloc-edge "
        "demo` trains; CAM has no use for them; the WSOL metrics are on the object images only), "
        "224x224 input, 10 epochs, the default `tedloc-edge train` settings and the same harness. TeD-Loc's anchors "
        "come from a CLIP ViT-B-16 text tower with **random weights** (offline: no text semantics; QR still makes "
        f"them orthonormal); its cues are the offline DDT cues, foreground rule `{ted['fg_rule']}` (chosen on val, "
        f"below), background rule `{ted['bg_rule']}`. best.pt is chosen by val Top-1 Loc; the deployment threshold "
        "is calibrated on val; test is evaluated once. Metrics follow the wsolevaluation protocol "
        "(`tedloc_edge/metrics.py`).",
        "",
        f"## Test split, seeds {seed_list}: mean **bold**, then each seed (percent)",
        "",
        table,
        "",
        "s/epoch: mean training time per epoch on the CPU this ran on (cached features; shared machine, so noisy).",
        "160 test images: one image is 0.6 points. The val sweeps below were run before the object-free scenes joined "
        "the training set (on the same object images); without them the same defaults give TeD-Loc MaxBoxAcc 59.4 and "
        "Top-1 Loc 41.6 (mean of the same two seeds).",
        "",
    ]
    for title, key in (("Choosing the foreground rule on val", "sweep"), ("Classification headroom: what was tried (val)", "tries")):
        if key in extras:
            parts += [f"## {title}", "", extras[key].strip(), "", NOTES[key], ""]
    parts += [
        "## Reproduce",
        "",
        "```bash",
        f"python {' '.join(argv)}",
        "```",
        "or per seed S: `tedloc-edge data synth DATA --classes 8 --train 400 --val 80 --test 160 --seed S`, "
        "`tedloc-edge train --data DATA --out RUN --method tedloc|cam --seed S`, "
        "`tedloc-edge eval RUN --data DATA --split val --calibrate`, `tedloc-edge eval RUN --data DATA --split test`. "
        "`tedloc-edge demo` runs seed 0 end to end (with the ONNX fp32/INT8 exports in its report.md); "
        "`train --seed S` is bit-reproducible on CPU, so its TeD-Loc row is the seed-0 figure here.",
        "",
        "## Caveats",
        "",
        "- The anchors carry no text semantics (random CLIP weights) and the DDT cues also light the headless "
        "distractor bodies, so part of what TeD-Loc is taught is wrong. The paper's configuration "
        "(`--cue clip-es --clip-pretrained openai`) is implemented but not measured here (no weights offline).",
        "- Top-1 Loc is capped by classification (Top-1 cls column): the box can be right and the class wrong.",
        "",
    ]
    return "\n".join(parts), means


def readme_line(means: dict[str, dict[str, float]]) -> str:
    t, c = means["TeD-Loc"], means["CAM"]
    return (f"- `docs/results.md` (written by `benchmarks/results.py`): accuracy, TeD-Loc vs the CAM baseline on the "
            f"synthetic benchmark (same backbone, data and budget, mean of two seeds): MaxBoxAcc {t['maxboxacc']:.1f} vs "
            f"{c['maxboxacc']:.1f}, Top-1 Loc {t['top1_loc']:.1f} vs {c['top1_loc']:.1f}. Synthetic data: read that "
            "page's caveats before quoting it.")


def update_readme(path: Path, line: str) -> None:
    text = path.read_text(encoding="utf-8")
    block = f"{README_START}\n{line}\n{README_END}"
    if README_START in text:
        text = re.sub(re.escape(README_START) + ".*?" + re.escape(README_END), lambda _: block, text, flags=re.S)
    else:
        raise SystemExit(f"{path}: no {README_START} ... {README_END} block to rewrite")
    atomic_write_text(path, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/results"))
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "results.md")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--sweep", type=Path, help="sweep.md of the fg-rule val sweep (benchmarks/sweep_rules.py)")
    parser.add_argument("--tries", type=Path, nargs="*", default=[], help="sweep.md files of the classification tries")
    parser.add_argument("--reuse", action="store_true", help="keep runs that already have checkpoints/best.pt")
    args = parser.parse_args(argv)
    os.environ.setdefault("TEDLOC_NO_PROGRESS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = [row for seed in seeds for row in run_seed(seed, args.out, args.reuse)]
    extras = {}
    if args.sweep:
        extras["sweep"] = args.sweep.read_text(encoding="utf-8")
    if args.tries:
        extras["tries"] = "\n".join(p.read_text(encoding="utf-8") for p in args.tries)
    shown = ["benchmarks/results.py", *(argv if argv is not None else sys.argv[1:])]
    text, means = document(rows, seeds, shown, extras)
    atomic_write_text(args.doc, text)
    atomic_write_text(args.out / "results.json", json.dumps({"rows": rows, "means": means}, indent=2, default=float))
    update_readme(args.readme, readme_line(means))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
