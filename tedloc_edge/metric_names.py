"""The one table of WSOL metric names: eval's table, the demo report, compare_methods and bench_export read it.
Names only (no numpy, no OpenCV), so the CLI imports it at `tedloc-edge --help` for free."""

from __future__ import annotations

from typing import NamedTuple


class MetricName(NamedTuple):
    short: str  # a report's column
    long: str  # eval's table row, with the protocol's settings
    optimal: str | None  # key of its optimal threshold in a report's `optimal_thresholds`
    at_threshold: str | None  # key of its value at the stored threshold


METRIC_NAMES = {  # in eval's row order
    "maxboxacc": MetricName("MaxBoxAcc", "MaxBoxAcc (IoU 0.5, largest contour)", "maxboxacc", "gt_known_loc_at_threshold"),
    "maxboxacc_v2": MetricName("MaxBoxAccV2", "MaxBoxAccV2 (IoU 0.3/0.5/0.7, all contours)", None, "maxboxacc_v2_at_threshold"),
    "gt_known_loc": MetricName("GT-known Loc", "GT-known Loc", "gt_known_loc", "gt_known_loc_at_threshold"),
    "top1_loc": MetricName("Top-1 Loc", "Top-1 Loc", "top1_loc", "top1_loc_at_threshold"),
    "top5_loc": MetricName("Top-5 Loc", "Top-5 Loc", "top5_loc", "top5_loc_at_threshold"),
    "top1_cls": MetricName("Top-1 Cls", "Top-1 classification", None, None),
    "top5_cls": MetricName("Top-5 Cls", "Top-5 classification", None, None),
    "pxap": MetricName("PxAP", "PxAP (pixel AP vs masks)", None, None),
}
# The columns of a side-by-side report: what a deployment gets (@ stored τ) last.
REPORT_COLUMNS = ("maxboxacc", "maxboxacc_v2", "gt_known_loc", "top1_loc", "top5_loc", "top1_cls", "pxap", "top1_loc_at_threshold")


def metric_label(key: str) -> str:
    """A metric's column label; its value at the stored (val-calibrated) threshold is "<label> @ stored τ"."""
    name = key.removesuffix("_at_threshold")
    return METRIC_NAMES[name].short + (" @ stored τ" if name != key else "")
