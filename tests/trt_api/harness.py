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
`~/.cache/tedloc-edge/trt-api`, keyed by version, Python tag and a hash of this file, bindings.py, stubgen.py
and `stub.c`, so a second run costs nothing. No C compiler, no wheel (offline, or a Python the wheel isn't
built for) or no pybind11-stubgen: the tests skip and say which, and how to get it.

Here: `prepare` and the mypy static check (`run_mypy`); the set-up pieces are in bindings.py (releases, cache,
stub libraries, wheel, shim) and stubgen.py (the typed stubs and their mends).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .bindings import (
    RELEASES,
    SHIM,
    TrtApi,
    _build_stub_libraries,
    _cache_key,
    _check_import,
    _download_wheel,
    _install_wheel,
    _locked,
    _prune,
    cache_root,
)
from .stubgen import _generate_stubs

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MYPY_INI = HERE / "mypy.ini"

# The project's import path -> folder in the repository (pyproject's package-dir): mypy cannot follow the
# editable install's import hook, so the checks see the sources through a tree of links with this layout.
PACKAGE_DIRS = {
    "tedloc_edge": "tedloc_edge",
    "tedloc_edge/train": "train",
    "tedloc_edge/export": "export",
    "tedloc_edge/runtime": "runtime",
}


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
