"""Typed `tensorrt` stubs from pybind11-stubgen, mended where the generator writes invalid Python."""

from __future__ import annotations

import ast
import keyword
import re
import sys
import tempfile
from pathlib import Path

import pytest

from .bindings import TrtApi, _run, _tail


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
