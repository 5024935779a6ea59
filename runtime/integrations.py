"""Results for other libraries, each imported only when asked for (none is a dependency of the runtime)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from tedloc_edge.errors import UserError

if TYPE_CHECKING:
    from tedloc_edge.runtime.result import Result


def to_supervision(result: "Result") -> Any:
    """`supervision.Detections` for one Result: its trackers (ByteTrack), zones and annotators then apply."""
    try:
        import supervision as sv
    except ImportError:
        raise UserError("Result.to_supervision() needs the supervision package; pip install supervision") from None
    n = len(result.boxes)
    return sv.Detections(
        xyxy=np.asarray(result.boxes, np.float32).reshape(n, 4),
        confidence=np.asarray(result.box_scores, np.float32).reshape(n),
        class_id=np.full(n, int(result.class_id), dtype=int),
        data={"class_name": np.array([result.class_name] * n, dtype=object).reshape(n),
              "class_score": np.full(n, float(result.score), dtype=np.float32)},
    )
