"""Pictures of an evaluation: accuracy vs threshold curves and a grid of examples. matplotlib is imported
only when a plot is drawn (the optional ``eval`` extra), through its object API (no pyplot, no global state)."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from tedloc_edge.files import atomic_write_bytes
from tedloc_edge.errors import UserError

logger = logging.getLogger(__name__)

PRED_COLOR, TRUE_COLOR = "#00c853", "#d50000"  # predicted boxes green, true boxes red
BOX_CURVES = (
    ("box_acc_largest_iou50", "MaxBoxAcc curve (largest, IoU 0.5)", "-"),
    ("box_acc_all_iou30", "all contours, IoU 0.3", ":"),
    ("box_acc_all_iou50", "all contours, IoU 0.5", "--"),
    ("box_acc_all_iou70", "all contours, IoU 0.7", "-."),
)
LOC_CURVES = (("top1_loc", "Top-1 Loc"), ("top5_loc", "Top-5 Loc"), ("box_acc_largest_iou50", "GT-known Loc"))
GRID_COLUMNS = 4


def _matplotlib() -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("--plot needs matplotlib; install it with: pip install 'tedloc-edge[eval]'") from None
    return Figure, FigureCanvasAgg


def save_report_plot(report: Any, path: str | os.PathLike, title: str | None = None) -> Path:
    """Curves (box accuracy and Top-1 Loc vs threshold, optimum and stored threshold marked) above a grid
    of the report's examples (map overlay, predicted boxes green, true boxes red). PNG, written atomically."""
    figure_cls, canvas_cls = _matplotlib()
    rows = -(-len(report.examples) // GRID_COLUMNS)
    fig = figure_cls(figsize=(3.2 * GRID_COLUMNS, 3.6 + 3.1 * rows), layout="constrained")
    grid = fig.add_gridspec(1 + rows, GRID_COLUMNS, height_ratios=[1.15] + [1.0] * rows)
    _box_axes(fig.add_subplot(grid[0, : GRID_COLUMNS // 2]), report)
    _loc_axes(fig.add_subplot(grid[0, GRID_COLUMNS // 2 :]), report)
    for i, example in enumerate(report.examples):
        _example_axes(fig.add_subplot(grid[1 + i // GRID_COLUMNS, i % GRID_COLUMNS]), example)
    fig.suptitle(title or f"{report.source} on {report.split} ({report.num_images} images)", fontsize=11)
    buffer = io.BytesIO()
    canvas_cls(fig).print_png(buffer)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    logger.info("wrote %s", path)
    return path


def _mark(ax: Any, taus: np.ndarray, curve: np.ndarray, color: str, stored: float | None) -> None:
    best = int(np.argmax(curve))
    ax.plot([taus[best]], [curve[best]], "o", color=color, markersize=5)
    ax.annotate(f"{curve[best]:.1f} @ {taus[best]:.3f}", (taus[best], curve[best]), textcoords="offset points",
                xytext=(4, 4), fontsize=7, color=color)
    if stored is not None:
        ax.axvline(stored, color="0.3", linestyle="--", linewidth=0.9)


def _finish(ax: Any, report: Any, ylabel: str) -> None:
    if report.threshold is not None:
        ax.plot([], [], color="0.3", linestyle="--", linewidth=0.9, label=f"stored tau {report.threshold:.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 101)
    ax.set_xlabel("threshold tau")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def _box_axes(ax: Any, report: Any) -> None:
    taus = report.thresholds
    for i, (key, label, style) in enumerate(BOX_CURVES):
        curve = report.curves[key]
        color = f"C{i}"
        ax.plot(taus, curve, style, color=color, linewidth=1.2, label=label)
        _mark(ax, taus, curve, color, report.threshold if i == 0 else None)
    ax.set_title(f"Box accuracy: MaxBoxAcc {report.metrics['maxboxacc']:.1f}, V2 {report.metrics['maxboxacc_v2']:.1f}",
                 fontsize=9)
    _finish(ax, report, "images with a correct box (%)")


def _loc_axes(ax: Any, report: Any) -> None:
    taus = report.thresholds
    shown = [(key, label) for key, label in LOC_CURVES if key in report.curves]
    for i, (key, label) in enumerate(shown):
        color = f"C{i + 4}"
        ax.plot(taus, report.curves[key], color=color, linewidth=1.2, label=label)
        _mark(ax, taus, report.curves[key], color, report.threshold if i == 0 else None)
    at = report.metrics.get("top1_loc_at_threshold")
    note = f", {at:.1f} at stored tau" if at is not None else ""
    head = f"Top-1 Loc {report.metrics['top1_loc']:.1f}{note}" if "top1_loc" in report.metrics else "GT-known Loc"
    ax.set_title(head, fontsize=9)
    _finish(ax, report, "localization accuracy (%)")


def _example_axes(ax: Any, example: Any) -> None:
    ax.imshow(example.image)
    ax.imshow(example.scoremap, cmap="jet", alpha=0.4, vmin=0, vmax=255)
    for boxes, color in ((example.gt_boxes, TRUE_COLOR), (example.pred_boxes, PRED_COLOR)):
        for x0, y0, x1, y1 in np.asarray(boxes).reshape(-1, 4):
            ax.add_patch(_rectangle(x0, y0, x1, y1, color))
    guess = f" -> {example.predicted}" if example.predicted is not None else ""
    ok = "" if example.predicted is None else (" ✓" if example.predicted == example.label else " ✗")
    ax.set_title(f"{_short(example.image_id)}\n{example.label}{guess}{ok}", fontsize=7)
    ax.set_axis_off()


def _rectangle(x0: float, y0: float, x1: float, y1: float, color: str) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False, edgecolor=color, linewidth=1.6)


def _short(text: str, width: int = 28) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1) :]
