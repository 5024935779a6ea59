"""Four cameras in one process against one camera alone, side by side, on real RTSP streams.

    python benchmarks/bench_cameras.py [--model MODEL.onnx] [--cameras 4] [--size 640x360] [--fps 30]
                                       [--seconds 30] [--rounds 2] [--video] [--json OUT]

Starts one gst-rtsp-server per camera (tests/rtsp_server.py: live H.264 on 127.0.0.1; all of them run during
every measurement, so the servers' encoding load is the same for both), then alternates, per round:
`tedloc-edge infer URL1` (one camera alone) and `tedloc-edge infer URL1 ... URLn` (one process, batched across
cameras, `--batch n`), each for --seconds, stopped by SIGINT. Processed fps per camera is counted from the JSONL's
wall-clock `time` over the steady part of the run (from 5 s after the first line to the last), so model loading
and the RTSP handshake are left out. Prints per round and the medians: each camera's fps and share of the mean,
the aggregate, and the aggregate over one camera alone. JSONL only unless --video (then also the annotated mp4s).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from rtsp_server import RtspServer, rtsp_unavailable  # noqa: E402

DEMO_MODEL = REPO / "demo" / "models" / "tedloc_int8.onnx"
SETTLE_S = 5.0


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def steady_fps(jsonl: Path) -> float:
    times = [epoch(json.loads(line)["time"]) for line in jsonl.read_text().splitlines()]
    if len(times) < 2:
        return 0.0
    start = times[0] + SETTLE_S
    window = [t for t in times if t >= start]
    return (len(window) - 1) / (window[-1] - window[0]) if len(window) > 1 and window[-1] > window[0] else 0.0


def run(urls: list[str], model: Path, seconds: float, out: Path, video: bool) -> list[float]:
    """One `infer` over `urls` for `seconds`; the steady fps of each camera."""
    cmd = [sys.executable, "-m", "tedloc_edge.app.cli", "infer", *urls, "--model", str(model), "--out", str(out)]
    if not video:
        cmd.append("--no-video")
    env = {**os.environ, "TEDLOC_NO_PROGRESS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    first = out / "predictions.jsonl" if len(urls) == 1 else None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:  # time the run from its first processed frame
        files = [first] if first else list(out.glob("*/predictions.jsonl"))
        if files and any(f.is_file() and f.stat().st_size for f in files):
            break
        time.sleep(0.1)
    time.sleep(seconds)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=120)[0].decode()
    if proc.returncode not in (0, 130):
        raise SystemExit(f"infer failed ({proc.returncode}):\n{output[-2000:]}")
    if len(urls) == 1:
        return [steady_fps(out / "predictions.jsonl")]
    rows = json.loads((out / "summary.json").read_text())["sources"]
    return [steady_fps(out / row["name"] / "predictions.jsonl") for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEMO_MODEL)
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--video", action="store_true", help="also write the annotated mp4s (x264 per camera)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if (reason := rtsp_unavailable()) is not None:
        sys.exit(f"no RTSP server here: {reason}")
    width, height = (int(v) for v in args.size.lower().split("x"))
    load_before = os.getloadavg()
    rounds = []
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bench_cameras_") as tmp:
        servers = [stack.enter_context(RtspServer(width, height, args.fps)) for _ in range(args.cameras)]
        urls = [s.url for s in servers]
        for r in range(args.rounds):
            one = run(urls[:1], args.model, args.seconds, Path(tmp) / f"one_{r}", args.video)[0]
            many = run(urls, args.model, args.seconds, Path(tmp) / f"many_{r}", args.video)
            mean = statistics.mean(many)
            rounds.append({"one": round(one, 2), "cameras": [round(f, 2) for f in many], "aggregate": round(sum(many), 2),
                           "vs_one": round(sum(many) / one, 2) if one else None,
                           "min_share_of_mean": round(min(many) / mean, 3) if mean else None})
            print(json.dumps({"round": r, **rounds[-1]}), flush=True)
    median = {
        "one": statistics.median(x["one"] for x in rounds),
        "cameras": [round(statistics.median(x["cameras"][i] for x in rounds), 2) for i in range(args.cameras)],
        "aggregate": statistics.median(x["aggregate"] for x in rounds),
        "vs_one": statistics.median(x["vs_one"] for x in rounds if x["vs_one"] is not None),
        "min_share_of_mean": statistics.median(x["min_share_of_mean"] for x in rounds if x["min_share_of_mean"] is not None),
    }
    report = {"command": " ".join(sys.argv), "model": str(args.model), "size": args.size, "fps": args.fps,
              "seconds": args.seconds, "video": args.video, "load_before": load_before, "load_after": os.getloadavg(), "rounds": rounds, "median": median}
    print(json.dumps(report["median"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
