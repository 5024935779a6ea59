"""`--smooth K`: temporal smoothing of a video's results, off by default.

The class is a vote over the last K frames' top-1 classes (a tie goes to the class with the higher summed
probability over the window, then to the newer frame's); its score is the class's mean probability over
the window (0 where a frame did not rank it in its top-k). The best box is an exponential moving average,
alpha = 2 / (K + 1) (the span-K EMA), restarted when the voted class changes or a frame has no box; other
boxes pass through. `topk` stays the frame's own ranking. A reconnection's gap restarts the window.
Each JSONL line then carries "smooth": {"k", "raw_class_id", "raw_box"}, so the raw result is never lost.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import replace
from typing import Any

import numpy as np

from tedloc_edge.errors import UserError
from tedloc_edge.runtime.result import Result


class Smoother:
    """One video's smoothing state; call it on each frame's Result in order."""

    def __init__(self, k: int) -> None:
        if k < 2:
            raise UserError(f"--smooth {k}: give the number of frames to smooth over, 2 or more (0 turns it off)")
        self.k = k
        self.alpha = 2.0 / (k + 1)
        self.reset()

    def reset(self) -> None:
        self.window: deque[tuple[int, dict[int, float]]] = deque(maxlen=self.k)  # (top-1 id, {id: prob})
        self.names: dict[int, str] = {}
        self.box: np.ndarray | None = None
        self.box_class: int | None = None

    def _vote(self) -> int:
        counts = Counter(top for top, _ in self.window)
        mass = {c: sum(probs.get(c, 0.0) for _, probs in self.window) for c in counts}
        newest = {top: i for i, (top, _) in enumerate(self.window)}
        return max(counts, key=lambda c: (counts[c], mass[c], newest[c]))

    def __call__(self, result: Result, restart: bool = False) -> tuple[Result, dict[str, Any]]:
        """The smoothed Result and the JSONL fields that state it; `restart` after a gap in the stream."""
        if restart:
            self.reset()
        self.window.append((result.class_id, {i: p for i, _, p in result.topk}))
        self.names.update({i: n for i, n, _ in result.topk})
        voted = self._vote()
        score = sum(probs.get(voted, 0.0) for _, probs in self.window) / len(self.window)
        boxes = result.boxes
        raw_box = boxes[0].tolist() if len(boxes) else None
        if not len(boxes) or voted != self.box_class or self.box is None:
            self.box = boxes[0].astype(np.float32) if len(boxes) else None
        else:
            self.box = (self.alpha * boxes[0] + (1.0 - self.alpha) * self.box).astype(np.float32)
        self.box_class = voted if len(boxes) else None
        if self.box is not None:
            boxes = np.concatenate([self.box[None], boxes[1:]]).astype(np.float32)
        smoothed = replace(result, class_id=voted, class_name=self.names[voted], score=float(score), boxes=boxes)
        raw = None if raw_box is None else [round(float(v), 2) for v in raw_box]
        return smoothed, {"smooth": {"k": self.k, "raw_class_id": int(result.class_id), "raw_box": raw}}
