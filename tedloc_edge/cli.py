"""`tedloc-edge`: one sub-command per job. Thin: each command's module imports its heavy dependencies only
when the command runs, so `tedloc-edge --help` and `tedloc-edge infer` never import torch."""

from __future__ import annotations

import typer

from tedloc_edge.demo import demo
from tedloc_edge.eval_cli import evaluate
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
data_app = typer.Typer(help="Datasets: generate the synthetic WSOL benchmark.", no_args_is_help=True)
data_app.command("synth")(synth)

app.command("train")(train)
app.command("eval")(evaluate)
app.command("export")(export)
app.command("infer")(infer)
app.command("bench")(bench)
app.command("demo")(demo)
app.add_typer(data_app, name="data")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
