"""tedloc_edge.runtime: the torch-free runtime (numpy, onnxruntime, OpenCV, PyAV; TensorRT optional).

    from tedloc_edge.runtime import Localizer
    loc = Localizer("model.onnx")
    result = loc(frame, color="BGR")     # Result: boxes (frame pixels), class, score, top-k, speed

Names are loaded on first use, so `tedloc-edge --help` does not pay for onnxruntime or OpenCV.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tedloc_edge.boxes import decode_boxes
    from tedloc_edge.runtime.localizer import Localizer
    from tedloc_edge.runtime.result import Result

__all__ = ["Localizer", "Result", "decode_boxes"]

_WHERE = {
    "Localizer": "tedloc_edge.runtime.localizer",
    "Result": "tedloc_edge.runtime.result",
    "decode_boxes": "tedloc_edge.boxes",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'tedloc_edge.runtime' has no attribute {name!r}")
