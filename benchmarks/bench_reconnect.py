"""Reconnect latency on a real RTSP stream: the server is killed and started again, and the time from its
restart to the first processed frame after it is measured, per trial.

    python benchmarks/bench_reconnect.py [--model MODEL.onnx] [--trials 6] [--down 2,3.3,4.6,6,7.5,9] [--size 640x360] [--json OUT]

One `tedloc-edge infer URL --no-video` runs through every trial (default reconnect policy, forever). A trial:
stream for 4 s, kill the server (SIGKILL, as a camera losing power), wait --down seconds, start it on the same
port, then wait for the JSONL line marked `gap_s`; its wall-clock `time` minus the restart is the latency.
The down times cycle through --down, so the restart falls at different points of the backoff (0.5 s, 1 s, then
every 2 s): the worst case is a restart just after an attempt failed.
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
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from rtsp_server import RtspServer, rtsp_unavailable  # noqa: E402

DEMO_MODEL = REPO / "demo" / "models" / "tedloc_int8.onnx"


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def gap_lines(jsonl: Path) -> list[dict]:
    if not jsonl.is_file():
        return []
    return [line for line in map(json.loads, jsonl.read_text().splitlines()) if "gap_s" in line]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEMO_MODEL)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--down", default="2,3.3,4.6,6,7.5,9", help="seconds the server stays down, cycled over the trials")
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if (reason := rtsp_unavailable()) is not None:
        sys.exit(f"no RTSP server here: {reason}")
    width, height = (int(v) for v in args.size.lower().split("x"))
    downs = [float(v) for v in args.down.split(",")]
    trials = []
    with RtspServer(width, height, 30) as server, tempfile.TemporaryDirectory(prefix="bench_reconnect_") as tmp:
        jsonl = Path(tmp) / "out" / "predictions.jsonl"
        cmd = [sys.executable, "-m", "tedloc_edge.app.cli", "infer", server.url, "--model", str(args.model),
               "--out", str(Path(tmp) / "out"), "--no-video"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "TEDLOC_NO_PROGRESS": "1"}, cwd=REPO)
        while not (jsonl.is_file() and jsonl.stat().st_size):
            time.sleep(0.1)
        for k in range(args.trials):
            time.sleep(4.0)
            server.kill()
            time.sleep(downs[k % len(downs)])
            server.start()
            restarted = time.time()
            deadline = time.monotonic() + 30
            while len(gap_lines(jsonl)) <= k and time.monotonic() < deadline:
                time.sleep(0.05)
            gaps = gap_lines(jsonl)
            latency = epoch(gaps[k]["time"]) - restarted if len(gaps) > k else None
            trials.append({"down_s": downs[k % len(downs)], "latency_s": None if latency is None else round(latency, 3), "gap_s": gaps[k]["gap_s"] if len(gaps) > k else None})
            print(json.dumps({"trial": k, **trials[-1]}), flush=True)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
        summary = json.loads((Path(tmp) / "out" / "summary.json").read_text())
    latencies = [t["latency_s"] for t in trials if t["latency_s"] is not None]
    report = {"command": " ".join(sys.argv), "trials": trials, "reconnects": summary["reconnects"],
              "attempts": [g["attempts"] for g in summary["gaps"]], "frames_processed": summary["frames_processed"],
              "latency_median_s": statistics.median(latencies) if latencies else None,
              "latency_max_s": max(latencies) if latencies else None, "missed": len(trials) - len(latencies)}
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
