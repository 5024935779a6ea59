"""tedloc_edge.export: trained run -> verified ONNX (fp32 / fp16 / int8 Q/DQ), TensorRT plan, Triton repository.

    from tedloc_edge.export import export, ExportOptions
    result = export("runs/tedloc", ExportOptions(format="onnx", precision="int8"))

    from tedloc_edge.export import export_onnx, build_engine     # the single steps
    export_onnx(model, meta, "model.onnx"); build_engine("model.onnx", "model.plan")

Names are loaded on first use, so `tedloc-edge --help` (which imports the export CLI) stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tedloc_edge.export.exporter import ExportOptions, ExportResult, export
    from tedloc_edge.export.onnx_export import export_onnx
    from tedloc_edge.export.tensorrt_build import EngineSpec, build_engine
    from tedloc_edge.export.triton_repo import write_repository
    from tedloc_edge.export.verify import verify_export

__all__ = ["export", "ExportOptions", "ExportResult", "export_onnx", "build_engine", "EngineSpec", "verify_export", "write_repository"]

_WHERE = {
    "export": "tedloc_edge.export.exporter",
    "ExportOptions": "tedloc_edge.export.exporter",
    "ExportResult": "tedloc_edge.export.exporter",
    "export_onnx": "tedloc_edge.export.onnx_export",
    "build_engine": "tedloc_edge.export.tensorrt_build",
    "EngineSpec": "tedloc_edge.export.tensorrt_build",
    "verify_export": "tedloc_edge.export.verify",
    "write_repository": "tedloc_edge.export.triton_repo",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'tedloc_edge.export' has no attribute {name!r}")
