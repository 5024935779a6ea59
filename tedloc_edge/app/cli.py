"""`tedloc-edge`: one sub-command per job. Thin: each command's module imports its heavy dependencies only
when the command runs, so `tedloc-edge --help` and `tedloc-edge infer` never import torch."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.markup import escape

from tedloc_edge.console import console, next_commands, user_errors
from tedloc_edge.app.demo import demo
from tedloc_edge.app.eval_cli import evaluate
from tedloc_edge.app.inspect import inspect_model
from tedloc_edge.export.cli import export
from tedloc_edge.runtime.cli import bench, infer
from tedloc_edge.train.cli import synth, train

app = typer.Typer(
    name="tedloc-edge",
    help="TeD-Loc weakly supervised localization: train on class labels, export, run class + box at camera rate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Datasets: the synthetic WSOL benchmark and a synthetic test video.", no_args_is_help=True)
data_app.command("synth")(synth)


@data_app.command("video")
def video(
    path: Path = typer.Argument(..., help="The .mp4 to write (ground truth goes to PATH.json)."),
    frames: int = typer.Option(90, help="Number of frames."),
    width: int = typer.Option(640, help="Frame width, pixels."),
    height: int = typer.Option(360, help="Frame height, pixels."),
    fps: float = typer.Option(30.0, help="Frame rate."),
    classes: int = typer.Option(8, help="Classes of the benchmark the objects come from."),
    seed: int = typer.Option(0, help="Same seed gives the same video."),
    exist_ok: bool = typer.Option(False, "--exist-ok", help="Replace PATH and PATH.json if they exist."),
) -> None:
    """Write a short H.264 video of benchmark objects moving over clutter, with per-frame boxes in PATH.json."""
    with user_errors():
        from tedloc_edge.files import check_output
        from tedloc_edge.train.synth_video import make_video

        for target in (path, Path(f"{path}.json")):
            check_output(target, exist_ok, "choose another PATH")

        boxes = make_video(path, frames=frames, size=(width, height), fps=fps, classes=classes, seed=seed)
        console.print(escape(f"wrote {path} ({len(boxes)} frames) and {path}.json"))
        next_commands("Next:", [f"tedloc-edge infer {path} --model MODEL.onnx --out runs/infer"])

app.command("train")(train)
app.command("eval")(evaluate)
app.command("export")(export)
app.command("infer")(infer)
app.command("bench")(bench)
app.command("demo")(demo)
app.command("inspect")(inspect_model)
app.add_typer(data_app, name="data")


def main() -> None:
    try:
        app()
    except SystemExit as exc:
        _exit_past_abandoned_opens(exc.code)
        raise


def _exit_past_abandoned_opens(code: object) -> None:
    """A stream open abandoned on Ctrl-C leaves a thread waiting inside FFmpeg (up to --timeout); interpreter
    shutdown around it can end in SIGSEGV instead of the exit code. The command's own clean-up has run by now
    (outputs closed, summary written), so exit at once, past the shutdown."""
    video_source = sys.modules.get("tedloc_edge.runtime.video_source")  # not imported: no stream was opened
    if video_source is not None and video_source.abandoned_opens():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 0 if code is None else 1)


if __name__ == "__main__":
    main()
