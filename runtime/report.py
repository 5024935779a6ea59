"""Printing what `infer` and `bench` measured: rich tables, as wide as they need in a log or a pipe."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tedloc_edge.console import console

if TYPE_CHECKING:
    from tedloc_edge.runtime.infer import InferSummary


def wide_console(width: int) -> Console:
    """In a terminal, the shared console; in a log or pipe (fixed 80 columns), one as wide as the table needs."""
    return console if console.is_terminal else Console(file=console.file, width=width, highlight=False)


def print_summary(summary: "InferSummary") -> None:
    table = Table(title=f"infer: {escape(Path(summary.source).name or summary.source)}", show_header=True, header_style="bold")
    table.add_column("stage")
    table.add_column("mean ms / frame", justify="right")
    for stage, ms in summary.mean_ms.items():
        table.add_row(stage, f"{ms:.2f}")
    wide_console(120).print(table)
    console.print(
        f"frames read {summary.frames_read}, processed {summary.frames_processed} ({summary.frames_present} with an object), "
        f"decode errors skipped "
        f"{summary.decode_errors}, stale frames dropped {summary.dropped_stale}; {summary.fps:.1f} frames/s overall "
        f"({summary.backend}, decoded by {summary.decoder}, {summary.wall_s:.1f} s)"
    )
    if summary.frames_missing:
        console.print(f"[yellow]frames missing[/]: {summary.frames_missing} declared by the container never decoded (truncated or corrupt input)")
    if summary.frame_errors:
        console.print(f"[yellow]frames lost to inference errors[/]: {summary.frame_errors} (skipped, not in the outputs)")
    if summary.reconnects:
        console.print(f"[yellow]reconnected[/] {summary.reconnects} times, {sum(g['seconds'] for g in summary.gaps):.1f} s "
                      f"without frames in all (summary.json: gaps)")
    if summary.stream_error and not summary.lost:  # a lost source gets its own error line
        console.print(f"[yellow]input ended early[/]: {escape(summary.stream_error)}")
    for kind, path in summary.outputs.items():
        console.print(f"  {kind}: {escape(path)}")  # user paths are text, not markup


def print_table(report: dict[str, Any]) -> None:
    table = Table(title=f"bench ({report['frame_size']} frames; ratio = images/s over the baseline at the same batch; ms are p50 per batch)")
    for col in ("model", "backend", "prec", "batch", "img/s", "ratio", "pre p50", "inf p50", "post p50", "total p50/p90/p99 ms", "post %"):
        table.add_column(col, justify="left" if col in ("model", "backend") else "right")
    for r in report["rows"]:
        st = r["stages_ms"]
        table.add_row(
            Path(r["model"]).name, r["backend"], r["precision"], str(r["batch"]), f"{r['images_per_s']:.1f}",
            f"{r['ratio']:.2f}x" if r.get("ratio") is not None else "-",
            f"{st['preprocess']['p50']:.2f}", f"{st['inference']['p50']:.2f}", f"{st['postprocess']['p50']:.2f}",
            f"{r['latency_p50_ms']:.1f}/{r['latency_p90_ms']:.1f}/{r['latency_p99_ms']:.1f}", f"{r['postprocess_share_pct']:.2f}",
        )
    wide_console(160).print(table)
