"""Helpers for the fault tests: folders and files that cannot be written (even by root), a server that accepts
connections and never answers, and the CLI run as a user runs it (a subprocess, its exit code and output)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def read_only(path: Path) -> Iterator[str]:
    """Make `path` unwritable for the rest of the block; yields how. Not root: chmod a-w. Root ignores modes, so
    there `chattr +i` (immutable: not even root may create, replace or change anything in it); skipped when the
    file system or the container does not allow it."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(mode & ~0o222)
        try:
            yield "chmod a-w"
        finally:
            path.chmod(mode)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
        pytest.skip("running as root and chattr +i is not available here: cannot make a folder unwritable")
    try:
        yield "chattr +i"
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@contextmanager
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never sends a byte; yields the port."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    stop, held = threading.Event(), []

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


def cli(*args: str, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`tedloc-edge ARGS` in a subprocess: returncode, and stdout + stderr together as `.stdout` (text)."""
    env = {**os.environ, "TEDLOC_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "tedloc_edge.app.cli", *map(str, args)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd or REPO, timeout=timeout)


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Assert exit 2 with an `error:` line and no traceback; returns the error line."""
    assert proc.returncode == 2, proc.stdout
    assert "Traceback" not in proc.stdout, proc.stdout
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("error:")), None)
    assert line is not None, proc.stdout
    text = " ".join(proc.stdout.split())  # rich may wrap the line
    for needle in needles:
        assert needle in text, proc.stdout
    return line
