"""The Python 3.10 check of .ci/check_py310.py (run by .ci/run) passes, and it is not vacuous: a name the 3.10
standard library lacks fails mypy at 3.10 but not at 3.11, and vermin finds 3.11 syntax and members."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("mypy", reason="the 3.10 check needs mypy: pip install -e '.[dev]'")
if not Path(sys.executable).with_name("vermin").is_file():
    pytest.skip("the 3.10 check needs vermin: pip install -e '.[dev]'", allow_module_level=True)

spec = importlib.util.spec_from_file_location("check_py310", REPO / ".ci" / "check_py310.py")
check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check)

PY311_ONLY = '''
import datetime
import typing

def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)

def me(x: "typing.Self") -> None: ...
'''


def test_project_passes_at_310():
    proc = subprocess.run([sys.executable, str(REPO / ".ci" / "check_py310.py")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "vermin: tedloc_edge, runtime, export, train run on Python 3.10" in proc.stdout


def test_mypy_at_310_bites(capsys):
    assert not check.run_mypy(PY311_ONLY)
    out = capsys.readouterr().out
    assert 'Module has no attribute "UTC"' in out and "_py310_probe.py:6" in out
    assert 'Name "typing.Self" is not defined' in out


def test_vermin_bites(tmp_path, monkeypatch):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text("import tomllib\ntry:\n    pass\nexcept* ValueError:\n    pass\n")
    monkeypatch.setattr(check, "REPO", tmp_path)
    assert not check.run_vermin(("pkg",))
