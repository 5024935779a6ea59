"""`tedloc-edge eval`: score a run, a checkpoint, an exported model or saved maps with the WSOL protocol.

Thin: torch is imported only for a run folder or a .pt checkpoint, the runtime only when a model is scored
(its `Localizer` runs exported models and the torch run alike), matplotlib only for --plot.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tedloc_edge.console import next_commands, setup_logging, user_errors
from tedloc_edge.errors import UserError, first_line
from tedloc_edge.files import check_not_inputs, check_output
from tedloc_edge.metric_names import METRIC_NAMES
from tedloc_edge.rundir import RunDir

if TYPE_CHECKING:
    from tedloc_edge.runtime.localizer import Localizer

logger = logging.getLogger(__name__)

SPLITS = ("test", "val")
MODEL_SUFFIXES = (".onnx", ".plan", ".engine", ".trt")


def evaluate(
    target: Optional[Path] = typer.Argument(None, help="Run folder, checkpoint .pt, or exported .onnx / .plan / .engine. Omit with --maps."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset root (wsolevaluation layout or CUB-200-2011). Default: the run's training data."),
    split: Optional[str] = typer.Option(None, "--split", help="test, or val (calibration). Default: val with --calibrate, else test."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write every metric and the per-threshold curves."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="PNG: curves vs threshold and example boxes."),
    calibrate: bool = typer.Option(False, "--calibrate", help="Pick the deployment threshold on this (val) split; writes RUN/threshold.json."),
    criterion: str = typer.Option("top1_loc", "--criterion", help="Calibration curve: top1_loc, gt_known_loc or maxboxacc."),
    maps: Optional[Path] = typer.Option(None, "--maps", help="Score saved maps: DIR/<image id>.npy, any size and range."),
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="With --maps: lines 'image_id c1 c2 ...', classes best first."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Score the *_at_threshold metrics at this tau instead of the stored one."),
    negatives: Optional[Path] = typer.Option(None, "--negatives", help="Object-free images for presence (AUROC, false positives; with --calibrate its threshold): a folder of images, or a dataset root with <split>_negatives. Default: the dataset's own <split>_negatives."),
    presence_threshold: Optional[float] = typer.Option(None, "--presence-threshold", help="Score presence at this threshold instead of the stored one."),
    batch: int = typer.Option(32, "--batch", help="Images per forward pass."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (cuda:1 ...)."),
    examples: int = typer.Option(8, "--examples", help="Example images in the --plot grid."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Evaluate with the WSOL protocol (wsolevaluation): MaxBoxAcc, MaxBoxAccV2, Top-1/Top-5/GT-known Loc, PxAP;
    and presence (AUROC against object-free images, false-positive and miss rates at the stored threshold)."""
    with user_errors():
        setup_logging(verbose)
        split = split or ("val" if calibrate else "test")
        _check_options(target, split, criterion, calibrate, maps, predictions, threshold, batch)
        _check_presence_options(maps, negatives, presence_threshold)
        written = [p for p in (json_out, plot) if p is not None]
        if calibrate:
            written.append(threshold_dir(target, maps).threshold_file)
        data = data or run_data(target)
        check_not_inputs(written, eval_inputs(target, maps, predictions, data), "choose another path")
        for path in written:  # before the evaluation: its figures are not lost to an unwritable path afterwards
            check_output(path, True, "choose another path")
        from tedloc_edge.datasets import dataset_negatives, open_negatives, open_split
        from tedloc_edge.evaluate import evaluate_maps, evaluate_predictor

        data_split = open_split(data, split)
        empty = open_negatives(negatives, split) if negatives else (None if maps else dataset_negatives(data, split))
        if not data_split.has_boxes:
            raise UserError(f"{data}: split {split!r} has images without boxes; evaluation needs a box for every image")
        keep = max(examples, 0) if plot is not None else 0
        if maps is not None:
            tau, tau_source = _maps_threshold(maps, threshold, calibrate)
            report = evaluate_maps(maps, data_split, predictions, threshold=tau, threshold_source=tau_source,
                                   examples=keep)
        else:
            assert target is not None  # _check_options: a TARGET or --maps
            predictor = load_predictor(target, device, batch)
            report = evaluate_predictor(predictor, data_split, threshold=threshold, batch=batch, examples=keep,
                                        source=str(target), negatives=empty, presence_threshold=presence_threshold)
        print_report(report)
        if maps is None and report.presence is None:
            Console(highlight=False).print(f"presence: none for a {predictor.meta.map_kind} map (not a probability): "
                                           "every frame is reported present")
        _write_outputs(report, json_out, plot)
        if calibrate:
            _calibrate(report, criterion, threshold_dir(target, maps), target, data)


def _check_options(target: Optional[Path], split: str, criterion: str, calibrate: bool, maps: Optional[Path],
                   predictions: Optional[Path], threshold: Optional[float], batch: int) -> None:
    from tedloc_edge.metrics import CALIBRATION_CRITERIA

    if split not in SPLITS:
        raise UserError(f"--split {split!r}: choose one of {', '.join(SPLITS)}")
    if criterion not in CALIBRATION_CRITERIA:
        raise UserError(f"--criterion {criterion!r}: choose one of {', '.join(CALIBRATION_CRITERIA)}")
    if calibrate and split != "val":
        raise UserError("--calibrate picks the threshold on --split val (calibrating on test would leak the test set)")
    if (target is None) == (maps is None):
        raise UserError("give either a TARGET (run folder, .pt or exported model) or --maps DIR, not both or none")
    if predictions is not None and maps is None:
        raise UserError("--predictions goes with --maps; a model's own logits give its predictions")
    if threshold is not None and not 0.0 <= threshold < 1.0:
        raise UserError(f"--threshold {threshold}: must be in [0, 1)")
    if batch < 1:
        raise UserError(f"--batch {batch}: must be at least 1")


def _check_presence_options(maps: Optional[Path], negatives: Optional[Path], presence_threshold: Optional[float]) -> None:
    if maps is not None and (negatives is not None or presence_threshold is not None):
        raise UserError("--negatives and --presence-threshold score a model's raw maps; saved --maps have no presence")
    if presence_threshold is not None and not 0.0 <= presence_threshold <= 1.0:
        raise UserError(f"--presence-threshold {presence_threshold}: must be in [0, 1] (a foreground probability)")


def _maps_threshold(maps: Path, threshold: Optional[float], calibrate: bool) -> tuple[Optional[float], str]:
    """--threshold, else DIR/threshold.json from an earlier --calibrate on these maps' val split."""
    stored = None if threshold is not None or calibrate else RunDir(maps).read_threshold()
    return stored or (threshold, "given")


def eval_inputs(target: Optional[Path], maps: Optional[Path], predictions: Optional[Path], data: Path) -> list[Path]:
    """The files an evaluation reads that a --json or --plot path could name: the model or the run's checkpoints
    and config, the predictions, the saved maps, the dataset's class list and metadata."""
    found = [p for p in (target, predictions) if p is not None and p.is_file()]
    if target is not None and (target.is_dir() or target.suffix == ".pt"):
        run = RunDir.of(target)
        found += [run.config, run.path / "classes.txt", *run.checkpoints.glob("*.pt")]
    if maps is not None and maps.is_dir():
        found += list(maps.rglob("*.npy"))
    return found + list(data.glob("*.txt")) + list((data / "metadata").rglob("*.txt"))


def load_predictor(target: Path, device: str, batch: int) -> "Localizer":
    """The Localizer over a run folder or checkpoint (torch) or an exported model (runtime)."""
    if not target.exists():
        raise UserError(f"{target}: no such run folder or model file")
    from tedloc_edge.runtime import Localizer

    suffix = target.suffix.lower()
    if target.is_dir() or suffix == ".pt":
        try:
            from tedloc_edge.train.predict import TorchRunner
        except ImportError as exc:
            raise UserError(f"{target}: evaluating a run needs torch ({exc.name} is missing); "
                            "pip install 'tedloc-edge[train]', or evaluate an exported .onnx") from None
        run, checkpoint = (target, "best") if target.is_dir() else (RunDir.of(target).path, str(target))
        return Localizer(TorchRunner.from_run(run, checkpoint, device=device, max_batch=batch))
    if suffix in MODEL_SUFFIXES:
        return Localizer(target, backend="auto", device=device)
    raise UserError(f"{target}: not a run folder, .pt checkpoint or {'/'.join(MODEL_SUFFIXES)} model")


def run_data(target: Optional[Path]) -> Path:
    """The dataset a run was trained on (RUN/config.json "data"), when --data is not given."""
    run = None if target is None else RunDir.of(target)
    data = None if run is None else run.data_root()
    if data is None:
        raise UserError("--data DIR is required (the dataset root); it defaults to the data of a run folder's config.json")
    logger.info("--data %s (from %s)", data, run.config)
    return data


def threshold_dir(target: Optional[Path], maps: Optional[Path]) -> RunDir:
    """Where --calibrate writes threshold.json: the run folder (export reads it), or DIR for --maps."""
    if maps is not None:
        return RunDir(maps)
    assert target is not None
    if target.is_dir() or target.suffix.lower() == ".pt":
        return RunDir.of(target)
    raise UserError(f"{target}: --calibrate stores the threshold in the run folder for export; run "
                    "`tedloc-edge eval RUN --split val --calibrate` on the model's run, then export it again")


# ---------------------------------------------------------------------------------------------- output


def print_report(report: Any) -> None:
    """The metrics as a rich table on stdout, then how far the stored threshold is from this split's optimum."""
    stored = "-" if report.threshold is None else f"{report.threshold:.3f}"
    table = Table(title=f"{escape(report.source)} · {report.split} · {report.num_images} images", title_justify="left")
    table.add_column("metric")
    table.add_column("best over tau (%)", justify="right")
    table.add_column("at tau*", justify="right")
    table.add_column(f"at stored tau {stored} (%)", justify="right")
    for key, name in METRIC_NAMES.items():
        if key not in report.metrics:
            continue
        tau = report.optimal_thresholds.get(name.optimal) if name.optimal else None
        at = report.metrics.get(name.at_threshold) if name.at_threshold else None
        table.add_row(name.long, f"{report.metrics[key]:.2f}", "-" if tau is None else f"{tau:.3f}",
                      "-" if at is None else f"{at:.2f}")
    out = Console(highlight=False)
    out.print(table)
    for line in gap_lines(report) + presence_lines(report):
        out.print(line)
    for name, count in sorted(report.warnings.items()):
        out.print(f"[yellow]warning[/]: {name} = {count}")


def gap_lines(report: Any) -> list[str]:
    from tedloc_edge.evaluate import threshold_gap

    gap = threshold_gap(report) or {}
    lines = []
    for name, g in gap.items():
        lines.append(
            f"{name}: stored tau {g['stored_threshold']:.3f} ({report.threshold_source}) vs {report.split} optimum "
            f"{g['optimal_threshold']:.3f} (delta {g['threshold_delta']:+.3f}): {g['value_at_stored']:.2f}% at stored, "
            f"{g['value_at_optimum']:.2f}% at optimum"
        )
    return lines


def presence_lines(report: Any) -> list[str]:
    """Presence in words: AUROC on object vs object-free images, both error rates at the stored threshold."""
    if report.presence is None:  # saved maps, or a CAM (said by `evaluate`)
        return []
    p = report.presence.summary()
    lines = [f"presence ({p['score']}): "
             + (f"AUROC {p['auroc']:.4f} on {p['object_images']} object and {p['empty_images']} empty images"
                if p["auroc"] is not None else
                f"AUROC not measured: no object-free images (--negatives DIR, or the dataset's {report.split}_negatives)")]
    if p["threshold"] is None:
        lines.append("presence threshold: none stored (every frame is present); calibrate with --split val --calibrate "
                     "and object-free images")
    else:
        fp = "-" if p["false_positive_rate"] is None else f"{p['false_positive_rate']:.2f}%"
        lines.append(f"at presence threshold {p['threshold']:.4f} ({p['threshold_source']}): {fp} of empty images "
                     f"reported present, {p['miss_rate']:.2f}% of object images lost")
    return lines


def _written(path: Path, write: Callable[[], Any]) -> Any:
    """A write after the evaluation: a failure (a disk that filled up since the check) is one line, and the
    figures are already on the screen."""
    try:
        return write()
    except OSError as exc:
        raise UserError(f"{path}: could not be written ({exc.strerror or first_line(exc)}); the figures are printed "
                        "above") from None


def _write_outputs(report: Any, json_out: Optional[Path], plot: Optional[Path]) -> None:
    if json_out is not None:
        _written(json_out, lambda: report.save_json(json_out))
        logger.info("wrote %s", json_out)
    if plot is not None:
        from tedloc_edge.plots import save_report_plot

        _written(plot, lambda: save_report_plot(report, plot))


def _calibrate(report: Any, criterion: str, run: RunDir, target: Optional[Path], data: Path) -> None:
    from tedloc_edge.evaluate import calibrate_threshold

    doc = calibrate_threshold(report, criterion)
    path = _written(run.threshold_file, lambda: run.write_threshold(doc))
    out = Console(highlight=False)
    out.print(f"calibrated: tau {doc['threshold']:.3f} maximizes {criterion} on {report.split} ({doc['value']:.2f}%) -> {path}")
    p = doc["presence"]
    if p is not None:
        out.print(f"calibrated: presence threshold {p['threshold']:.4f} (minimax: the larger error rate as small as it goes, on {p['object_images']} object and "
                  f"{p['empty_images']} empty images: {p['false_positive_rate']:.2f}% false positives, "
                  f"{p['miss_rate']:.2f}% misses on {report.split}) -> {path}")
    elif report.presence is not None:
        out.print(f"[yellow]presence not calibrated[/]: no object-free images for {report.split} (pass --negatives DIR "
                  f"or add metadata/{report.split}_negatives); export will report every frame present")
    if target is not None:
        next_commands("Next:", [f"tedloc-edge eval {target} --data {data} --split test",
                                f"tedloc-edge export {run}"])
