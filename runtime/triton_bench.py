"""`tedloc-edge bench --triton URL --streams N --seconds S`: N simulated cameras against a Triton server,
beside the in-process Localizer on the same model, in one run.

Each camera is a thread with its own `Localizer(TritonRunner(...))` (its own connection) sending its own synthetic
frames back to back (or at `fps`), for `seconds`; the in-process run has the same N threads calling one
shared `Localizer` (the embedded way: one model, a lock). Per mode: frames answered, errors, throughput and
per-frame latency percentiles (client resize + request + unpack). From the server's Prometheus metrics
endpoint (read before and after) per model: requests, mean batch size the dynamic batcher formed, queue
time and compute time per request.

Bounded: at most `MAX_STREAMS` threads, each stops at the deadline, each request at the client timeout,
and threads are joined with a deadline. Loopback only unless `allow_remote` (a bench is a load test: point
it at your own server).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tedloc_edge.errors import UserError
from tedloc_edge.runtime.localizer import Localizer
from tedloc_edge.runtime.triton_client import TritonFrameError, TritonRunner, parse_url

logger = logging.getLogger(__name__)

MAX_STREAMS = 256
MAX_SECONDS = 3600.0
METRIC_LINE = re.compile(r'^(nv_inference_[a-z_]+)\{([^}]*)\}\s+([-+0-9.eE]+)\s*$')
METRICS = (
    "nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count", "nv_inference_exec_count",
    "nv_inference_request_duration_us", "nv_inference_queue_duration_us", "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us", "nv_inference_compute_output_duration_us",
)


def check_loopback(host: str) -> None:
    host = host.strip("[]")
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        raise UserError(f"Triton host {host!r} does not resolve") from None
    if not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise UserError(f"bench sends load to {host}, which is not this machine; pass --allow-remote if it is your own server")


def synthetic_frames(count: int, frame_size: tuple[int, int], seed: int) -> list[np.ndarray]:
    """Camera-like RGB frames: a gradient background with a bright ellipse that moves from frame to frame."""
    import cv2

    h, w = frame_size
    rng = np.random.default_rng(seed)
    base = np.zeros((h, w, 3), np.uint8)
    base[:] = np.linspace(30, 120, w, dtype=np.uint8)[None, :, None]
    frames = []
    for i in range(count):
        frame = base.copy()
        cx = int(w * (0.25 + 0.5 * (i / max(1, count - 1))))
        cy = int(h * rng.uniform(0.3, 0.7))
        cv2.ellipse(frame, (cx, cy), (w // 6, h // 5), 0, 0, 360, tuple(int(v) for v in rng.integers(150, 256, 3)), -1)
        frame += rng.integers(0, 12, frame.shape, dtype=np.uint8)
        frames.append(frame)
    return frames


def read_metrics(url: str | None, timeout: float = 2.0) -> dict[str, dict[str, float]] | None:
    """{model: {metric: value}} summed over versions, or None when the endpoint does not answer."""
    if not url:
        return None
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            text = resp.read().decode("utf-8", errors="replace")
    except (urllib.error.URLError, OSError):
        return None
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        match = METRIC_LINE.match(line)
        if not match or match.group(1) not in METRICS:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
        model = labels.get("model")
        if model:
            slot = out.setdefault(model, {})
            slot[match.group(1)] = slot.get(match.group(1), 0.0) + float(match.group(3))
    return out


def metrics_delta(before: dict | None, after: dict | None) -> dict[str, dict[str, float]]:
    """Per model: requests, failures, mean batch, and per-request request/queue/compute milliseconds."""
    if before is None or after is None:
        return {}
    report = {}
    for model, now in after.items():
        then = before.get(model, {})
        d = {k: now.get(k, 0.0) - then.get(k, 0.0) for k in METRICS}
        requests = d["nv_inference_request_success"]
        if requests <= 0:
            continue
        compute = d["nv_inference_compute_input_duration_us"] + d["nv_inference_compute_infer_duration_us"] + d["nv_inference_compute_output_duration_us"]
        report[model] = {
            "requests": int(requests),
            "failures": int(d["nv_inference_request_failure"]),
            "mean_batch": round(d["nv_inference_count"] / max(1.0, d["nv_inference_exec_count"]), 2),
            "request_ms": round(d["nv_inference_request_duration_us"] / requests / 1e3, 3),
            "queue_ms": round(d["nv_inference_queue_duration_us"] / requests / 1e3, 3),
            "compute_ms": round(compute / requests / 1e3, 3),
        }
    return report


def _cameras(
    streams: int, seconds: float, fps: float | None, frames: Sequence[Sequence[np.ndarray]],
    open_camera: Callable[[int], Any], join_slack: float, on_start: Callable[[], Any] | None = None,
) -> tuple[list[float], int, float]:
    """Run `streams` camera threads for `seconds`; returns (latencies in ms, errors, wall seconds).

    `open_camera(k)` runs IN camera thread k (a tritonclient HTTP client belongs to the thread that made
    it) and returns a callable frame -> result, closed (if it has `close`) when the thread ends."""
    latencies: list[list[float]] = [[] for _ in range(streams)]
    errors = [0] * streams
    start_gate = threading.Barrier(streams + 1)
    stop_at = [float("inf")]

    failures: list[BaseException] = []

    def camera(k: int) -> None:
        own = frames[k % len(frames)]
        try:
            call = open_camera(k)
            call(own[0])  # warm-up, not timed
        except BaseException as exc:  # noqa: BLE001 - reported once by the main thread
            failures.append(exc)
            start_gate.abort()
            return
        try:
            start_gate.wait(timeout=120)
        except threading.BrokenBarrierError:
            return
        i = 0
        next_t = time.monotonic()
        try:
            while time.monotonic() < stop_at[0]:
                frame = own[i % len(own)]
                i += 1
                t0 = time.perf_counter()
                try:
                    call(frame)
                    latencies[k].append((time.perf_counter() - t0) * 1e3)
                except TritonFrameError:
                    errors[k] += 1
                    time.sleep(0.01)
                if fps:
                    next_t += 1.0 / fps
                    time.sleep(max(0.0, next_t - time.monotonic()))
        finally:
            close = getattr(call, "close", None)
            if close is not None:
                close()

    threads = [threading.Thread(target=camera, args=(k,), name=f"camera-{k}", daemon=True) for k in range(streams)]
    for t in threads:
        t.start()
    try:
        start_gate.wait(timeout=120)  # every camera connected and warm
    except threading.BrokenBarrierError:
        for t in threads:
            t.join(5)
        if failures:
            raise failures[0]
        raise UserError("camera threads did not all start within 120 s") from None
    if on_start is not None:
        on_start()
    t0 = time.monotonic()
    stop_at[0] = t0 + seconds
    for t in threads:
        t.join(max(0.1, stop_at[0] + join_slack - time.monotonic()))
    wall = time.monotonic() - t0
    stuck = sum(t.is_alive() for t in threads)
    if stuck:
        logger.warning("%d camera threads still busy after the deadline; their frames are not counted", stuck)
    return [x for lat in latencies for x in lat], sum(errors), wall


def _row(mode: str, streams: int, latencies: list[float], errors: int, wall: float) -> dict[str, Any]:
    lat = np.array(latencies) if latencies else np.zeros(1)
    return {
        "mode": mode,
        "streams": streams,
        "frames": len(latencies),
        "errors": errors,
        "seconds": round(wall, 2),
        "fps": round(len(latencies) / wall, 1) if wall > 0 else 0.0,
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
    }


def run(
    url: str,
    streams: int = 4,
    seconds: float = 10.0,
    model: str | Path | None = None,
    protocol: str | None = None,
    metrics_url: str | None = None,
    frame_size: tuple[int, int] = (480, 640),
    fps: float | None = None,
    timeout: float = 5.0,
    allow_remote: bool = False,
) -> dict[str, Any]:
    """One bench: N cameras on the server, then (when `model` is given) the same N on the in-process Localizer."""
    streams, seconds = int(streams), float(seconds)
    if not 1 <= streams <= MAX_STREAMS:
        raise UserError(f"--streams must be 1..{MAX_STREAMS}, not {streams}")
    if not 0 < seconds <= MAX_SECONDS:
        raise UserError(f"--seconds must be in (0, {MAX_SECONDS:.0f}], not {seconds}")
    target = parse_url(url, protocol=protocol)
    host = target.address.rsplit(":", 1)[0]
    if not allow_remote:
        check_loopback(host)
    if metrics_url is None:
        metrics_url = f"http://{host}:8002/metrics"
    frames = [synthetic_frames(8, frame_size, seed=k) for k in range(min(streams, 16))]

    def open_triton(k: int) -> Localizer:
        return Localizer(TritonRunner(str(target), timeout=timeout, give_up_s=max(30.0, seconds)))

    before: list[Any] = [None]
    lat, err, wall = _cameras(
        streams, seconds, fps, frames, open_triton, timeout + 2, on_start=lambda: before.__setitem__(0, read_metrics(metrics_url))
    )
    after = read_metrics(metrics_url)
    rows = [_row("triton", streams, lat, err, wall)]
    report: dict[str, Any] = {
        "url": str(target), "streams": streams, "seconds": seconds, "frame_size": list(frame_size),
        "rows": rows, "server": metrics_delta(before[0], after), "metrics_url": metrics_url if after is not None else None,
    }
    if model is not None:
        with Localizer(model) as loc:
            lat, err, wall = _cameras(streams, seconds, fps, frames, lambda k: loc.__call__, timeout + 2)
        rows.append(_row("in-process", streams, lat, err, wall))
    return report


def sweep(url: str, streams: Sequence[int], seconds: float, model: str | Path | None = None, **kw: Any) -> list[dict[str, Any]]:
    return [run(url, n, seconds, model, **kw) for n in streams]


def markdown_table(reports: Sequence[dict[str, Any]]) -> str:
    """One line per (streams, mode), with the server's queue/compute split on the Triton rows."""
    lines = [
        "| streams | mode | frames/s | p50 ms | p99 ms | frames | errors | server queue ms | server compute ms | mean batch |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for rep in reports:
        model = parse_url(rep["url"]).model
        srv = rep["server"].get(model, {})
        for row in rep["rows"]:
            q, c, b = ("", "", "") if row["mode"] != "triton" or not srv else (srv["queue_ms"], srv["compute_ms"], srv["mean_batch"])
            lines.append(
                f"| {row['streams']} | {row['mode']} | {row['fps']} | {row['p50_ms']} | {row['p99_ms']} | {row['frames']} | {row['errors']} | {q} | {c} | {b} |"
            )
    return "\n".join(lines)


def parse_streams(streams: str | int | Sequence[int]) -> list[int]:
    """``4`` or ``"1,4,16"`` -> [1, 4, 16]."""
    if isinstance(streams, int):
        return [streams]
    if isinstance(streams, str):
        try:
            return [int(s) for s in streams.split(",") if s.strip()]
        except ValueError:
            raise UserError(f"--streams takes a count or a comma list like 1,4,16, not {streams!r}") from None
    return [int(s) for s in streams]


def cli(
    url: str,
    streams: str | int | Sequence[int] = 4,
    seconds: float = 10.0,
    model: str | Path | None = None,
    json_path: str | Path | None = None,
    **kw: Any,
) -> list[dict[str, Any]]:
    """What `tedloc-edge bench --triton URL --streams N[,M,...] --seconds S [MODEL] [--json F]` runs."""
    import json

    from tedloc_edge.console import console

    reports = sweep(url, parse_streams(streams), seconds, model, **kw)
    console.print(markdown_table(reports), soft_wrap=True, markup=False)
    missing = [r for r in reports if r["metrics_url"] is None]
    if missing:
        tried = kw.get("metrics_url") or "http://HOST:8002/metrics"
        console.print(f"server queue/compute columns empty: no metrics at {tried} (start tritonserver with "
                      "--allow-metrics=true, or pass metrics_url)", soft_wrap=True, markup=False)
    if json_path is not None:
        Path(json_path).write_text(json.dumps(reports, indent=2), encoding="utf-8")
    return reports
