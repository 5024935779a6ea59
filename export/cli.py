"""`tedloc-edge export`: thin CLI over `tedloc_edge.export.exporter`; torch is imported only when it runs.
Its options are ExportOptions' fields (export/formats.py), declared once with their help."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from tedloc_edge.cli_options import param, typer_command
from tedloc_edge.console import console, next_commands, setup_logging, user_errors
from tedloc_edge.export.formats import ExportOptions

SOURCE = typer.Argument(..., help="Training run folder (or a checkpoint .pt in it, or an exported .onnx for engine/triton).")


def _export(options: dict[str, Any], source: Path, verbose: bool) -> None:
    """Export a trained run: verified ONNX (fp32/fp16/int8), a TensorRT engine, or a Triton repository."""
    setup_logging(verbose)
    with user_errors():
        from tedloc_edge.export.exporter import export as run_export
        from tedloc_edge.export.report import next_steps, print_result

        result = run_export(source, ExportOptions(**options))
        print_result(result, console)
        next_commands("Next:", next_steps(result))


export = typer_command(ExportOptions, _export, before=[param("source", Path, SOURCE)],
                       after=[param("verbose", bool, typer.Option(False, "--verbose", "-v", help="Debug logging."))])
