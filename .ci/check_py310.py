"""Python 3.10 (JetPack 6's interpreter) for what a device installs, proven without a 3.10 interpreter.

1. vermin --target=3.10-: no syntax, stdlib module, member or keyword newer than 3.10 in the core, runtime,
   app, export and train packages (DEVICE_EXCEPTIONS lists files left out, with the reason; none today).
2. mypy --python-version 3.10 over the torch-free modules a device runs (core, app CLI, runtime, and export's
   ONNX -> engine path): every error mypy reports at 3.10 and not at 3.11 fails (a name or signature the
   3.10 standard library lacks). Errors it reports at both versions are ordinary type errors, not version
   errors: counted, not judged here.

mypy cannot follow the editable install's import hook, so it reads the sources through a tree of links laid
out as they install (pyproject's package-dir). Third-party packages are not followed (their types are Any):
that keeps the check to seconds and about this project's code. Run: `.venv/bin/python .ci/check_py310.py`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET, BASELINE = "3.10", "3.11"

# Folders vermin reads, and the files it leaves out with the reason (printed on every run).
VERMIN_FOLDERS = ("tedloc_edge", "runtime", "export", "train")
DEVICE_EXCEPTIONS: dict[str, str] = {}  # path -> why vermin leaves it out (none today)

# What a device runs: the core, the app CLI, the runtime, and export from an ONNX file to an engine.
MYPY_PACKAGES = ("tedloc_edge.runtime", "tedloc_edge.app")
MYPY_MODULES = ("tedloc_edge.export.cli", "tedloc_edge.export.exporter", "tedloc_edge.export.formats",
                "tedloc_edge.export.source", "tedloc_edge.export.tensorrt_build", "tedloc_edge.export.report",
                "tedloc_edge.export.images", "tedloc_edge.export.verify", "tedloc_edge.export.int8_gate")
NOT_FOLLOWED = ("numpy", "cv2", "av", "onnxruntime", "onnx", "onnxscript", "onnx_ir", "torch", "torchvision", "timm",
                "open_clip", "tensorrt", "cuda", "pycuda", "pynvml", "rich", "typer", "click", "tritonclient",
                "matplotlib", "scipy", "skimage")


def core_modules() -> list[str]:
    return sorted(f"tedloc_edge.{p.stem}" for p in (REPO / "tedloc_edge").glob("*.py") if p.stem != "__init__")


def link_tree(dest: Path) -> Path:
    """tedloc_edge/ with the stage folders linked in where they install."""
    pkg = dest / "tedloc_edge"
    pkg.mkdir()
    for entry in (REPO / "tedloc_edge").iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    for stage in ("export", "runtime", "train"):
        (pkg / stage).symlink_to(REPO / stage)
    return dest


def run_vermin(folders: tuple[str, ...] = VERMIN_FOLDERS) -> bool:
    excludes = [arg for path in DEVICE_EXCEPTIONS for arg in ("--exclude-regex", f"{path}$")]
    cmd = [str(Path(sys.executable).with_name("vermin")), f"--target={TARGET}-", "--violations", "--no-tips", "--eval-annotations",
           *excludes, *(str(REPO / f) for f in folders)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    for path, why in DEVICE_EXCEPTIONS.items():
        print(f"vermin: {path} left out: {why}")
    if proc.returncode != 0:
        print(proc.stdout + proc.stderr)
        print(f"vermin: code newer than Python {TARGET} (above)")
        return False
    print(f"vermin: {', '.join(folders)} run on Python {TARGET}")
    return True


def mypy_errors(tree: Path, version: str, cache: Path, extra: tuple[str, ...] = ()) -> set[str]:
    from mypy import api

    config = tree / "mypy.ini"
    config.write_text(
        "[mypy]\nfollow_imports = silent\nignore_missing_imports = True\nwarn_unused_ignores = False\n"
        f"[mypy-{','.join(f'{m}.*' for m in NOT_FOLLOWED)}]\nfollow_imports = skip\nfollow_imports_for_stubs = True\n"
    )
    args = ["--config-file", str(config), "--python-version", version, "--cache-dir", str(cache / version),
            "--no-error-summary", "--show-error-codes", "--no-pretty", "--hide-error-context"]
    for pkg in MYPY_PACKAGES:
        args += ["-p", pkg]
    for module in (*MYPY_MODULES, *core_modules(), *extra):
        args += ["-m", module]
    out, err, status = api.run(args)
    if status not in (0, 1) or err.strip():
        raise SystemExit(f"mypy failed to run at {version}: {err or out}")
    return {line for line in out.splitlines() if ": error:" in line}


def run_mypy(probe: str = "") -> bool:
    """`probe`: source of one more module to check (how the test shows that a 3.11-only name fails)."""
    with tempfile.TemporaryDirectory(prefix="py310-") as tmp:
        tree = link_tree(Path(tmp))
        extra: tuple[str, ...] = ()
        if probe:
            (tree / "tedloc_edge" / "_py310_probe.py").write_text(probe)
            extra = ("tedloc_edge._py310_probe",)
        here = os.getcwd()
        os.chdir(tree)
        try:
            cache = REPO / ".mypy_cache" / "py310"
            target, baseline = (mypy_errors(tree, v, cache, extra) for v in (TARGET, BASELINE))
        finally:
            os.chdir(here)
    scope = len(MYPY_PACKAGES) + len(MYPY_MODULES) + len(core_modules())
    new = sorted(target - baseline)
    if new:
        print("\n".join(new))
        print(f"mypy: {len(new)} error(s) at Python {TARGET} that {BASELINE} does not have (above)")
        return False
    print(f"mypy --python-version {TARGET}: nothing {BASELINE} lacks, over {', '.join(MYPY_PACKAGES)} and {scope - len(MYPY_PACKAGES)} "
          f"modules ({len(baseline)} ordinary type error(s) at both versions are not this check's)")
    return True


if __name__ == "__main__":
    ok = run_vermin()
    ok = run_mypy() and ok
    sys.exit(0 if ok else 1)
