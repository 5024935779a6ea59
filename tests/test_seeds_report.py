"""benchmarks/seeds.py's report: per-seed rows from the demo's eval JSONs and INT8 model, a refused INT8 export
reported as such, and drops as fp32 minus INT8 (the run itself is the demo's stages, tested by test_demo)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from runtime_models import fixture_meta, write_model

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "seeds.py"


def _load():
    spec = importlib.util.spec_from_file_location("seeds_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _seed_folder(root: Path, seed: int, top1_int8: float, refused: bool = False) -> None:
    out = root / f"seed{seed}"
    (out / "eval").mkdir(parents=True)
    for name, top1 in (("tedloc_torch", 70.0), ("tedloc_fp32", 70.0), ("tedloc_int8", top1_int8)):
        if refused and name == "tedloc_int8":
            continue
        doc = {"metrics": {"maxboxacc": 75.0, "top1_loc": top1, "top1_cls": 90.0},
               "presence": {"auroc": 0.98, "false_positive_rate": 2.5, "miss_rate": 6.25, "threshold": 0.9}}
        (out / "eval" / f"{name}.json").write_text(json.dumps(doc))
    if refused:
        (out / "models").mkdir()
        (out / "models" / "tedloc_int8.refused.txt").write_text("int8 gate refused\n")
        return
    gate = {"images": 120, "passed": True, "fp32": {"maxboxacc": 80.0, "top1_loc": 75.0},
            "int8": {"maxboxacc": 79.17, "top1_loc": 75.0}, "search": {"kept_float": ["a", "b"]}}
    write_model(out / "models" / "tedloc_int8.onnx", meta=fixture_meta(extra={"int8_gate": gate}))


def test_the_report_has_every_seed_its_gate_and_its_drops(tmp_path):
    seeds = _load()
    _seed_folder(tmp_path, 0, top1_int8=68.75)
    _seed_folder(tmp_path, 1, top1_int8=0.0, refused=True)
    text = seeds.report(tmp_path, [0, 1], "python benchmarks/seeds.py")
    assert "| 0 | ONNX INT8 | 75.00 | 68.75 | 90.00 | 0.980 | 2.5% | 6.2% | 0.900 |" in text
    assert "| 0 | 120 | 80.00 → 79.17 | 75.00 → 75.00 | pass | 2 |" in text
    assert "| 0 | +0.00 | +1.25 |" in text  # fp32 minus INT8: INT8 lost 1.25 points of Top-1 Loc
    assert "| 1 | – | – | – | refused | – |" in text and "| 1 | ONNX INT8 | – |" in text
    assert "| 1 | – | – |" in text
