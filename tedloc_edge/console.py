"""Console output shared by every command: one rich console, progress bars, and one-line user errors."""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from tedloc_edge.errors import UserError

console = Console(stderr=True, highlight=False)



def setup_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    top = logging.getLogger()
    if not top.handlers:
        # Libraries that call logging.warning() (open_clip does) would otherwise install a second, plain
        # handler on the root logger, and every tedloc_edge line would print twice.
        top.addHandler(logging.NullHandler())
    root = logging.getLogger("tedloc_edge")
    if not root.handlers:
        root.addHandler(RichHandler(console=console, show_path=False, show_time=False, markup=False))
    root.setLevel(level)


def progress(transient: bool = False, disable: bool | None = None) -> Progress:
    """A rich progress bar with count, rate-friendly columns and ETA; silent when not a terminal in CI logs."""
    if disable is None:
        disable = bool(os.environ.get("TEDLOC_NO_PROGRESS"))
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=disable,
    )


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn UserError (and friends the user caused) into one red line and exit code 2."""
    from tedloc_edge.bundle import BundleError

    try:
        yield
    except (UserError, BundleError) as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)  # a path "x[/y]" is text
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: partial outputs were kept")
        sys.exit(130)


def next_commands(title: str, commands: list[str]) -> None:
    """Print ready-to-run follow-up commands, as Ultralytics does after export/train."""
    console.print(f"\n[bold]{escape(title)}[/]")
    for cmd in commands:
        console.print(f"  [cyan]{escape(cmd)}[/]", soft_wrap=True)
