"""The real TensorRT Python bindings (10.13 and 11.4) on a machine without TensorRT, for the API checks.

TensorRT's libraries cannot be installed here, but its Python bindings are plain wheels on PyPI that link
against a handful of C entry points only (docs: ../shared/TENSORRT-ON-CPU.md). `prepare(label)` makes, once
per TensorRT version and cached on disk:

- stub `libnvinfer.so.N`, `libnvonnxparser.so.N`, `libnvinfer_plugin.so.N` compiled from `stub.c` with the C
  compiler (every factory returns NULL, so `trt.Builder(...)` fails as on a host without a usable GPU);
- the bindings wheel, downloaded with pip and installed with `pip install --no-deps --target` into a folder
  of its own (both versions import as `tensorrt_bindings`, so they never share a folder, nor the venv);
- a `tensorrt.py` shim that makes `import tensorrt` give `tensorrt_bindings`, as the `tensorrt` meta-package
  does on a real install;
- typed stubs of the whole API from pybind11-stubgen, renamed to the `tensorrt` package and mended where the
  generator writes invalid Python (a parameter named `in`; a parameter without a default after defaulted ones).

Everything lives under `$TEDLOC_TRT_API_CACHE`, else `$XDG_CACHE_HOME/tedloc-edge/trt-api`, else
`~/.cache/tedloc-edge/trt-api`, keyed by version, Python tag and a hash of this file and `stub.c`, so a second
run costs nothing. No C compiler, no wheel (offline, or a Python the wheel isn't built for) or no
pybind11-stubgen: the tests skip and say which, and how to get it.
"""

from __future__ import annotations

import ast
import fcntl
import hashlib
import json
import keyword
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
STUB_C = HERE / "stub.c"
MYPY_INI = HERE / "mypy.ini"
LIBRARIES = ("libnvinfer", "libnvonnxparser", "libnvinfer_plugin")

# The project's import path -> folder in the repository (pyproject's package-dir): mypy cannot follow the
# editable install's import hook, so the checks see the sources through a tree of links with this layout.
PACKAGE_DIRS = {
    "tedloc_edge": "tedloc_edge",
    "tedloc_edge/train": "train",
    "tedloc_edge/export": "export",
    "tedloc_edge/runtime": "runtime",
}


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
    for path in (Path(__file__), STUB_C):
        digest.update(path.read_bytes())
    tag = f"py{sys.version_info.major}{sys.version_info.minor}"
    return f"{release.label}-{tag}-{digest.hexdigest()[:12]}"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


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


def _generate_stubs(api: TrtApi) -> None:
    try:
        import pybind11_stubgen  # noqa: F401
    except ImportError:
        pytest.skip("TensorRT API static check needs pybind11-stubgen: pip install -e '.[dev]'")
    with tempfile.TemporaryDirectory(prefix="trt-stubgen-") as tmp:
        proc = _run(
            [sys.executable, "-m", "pybind11_stubgen", "tensorrt_bindings", "-o", tmp, "--ignore-all-errors"],
            env=api.env(),
        )
        generated = Path(tmp) / "tensorrt_bindings"
        if proc.returncode != 0 or not (generated / "tensorrt.pyi").is_file():
            raise RuntimeError(f"pybind11-stubgen failed for TensorRT {api.release.label}: {_tail(proc.stderr)}")
        out = api.stubs / "tensorrt"
        out.mkdir(parents=True, exist_ok=True)
        notes = []
        for name in ("__init__.pyi", "tensorrt.pyi"):
            text = (generated / name).read_text()
            text = re.sub(r"\btensorrt_bindings\b", "tensorrt", text)
            text, mends = mend_stub(text)
            ast.parse(text, filename=str(out / name))  # a stub mypy cannot parse would hide every check
            (out / name).write_text(text)
            notes += [f"{name}: {m}" for m in mends]
        (api.stubs / "MENDS.txt").write_text("\n".join(notes) + "\n")


def _check_import(api: TrtApi) -> None:
    proc = _run([sys.executable, "-c", "import tensorrt; print(tensorrt.__version__)"], env=api.env(), timeout=120)
    if proc.returncode != 0 or proc.stdout.strip() != api.release.version:
        raise RuntimeError(
            f"the TensorRT {api.release.label} bindings do not import over the stub libraries "
            f"(got {proc.stdout.strip()!r}): {_tail(proc.stderr)}"
        )


def prepare(label: str) -> TrtApi:
    """The prepared TensorRT `label` ("10.13" or "11.4"), made on first use and cached; skips when it cannot be."""
    release = RELEASES[label]
    root = cache_root() / _cache_key(release)
    api = TrtApi(release, root)
    if (root / "READY").is_file():
        (root / "READY").touch()  # in use: kept by _prune
        return api
    with _locked(cache_root() / f".{release.label}.lock"):
        if (root / "READY").is_file():
            return api
        if root.exists():
            shutil.rmtree(root)
        _build_stub_libraries(release, api.libdir)
        wheel = _download_wheel(release)
        _install_wheel(wheel, api.bindings)
        api.shim.mkdir(parents=True, exist_ok=True)
        (api.shim / "tensorrt.py").write_text(SHIM)
        _check_import(api)
        _generate_stubs(api)
        (root / "READY").write_text(wheel.name + "\n")
        _prune(root)
    return api


def _prune(keep: Path, days: float = 7) -> None:
    """Drop set-ups of the same version made by older harness revisions and unused for `days`."""
    label = keep.name.split("-")[0]
    for other in keep.parent.glob(f"{label}-*"):
        marker = other / "READY"
        stamp = marker.stat().st_mtime if marker.is_file() else other.stat().st_mtime
        if other != keep and other.is_dir() and time.time() - stamp > days * 86400:
            shutil.rmtree(other, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- stub mends


def _split_params(params: str) -> list[str]:
    """Split a parameter list at its top-level commas (annotations hold brackets and commas of their own)."""
    out, depth, start, quote = [], 0, 0, ""
    for i, ch in enumerate(params):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(params[start:i])
            start = i + 1
    out.append(params[start:])
    return [p for p in out if p.strip()]


def _mend_signature(line: str) -> tuple[str, list[str]]:
    m = re.match(r"^(\s*def\s+\w+\()(.*)(\)\s*(->.*)?:\s*(\.\.\.)?\s*)$", line)
    if not m:
        return line, []
    head, params, tail = m.group(1), m.group(2), m.group(3)
    mends, fixed, seen_default, keyword_only = [], [], False, False
    for param in _split_params(params):
        p = param.strip()
        name = re.split(r"[:=]", p, maxsplit=1)[0].strip()
        if name.startswith("*") or name == "/":
            keyword_only = keyword_only or name.startswith("*") and not name.startswith("**")
            fixed.append(p)
            continue
        if keyword.iskeyword(name):
            p = name + "_" + p[len(name):]
            mends.append(f"parameter `{name}` renamed `{name}_` ({head.strip()}...)")
        if "=" in p.split(":", 1)[-1] or ("=" in p and ":" not in p):
            seen_default = True
        elif seen_default and not keyword_only:
            p = p + " = ..."
            mends.append(f"`{name}` after defaulted parameters given `= ...` ({head.strip()}...)")
        fixed.append(p)
    return head + ", ".join(fixed) + tail, mends


def mend_stub(text: str) -> tuple[str, list[str]]:
    """Make pybind11-stubgen's output valid Python: keyword parameter names, non-default after default."""
    lines, mends = [], []
    for line in text.splitlines():
        if line.lstrip().startswith("def "):
            line, found = _mend_signature(line)
            mends += found
        lines.append(line)
    return "\n".join(lines) + "\n", mends


# ----------------------------------------------------------------------------------------------- static check


def shadow_tree(dest: Path, overrides: Mapping[str, Path] | None = None, fresh: tuple[str, ...] = ()) -> Path:
    """The project's sources under their import paths (links into the repository), for mypy.

    `overrides` maps a path under the import layout (e.g. "tedloc_edge/export/tensorrt_build.py") to a file
    to check in its place: how the tests show that a wrong call fails without touching the real module.
    Files in `fresh` are copied with a unique last line instead of linked, so mypy's cache never answers for
    them and their typed tree can be read.
    """
    overrides = {k: Path(v) for k, v in (overrides or {}).items()}
    files: dict[str, Path] = {}
    for pkg, folder in PACKAGE_DIRS.items():
        src = REPO / folder
        if not src.is_dir():
            continue
        for path in src.rglob("*.py"):
            rel = path.relative_to(src)
            if "__pycache__" in rel.parts:
                continue
            if pkg == "tedloc_edge" and rel.parts[0] in {"train", "export", "runtime"} and len(rel.parts) > 1:
                continue  # a subpackage folder is laid out on its own (PACKAGE_DIRS), never through its parent
            files[(Path(pkg) / rel).as_posix()] = path
    files.update(overrides)  # a module that does not exist (yet) in the repository is added
    nonce = f"# {os.getpid()}-{time.time_ns()}\n"
    for key, path in files.items():
        target = dest / key
        target.parent.mkdir(parents=True, exist_ok=True)
        if key in fresh:
            target.write_text(path.read_text() + "\n" + nonce)
        else:
            target.symlink_to(path.resolve())
    return dest


def module_key(module: str) -> str:
    """Import name -> path under the import layout: tedloc_edge.export.x -> tedloc_edge/export/x.py."""
    return module.replace(".", "/") + ".py"


def repo_path(key: str) -> str:
    """Path under the import layout -> the repository's: tedloc_edge/export/x.py -> export/x.py."""
    for pkg, folder in sorted(PACKAGE_DIRS.items(), key=lambda kv: -len(kv[0])):
        if key.startswith(pkg + "/"):
            return folder + key[len(pkg):]
    return key


@dataclass
class MypyResult:
    errors: list[str]  # mypy's lines, with the repository's paths (or the override's)
    untyped: list[dict]  # TensorRT names used on a receiver mypy cannot see into
    guards: list[dict]  # getattr/hasattr(<TensorRT object>, "NAME") in the checked modules
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.errors and not self.untyped

    def report(self) -> str:
        lines = list(self.errors)
        lines += [
            f"{u['path']}:{u['line']}: untyped TensorRT use: `.{u['name']}` on "
            f"{'an Any' if u['receiver'] == 'any' else 'a plain ModuleType'} object, so no TensorRT API checks it; "
            "use `import tensorrt as trt` (under TYPE_CHECKING when imported lazily) and TensorRT's types"
            for u in self.untyped
        ]
        return "\n".join(lines)


def run_mypy(api: TrtApi, modules: list[str], overrides: Mapping[str, Path] | None = None) -> MypyResult:
    """mypy over `modules` (import names) against this version's generated `tensorrt` stubs.

    Only the named modules are judged (`follow_imports = silent` for the rest of the project, errors inside
    the generated stubs ignored, mypy.ini); besides mypy's errors, every TensorRT name they use on an
    untyped receiver is reported (mypy_check.py). Paths are the repository's, or the override file's.
    """
    overrides = {k: Path(v) for k, v in (overrides or {}).items()}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="trt-mypy-") as tmp:
        keys = tuple(module_key(m) for m in modules)
        shadow = shadow_tree(Path(tmp) / "src", overrides, fresh=keys)
        search = os.pathsep.join([str(api.stubs), str(shadow)])
        specs = [f"{m}={shadow / k}" for m, k in zip(modules, keys)]
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPYPATH")}
        proc = subprocess.run(
            [sys.executable, str(HERE / "mypy_check.py"), str(MYPY_INI), str(api.mypy_cache), search, *specs],
            capture_output=True, text=True, env=env, cwd=shadow, timeout=600,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"mypy_check.py failed: {proc.stderr[-3000:]}")
        doc = json.loads(proc.stdout)

        def fix(text: str) -> str:
            for key in sorted(set(keys) | set(overrides), key=len, reverse=True):
                where = str(overrides[key]) if key in overrides else repo_path(key)
                text = text.replace(str(shadow / key), where).replace(key, where)
            return text

        errors = [fix(line) for line in doc["errors"]]
        untyped = [{**u, "path": fix(u["path"])} for u in doc["untyped"]]
        guards = [{**g, "path": fix(g["path"])} for g in doc["guards"]]
    return MypyResult(errors, untyped, guards, time.perf_counter() - start)
