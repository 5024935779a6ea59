"""Console output shared by every command: one rich console, progress bars, and one-line user errors."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
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


class Terminated(KeyboardInterrupt):
    """SIGTERM as an exception, so the `finally` blocks that remove temporary files run (the default action
    killed the process and left them: a 13 MB .model.partial.onnx beside an interrupted export)."""


def _terminate(signum: int, _frame: object) -> None:
    raise Terminated


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn UserError (and friends the user caused) into one red line and exit code 2; Ctrl-C into 130 and
    SIGTERM into 143, both after the command's own clean-up has run."""
    from tedloc_edge.bundle import BundleError

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main else None
    try:
        yield
    except (UserError, BundleError) as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)  # a path "x[/y]" is text
        sys.exit(2)
    except Terminated:
        console.print("[yellow]terminated[/]: temporary files were removed, finished outputs kept")
        sys.exit(143)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: partial outputs were kept")
        sys.exit(130)
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def next_commands(title: str, commands: list[str]) -> None:
    """Print ready-to-run follow-up commands, as Ultralytics does after export/train."""
    console.print(f"\n[bold]{escape(title)}[/]")
    for cmd in commands:
        console.print(f"  [cyan]{escape(cmd)}[/]", soft_wrap=True)
