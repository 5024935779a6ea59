"""Train with the default settings on a dataset of many classes (a class-count check, not an accuracy figure).

    python benchmarks/many_classes.py --data runs/data0 --classes 150 --out runs/c150

The synthetic benchmark has at most 24 classes, so this copies a wsolevaluation-layout dataset's metadata with
image i of each split relabelled to class i mod N (N class names; the images folder is linked, not copied),
then runs `tedloc-edge train --data OUT/data --out OUT/run` with every default: the anchors' width d becomes
max(128, the next multiple of 64 >= N). Prints the resolved embed_dim and the last metrics line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


def relabel(src: Path, dst: Path, classes: int) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    (dst / "metadata").mkdir(parents=True)
    os.symlink((src / "images").resolve(), dst / "images")
    (dst / "classes.txt").write_text("".join(f"class {i:03d}\n" for i in range(classes)), encoding="utf-8")
    for split_dir in sorted((src / "metadata").iterdir()):
        shutil.copytree(split_dir, dst / "metadata" / split_dir.name)
        ids = (split_dir / "image_ids.txt").read_text(encoding="utf-8").split()
        lines = "".join(f"{image_id},{i % classes}\n" for i, image_id in enumerate(ids))
        (dst / "metadata" / split_dir.name / "class_labels.txt").write_text(lines, encoding="utf-8")
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a wsolevaluation-layout dataset (e.g. data synth)")
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument("--out", type=Path, default=Path("runs/many_classes"))
    args = parser.parse_args(argv)
    data = relabel(args.data, args.out / "data", args.classes)
    cli = Path(sys.executable).with_name("tedloc-edge")
    cmd = [str(cli), "train", "--data", str(data), "--out", str(args.out / "run"), "--exist-ok"]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    config = json.loads((args.out / "run" / "config.json").read_text())
    last = (args.out / "run" / "metrics.jsonl").read_text().splitlines()[-1]
    print(f"classes {args.classes}: embed_dim {config['embed_dim']}, fg_rule {config['fg_rule']}; last epoch: {last}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
