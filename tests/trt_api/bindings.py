"""The TensorRT bindings' set-up pieces: the releases, the on-disk cache, stub libraries, the wheel and the shim."""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from cache_lock import locked as _locked

HERE = Path(__file__).resolve().parent
STUB_C = HERE / "stub.c"
LIBRARIES = ("libnvinfer", "libnvonnxparser", "libnvinfer_plugin")


@dataclass(frozen=True)
class TrtRelease:
    label: str  # what the tests are parametrized by
    major: int
    requirement: str  # the bindings wheel, pinned
    version: str  # tensorrt.__version__ it reports

    @property
    def wheel_prefix(self) -> str:
        name, version = self.requirement.split("==")
        return f"{name.replace('-', '_')}-{version}-"


RELEASES: dict[str, TrtRelease] = {
    r.label: r
    for r in (
        # JetPack 6 / most fleets.
        TrtRelease("10.13", 10, "tensorrt-cu12-bindings==10.13.3.9.post1", "10.13.3.9.post1"),
        # Current; Jetson Thor / JetPack 7.
        TrtRelease("11.4", 11, "tensorrt-cu13-bindings==11.4.0.106", "11.4.0.106"),
    )
}


@dataclass(frozen=True)
class TrtApi:
    """One prepared TensorRT version: where its pieces lie and how to run Python against them."""

    release: TrtRelease
    root: Path

    @property
    def libdir(self) -> Path:
        return self.root / "lib"

    @property
    def bindings(self) -> Path:
        return self.root / "bindings"

    @property
    def shim(self) -> Path:
        return self.root / "shim"

    @property
    def stubs(self) -> Path:
        return self.root / "stubs"

    @property
    def mypy_cache(self) -> Path:
        return self.root / "mypy-cache"

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for a subprocess that imports the real bindings as `tensorrt` over the stub libraries."""
        env = dict(os.environ if base is None else base)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(self.libdir), env.get("LD_LIBRARY_PATH", "")) if p
        )
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(self.shim), str(self.bindings), env.get("PYTHONPATH", "")) if p
        )
        env.setdefault("TEDLOC_NO_PROGRESS", "1")
        env.setdefault("HF_HUB_OFFLINE", "1")
        return env


# ----------------------------------------------------------------------------------------------- set-up


def cache_root() -> Path:
    if os.environ.get("TEDLOC_TRT_API_CACHE"):
        return Path(os.environ["TEDLOC_TRT_API_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tedloc-edge" / "trt-api"


def _cache_key(release: TrtRelease) -> str:
    digest = hashlib.sha256()
    for path in (HERE / "harness.py", HERE / "bindings.py", HERE / "stubgen.py", STUB_C):
        digest.update(path.read_bytes())
    tag = f"py{sys.version_info.major}{sys.version_info.minor}"
    return f"{release.label}-{tag}-{digest.hexdigest()[:12]}"


def _run(cmd: list[str], *, env: Mapping[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, env=None if env is None else dict(env), timeout=timeout)


def _tail(text: str, lines: int = 3) -> str:
    kept = [line.strip() for line in text.strip().splitlines() if line.strip() and not line.startswith("WARNING")]
    return " | ".join(kept[-lines:])


def find_compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _build_stub_libraries(release: TrtRelease, libdir: Path) -> None:
    cc = find_compiler()
    if cc is None:
        pytest.skip(
            "TensorRT API check needs a C compiler to make the stub TensorRT libraries and none was found "
            "(tried $CC, cc, gcc, clang); install one, e.g. `apt-get install gcc`"
        )
    libdir.mkdir(parents=True, exist_ok=True)
    for lib in LIBRARIES:
        soname = f"{lib}.so.{release.major}"
        proc = _run([cc, "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", str(libdir / soname), str(STUB_C)])
        if proc.returncode != 0:
            raise RuntimeError(f"{cc} failed to build {soname} from {STUB_C}: {_tail(proc.stderr)}")


def _download_wheel(release: TrtRelease) -> Path:
    wheels = cache_root() / "wheels"
    # The cache may hold the wheels of other Pythons or machines: only this interpreter's may be reused.
    pattern = f"{release.wheel_prefix}cp{sys.version_info.major}{sys.version_info.minor}-*{platform.machine()}.whl"
    with _locked(wheels / ".lock"):
        found = sorted(wheels.glob(pattern))
        if found:
            return found[-1]
        proc = _run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--disable-pip-version-check", "-q", release.requirement, "-d", str(wheels)]
        )
        found = sorted(wheels.glob(pattern))
        if proc.returncode != 0 or not found:
            pytest.skip(
                f"TensorRT {release.label} API check needs the bindings wheel `{release.requirement}` "
                f"(Python {sys.version_info.major}.{sys.version_info.minor}, pip download) and could not get it: "
                f"{_tail(proc.stderr) or 'no matching wheel'}"
            )
        return found[-1]


def _install_wheel(wheel: Path, target: Path) -> None:
    proc = _run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "--disable-pip-version-check",
         "-q", "--target", str(target), str(wheel)]
    )
    if proc.returncode != 0:
        raise RuntimeError(f"pip install --target {target} {wheel.name} failed: {_tail(proc.stderr)}")


SHIM = '''"""`import tensorrt` gives the real TensorRT bindings (`tensorrt_bindings`), as the meta-package does."""
import sys

import tensorrt_bindings

sys.modules[__name__] = tensorrt_bindings
'''


def _check_import(api: TrtApi) -> None:
    proc = _run([sys.executable, "-c", "import tensorrt; print(tensorrt.__version__)"], env=api.env(), timeout=120)
    if proc.returncode != 0 or proc.stdout.strip() != api.release.version:
        raise RuntimeError(
            f"the TensorRT {api.release.label} bindings do not import over the stub libraries "
            f"(got {proc.stdout.strip()!r}): {_tail(proc.stderr)}"
        )


def _prune(keep: Path, days: float = 7) -> None:
    """Drop set-ups of the same version made by older harness revisions and unused for `days`."""
    label = keep.name.split("-")[0]
    for other in keep.parent.glob(f"{label}-*"):
        marker = other / "READY"
        stamp = marker.stat().st_mtime if marker.is_file() else other.stat().st_mtime
        if other != keep and other.is_dir() and time.time() - stamp > days * 86400:
            shutil.rmtree(other, ignore_errors=True)
