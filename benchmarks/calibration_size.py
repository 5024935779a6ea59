"""How many val images the presence threshold needs: the test error rates it gives when picked on fewer.

    python benchmarks/calibration_size.py runs/seeds/seed0/models/tedloc_fp32.onnx --data runs/seeds/seed0/data
        [--sizes 120:160 240:240] [--draws 200] [--markdown FILE]

Every val and test image of the dataset (object images and object-free scenes) is scored once through the
runtime (`Localizer.forward_maps`, presence = the top-4 mean of the raw map, as `eval` scores it). For each
val size OBJECTS:EMPTY, `--draws` random subsets of val (seeded: the same command gives the same table) each pick
a threshold with `calibrate_presence`, as `eval --calibrate` does, and the test split is scored at it: the
larger of its two error rates (empty scenes reported present, object images lost), as median and 10th-90th
percentile over the draws, and the share of draws whose test rates are both at most 5%. The whole val split is
one row (one draw), and the threshold picked on the test split itself the last: no val split does better, so
that row is the model's own limit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tedloc_edge.benchrows import markdown_table, publish_markdown  # noqa: E402

TARGET = 0.05  # issue 24: at most 5% of empty frames present and of object frames lost


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path, help="an exported ONNX model (or a run folder) of the dataset's classes")
    p.add_argument("--data", type=Path, required=True, help="dataset with val, val_negatives, test, test_negatives")
    p.add_argument("--sizes", nargs="+", default=["120:160", "240:240"], help="val subsets, OBJECTS:EMPTY images")
    p.add_argument("--draws", type=int, default=200, help="random subsets per size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--markdown", type=Path, help="write the table to this file as well")
    return p.parse_args(argv)


def split_scores(model: Path, data: Path) -> dict[str, np.ndarray]:
    """Presence scores of the val and test splits and their object-free scenes."""
    from tedloc_edge.app.eval_cli import load_predictor
    from tedloc_edge.datasets import open_negatives, open_split
    from tedloc_edge.presence import negative_scores

    predictor = load_predictor(model, "auto", 16)
    splits = {"val": open_split(data, "val"), "val_negatives": open_negatives(data, "val"),
              "test": open_split(data, "test"), "test_negatives": open_negatives(data, "test")}
    # negative_scores reads only the raw maps, so it scores object images as well
    return {name: negative_scores(predictor, split.samples) for name, split in splits.items()}


def limit_row(scores: dict[str, np.ndarray]) -> list[str]:
    """The threshold picked on test itself: the smallest larger-error-rate any threshold gives there."""
    from tedloc_edge.presence import calibrate_presence, rates

    threshold = calibrate_presence(scores["test"], scores["test_negatives"])
    fp, miss = rates(scores["test"], scores["test_negatives"], threshold)
    worst = 100 * max(fp, miss)
    return ["none: picked on test itself (the model's limit)", "1", f"{threshold:.4f}", f"{worst:.1f}%",
            f"{worst:.1f}-{worst:.1f}%", "100%" if max(fp, miss) <= TARGET else "0%"]


def size_row(scores: dict[str, np.ndarray], objects: int, empty: int, draws: int, rng: np.random.Generator) -> list[str]:
    from tedloc_edge.presence import calibrate_presence, rates

    val, val_empty = scores["val"], scores["val_negatives"]
    if objects > len(val) or empty > len(val_empty):
        raise SystemExit(f"--sizes {objects}:{empty}: val has {len(val)} object images and {len(val_empty)} empty ones")
    whole = objects == len(val) and empty == len(val_empty)
    worst, both, thresholds = [], 0, []
    for _ in range(1 if whole else draws):
        pos = val if whole else rng.choice(val, objects, replace=False)
        neg = val_empty if whole else rng.choice(val_empty, empty, replace=False)
        threshold = calibrate_presence(pos, neg)
        fp, miss = rates(scores["test"], scores["test_negatives"], threshold)
        worst.append(max(fp, miss))
        both += fp <= TARGET and miss <= TARGET
        thresholds.append(threshold)
    p10, median, p90 = np.percentile(100 * np.array(worst), [10, 50, 90])
    return [f"{objects} + {empty}" + (" (all of val)" if whole else ""), str(len(worst)), f"{np.median(thresholds):.4f}",
            f"{median:.1f}%", f"{p10:.1f}-{p90:.1f}%", f"{100 * both / len(worst):.0f}%"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scores = split_scores(args.model, args.data)
    rng = np.random.default_rng(args.seed)
    sizes = [tuple(int(v) for v in s.split(":")) for s in args.sizes] + [(len(scores["val"]), len(scores["val_negatives"]))]
    rows = [size_row(scores, objects, empty, args.draws, rng) for objects, empty in sizes] + [limit_row(scores)]
    text = (f"`python benchmarks/calibration_size.py {args.model} --data {args.data} --sizes {' '.join(args.sizes)} "
            f"--draws {args.draws} --seed {args.seed}`; test: {len(scores['test'])} object images + "
            f"{len(scores['test_negatives'])} empty scenes.\n\n" + "\n".join(markdown_table(
                ["val images (objects + empty)", "draws", "threshold (median)", "test: larger error rate (median)",
                 "10th-90th percentile", "draws with both rates <= 5%"], rows)))
    publish_markdown(text, args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
