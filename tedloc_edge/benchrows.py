"""Benchmark rows, one way for every benchmark (benchmarks/*.py, `tedloc-edge bench`, the demo report):
a markdown table, a ratio over a baseline row, the min..max spread over rounds, the JSON report, the markdown
report printed and written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

from tedloc_edge.files import atomic_write_text


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """Header, rule and one line per row of already formatted cells."""
    return ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|",
            *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)]


def ratio(value: float, base: float | None, digits: int = 2) -> float | None:
    """value / base rounded; None without a baseline (not measured, or zero)."""
    return round(value / base, digits) if base else None


def spread(values: Iterable[float], digits: int = 1) -> list[float]:
    """[min, max] over rounds, rounded: beside a median, it shows how busy a shared machine was."""
    values = list(values)
    return [round(min(values), digits), round(max(values), digits)]


def write_json(path: str | Path, report: dict[str, Any]) -> None:
    """The report as indented JSON, written atomically (a reader never sees half a file)."""
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")


def publish_markdown(text: str, path: str | Path | None) -> None:
    """Print a markdown report, and write it to `path` (atomically, ending in a newline) when one is given."""
    print(text)
    if path:
        atomic_write_text(path, text.rstrip("\n") + "\n")
