"""A real Triton Inference Server process for the tests: the `tritonserver` binary on 127.0.0.1 with free ports.

`TritonServer` starts the binary with three free ports, waits (bounded) for readiness, and stops it with
SIGTERM then SIGKILL of its own process group; `restart()` keeps the ports. The binary and its backend
environment come from triton_install.py, the fixture models from triton_models.py; what the tests and
benchmarks use of both is re-exported here, so this module stays their one entry point.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

from triton_install import TritonInstall, TritonUnavailable, triton_install  # noqa: F401 (re-exported)
from triton_models import python_standin, tiny_onnx  # noqa: F401 (re-exported)

READY_TIMEOUT_S = 90.0


class PortTaken(RuntimeError):
    """Another process took one of the chosen ports between choosing and binding."""


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class TritonServer:
    """One `tritonserver` process on 127.0.0.1; use as a context manager so it is always stopped."""

    def __init__(self, install: TritonInstall, repository: Path, log_path: Path, models: Sequence[str] | None = None):
        self.install = install
        self.repository = Path(repository)
        self.log_path = Path(log_path)
        self.models = list(models) if models else None
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        self.proc: subprocess.Popen | None = None
        self._started = False

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        cmd = [
            str(self.install.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={self.install.backends}",
            "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1",
            f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}", f"--metrics-port={self.metrics_port}",
            "--allow-metrics=true", "--allow-gpu-metrics=false", "--exit-timeout-secs=1",
        ]
        if self.models is not None:
            cmd += ["--model-control-mode=explicit"] + [f"--load-model={m}" for m in self.models]
        return cmd

    def start(self, timeout: float = READY_TIMEOUT_S) -> "TritonServer":
        """Start and wait for readiness. A first start whose ports were taken meanwhile retries on new ones."""
        first = self.proc is None and not self._started
        for attempt in range(3 if first else 1):
            try:
                return self._start(timeout)
            except PortTaken:
                if attempt == 2 or not first:
                    raise RuntimeError(f"tritonserver could not bind its ports:\n{self.log_tail()}") from None
                self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> "TritonServer":
        self._started = True
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.install.env(),
                start_new_session=True, cwd=self.log_path.parent,
            )
        finally:
            log.close()
        atexit.register(self.stop)  # also stopped if the test process exits without teardown
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code, self.proc = self.proc.returncode, None
                with open(self.log_path, "rb") as fh:
                    fh.seek(offset)
                    text = fh.read().decode(errors="replace")
                if "Address already in use" in text or "address already in use" in text:
                    raise PortTaken(text[-300:])
                raise RuntimeError(f"tritonserver exited with {code} while starting:\n{self.log_tail()}")
            if self.ready():
                return self
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"tritonserver not ready within {timeout:.0f} s:\n{self.log_tail()}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=1) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and its backend stubs
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        # stubs are in the same process group; make sure none outlives the server
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
