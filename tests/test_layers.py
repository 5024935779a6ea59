"""The layers import one way: core (tedloc_edge/*.py) <- runtime <- export, train <- app (tedloc_edge/app).

Read from the source with `ast`, so an import inside a function counts as much as one at the top: a core module
that imported a stage, or the runtime that imported export, would fail here before it failed on a device.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = {  # folder -> (its package, the packages it may not import)
    "tedloc_edge": ("core", ("tedloc_edge.runtime", "tedloc_edge.export", "tedloc_edge.train", "tedloc_edge.app")),
    "runtime": ("runtime", ("tedloc_edge.export", "tedloc_edge.train", "tedloc_edge.app")),
    "export": ("export", ("tedloc_edge.app",)),
    "train": ("train", ("tedloc_edge.export", "tedloc_edge.app")),
}
HEAVY = ("torch", "timm", "open_clip", "torchvision")


def imported_modules(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def layer_files(folder: str) -> list[Path]:
    return sorted((REPO / folder).glob("*.py"))  # tedloc_edge/app/ is one folder down, so not core


@pytest.mark.parametrize("folder", sorted(LAYERS))
def test_no_layer_imports_one_above_it(folder):
    _, forbidden = LAYERS[folder]
    offenders = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in layer_files(folder)
        for name in imported_modules(path)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]
    assert offenders == []


@pytest.mark.parametrize("folder", ["tedloc_edge", "runtime"])
def test_core_and_runtime_never_import_torch(folder):
    offenders = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in layer_files(folder)
        for name in imported_modules(path)
        if name.split(".")[0] in HEAVY
    ]
    assert offenders == []


def test_the_check_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from tedloc_edge.runtime.localizer import Localizer\n")
    assert "tedloc_edge.runtime.localizer" in imported_modules(bad)
