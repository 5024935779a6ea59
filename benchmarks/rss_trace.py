"""Memory over a long live run: the resident set size of `tedloc-edge infer` on a real RTSP stream, sampled.

    python benchmarks/rss_trace.py --minutes 10 [--model MODEL.onnx] [--size 640x360] [--fps 30]
                                   [--restart-every 0] [--interval 5] [--out runs/rss]

Starts gst-rtsp-server (tests/rtsp_server.py: live H.264 on 127.0.0.1), runs `tedloc-edge infer URL --model
MODEL --out OUT/infer` (annotated mp4 + JSONL, as a camera deployment writes them) for the given minutes, reads
VmRSS of the infer process from /proc every --interval seconds, then stops it with SIGINT as a service manager
would. With --restart-every S the server is killed and started again every S seconds, so reconnections are in
the trace too. Writes OUT/rss.csv (seconds, rss MiB, JSONL lines) and OUT/rss.json (start, after the first
minute, end, max (start: the first sample once frames are processed), the slope over the run after its first minute in MiB per hour, frames processed, gaps).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from rtsp_server import RtspServer, rtsp_unavailable  # noqa: E402

DEMO_MODEL = REPO / "demo" / "models" / "tedloc_int8.onnx"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for pid {pid}")


def lines_in(path: Path) -> int:
    try:
        with path.open("rb") as fh:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


def slope_per_hour(samples: list[tuple[float, float, int]], after_s: float) -> float:
    """Least-squares slope of RSS (MiB) over time after `after_s`, in MiB per hour."""
    pts = [(t, r) for t, r, _ in samples if t >= after_s]
    if len(pts) < 2:
        return 0.0
    mt = sum(t for t, _ in pts) / len(pts)
    mr = sum(r for _, r in pts) / len(pts)
    var = sum((t - mt) ** 2 for t, _ in pts)
    return sum((t - mt) * (r - mr) for t, r in pts) / var * 3600.0 if var else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--model", type=Path, default=DEMO_MODEL)
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--restart-every", type=float, default=0.0)
    parser.add_argument("--out", type=Path, default=Path("runs/rss"))
    parser.add_argument("infer_args", nargs="*", help="more `infer` options after --, e.g. -- --no-video --segment 2m")
    args = parser.parse_args()
    if (reason := rtsp_unavailable()) is not None:
        sys.exit(f"no RTSP server here: {reason}")
    if not args.model.is_file():
        sys.exit(f"{args.model}: no such model; pass --model MODEL.onnx (e.g. the demo's tedloc_int8.onnx)")
    width, height = (int(v) for v in args.size.lower().split("x"))
    args.out.mkdir(parents=True, exist_ok=True)
    jsonl = args.out / "infer" / "predictions.jsonl"
    samples: list[tuple[float, float, int]] = []
    with RtspServer(width, height, args.fps) as server:
        cmd = [sys.executable, "-m", "tedloc_edge.app.cli", "infer", server.url, "--model", str(args.model),
               "--out", str(args.out / "infer"), "--exist-ok", *args.infer_args]
        print(" ".join(cmd), flush=True)
        env = {**os.environ, "TEDLOC_NO_PROGRESS": "1"}
        log = (args.out / "infer.log").open("w")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        started = time.monotonic()
        last_restart = started
        try:
            while (now := time.monotonic()) - started < args.minutes * 60 and proc.poll() is None:
                samples.append((round(now - started, 1), round(rss_mib(proc.pid), 1), lines_in(jsonl)))
                if args.restart_every and now - last_restart >= args.restart_every:
                    server.kill()
                    time.sleep(2.0)
                    server.start()
                    last_restart = time.monotonic()
                time.sleep(args.interval)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=120)
            log.close()
    with (args.out / "rss.csv").open("w") as fh:
        fh.write("seconds,rss_mib,jsonl_lines\n")
        fh.writelines(f"{t},{r},{n}\n" for t, r, n in samples)
    summary = json.loads((args.out / "infer" / "summary.json").read_text())
    rss = [r for _, r, _ in samples]
    first = next((r for _, r, n in samples if n > 0), rss[-1])  # the first sample once frames are being processed
    warm = next((r for t, r, _ in samples if t >= 60.0), rss[-1])
    report = {
        "command": " ".join(cmd), "minutes": args.minutes, "exit_code": code, "samples": len(samples),
        "rss_start_mib": first, "rss_after_1min_mib": warm, "rss_end_mib": rss[-1], "rss_max_mib": max(rss),
        "slope_after_1min_mib_per_hour": round(slope_per_hour(samples, 60.0), 2),
        "frames_processed": summary["frames_processed"], "fps": summary["fps"], "dropped_stale": summary["dropped_stale"],
        "reconnects": summary["reconnects"],
    }
    (args.out / "rss.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
