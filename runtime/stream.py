"""`Localizer.stream(source)`: results from the same threaded reader `infer` uses, for a camera pipeline.

    loc = Localizer("model_int8.onnx")
    for result, frame in loc.stream("rtsp://camera/stream", color="BGR"):
        ...                                  # frame: HxWx3 uint8 in `color` order, yours to draw on

Decoding runs in the reader thread while the model runs in yours; a live source drops stale frames (unless
`queue=True`) and reconnects (`reconnect`, runtime/reconnect.py); `hwaccel="cuda"` decodes on NVDEC; `smooth=K`
smooths class and box over K frames (runtime/smoothing.py). A file ends the loop at its end; a live source
lost for good raises SourceLost after its last frame. Leaving the loop early (break) closes the source.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import cv2
import numpy as np

from tedloc_edge.runtime.frames import ThreadedSource
from tedloc_edge.runtime.preprocess import check_color
from tedloc_edge.runtime.reconnect import SourceLost, open_stream
from tedloc_edge.runtime.result import Result
from tedloc_edge.runtime.smoothing import Smoother

if TYPE_CHECKING:
    from tedloc_edge.runtime.localizer import Localizer


def stream(
    loc: "Localizer",
    source: str | int | ThreadedSource,
    color: str = "RGB",
    batch: int | None = None,
    stride: int = 1,
    queue: bool = False,
    timeout: float = 10.0,
    hwaccel: str | None = None,
    reconnect: str | int | None = None,
    smooth: int = 0,
) -> Iterator[tuple[Result, np.ndarray]]:
    """(Result, frame) per frame read, in order; see the module docstring. `source`: what `tedloc-edge infer`
    takes (a video, images, a URL, a camera index) or an open ThreadedSource (left open at the end)."""
    color = check_color(color)
    smoother = Smoother(smooth) if smooth else None
    owned = not isinstance(source, ThreadedSource)
    if isinstance(source, ThreadedSource):
        reader = source
    else:
        reader = open_stream(source, queue=queue, stride=stride, timeout=timeout, hwaccel=hwaccel, reconnect=reconnect)
    try:
        for frames in reader.batches(batch or loc.max_batch):
            results = loc([f.image for f in frames], color="RGB")
            for frame, result in zip(frames, results):
                if smoother is not None:
                    result, _ = smoother(result, restart=frame.gap_s is not None)
                image = frame.image if color == "RGB" else cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR, dst=frame.image)
                yield result, image
        if reader.stats.lost:
            raise SourceLost(f"{reader.label}: {reader.stats.stream_error}")
    finally:
        if owned:
            reader.close()
