"""The multi-source run's live table (per camera: state, frames, fps over the last seconds, drops,
reconnections) and its closing table. In a log or pipe, one line per camera every LOG_EVERY_S instead."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from rich.live import Live
from rich.table import Table

from tedloc_edge.console import console
from tedloc_edge.runtime.report import wide_console

if TYPE_CHECKING:
    from tedloc_edge.runtime.multi import Camera, MultiSummary

logger = logging.getLogger(__name__)

REFRESH_S = 1.0
LOG_EVERY_S = 60.0


class CameraTable:
    """`update()` after each batch; redraws at most once a second."""

    def __init__(self, names: list[str], cameras: list["Camera"], show: bool) -> None:
        self.names, self.cameras, self.show = names, cameras, show
        self.live: Live | None = None
        self.started = self.last = self.logged = time.perf_counter()
        self.counts = [0] * len(cameras)
        self.rates = [0.0] * len(cameras)

    def __enter__(self) -> "CameraTable":
        if self.show:
            self.live = Live(self.render(), console=console, refresh_per_second=2, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.update(self.render())
            self.live.__exit__(*exc)

    def update(self) -> None:
        now = time.perf_counter()
        if now - self.last < REFRESH_S:
            return
        for i, cam in enumerate(self.cameras):
            done = cam.summary.frames_processed
            self.rates[i] = (done - self.counts[i]) / (now - self.last)
            self.counts[i] = done
        self.last = now
        if self.live is not None:
            self.live.update(self.render())
        elif now - self.logged >= LOG_EVERY_S:
            self.logged = now
            logger.info("; ".join(f"{n}: {cam.state} {r:.1f} fps" for n, cam, r in zip(self.names, self.cameras, self.rates)))

    def render(self) -> Table:
        table = Table(title=f"infer: {len(self.cameras)} sources, {sum(self.rates):.1f} frames/s in all", header_style="bold")
        for col in ("source", "state", "processed", "fps now", "fps mean", "stale dropped", "reconnects"):
            table.add_column(col, justify="left" if col in ("source", "state") else "right")
        elapsed = max(1e-9, time.perf_counter() - self.started)
        for name, cam, rate in zip(self.names, self.cameras, self.rates):
            stats = cam.source.stats
            table.add_row(name, cam.state, str(cam.summary.frames_processed), f"{rate:.1f}",
                          f"{cam.summary.frames_processed / elapsed:.1f}", str(stats.dropped), str(len(stats.gaps)))
        return table


def print_multi_summary(multi: "MultiSummary", batch: int) -> None:
    doc = multi.to_dict(batch)
    table = Table(title=f"infer: {len(doc['sources'])} sources, {doc['fps']:.1f} frames/s in all over {doc['wall_s']:.1f} s "
                        f"(batch {batch}, {doc['backend']})", header_style="bold")
    for col in ("source", "processed", "fps", "share of mean", "stale dropped", "reconnects", "end"):
        table.add_column(col, justify="left" if col in ("source", "end") else "right")
    for row in doc["sources"]:
        end = "lost: " + str(row["stream_error"]) if row["lost"] else (row["stream_error"] or "")
        table.add_row(row["name"], str(row["frames_processed"]), f"{row['fps']:.1f}", f"{row['share_of_mean']:.2f}",
                      str(row["dropped_stale"]), str(row["reconnects"]), end)
    wide_console(140).print(table)
    for name, summary in zip(multi.names, multi.cameras):
        console.print(f"  {name}: {summary.outputs.get('jsonl', '')}", soft_wrap=True)
