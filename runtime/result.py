"""`Result`: what the Localizer returns for one frame. Plain numpy, no torch (Ultralytics' Results, lean)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Result:
    """One frame's class and boxes, or that it holds no object.

    boxes: (K, 4) float32 xyxy in ORIGINAL frame pixels (inclusive, as the WSOL protocol counts them),
    best box first; box_scores: (K,) mean raw foreground probability over each box's patches (a CAM: mean
    normalised map); class_id / class_name / score: the top-1 class and its softmax probability; topk:
    [(id, name, prob)] best first; presence: the frame's presence score from the raw map (None for a CAM or a
    server that decodes); present: presence >= the model's presence threshold (True when there is none). Not
    present: no boxes, class_id / class_name / score None and topk []. fg_map: the (gh, gw) foreground map when
    asked for; orig_shape: (height, width) of the frame; speed: per-image milliseconds for "preprocess",
    "inference", "postprocess".
    """

    boxes: np.ndarray
    box_scores: np.ndarray
    class_id: int | None
    class_name: str | None
    score: float | None
    topk: list[tuple[int, str, float]]
    orig_shape: tuple[int, int]
    speed: dict[str, float] = field(default_factory=dict)
    fg_map: np.ndarray | None = None
    presence: float | None = None
    present: bool = True

    def __len__(self) -> int:
        return len(self.boxes)

    def summary(self, decimals: int = 2) -> dict[str, Any]:
        """JSON-ready dict (lists and floats only); a frame without an object has null class fields and no boxes."""
        return {
            "present": bool(self.present),
            "presence": None if self.presence is None else round(float(self.presence), 5),
            "class_id": None if self.class_id is None else int(self.class_id),
            "class_name": self.class_name,
            "score": None if self.score is None else round(float(self.score), 5),
            "boxes": [[round(float(v), decimals) for v in box] for box in self.boxes],
            "box_scores": [round(float(s), 5) for s in self.box_scores],
            "topk": [{"id": int(i), "name": n, "prob": round(float(p), 5)} for i, n, p in self.topk],
            "height": int(self.orig_shape[0]),
            "width": int(self.orig_shape[1]),
            "speed": {k: round(float(v), 3) for k, v in self.speed.items()},
        }

    def plot(self, frame: np.ndarray, color: str = "RGB", heatmap: bool = False, copy: bool = True) -> np.ndarray:
        """The frame with boxes, class and score drawn (and the map blended when `heatmap`); same channel order."""
        from tedloc_edge.runtime.annotate import draw_result
        from tedloc_edge.runtime.preprocess import as_uint8_3ch

        image = as_uint8_3ch(frame, color)  # grayscale, RGBA or 16-bit frames are drawn on as 3-channel uint8
        if copy and image is frame:
            image = image.copy()
        return draw_result(image, self, color=color, heatmap=heatmap)

    def to_supervision(self) -> Any:
        """`supervision.Detections` (pip install supervision): one detection per box, `xyxy` as `boxes`,
        confidence the box score, class_id the frame's class; data["class_name"] and data["class_score"]."""
        from tedloc_edge.runtime.integrations import to_supervision

        return to_supervision(self)

    def __repr__(self) -> str:
        presence = "" if self.presence is None else f"presence={self.presence:.3f}, "
        what = f"class={self.class_name!r} ({self.class_id}), score={self.score:.3f}" if self.present else "present=False"
        return (f"Result({what}, {presence}boxes={len(self.boxes)}, orig_shape={self.orig_shape}, "
                f"speed={ {k: round(v, 2) for k, v in self.speed.items()} })")
