"""`train --seed S` is bit-reproducible on CPU: two runs, identical metrics.jsonl (timings aside) and weights,
also when the first run computes the class anchors and the second finds them cached."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from tinyrun import make_tiny_run  # noqa: E402

TIMINGS = ("img_per_s", "epoch_time_s")


def metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows]


def test_same_seed_same_metrics_and_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # empty: the first run computes the anchors
    runs = [make_tiny_run(tmp_path, out=str(tmp_path / name), epochs=2, seed=3) for name in ("a", "b")]
    assert (tmp_path / "xdg" / "tedloc-edge" / "anchors").is_dir()  # the second run read them from there
    first, second = (metrics(r) for r in runs)
    assert len(first) == 2 and first == second
    a, b = (torch.load(r / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["model"] for r in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = make_tiny_run(tmp_path, out=str(tmp_path / "c"), epochs=2, seed=4)
    assert metrics(other) != first  # the seed matters
