"""The project's TensorRT code held against the real TensorRT 10.13 and 11.4 APIs, on a machine without TensorRT.

Per version (harness: tests/trt_api/harness.py, facts: ../shared/TENSORRT-ON-CPU.md):
- STATIC: mypy over every TensorRT-using module against typed stubs generated from that version's real
  bindings; an attribute or signature that version lacks fails (and one that exists in neither always does).
- DYNAMIC: the engine builder, the TensorRT backend and the CLI run with the real bindings imported as
  `tensorrt` up to the point a GPU is needed, and there fail with the project's own one-line message, never
  a raw pybind11 error; the build-record check runs fully.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trt_api import harness

# The modules that use TensorRT, as import name -> file in the repository.
TRT_MODULES = {
    "tedloc_edge.export.tensorrt_build": "export/tensorrt_build.py",
    "tedloc_edge.runtime.backend_tensorrt": "runtime/backend_tensorrt.py",
    "tedloc_edge.build_record": "tedloc_edge/build_record.py",
}
BUILDER = "tedloc_edge.export.tensorrt_build"
PROBE = Path(__file__).parent / "trt_api" / "dynamic_probe.py"

# What a raw TensorRT/pybind11 failure looks like; none of it may reach the user.
RAW_ERRORS = ("pybind11", "nullptr", "factory function", "TypeError", "Traceback")


@pytest.fixture(scope="module", params=sorted(harness.RELEASES), ids=lambda label: f"trt{label}")
def trt_api(request: pytest.FixtureRequest) -> harness.TrtApi:
    return harness.prepare(request.param)


def _present_modules() -> dict[str, str]:
    missing = [path for path in TRT_MODULES.values() if not (harness.REPO / path).is_file()]
    if missing:
        pytest.fail(f"TensorRT-using module(s) missing from the repository: {', '.join(missing)}")
    return TRT_MODULES


# ----------------------------------------------------------------------------------------------- static


@functools.lru_cache(maxsize=None)
def _static(label: str) -> harness.MypyResult:
    return harness.run_mypy(harness.prepare(label), list(_present_modules()))


def test_static_check_passes(trt_api: harness.TrtApi) -> None:
    """Every call, enum and attribute the TensorRT modules use exists, with that signature, in this version,
    and every TensorRT call is on an object mypy can see into (else a misspelt name would pass unseen)."""
    result = _static(trt_api.release.label)
    assert result.ok, f"TensorRT {trt_api.release.label} static check failed:\n{result.report()}"


def test_version_guards_name_real_api() -> None:
    """getattr/hasattr on TensorRT objects (how version-specific paths are guarded) name something that exists
    in at least one of the versions: a misspelt guard would otherwise silently take the fallback everywhere."""
    seen: dict[tuple[str, int, str, str], list[str]] = {}
    for label in sorted(harness.RELEASES):
        for g in _static(label).guards:
            seen.setdefault((g["path"], g["line"], g["owner"], g["name"]), [])
            if g["exists"]:
                seen[(g["path"], g["line"], g["owner"], g["name"])].append(label)
    nowhere = [f"{path}:{line}: {owner} has no `{name}` in TensorRT {' or '.join(sorted(harness.RELEASES))}"
               for (path, line, owner, name), labels in sorted(seen.items()) if not labels]
    assert not nowhere, "\n".join(nowhere)


WRONG_IN_BOTH = """

def _api_check_wrong_in_both() -> None:
    import tensorrt
    builder = tensorrt.Builder(tensorrt.Logger())
    network = builder.create_network(0)
    config = builder.create_builder_config()
    config.set_flag(tensorrt.BuilderFlag.NOT_A_FLAG)
    builder.build_engine(network, config)
    config.set_memory_pool_limit(tensorrt.MemoryPoolType.WORKSPACE)
"""

FP16_FLAG = """

def _api_check_fp16_flag() -> None:
    import tensorrt
    config = tensorrt.Builder(tensorrt.Logger()).create_builder_config()
    config.set_flag(tensorrt.BuilderFlag.FP16)
"""

UNTYPED = """

def _api_check_untyped() -> None:
    import importlib
    trt = importlib.import_module("tensorrt")
    trt.Builder(trt.Logger()).create_builder_config().set_flag(trt.BuilderFlag.NOT_A_FLAG)
"""


def _wrong_copy(tmp_path: Path, extra: str) -> dict[str, Path]:
    """A copy of the engine builder with `extra` appended; the repository's file is never touched."""
    copy = tmp_path / "tensorrt_build_wrong.py"
    copy.write_text((harness.REPO / TRT_MODULES[BUILDER]).read_text() + extra)
    return {harness.module_key(BUILDER): copy}


def test_static_check_bites(trt_api: harness.TrtApi, tmp_path: Path) -> None:
    """The check is not vacuous: a name no TensorRT has fails in every version, BuilderFlag.FP16 fails on 11,
    and TensorRT reached through an untyped module object is refused rather than passed unchecked."""
    _present_modules()
    result = harness.run_mypy(trt_api, [BUILDER], _wrong_copy(tmp_path, WRONG_IN_BOTH))
    assert not result.ok
    expected = (
        '"type[BuilderFlag]" has no attribute "NOT_A_FLAG"',  # a name no TensorRT has
        '"Builder" has no attribute "build_engine"',  # the TensorRT 8 call, gone since 10
        'Missing positional argument "pool_size" in call to "set_memory_pool_limit"',  # a signature
    )
    for message in expected:
        assert any(message in e for e in result.errors), f"{message} not reported:\n{result.report()}"

    result = harness.run_mypy(trt_api, [BUILDER], _wrong_copy(tmp_path, FP16_FLAG))
    if trt_api.release.major >= 11:  # TensorRT 11 removed the weak-typing precision flags
        assert any('"type[BuilderFlag]" has no attribute "FP16"' in e for e in result.errors), result.report()
    else:
        assert result.ok, result.report()

    result = harness.run_mypy(trt_api, [BUILDER], _wrong_copy(tmp_path, UNTYPED))
    assert not result.errors, result.report()  # mypy alone lets it through...
    assert {u["name"] for u in result.untyped} >= {"Builder", "create_builder_config", "BuilderFlag"}, result.report()


# ----------------------------------------------------------------------------------------------- dynamic


def _probe(env: dict[str, str], tmp_path: Path, *steps: str) -> dict[str, dict]:
    proc = subprocess.run(
        [sys.executable, str(PROBE), str(tmp_path), *steps],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 0, f"probe failed:\n{proc.stdout}\n{proc.stderr}"
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("PROBE "):
            doc = json.loads(line[len("PROBE "):])
            results[doc["step"]] = doc
    assert set(steps) <= set(results), f"probe did not report {set(steps) - set(results)}:\n{proc.stdout}\n{proc.stderr}"
    return results


def _no_tensorrt_env(tmp_path: Path) -> dict[str, str]:
    """An environment where `import tensorrt` fails, even on a machine that has TensorRT installed."""
    shim = tmp_path / "no-tensorrt"
    shim.mkdir(exist_ok=True)
    (shim / "tensorrt.py").write_text("raise ModuleNotFoundError(\"No module named 'tensorrt'\", name='tensorrt')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(shim)
    env.setdefault("TEDLOC_NO_PROGRESS", "1")
    return env


def test_bindings_are_the_real_api(trt_api: harness.TrtApi, tmp_path: Path) -> None:
    """The harness imports the version it claims, and the GPU-less failure is the one the project must catch."""
    got = _probe(trt_api.env(), tmp_path, "bindings")["bindings"]
    assert got["version"] == trt_api.release.version
    assert got["has_fp16_flag"] is (trt_api.release.major < 11)
    assert got["strongly_typed"] and got["execute_async_v3"]
    assert "factory function returned nullptr" in got["builder_error"]


def _one_line_project_error(result: dict, what: str) -> str:
    message = result["message"]
    assert result["project_error"], f"{what}: not the project's error: {result['raised']}: {message}\n{result.get('traceback', '')}"
    assert "\n" not in message.strip(), f"{what}: message is not one line: {message!r}"
    assert not any(raw in message for raw in RAW_ERRORS), f"{what}: raw TensorRT error reaches the user: {message!r}"
    return message


def test_build_record_check(trt_api: harness.TrtApi, tmp_path: Path) -> None:
    """A plan built with another TensorRT major or for another compute capability is refused with the rebuild command."""
    got = _probe(trt_api.env(), tmp_path, "build_record")["build_record"]
    assert got["here"] == trt_api.release.version
    assert got["same"]["raised"] is None, got["same"]
    for case in ("other_major_refused", "other_cc_refused"):
        message = _one_line_project_error(got[case], case)
        assert got[case]["raised"] == "BuildRecordError", got[case]
        assert got["rebuild"] in message, f"{case}: no rebuild command in {message!r}"
    assert got["other_major"] in got["other_major_refused"]["message"]
    assert "11.0" in got["other_cc_refused"]["message"] and "8.7" in got["other_cc_refused"]["message"]


# Where the user is sent when this machine cannot build or run engines: the target device / its GPU.
WHERE = re.compile(r"target device|on the (?:target )?GPU|GPU (?:that runs|they were built for)|device that runs", re.I)


def test_engine_builder_without_gpu(trt_api: harness.TrtApi, tmp_path: Path) -> None:
    """build_engine with the real bindings: stops at the builder with the project's one line; writes nothing."""
    got = _probe(trt_api.env(), tmp_path, "builder")["builder"]
    message = _one_line_project_error(got, "build_engine")
    assert "GPU" in message and WHERE.search(message), f"build_engine: says neither what is missing nor where to build: {message!r}"
    assert got["leftovers"] == [], f"a failed build left files behind: {got['leftovers']}"


def test_tensorrt_backend_without_gpu(trt_api: harness.TrtApi, tmp_path: Path) -> None:
    """TensorRTRunner and Localizer on a plan with the real bindings: the project's one line, before any GPU call."""
    got = _probe(trt_api.env(), tmp_path, "backend")
    for step in ("backend", "localizer"):
        message = _one_line_project_error(got[step], step)
        assert "GPU" in message and WHERE.search(message), f"{step}: says neither what is missing nor where engines run: {message!r}"


def test_without_tensorrt(tmp_path: Path) -> None:
    """No TensorRT at all: builder and backend say what to install (and where engines are built), in one line."""
    got = _probe(_no_tensorrt_env(tmp_path), tmp_path, "builder", "backend")
    for step in ("builder", "backend", "localizer"):
        message = _one_line_project_error(got[step], step)
        assert "TensorRT" in message and "install" in message, f"{step}: does not say what to install: {message!r}"


def _cli_error(got: dict, what: str) -> str:
    """The CLI's failure: exit code 2 and exactly one `error:` line, no traceback, nothing raw from TensorRT."""
    shown = f"{got['command']} -> exit {got['returncode']}\nstderr:\n{got['stderr']}\nstdout:\n{got['stdout']}"
    assert got["returncode"] == 2, f"{what}: {shown}"
    assert len(got["error_lines"]) == 1, f"{what}: expected one error line: {shown}"
    assert not any(raw in got["stderr"] + got["stdout"] for raw in RAW_ERRORS), f"{what}: raw error shown: {shown}"
    return got["error_lines"][0]


def test_cli_without_gpu(trt_api: harness.TrtApi, tmp_path: Path) -> None:
    """`tedloc-edge export X.onnx --format engine` and `tedloc-edge infer IMG --model X.plan` with TensorRT, no GPU."""
    got = _probe(trt_api.env(), tmp_path, "cli")
    for step in ("cli_export", "cli_infer"):
        line = _cli_error(got[step], step)
        assert "GPU" in line and WHERE.search(line), f"{step}: says neither what is missing nor where engines belong: {line!r}"
    assert not (tmp_path / "tiny.plan").exists(), "a failed engine export left a plan behind"


def test_cli_without_tensorrt(tmp_path: Path) -> None:
    """The same two commands where TensorRT is not installed: one line saying what to install."""
    got = _probe(_no_tensorrt_env(tmp_path), tmp_path, "cli")
    for step in ("cli_export", "cli_infer"):
        line = _cli_error(got[step], step)
        assert "TensorRT" in line and "install" in line, f"{step}: does not say what to install: {line!r}"
