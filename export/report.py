"""What an export prints: one table of the products (format, file, size, seconds, verified), then the
ready-to-run next commands, as Ultralytics does after an export."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tedloc_edge.export.exporter import ExportResult


def _size(num: int) -> str:
    return f"{num / 1e6:.1f} MB" if num >= 1e5 else f"{num / 1e3:.1f} kB"


def result_table(result: ExportResult) -> Table:
    table = Table(title=f"tedloc-edge export ({result.meta.method}, {result.meta.num_classes} classes)")
    for col in ("format", "precision", "file", "size", "seconds", "verified"):
        table.add_column(col, justify="right" if col in ("size", "seconds") else "left", overflow="fold")
    for art in result.artifacts:
        table.add_row(art.kind, art.precision, escape(str(art.path)), _size(art.size_bytes), f"{art.seconds:.1f}", art.verified)
    return table


def print_result(result: ExportResult, console: Console) -> None:
    console.print(result_table(result))
    if result.verify is not None:
        console.print(f"verification: {result.verify.summary()}", soft_wrap=True)
    if result.gate is not None:
        console.print(f"int8 gate ({'passed' if result.gate.passed else 'drop accepted'}): {result.gate.summary()}", soft_wrap=True)


def next_steps(result: ExportResult) -> list[str]:
    final = result.final
    model = final.path
    if final.kind == "triton":
        return [
            f"docker run --gpus all --rm -p8000:8000 -p8001:8001 -v {final.path.resolve()}:/models "
            "nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models   # then query 'tedloc' (docs/triton.md)",
        ]
    data = ""
    if result.source.run_dir is not None:
        from tedloc_edge.export.images import run_data_root

        root = run_data_root(result.source.run_dir)
        data = f" --data {root}" if root is not None else " --data DATASET"
    static = result.meta.extra.get("static_batch") if final.kind == "onnx" else None
    if static:  # a fixed-batch model is for CUDA graphs: the commands that use them
        gpu = f"--batch {static} --device cuda --cuda-graph"
        return [
            f"tedloc-edge infer VIDEO_OR_IMAGES --model {model} {gpu} --out runs/infer",
            f"tedloc-edge bench {model} {gpu}",
        ]
    commands = [
        f"tedloc-edge infer VIDEO_OR_IMAGES --model {model} --out runs/infer",
        f"tedloc-edge eval {model}{data or ' --data DATASET'} --split test",
    ]
    bench = " ".join(str(a.path) for a in result.artifacts if a.kind in ("onnx", "engine"))
    run = f" --run {result.source.run_dir}" if result.source.run_dir is not None else ""
    commands.append(f"tedloc-edge bench {bench}{run}")
    return commands
