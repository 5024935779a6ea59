"""Evaluation: run a predictor (or read saved maps) over a Split, score it with the WSOL protocol, calibrate.

A `Predictor` gives maps and logits (the runtime's `Localizer` over any runner, a torch run's `TorchRunner` too);
saved maps are scored the same way (`evaluate_maps`), so a map from any method meets the same protocol.
A predictor's report also scores presence (`tedloc_edge.presence`) on the raw maps of the split's images and of
object-free images (`negatives`); the WSOL metrics on the object images are computed exactly as without it.
Nothing here imports torch.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol, Sequence

import cv2
import numpy as np

from tedloc_edge.boxes import CAM_THRESHOLDS, boxes_at_level, threshold_level
from tedloc_edge.bundle import BundleMeta
from tedloc_edge.files import atomic_write_text
from tedloc_edge.errors import UserError
from tedloc_edge.console import progress as progress_bar
from tedloc_edge.datasets import Sample, Split, load_mask, resize_boxes
from tedloc_edge.images import load_image
from tedloc_edge.presence import PROBABILITY, PresenceReport, calibration_record, negative_scores, top_mean
from tedloc_edge.metrics import (
    CALIBRATION_CRITERIA,
    EVAL_SIZE,
    LocAccumulator,
    PixelAccumulator,
    protocol_scoremap,
    ranking_from_logits,
)

logger = logging.getLogger(__name__)


class Predictor(Protocol):
    """What evaluation runs: RGB uint8 images of any size -> (maps (N, gh, gw), logits (N, C)) float32."""

    meta: BundleMeta

    def forward_maps(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]: ...

CRITERION_CURVES = {"top1_loc": "top1_loc", "gt_known_loc": "box_acc_largest_iou50", "maxboxacc": "box_acc_largest_iou50"}


@dataclass
class Example:
    """One image kept for the plot: the image and its map at the protocol grid, boxes at the stored threshold."""

    image_id: str
    image: np.ndarray  # (224, 224, 3) RGB uint8
    scoremap: np.ndarray  # (224, 224) uint8 protocol map
    pred_boxes: np.ndarray  # (K, 4) at the deployment threshold, the decoder's boxes
    gt_boxes: np.ndarray  # (G, 4) at the protocol grid
    label: str
    predicted: str | None


@dataclass
class EvalReport:
    """Metrics in percent, curves per threshold (percent), and how they were obtained."""

    metrics: dict[str, float]
    curves: dict[str, np.ndarray]
    thresholds: np.ndarray
    threshold: float | None  # the deployment threshold the ``*_at_threshold`` metrics use
    threshold_source: str
    optimal_thresholds: dict[str, float]
    num_images: int
    split: str
    data: str
    source: str
    warnings: dict[str, int] = field(default_factory=dict)
    examples: list[Example] = field(default_factory=list)
    per_image: dict[str, np.ndarray] = field(default_factory=dict)  # hits at each metric's optimum (per_image=True)
    presence: PresenceReport | None = None  # a probability map's presence scores (None: saved maps, a CAM)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "data": self.data,
            "split": self.split,
            "num_images": self.num_images,
            "metrics": self.metrics,
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "optimal_thresholds": self.optimal_thresholds,
            "threshold_gap": threshold_gap(self),
            "warnings": self.warnings,
            "thresholds": self.thresholds.tolist(),
            "curves": {name: curve.tolist() for name, curve in self.curves.items()},
            **({"per_image": {name: hits.tolist() for name, hits in self.per_image.items()}} if self.per_image else {}),
            "presence": None if self.presence is None else self.presence.summary(),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def save_json(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        atomic_write_text(path, self.to_json() + "\n")
        return path


@dataclass
class _Item:
    sample: Sample
    fg_map: np.ndarray
    ranking: np.ndarray | None
    image: np.ndarray | None = None


# ---------------------------------------------------------------------------------------------- entry points


def evaluate_predictor(
    predictor: Predictor,
    split: Split,
    *,
    threshold: float | None = None,
    batch: int = 32,
    progress: bool = True,
    examples: int = 0,
    source: str = "",
    per_image: bool = False,
    negatives: Split | None = None,
    presence_threshold: float | None = None,
) -> EvalReport:
    """Score `predictor` on `split`. `threshold` defaults to the model's stored one (``meta.threshold``).

    `per_image` also keeps each image's hit at each metric's optimal threshold (`EvalReport.per_image`).
    Presence (a probability map only): AUROC of the split's images against the object-free `negatives`, and the
    rates at `presence_threshold` (default: the model's stored one).
    """
    meta = predictor.meta
    source = source or f"{type(predictor).__name__}({meta.run_id or meta.backbone or meta.method})"
    check_classes(meta.class_names, split, source)
    tau = float(meta.threshold if threshold is None else threshold)
    tau_source = meta.threshold_source if threshold is None else "given"
    scores: list[float] = []
    items = _predictor_items(predictor, split, max(int(batch), 1), source, scores)
    report = _score(items, split, tau, tau_source, source, progress, examples, meta.contour_mode, per_image)
    if meta.map_kind == PROBABILITY:
        empty = negative_scores(predictor, [] if negatives is None else negatives.samples, max(int(batch), 1))
        given = presence_threshold is not None
        report.presence = PresenceReport(
            np.array(scores), empty, presence_threshold if given else meta.presence_threshold,
            "given" if given else meta.presence_source, "" if negatives is None else f"{negatives.root} [{negatives.name}]")
    return report


def evaluate_maps(
    maps_dir: str | os.PathLike,
    split: Split,
    predictions: str | os.PathLike | None = None,
    *,
    threshold: float | None = None,
    threshold_source: str = "given",
    progress: bool = True,
    examples: int = 0,
) -> EvalReport:
    """Score saved maps, one ``<maps_dir>/<image id>.npy`` per image (any size, any float range), as
    wsolevaluation does; `predictions` (one line per image: id, then class indices best first) adds the
    classification-dependent metrics."""
    maps_dir = Path(maps_dir)
    if not maps_dir.is_dir():
        raise UserError(f"{maps_dir}: no such maps folder; pass the folder holding <image id>.npy files")
    rankings = read_predictions(predictions, split) if predictions is not None else None
    items = (_Item(s, load_saved_map(maps_dir, s.image_id), None if rankings is None else rankings[s.image_id])
             for s in split.samples)
    tau_source = threshold_source if threshold is not None else "none"
    return _score(items, split, threshold, tau_source, str(maps_dir), progress, examples, "largest")


# ---------------------------------------------------------------------------------------------- input checks


def check_classes(model_classes: Sequence[str], split: Split, source: str) -> None:
    """A model must score the dataset's classes: same count (an error), same names (a warning)."""
    classes_file = split.root / "classes.txt"
    if len(model_classes) != split.num_classes:
        raise UserError(
            f"{source}: the model has {len(model_classes)} classes but {classes_file} lists {split.num_classes}; "
            "evaluate on the dataset the model was trained on"
        )
    differ = [i for i, (a, b) in enumerate(zip(model_classes, split.class_names)) if a != b]
    if differ:
        i = differ[0]
        logger.warning("%s: %d class names differ from %s (first: class %d %r vs %r); scoring by index",
                       source, len(differ), classes_file, i, model_classes[i], split.class_names[i])


def load_saved_map(maps_dir: Path, image_id: str) -> np.ndarray:
    """`maps_dir/<image id>.npy` (or without the image's extension), squeezed to 2-D."""
    candidates = [maps_dir / f"{image_id}.npy", maps_dir / Path(image_id).with_suffix(".npy")]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise UserError(f"{candidates[0]}: no map for image {image_id!r}; save one .npy per image of the split")
    try:
        fg_map = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise UserError(f"{path}: not a readable .npy map ({exc}); save it with numpy.save") from None
    fg_map = np.squeeze(np.asarray(fg_map))
    if fg_map.ndim != 2 or fg_map.dtype.kind not in "fiub":
        raise UserError(f"{path}: map for {image_id!r} has shape {fg_map.shape} ({fg_map.dtype}); save a 2-D float map")
    return fg_map.astype(np.float32)


def read_predictions(path: str | os.PathLike, split: Split) -> dict[str, np.ndarray]:
    """`path`: one line per image, ``image_id c1 c2 ...`` (or comma separated), class indices best first."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the predictions file ({exc}); pass a text file") from None
    rankings: dict[str, np.ndarray] = {}
    for lineno, line in enumerate(lines, 1):
        fields = [f for f in (line.split(",") if "," in line else line.split()) if f.strip()]
        if not fields:
            continue
        image_id, classes = fields[0].strip(), fields[1:]
        try:
            ranking = np.array([int(c) for c in classes], dtype=np.int64)
        except ValueError:
            raise UserError(f"{path}:{lineno}: class indices must be integers, got {' '.join(classes)!r}") from None
        if len(ranking) == 0 or ranking.min() < 0 or ranking.max() >= split.num_classes:
            raise UserError(f"{path}:{lineno}: give 1 or more class indices in 0..{split.num_classes - 1} for {image_id!r}")
        rankings[image_id] = ranking
    missing = [s.image_id for s in split.samples if s.image_id not in rankings]
    if missing:
        raise UserError(f"{path}: no prediction for image {missing[0]!r} ({len(missing)} missing); "
                        f"add a line '{missing[0]} <class> ...'")
    return rankings


def protocol_gt_boxes(sample: Sample, image_shape: tuple[int, ...] | None, where: str) -> np.ndarray:
    """The sample's true boxes on the 224x224 grid, truncated as the reference's resize_bbox."""
    if len(sample.boxes) == 0:
        raise UserError(f"{where}: image {sample.image_id!r} has no true box; add its boxes to the split's box file")
    size = sample.size
    if size is None:
        if image_shape is None:
            image_shape = load_image(sample.path).shape
        size = (int(image_shape[1]), int(image_shape[0]))
    return resize_boxes(sample.boxes, size, (EVAL_SIZE[1], EVAL_SIZE[0]))


# ---------------------------------------------------------------------------------------------- the loop


def _predictor_items(predictor: Predictor, split: Split, batch: int, source: str, presence: list[float]) -> Iterator[_Item]:
    """The split's images with their maps; each image's presence score (raw map) is appended to `presence`."""
    samples = split.samples
    num_classes = split.num_classes
    for start in range(0, len(samples), batch):
        chunk = samples[start : start + batch]
        images = [load_image(s.path) for s in chunk]
        maps, logits = predictor.forward_maps(images)
        maps, logits = np.asarray(maps), np.asarray(logits)
        if maps.ndim != 3 or len(maps) != len(chunk) or logits.shape != (len(chunk), num_classes):
            raise UserError(f"{source}: forward_maps returned maps {maps.shape} and logits {logits.shape} for "
                            f"{len(chunk)} images of {num_classes} classes; the model does not follow the graph contract")
        for sample, image, fg_map, row in zip(chunk, images, maps, logits):
            presence.append(top_mean(fg_map))
            yield _Item(sample, fg_map, ranking_from_logits(row), image)


def _score(
    items: Iterable[_Item],
    split: Split,
    threshold: float | None,
    threshold_source: str,
    source: str,
    show_progress: bool,
    examples: int,
    contour_mode: str,
    per_image: bool = False,
) -> EvalReport:
    loc = LocAccumulator(deploy_threshold=threshold, keep_per_image=per_image)
    pixels = PixelAccumulator()
    keep = set(np.linspace(0, len(split) - 1, num=min(examples, len(split))).round().astype(int).tolist()) if examples else set()
    kept: list[Example] = []
    where = _box_file(split)
    with progress_bar(disable=not show_progress or None) as bar:
        task = bar.add_task(f"eval {split.name}", total=len(split), info="")
        for index, item in enumerate(items):
            shape = None if item.image is None else item.image.shape
            gt = protocol_gt_boxes(item.sample, shape, where)
            scoremap, u = protocol_scoremap(item.fg_map)
            loc.add(u, gt, item.sample.label, item.ranking)
            if item.sample.mask_path is not None:
                pixels.add(scoremap, load_mask(item.sample, size=EVAL_SIZE))
            if index in keep:
                kept.append(_example(item, u, gt, split, threshold, contour_mode))
            bar.update(task, advance=1)
    return _report(loc, pixels, split, threshold, threshold_source, source, kept)


def _box_file(split: Split) -> str:
    if split.layout == "wsol":
        return str(split.root / "metadata" / split.name / "localization.txt")
    return str(split.root)


def _example(item: _Item, u: np.ndarray, gt: np.ndarray, split: Split, threshold: float | None, mode: str) -> Example:
    image = item.image if item.image is not None else load_image(item.sample.path)
    image = cv2.resize(image, (EVAL_SIZE[1], EVAL_SIZE[0]), interpolation=cv2.INTER_AREA)
    tau = 0.5 if threshold is None else threshold
    pred = boxes_at_level(u, threshold_level(tau, int(u.max())), mode if mode in ("largest", "all") else "largest")
    predicted = None if item.ranking is None else split.class_names[int(item.ranking[0])]
    return Example(item.sample.image_id, image, u, pred, gt, split.class_names[item.sample.label], predicted)


def _report(loc: LocAccumulator, pixels: PixelAccumulator, split: Split, threshold: float | None,
            threshold_source: str, source: str, kept: list[Example]) -> EvalReport:
    metrics = loc.metrics()
    warnings = dict(split.warnings)
    pxap = pixels.pxap()
    if pxap is not None:
        metrics["pxap"] = pxap
        if pixels.count < loc.count:
            warnings["images_without_mask"] = loc.count - pixels.count
    return EvalReport(
        metrics=metrics,
        curves=loc.curves(),
        thresholds=np.asarray(CAM_THRESHOLDS),
        threshold=threshold,
        threshold_source=threshold_source,
        optimal_thresholds=loc.optimal_thresholds(),
        num_images=loc.count,
        split=split.name,
        data=str(split.root),
        source=source,
        warnings=warnings,
        examples=kept,
        per_image=loc.per_image_hits() if loc.keep_per_image else {},
    )


# ---------------------------------------------------------------------------------------------- calibration


def calibrate_threshold(report: EvalReport, criterion: str = "top1_loc") -> dict[str, Any]:
    """The deployment threshold: the optimum of `criterion`'s curve on this (validation) report."""
    if criterion not in CALIBRATION_CRITERIA:
        raise UserError(f"criterion {criterion!r} is not one of {', '.join(CALIBRATION_CRITERIA)}")
    curve = report.curves.get(CRITERION_CURVES[criterion])
    if curve is None:
        raise UserError(f"{report.source}: {criterion} needs class predictions; pass --predictions or use "
                        "--criterion gt_known_loc")
    best = int(np.argmax(curve))  # the lowest of tied thresholds, as the reference's argmax
    if curve.max() == curve.min():
        logger.warning("%s: the %s curve is flat (%.2f%% at every threshold); the calibrated threshold %.3f says "
                       "nothing about the model: train longer or calibrate on more images", report.source, criterion,
                       curve[best], report.thresholds[best])
    optimum = {name: {"threshold": report.optimal_thresholds[name], "value": report.metrics[name]}
               for name in CALIBRATION_CRITERIA if name in report.optimal_thresholds}
    presence = report.presence
    return {
        "threshold": float(report.thresholds[best]),
        "criterion": criterion,
        "split": report.split,
        "value": float(curve[best]),
        "curve_optimum": optimum,
        "num_images": report.num_images,
        "data": report.data,
        "source": report.source,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "presence": None if presence is None or not len(presence.negatives) else calibration_record(presence),
    }


def threshold_gap(report: EvalReport) -> dict[str, dict[str, float]] | None:
    """How far the stored threshold is from this split's optimum, per calibration criterion."""
    if report.threshold is None:
        return None
    out: dict[str, dict[str, float]] = {}
    for name in ("top1_loc", "gt_known_loc"):
        if name not in report.optimal_thresholds or f"{name}_at_threshold" not in report.metrics:
            continue
        optimum = report.optimal_thresholds[name]
        out[name] = {
            "stored_threshold": float(report.threshold),
            "optimal_threshold": optimum,
            "threshold_delta": float(report.threshold - optimum),
            "value_at_stored": report.metrics[f"{name}_at_threshold"],
            "value_at_optimum": report.metrics[name],
        }
    return out
