"""Options declared once: a dataclass's fields become a typer command's options, and a new field a new option."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer
from typer.testing import CliRunner

from tedloc_edge.cli_options import internal, option, param, typer_command
from tedloc_edge.export.cli import export as export_command
from tedloc_edge.export.formats import ExportOptions
from tedloc_edge.train.cli import train as train_command
from tedloc_edge.train.config import TrainConfig


@dataclasses.dataclass(frozen=True)
class Toy:
    data: str = option("", "Where the data is.", path="absolute")
    size: int = option(8, "Side.", short="-s")
    tags: tuple[str, ...] = option((), "Repeat.", flag="--tag")
    rounds: int = option(3, "Default 3.", no_default=True)
    seed: int = 0
    run_id: str = internal("")


def invoke(cls: type, *args: str) -> tuple[dict, str]:
    got: dict = {}

    def body(options: dict, verbose: bool) -> None:
        """Toy command."""
        got.update(options, verbose=verbose)

    app = typer.Typer()
    app.command()(typer_command(cls, body, after=[param("verbose", bool, typer.Option(False, "-v"))]))
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return got, result.output


def test_fields_become_options_and_only_set_values_come_back(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    got, _ = invoke(Toy)
    assert got == {"size": 8, "seed": 0, "verbose": False}  # unset: the field's default holds
    got, _ = invoke(Toy, "--data", "d", "-s", "4", "--tag", "a", "--tag", "b", "--rounds", "5", "--seed", "1", "-v")
    assert got == {"data": str(tmp_path / "d"), "size": 4, "tags": ("a", "b"), "rounds": 5, "seed": 1, "verbose": True}
    assert Toy(**{k: v for k, v in got.items() if k != "verbose"}).tags == ("a", "b")


def test_help_shows_declared_names_help_and_defaults():
    _, text = invoke(Toy, "--help")
    for expected in ("--data", "<path>", "Where the data is.", "-s", "--size", "[default: 8]", "--tag", "--rounds", "--seed"):
        assert expected in text
    assert "run-id" not in text and "[default: 3]" not in text and "Toy command." in text


def options_of(command) -> set[str]:
    app = typer.Typer(add_completion=False)
    app.command()(command)
    return {p.name for p in typer.main.get_command(app).params}


def test_every_config_field_is_an_option_unless_internal():
    internal_fields = {"feature_batch", "run_id"}
    assert options_of(train_command) == {f.name for f in dataclasses.fields(TrainConfig)} - internal_fields | {"verbose"}
    assert options_of(export_command) == {f.name for f in dataclasses.fields(ExportOptions)} | {"source", "verbose"}


def test_a_new_field_is_a_new_option():
    bigger = dataclasses.make_dataclass("Bigger", [("label_smoothing", float, option(0.0, "Soft targets."))],
                                        bases=(TrainConfig,), frozen=True)
    got, _ = invoke(bigger, "--label-smoothing", "0.1", "--out", "runs/x")
    assert got["label_smoothing"] == 0.1 and got["out"] == str(Path("runs/x"))  # "given": kept as typed
