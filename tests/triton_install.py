"""The real Triton server's environment: the `nvidia-pytriton` wheel unpacked and the Python backend's venv, cached.

Set-up (cached under ``~/.cache/tedloc-edge/triton``, or ``$TEDLOC_TRITON_CACHE``; a warm run does nothing):

1. ``pip download --no-deps nvidia-pytriton==0.7.0`` (or ``$TEDLOC_TRITON_WHEEL``), unzipped; the Python
   backend stub for this Python version is copied into ``backends/python/``.
2. The backend's own environment (as real Triton deployments keep theirs): a venv with numpy < 2 (numpy 2
   makes every Python-backend response fail), onnxruntime, opencv-python-headless 4.x and this checkout
   installed editable without dependencies, so the server's models import the same ``tedloc_edge`` code.
   The stub takes its Python from the first ``python3`` on PATH; ``PYTHONPATH`` is ignored by it.

Where the wheel or the environment cannot be had, `triton_install()` raises `TritonUnavailable` with the
reason, which the fixtures turn into a skip.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cache_lock import locked as _locked

PYTRITON = "nvidia-pytriton==0.7.0"
# What the server's Python backend imports (kept apart from the project's own numpy 2 environment).
BACKEND_REQUIREMENTS = ("numpy<2", "onnxruntime>=1.17", "opencv-python-headless>=4.8,<4.12", "rich>=13")
REPO_ROOT = Path(__file__).resolve().parents[1]
PIP_TIMEOUT_S = 600


class TritonUnavailable(RuntimeError):
    """The real server cannot be set up here (no wheel, no matching stub, no backend environment)."""


@dataclass(frozen=True)
class TritonInstall:
    root: Path  # unzipped wheel
    venv: Path  # the Python backend's environment

    @property
    def binary(self) -> Path:
        return self.root / "pytriton" / "tritonserver" / "bin" / "tritonserver"

    @property
    def backends(self) -> Path:
        return self.root / "pytriton" / "tritonserver" / "backends"

    @property
    def libs(self) -> Path:
        return self.root / "nvidia_pytriton.libs"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(self.libs), env.get("LD_LIBRARY_PATH", "")) if p)
        env.pop("PYTHONPATH", None)
        env.pop("PYTHONHOME", None)
        env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "1")
        return env


def cache_dir() -> Path:
    return Path(os.environ.get("TEDLOC_TRITON_CACHE", Path.home() / ".cache" / "tedloc-edge" / "triton"))


def _run(cmd: Sequence[str], what: str, timeout: float = PIP_TIMEOUT_S) -> None:
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TritonUnavailable(f"{what} failed: {exc}") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise TritonUnavailable(f"{what} failed (exit {proc.returncode}): {tail[0]}")


def _find_wheel(dl: Path) -> Path:
    given = os.environ.get("TEDLOC_TRITON_WHEEL")
    if given:
        if not Path(given).is_file():
            raise TritonUnavailable(f"TEDLOC_TRITON_WHEEL={given} is not a file")
        return Path(given)
    found = sorted(dl.glob("nvidia_pytriton-0.7.0-*.whl"))
    if not found:
        _run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
              "--only-binary=:all:", "-d", str(dl), PYTRITON], f"pip download {PYTRITON}")
        found = sorted(dl.glob("nvidia_pytriton-0.7.0-*.whl"))
    if not found:
        raise TritonUnavailable(f"pip download {PYTRITON} gave no manylinux wheel for this machine")
    return found[0]


def _unpack(wheel: Path, root: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=root.parent))
    try:
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                zf.extract(info, tmp)
                mode = (info.external_attr >> 16) & 0o777
                if mode:
                    os.chmod(tmp / info.filename, mode)
        pyver = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = tmp / "pytriton" / "tritonserver" / "python_backend_stubs" / pyver / "triton_python_backend_stub"
        if not stub.is_file():
            raise TritonUnavailable(f"{wheel.name} has no Python backend stub for Python {pyver}")
        dest = tmp / "pytriton" / "tritonserver" / "backends" / "python" / "triton_python_backend_stub"
        shutil.copy2(stub, dest)
        for exe in (dest, tmp / "pytriton" / "tritonserver" / "bin" / "tritonserver"):
            exe.chmod(0o755)
        if root.exists():
            shutil.rmtree(root)
        tmp.rename(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _make_venv(venv: Path) -> None:
    """Built in place (a venv's scripts name their own path); the caller marks it complete afterwards."""
    if venv.exists():
        shutil.rmtree(venv)
    _run([sys.executable, "-m", "venv", str(venv)], "python -m venv (Triton backend environment)", timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    _run([*pip, *BACKEND_REQUIREMENTS], f"pip install {' '.join(BACKEND_REQUIREMENTS)} (Triton backend environment)")
    _run([*pip, "--no-deps", "-e", str(REPO_ROOT)], f"pip install --no-deps -e {REPO_ROOT} (Triton backend environment)")


def triton_install() -> TritonInstall:
    """The unpacked server and its backend environment, made once and cached. Raises TritonUnavailable."""
    if not sys.platform.startswith("linux"):
        raise TritonUnavailable("the nvidia-pytriton wheel is Linux-only")
    base = cache_dir()
    with _locked(base / ".lock"):
        root = base / "pytriton-0.7.0"
        if not (root / ".complete").is_file():
            _unpack(_find_wheel(base / "dl"), root)
            (root / ".complete").write_text(PYTRITON)
        # one environment per checkout (it holds an editable install of this checkout) and Python version
        key = hashlib.sha1(f"{REPO_ROOT}|{sys.version}|{BACKEND_REQUIREMENTS}".encode()).hexdigest()[:10]
        venv = base / f"backend-env-{key}"
        if not (venv / ".complete").is_file():
            _make_venv(venv)
            (venv / ".complete").write_text(" ".join(BACKEND_REQUIREMENTS))
    return TritonInstall(root, venv)
