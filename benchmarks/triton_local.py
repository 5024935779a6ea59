"""Bench a real local Triton server (nvidia-pytriton wheel, 127.0.0.1) against the in-process Localizer.

    .venv/bin/python benchmarks/triton_local.py --streams 1,4,16 --seconds 10 [--model M.onnx] [--json F]

Sets up the server exactly as the tests do (tests/triton_server.py: cached wheel + backend environment),
writes the repository's ``tedloc_python`` for the model, serves it, and runs `triton_bench.sweep`: for each
stream count, N camera threads on the server, then the same N threads on one in-process Localizer.
Without --model it uses a ViT-S-cost fixture model (224x224, 14x14 patches, ~3.5 GFLOPs) and the tiny
64x64 model (per-request overhead). The server is stopped at the end in every case.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import triton_server as ts  # noqa: E402

from tedloc_edge.bundle import read_onnx_meta  # noqa: E402
from tedloc_edge.export.triton_repo import TritonOptions, write_repository  # noqa: E402
from tedloc_edge.runtime import triton_bench  # noqa: E402


def fixture_models(folder: Path) -> dict[str, Path]:
    from runtime_models import fixture_meta, write_model

    vit = write_model(folder / "vit_cost.onnx", size=224, grid=14, meta=fixture_meta(224, 14), vit_depth=12, vit_dim=384)
    tiny = folder / "tiny.onnx"
    ts.tiny_onnx(tiny)
    return {"vit-s-cost 224px": vit, "tiny 64px": tiny}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", default="1,4,16")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--model", type=Path, action="append", help="an exported .onnx (repeatable); default: fixtures")
    ap.add_argument("--frame-size", default="480x640", help="HEIGHTxWIDTH of the synthetic camera frames")
    ap.add_argument("--protocol", default="http", help="http, grpc or both (http,grpc)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    frame_size = tuple(int(v) for v in args.frame_size.lower().split("x"))
    install = ts.triton_install()
    results = {}
    with tempfile.TemporaryDirectory(prefix="tedloc-triton-bench-") as tmp:
        tmp_path = Path(tmp)
        models = {p.name: p for p in args.model} if args.model else fixture_models(tmp_path)
        for label, model in models.items():
            repo = tmp_path / f"repo-{label.split()[0]}"
            write_repository(repo, model, read_onnx_meta(model), variants=["python"], options=TritonOptions(max_batch_size=16))
            with ts.TritonServer(install, repo, tmp_path / f"server-{label.split()[0]}.log", models=["tedloc_python"]) as srv:
                for protocol in args.protocol.split(","):
                    address = srv.http_url if protocol == "http" else srv.grpc_url
                    reports = triton_bench.sweep(
                        f"{protocol}://{address}/tedloc_python", triton_bench.parse_streams(args.streams), args.seconds, model,
                        metrics_url=srv.metrics_url, frame_size=frame_size,
                    )
                    results[f"{label} {protocol}"] = reports
                    print(f"\n### {label}, {protocol.upper()}\n")
                    print(triton_bench.markdown_table(reports))
                    sys.stdout.flush()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
