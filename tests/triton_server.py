"""A real Triton Inference Server for the tests: the `tritonserver` binary from the `nvidia-pytriton` wheel.

Set-up (cached under ``~/.cache/tedloc-edge/triton``, or ``$TEDLOC_TRITON_CACHE``; a warm run does nothing):

1. ``pip download --no-deps nvidia-pytriton==0.7.0`` (or ``$TEDLOC_TRITON_WHEEL``), unzipped; the Python
   backend stub for this Python version is copied into ``backends/python/``.
2. The backend's own environment (as real Triton deployments keep theirs): a venv with numpy < 2 (numpy 2
   makes every Python-backend response fail), onnxruntime, opencv-python-headless 4.x and this checkout
   installed editable without dependencies, so the server's models import the same ``tedloc_edge`` code.
   The stub takes its Python from the first ``python3`` on PATH; ``PYTHONPATH`` is ignored by it.

`TritonServer` starts the binary on 127.0.0.1 with three free ports, waits (bounded) for readiness, and
stops it with SIGTERM then SIGKILL of its own process group; `restart()` keeps the ports. Where the wheel
or the environment cannot be had, `triton_install()` raises `TritonUnavailable` with the reason, which the
fixtures turn into a skip.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

PYTRITON = "nvidia-pytriton==0.7.0"
# What the server's Python backend imports (kept apart from the project's own numpy 2 environment).
BACKEND_REQUIREMENTS = ("numpy<2", "onnxruntime>=1.17", "opencv-python-headless>=4.8,<4.12", "rich>=13")
REPO_ROOT = Path(__file__).resolve().parents[1]
PIP_TIMEOUT_S = 600
READY_TIMEOUT_S = 90.0


class PortTaken(RuntimeError):
    """Another process took one of the chosen ports between choosing and binding."""


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


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One set-up at a time across processes (parallel pytest runs share the cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


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


# --- a small real model obeying the graph contract (docs/architecture.md), built with onnx.helper ---------

TINY_CLASSES = ("astronaut", "cat", "coffee", "rocket")


def tiny_onnx(path: Path, size: int = 64, patch: int = 8):
    """Write a small ONNX model (uint8 NHWC RGB in -> fg_map (N, gh, gw), logits (N, C)) with its bundle.

    Pixels are normalized in the graph; per-patch colour statistics go through a fixed 1x1 "head" and a
    sigmoid, so the map (and its boxes) really depends on the picture. Returns the BundleMeta it carries.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from tedloc_edge.bundle import METADATA_KEY, BundleMeta

    grid = size // patch
    meta = BundleMeta(
        class_names=TINY_CLASSES, input_size=(size, size), patch_grid=(grid, grid),
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), threshold=0.3,
        backbone="tiny-onnx-helper", anchor_source="fixed", run_id="triton-test",
    )
    rng = np.random.default_rng(0)
    consts = {
        "k255": np.array(255.0, np.float32),
        "mean": np.array(meta.mean, np.float32).reshape(1, 1, 1, 3),
        "std": np.array(meta.std, np.float32).reshape(1, 1, 1, 3),
        "head_w": np.array([1.5, -2.0, 1.0], np.float32).reshape(1, 3, 1, 1),
        "head_b": np.array([0.2], np.float32),
        "cls_w": rng.normal(size=(6, len(TINY_CLASSES))).astype(np.float32),
        "map_shape": np.array([0, grid, grid], np.int64),
        "axes_hw": np.array([2, 3], np.int64),
    }
    nodes = [
        helper.make_node("Cast", ["images"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["xf", "k255"], ["x01"]),
        helper.make_node("Sub", ["x01", "mean"], ["xc"]),
        helper.make_node("Div", ["xc", "std"], ["xn"]),
        helper.make_node("Transpose", ["xn"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("AveragePool", ["nchw"], ["pooled"], kernel_shape=[patch, patch], strides=[patch, patch]),
        helper.make_node("Conv", ["pooled", "head_w", "head_b"], ["score"]),
        helper.make_node("Sigmoid", ["score"], ["prob"]),
        helper.make_node("Reshape", ["prob", "map_shape"], ["fg_map"]),
        helper.make_node("ReduceMean", ["nchw", "axes_hw"], ["gmean"], keepdims=0),
        helper.make_node("ReduceMax", ["pooled", "axes_hw"], ["gmax"], keepdims=0),
        helper.make_node("Concat", ["gmean", "gmax"], ["feat"], axis=1),
        helper.make_node("MatMul", ["feat", "cls_w"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_tedloc",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", size, size, 3])],
        [helper.make_tensor_value_info("fg_map", TensorProto.FLOAT, ["N", grid, grid]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", len(TINY_CLASSES)])],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.helper.set_model_props(model, {METADATA_KEY: meta.to_json()})
    onnx.checker.check_model(model)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return meta


# --- a Python-backend stand-in for tedloc_model (this server has no onnxruntime backend) ------------------

STANDIN_MODEL_PY = '''"""Test stand-in for Triton's onnxruntime backend: runs model.onnx as-is with ONNX Runtime."""
import json, os
import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        # like the onnxruntime backend: the dynamic batcher's requests run as one batch
        arrays = [pb_utils.get_input_tensor_by_name(r, "images").as_numpy() for r in requests]
        fg_map, logits = self.session.run(["fg_map", "logits"], {"images": np.concatenate(arrays)})
        out, start = [], 0
        for a in arrays:
            end = start + len(a)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("fg_map", np.ascontiguousarray(fg_map[start:end])),
                                                   pb_utils.Tensor("logits", np.ascontiguousarray(logits[start:end]))]))
            start = end
        return out
'''


def python_standin(model_folder: Path) -> None:
    """Serve an exported ``tedloc_model`` folder (config and model.onnx unchanged but for the two lines
    naming the backend and the device) through the Python backend."""
    config = model_folder / "config.pbtxt"
    text = config.read_text(encoding="utf-8")
    assert 'platform: "onnxruntime_onnx"' in text, "the stand-in replaces the onnxruntime backend only"
    text = text.replace('platform: "onnxruntime_onnx"', 'backend: "python"').replace("KIND_GPU", "KIND_CPU").replace("KIND_AUTO", "KIND_CPU")
    config.write_text(text, encoding="utf-8")
    (model_folder / "1" / "model.py").write_text(STANDIN_MODEL_PY, encoding="utf-8")
