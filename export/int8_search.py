"""Sensitivity-guided mixed precision: find the quantized layers that hurt, keep the fewest of them float.

When the INT8 gate (`int8_gate`) fails, or on ``--int8-search``:

1. **Sensitivity.** Each quantized layer (a Conv/MatMul/Gemm with the activation ORT folds into it, or an
   Add/Concat/pool of its own: `int8.quantized_units`) is quantized ALONE, the rest of the graph float, and
   run on the val images (the first `RANK_IMAGES`). Its damage is measured against the fp32 model with no
   labels, on both outputs: the protocol-normalized fg_map (min-max per image, mean absolute difference) and
   the class posterior (KL of softmax(logits)), each as a share of what the fully quantized model loses, then
   summed. Labels are
   left to the gate: per-layer MaxBoxAcc moves by whole images and cannot rank 50 layers on 80 images.
   Models with more than `RANK_EVALS` layers are ranked by bisection: contiguous groups first (as
   Polygraphy's ``debug precision`` bisects over the layer order), then the layers of the worst groups.
2. **Fewest float layers.** The most harmful k layers are kept float, k = 1, 2, 4, ... up to the budget
   (``--int8-max-float``), until the gate passes; then k is bisected down between the last failing and the
   first passing count. Calibration runs once (`Int8Quantizer` reuses ORT's calibration cache). If no k
   within the budget passes, the same (ranking kept) with each other calibrator of `SEARCH_CALIBRATORS`.
3. **Record.** The kept-float layers, the sensitivity ranking, every gate tried and images/s of the full
   and the mixed model (measured side by side) go in the bundle's ``extra["int8_gate"]["search"]``, and the
   node names in ``extra["int8_kept_float"]``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from tedloc_edge.export.int8 import Int8Quantizer
from tedloc_edge.export.int8_gate import GateResult, score_gate

logger = logging.getLogger(__name__)

RANK_EVALS = 64  # at most this many one-layer quantizations before ranking by groups
DEFAULT_MAX_FLOAT = 8  # budget of float layers (--int8-max-float)
RANK_IMAGES = 128  # val images the ranking runs on: bounds its time on a large val split (the gate scores all)
# calibrators the search tries, in order, after the default one (benchmarks/bench_int8.py measured them)
SEARCH_CALIBRATORS = {"cpu": ("minmax", "percentile"), "tensorrt": ("minmax-mean", "minmax")}
Outputs = tuple[np.ndarray, np.ndarray]  # fg_map (N, gh, gw), logits (N, C)


@dataclass(frozen=True)
class LayerSensitivity:
    nodes: tuple[str, ...]
    op: str
    map_share: float  # this layer's fg_map error, alone, as a share of the full int8 model's
    logit_share: float  # the same for the class posterior's KL

    @property
    def score(self) -> float:
        return self.map_share + self.logit_share

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.nodes[0], "op": self.op, "map": round(self.map_share, 4), "logits": round(self.logit_share, 4)}


@dataclass(frozen=True)
class Step:
    calibrator: str
    kept: int  # the worst `kept` layers float
    gate: GateResult


@dataclass
class SearchReport:
    layers: int  # quantized layers in the model
    budget: int
    sensitivities: list[LayerSensitivity]  # worst first
    steps: list[Step] = field(default_factory=list)  # in the order tried
    chosen: Step | None = None  # the passing model kept (None: none passed)
    speed: tuple[float, float] | None = None  # img/s of the first model tried and of the chosen one, side by side
    seconds: float = 0.0

    @property
    def kept(self) -> int:
        return self.chosen.kept if self.chosen else 0

    @property
    def kept_float(self) -> list[str]:
        return [n for s in self.sensitivities[: self.kept] for n in s.nodes]

    @property
    def passed(self) -> bool:
        return self.chosen is not None and self.chosen.gate.passed

    def summary(self) -> str:
        names = ", ".join(s.nodes[0] for s in self.sensitivities[: self.kept]) or "none"
        tried = ", ".join(f"{s.calibrator} {s.kept}: {'pass' if s.gate.passed else 'fail'}" for s in self.steps)
        speed = f"; img/s full int8 {self.speed[0]:.1f} -> {self.speed[1]:.1f}" if self.speed else ""
        chosen = f"{self.chosen.calibrator} calibration, {self.kept} layers kept float ({names})" if self.chosen else "nothing passed"
        return f"int8 search over {self.layers} layers ({self.seconds:.0f} s): {chosen}; tried (calibrator, layers float): {tried}{speed}"

    def table(self, rows: int = 12) -> str:
        lines = ["| rank | layer | op | fg_map share | logits share | kept float |", "|---|---|---|---|---|---|"]
        for i, s in enumerate(self.sensitivities[:rows], 1):
            lines.append(f"| {i} | {s.nodes[0]} | {s.op} | {s.map_share:.3f} | {s.logit_share:.3f} | {'yes' if i <= self.kept else ''} |")
        return "\n".join(lines)

    def to_dict(self, rows: int = 12) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "budget": self.budget,
            "calibrator": self.chosen.calibrator if self.chosen else None,
            "kept_float": [s.nodes[0] for s in self.sensitivities[: self.kept]],
            "tried": [{"calibrator": s.calibrator, "kept_float": s.kept, "passed": s.gate.passed,
                       "drops": {m: round(d, 4) for m, d in s.gate.drops.items()}} for s in self.steps],
            "sensitivity": [s.to_dict() for s in self.sensitivities[:rows]],
            "img_per_s": {"full_int8": round(self.speed[0], 1), "chosen": round(self.speed[1], 1)} if self.speed else None,
            "seconds": round(self.seconds, 1),
        }


# ------------------------------------------------------------------------------------------ measuring


def run_model(model: onnx.ModelProto | Path, images: np.ndarray, batch: int = 16) -> Outputs:
    """fg_map and logits of an ONNX model (proto or file) on uint8 NHWC images, ONNX Runtime CPU."""
    import onnxruntime as ort

    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    parts = [session.run(["fg_map", "logits"], {"images": images[i : i + batch]}) for i in range(0, len(images), batch)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def output_errors(ref: Outputs, got: Outputs) -> tuple[float, float]:
    """(mean |difference| of the min-max normalized maps, mean KL(softmax ref || softmax got))."""
    def normalize(maps: np.ndarray) -> np.ndarray:
        flat = maps.reshape(len(maps), -1).astype(np.float64)
        lo, hi = flat.min(1, keepdims=True), flat.max(1, keepdims=True)
        return (flat - lo) / np.maximum(hi - lo, 1e-12)

    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64) - x.max(1, keepdims=True)
        return x - np.log(np.exp(x).sum(1, keepdims=True))

    map_err = float(np.abs(normalize(ref[0]) - normalize(got[0])).mean())
    lp, lq = log_softmax(ref[1]), log_softmax(got[1])
    kl = float((np.exp(lp) * (lp - lq)).sum(1).mean())
    return map_err, kl


def images_per_second(models: Sequence[onnx.ModelProto], batch: np.ndarray, rounds: int = 3, seconds: float = 1.0) -> list[float]:
    """img/s of each model on `batch` (ONNX Runtime CPU, default threads), rounds interleaved, medians."""
    import onnxruntime as ort

    sessions = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]) for m in models]
    return session_rates(sessions, batch, rounds, seconds)


def session_rates(sessions: Sequence[Any], batch: np.ndarray, rounds: int, seconds: float,
                  clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """img/s of each ONNX Runtime session on `batch`: one warm-up call, then `seconds` of calls per round, rounds
    interleaved so a load change on a shared machine hits every session alike; the median round of each.
    `clock`: wall time by default; `time.process_time` counts this process's CPU-seconds only (one thread)."""
    rates: list[list[float]] = [[] for _ in sessions]
    for _ in range(rounds):
        for session, rate in zip(sessions, rates):
            session.run(None, {"images": batch})
            count, start = 0, clock()
            while (elapsed := clock() - start) < seconds:
                session.run(None, {"images": batch})
                count += len(batch)
            rate.append(count / max(elapsed, 1e-9))
    return [float(np.median(r)) for r in rates]


def rank_layers(units: list[tuple[str, ...]], damage: Callable[[list[str]], tuple[float, float]],
                ops: dict[str, str], max_evals: int = RANK_EVALS) -> list[LayerSensitivity]:
    """Every unit's sensitivity, worst first. `damage(nodes)` quantizes only `nodes` and returns its
    (map, logit) error shares. With more units than `max_evals`, contiguous groups are measured first and only
    the units of the worst groups one by one; the others inherit their group's share split evenly."""
    def measure(group: Sequence[tuple[str, ...]]) -> tuple[float, float]:
        return damage([n for unit in group for n in unit])

    if len(units) <= max_evals:
        shares = {unit: measure([unit]) for unit in units}
    else:
        size = math.ceil(len(units) / max(1, max_evals // 2))
        groups = [units[i : i + size] for i in range(0, len(units), size)]
        group_shares = [measure(g) for g in groups]
        left = max_evals - len(groups)
        shares = {}
        for i in sorted(range(len(groups)), key=lambda i: -sum(group_shares[i])):
            if len(groups[i]) <= left:  # the worst groups that the budget allows, one layer at a time
                left -= len(groups[i])
                shares.update({unit: measure([unit]) for unit in groups[i]})
            else:
                split = (group_shares[i][0] / len(groups[i]), group_shares[i][1] / len(groups[i]))
                shares.update({unit: split for unit in groups[i]})
    ranked = [LayerSensitivity(unit, ops.get(unit[0], "?"), *shares[unit]) for unit in units]
    return sorted(ranked, key=lambda s: -s.score)


# ------------------------------------------------------------------------------------------ searching


def search(quantizer: Int8Quantizer, fp32_path: Path, fp32_scores: Any, images: np.ndarray, split: Any, max_drop: float,
           budget: int, full_gate: GateResult, alternatives: Sequence[str] = ()) -> tuple[onnx.ModelProto | None, SearchReport]:
    """Rank the layers with `quantizer`'s calibration, then keep the fewest worst ones float until the gate
    passes; if none within the budget does, the same with each calibrator of `alternatives` (module docstring).
    Returns the passing model (None when nothing passed) and the report."""
    start = time.perf_counter()
    ref = run_model(fp32_path, images)
    full = quantizer.quantize()
    full_map, full_kl = output_errors(ref, run_model(full, images))
    units = quantizer.units()
    ops = {n.name: n.op_type for n in (quantizer.pre_model.graph.node if quantizer.pre_model else [])}

    def damage(nodes: list[str]) -> tuple[float, float]:
        err_map, err_kl = output_errors(ref, run_model(quantizer.quantize(only=nodes), images))
        return err_map / max(full_map, 1e-12), err_kl / max(full_kl, 1e-12)

    logger.info("int8 search: ranking %d quantized layers by their damage alone on %d val images", len(units), len(images))
    report = SearchReport(len(units), min(budget, len(units)), rank_layers(units, damage, ops))
    chosen = None
    if full_gate.passed:  # --int8-search on a passing model: the ranking only
        report.steps.append(Step(quantizer.calibrator, 0, full_gate))
        report.chosen, chosen = report.steps[-1], full
    for name in ([] if full_gate.passed else [quantizer.calibrator, *alternatives]):
        if name == quantizer.calibrator:
            report.steps.append(Step(name, 0, full_gate))
            chosen = fewest_float(quantizer, report, fp32_scores, split, max_drop)
        else:
            with Int8Quantizer(quantizer.fp32, quantizer.meta, quantizer.images, quantizer.calibration_hash, quantizer.mode,
                               name) as other:
                chosen = fewest_float(other, report, fp32_scores, split, max_drop, first=0)
        if chosen is not None:
            break
    if chosen is not None and chosen is not full:
        report.speed = tuple(images_per_second([full, chosen], images[: min(8, len(images))]))  # type: ignore[assignment]
    report.seconds = time.perf_counter() - start
    return chosen, report


def fewest_float(quantizer: Int8Quantizer, report: SearchReport, fp32_scores: Any, split: Any, max_drop: float,
                 first: int = 1) -> onnx.ModelProto | None:
    """The model with the fewest of the report's worst layers float that passes the gate: k = `first`, then
    1, 2, 4, ... up to the budget, then k bisected down between the last failing and the first passing count."""
    models: dict[int, onnx.ModelProto] = {}

    def attempt(k: int) -> bool:
        model = quantizer.quantize(keep_float=[n for s in report.sensitivities[:k] for n in s.nodes])
        path = quantizer.folder / f"search_{k}.onnx"
        onnx.save_model(model, str(path))
        result = score_gate(fp32_scores, path, split, max_drop)
        report.steps.append(Step(quantizer.calibrator, k, result))
        logger.info("int8 search: %s calibration, %d layer(s) kept float: %s", quantizer.calibrator, k, result.summary())
        if result.passed:
            models[k] = model
        return result.passed

    fail, k, passing = -1, first, None
    while passing is None and k <= report.budget:
        if attempt(k):
            passing = k
        else:
            fail, k = k, (report.budget + 1 if k == report.budget else min(max(2 * k, 1), report.budget))
    while passing is not None and passing - fail > 1 and passing - 1 > max(fail, 0):  # the fewest float layers that pass
        mid = (max(fail, 0) + passing) // 2
        if attempt(mid):
            passing = mid
        else:
            fail = mid
    if passing is None:
        return None
    report.chosen = next(s for s in reversed(report.steps) if s.calibrator == quantizer.calibrator and s.kept == passing)
    return models[passing]


# ------------------------------------------------------------------------------------------ the export step


def quantize_gated(fp32: onnx.ModelProto, meta: Any, images: np.ndarray, calibration_hash: str, opts: Any,
                   data_root: Path | None, label: Path) -> tuple[onnx.ModelProto, GateResult | None]:
    """The export's INT8 step: quantize, gate on the run's val split, search when the gate fails (or on
    ``--int8-search``), enforce, and record the gate (and search) in the model. `opts` is the export's
    ExportOptions; `data_root` the run's dataset (None: not on this machine)."""
    from tedloc_edge.datasets import open_split
    from tedloc_edge.errors import UserError
    from tedloc_edge.export.int8_gate import enforce, evaluate_model, power_note
    from tedloc_edge.export.onnx_export import add_to_extra

    budget = DEFAULT_MAX_FLOAT if getattr(opts, "int8_max_float", None) is None else int(opts.int8_max_float)
    if budget < 0:
        raise UserError(f"--int8-max-float {budget} must be >= 0 (the most layers the int8 search may keep float)")
    with Int8Quantizer(fp32, meta, images, calibration_hash, opts.int8_mode or "cpu") as quantizer:
        proto = quantizer.quantize()
        logger.info("int8 (%s): %d calibration images (%s, %.1f s), %d head nodes kept float", quantizer.mode, len(images),
                    quantizer.calibrator, quantizer.calibration_seconds, len(quantizer.head))
        if data_root is None:
            if opts.int8_allow_drop:
                logger.warning("int8 accuracy gate skipped: the run's dataset is not on this machine (--int8-allow-drop)")
                return proto, None
            raise UserError(f"{label}: the int8 accuracy gate needs the run's val split, whose dataset (config.json 'data') "
                            "is not here; export where the dataset is, or pass --int8-allow-drop to skip the gate")
        split = open_split(data_root, "val")
        note = power_note(len(split), opts.int8_max_drop)
        if note:
            logger.warning("int8 gate: %s", note)
        fp32_path, int8_path = quantizer.folder / "reference_fp32.onnx", quantizer.folder / "full_int8.onnx"
        onnx.save_model(fp32, str(fp32_path))
        onnx.save_model(proto, str(int8_path))
        logger.info("int8 gate: scoring fp32 and int8 on %d val images", len(split))
        ref = evaluate_model(fp32_path, split)
        result = score_gate(ref, int8_path, split, opts.int8_max_drop)
        report = None
        if opts.int8_search or (opts.int8_search is None and not result.passed):
            if not result.passed:
                logger.info("int8 gate failed (%s); searching for the layers to keep float", result.summary())
            from tedloc_edge.export.images import load_batch

            val_images = load_batch([s.path for s in split.samples[:RANK_IMAGES]], meta)
            alternatives = [c for c in SEARCH_CALIBRATORS[quantizer.mode] if c != quantizer.calibrator]
            chosen, report = search(quantizer, fp32_path, ref, val_images, split, opts.int8_max_drop, budget, result, alternatives)
            logger.info("int8 layer sensitivity (worst first):\n%s", report.table())
            logger.info("%s", report.summary())
            if chosen is not None and report.chosen is not None:
                proto, result = chosen, report.chosen.gate
            result = replace(result, search=report.to_dict())
        failed = "" if report is None or report.passed else f"keeping up to {report.budget} of {report.layers} layers float did not pass ({report.summary()})"
        enforce(result, opts.int8_allow_drop, label, note=failed)
        return add_to_extra(proto, int8_gate=result.to_dict()), result
