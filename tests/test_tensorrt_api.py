"""The project's TensorRT code held against the real TensorRT 10.13 and 11.4 APIs, on a machine without TensorRT.

Per version (harness: tests/trt_api/harness.py, facts: ../shared/TENSORRT-ON-CPU.md):
- STATIC: mypy over every TensorRT-using module against typed stubs generated from that version's real
  bindings; an attribute or signature that version lacks fails (and one that exists in neither always does).
- DYNAMIC: the engine builder, the TensorRT backend and the CLI run with the real bindings imported as
  `tensorrt` up to the point a GPU is needed, and there fail with the project's own one-line message, never
  a raw pybind11 error; the build-record check runs fully.
"""

from __future__ import annotations

import ast
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
    "tedloc_edge.app.inspect": "tedloc_edge/app/inspect.py",
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


def _imports_tensorrt(path: Path) -> bool:
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "tensorrt" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tensorrt" and not node.level:
            return True
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("import_module", "__import__"):
            if node.args and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).split(".")[0] == "tensorrt":
                return True
    return False


def test_every_tensorrt_module_is_checked() -> None:
    """A new module that imports TensorRT joins TRT_MODULES, so the checks below hold it too."""
    users = set()
    for pkg, folder in harness.PACKAGE_DIRS.items():
        for path in (harness.REPO / folder).rglob("*.py"):
            if "__pycache__" not in path.parts and _imports_tensorrt(path):
                users.add(path.relative_to(harness.REPO).as_posix())
    unchecked = sorted(users - set(TRT_MODULES.values()))
    assert not unchecked, f"modules import tensorrt but are not in TRT_MODULES of {Path(__file__).name}: {unchecked}"


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


# Appended to a COPY of the engine builder. Each function holds one kind of mistake; the test reads the
# errors by the line they are reported on.
WRONG_CALLS = """

def _api_check_wrong_in_both() -> None:
    import tensorrt
    builder = tensorrt.Builder(tensorrt.Logger())
    network = builder.create_network(0)
    config = builder.create_builder_config()
    config.set_flag(tensorrt.BuilderFlag.NOT_A_FLAG)  # CHECK: "type[BuilderFlag]" has no attribute "NOT_A_FLAG"
    builder.build_engine(network, config)  # CHECK: "Builder" has no attribute "build_engine"
    config.set_memory_pool_limit(tensorrt.MemoryPoolType.WORKSPACE)  # CHECK: Missing positional argument "pool_size" in call to "set_memory_pool_limit"


def _api_check_fp16_flag() -> None:
    import tensorrt
    config = tensorrt.Builder(tensorrt.Logger()).create_builder_config()
    config.set_flag(tensorrt.BuilderFlag.FP16)  # CHECK-11: "type[BuilderFlag]" has no attribute "FP16"


def _api_check_untyped() -> None:
    import importlib
    trt = importlib.import_module("tensorrt")
    trt.Builder(trt.Logger()).create_builder_config().set_flag(trt.BuilderFlag.NOT_A_FLAG)  # UNTYPED
"""


def test_static_check_bites(trt_api: harness.TrtApi, tmp_path: Path) -> None:
    """The check is not vacuous, on a copy of the engine builder: a name no TensorRT has, the TensorRT 8
    `build_engine` and a call missing an argument fail in every version; BuilderFlag.FP16 fails on 11 only;
    TensorRT reached through an untyped module object is reported rather than passed unchecked."""
    _present_modules()
    original = (harness.REPO / TRT_MODULES[BUILDER]).read_text()
    copy = tmp_path / "tensorrt_build_wrong.py"
    copy.write_text(original + WRONG_CALLS)
    result = harness.run_mypy(trt_api, [BUILDER], {harness.module_key(BUILDER): copy})

    first = original.count("\n") + 1
    lines = {first + i: text for i, text in enumerate(WRONG_CALLS.splitlines())}
    errors = {line: [e for e in result.errors if f":{line}: error:" in e] for line in lines}
    for line, text in lines.items():
        expect = None
        if "# CHECK: " in text:
            expect = text.split("# CHECK: ")[1]
        elif "# CHECK-11: " in text and trt_api.release.major >= 11:  # 11 removed the weak-typing flags
            expect = text.split("# CHECK-11: ")[1]
        if expect:
            assert any(expect in e for e in errors[line]), f"line {line} `{text.strip()}`: expected {expect!r}:\n{result.report()}"
        else:
            assert not errors[line], f"line {line} `{text.strip()}`: unexpected error:\n{result.report()}"
    untyped_line = next(line for line, text in lines.items() if "# UNTYPED" in text)
    seen = {u["name"] for u in result.untyped if u["line"] == untyped_line}
    assert seen >= {"Builder", "create_builder_config", "BuilderFlag"}, result.report()
    assert len(result.errors) == sum(1 for t in lines.values() if "# CHECK: " in t or ("# CHECK-11: " in t and trt_api.release.major >= 11)), result.report()


# ----------------------------------------------------------------------------------------------- dynamic


def _probe(env: dict[str, str], work: Path, *steps: str) -> dict[str, dict]:
    proc = subprocess.run(
        [sys.executable, str(PROBE), str(work), *steps],
        capture_output=True, text=True, env=env, cwd=work, timeout=300,
    )
    assert proc.returncode == 0, f"probe failed:\n{proc.stdout}\n{proc.stderr}"
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("PROBE "):
            doc = json.loads(line[len("PROBE "):])
            results[doc["step"]] = doc
    reported = {name.split("_")[0] for name in results} | set(results)
    assert set(steps) <= reported, f"probe did not report {set(steps) - reported}:\n{proc.stdout}\n{proc.stderr}"
    return {**results, "_work": {"path": str(work)}}


def _no_tensorrt_env(tmp_path: Path) -> dict[str, str]:
    """An environment where `import tensorrt` fails, even on a machine that has TensorRT installed."""
    shim = tmp_path / "no-tensorrt"
    shim.mkdir(exist_ok=True)
    (shim / "tensorrt.py").write_text("raise ModuleNotFoundError(\"No module named 'tensorrt'\", name='tensorrt')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(shim)
    env.setdefault("TEDLOC_NO_PROGRESS", "1")
    return env


ALL_STEPS = ("bindings", "build_record", "builder", "backend", "cli", "notorch")


@pytest.fixture(scope="module")
def probed(trt_api: harness.TrtApi, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Everything the dynamic tests look at, from one subprocess per version with the real bindings."""
    return _probe(trt_api.env(), tmp_path_factory.mktemp(f"probe-{trt_api.release.label}"), *ALL_STEPS)


@pytest.fixture(scope="module")
def probed_without_tensorrt(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    work = tmp_path_factory.mktemp("probe-no-tensorrt")
    return _probe(_no_tensorrt_env(work), work, "builder", "backend", "cli")


def test_bindings_are_the_real_api(trt_api: harness.TrtApi, probed: dict[str, dict]) -> None:
    """The harness imports the version it claims, and the GPU-less failure is the one the project must catch."""
    got = probed["bindings"]
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


def test_build_record_check(trt_api: harness.TrtApi, probed: dict[str, dict]) -> None:
    """A plan built with another TensorRT major or for another compute capability is refused with the rebuild command."""
    got = probed["build_record"]
    assert got["here"] == trt_api.release.version
    assert got["same"]["raised"] is None, got["same"]
    for case in ("other_major_refused", "other_cc_refused"):
        message = _one_line_project_error(got[case], case)
        assert got[case]["raised"] == "BuildRecordError", got[case]
        assert got["rebuild"] in message, f"{case}: no rebuild command in {message!r}"
    assert got["other_major"] in got["other_major_refused"]["message"]
    assert "11.0" in got["other_cc_refused"]["message"] and "8.7" in got["other_cc_refused"]["message"]


# Where the user is sent when this machine cannot build or run engines: the target device / its GPU.
WHERE = re.compile(
    r"target (?:device|GPU|machine)|on the (?:target |same )?(?:GPU|device)|GPU (?:that|they|it) |device that|built for",
    re.I,
)


def test_engine_builder_without_gpu(probed: dict[str, dict]) -> None:
    """build_engine with the real bindings: stops at the builder with the project's one line; writes nothing."""
    got = probed["builder"]
    message = _one_line_project_error(got, "build_engine")
    assert "GPU" in message and WHERE.search(message), f"build_engine: says neither what is missing nor where to build: {message!r}"
    assert got["leftovers"] == [], f"a failed build left files behind: {got['leftovers']}"


def test_tensorrt_backend_without_gpu(probed: dict[str, dict]) -> None:
    """TensorRTRunner and Localizer on a plan with the real bindings (and a trtexec plan with --metadata): the
    project's one line, before any GPU call."""
    got = probed
    for step in ("backend", "localizer", "backend_foreign"):
        message = _one_line_project_error(got[step], step)
        assert "GPU" in message and WHERE.search(message), f"{step}: says neither what is missing nor where engines run: {message!r}"


def test_without_tensorrt(probed_without_tensorrt: dict[str, dict]) -> None:
    """No TensorRT at all: builder and backend say what to install (and where engines are built), in one line."""
    got = probed_without_tensorrt
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


def test_cli_without_gpu(probed: dict[str, dict]) -> None:
    """`tedloc-edge export X.onnx --format engine` and `tedloc-edge infer IMG --model X.plan` with TensorRT, no GPU."""
    got = probed
    for step in ("cli_export", "cli_infer"):
        line = _cli_error(got[step], step)
        assert "GPU" in line and WHERE.search(line), f"{step}: says neither what is missing nor where engines belong: {line!r}"
    assert not (Path(got["_work"]["path"]) / "tiny.plan").exists(), "a failed engine export left a plan behind"


def test_cli_without_tensorrt(probed_without_tensorrt: dict[str, dict]) -> None:
    """The same two commands where TensorRT is not installed: one line saying what to install."""
    got = probed_without_tensorrt
    for step in ("cli_export", "cli_infer"):
        line = _cli_error(got[step], step)
        assert "TensorRT" in line and "install" in line, f"{step}: does not say what to install: {line!r}"


def test_engine_build_without_torch_or_onnx(trt_api: harness.TrtApi, probed: dict[str, dict]) -> None:
    """The device install (`pip install tedloc-edge[tensorrt]`: no torch, no onnx package) builds engines from an
    ONNX file: with torch, timm, open_clip and onnx hidden, `tedloc-edge export X.onnx --format engine` (fp16,
    int8, DLA) and build_engine in-process run up to where the GPU is needed and stop there with the project's
    line, never having tried to import a hidden module."""
    for step in ("notorch_fp16", "notorch_int8", "notorch_dla"):
        line = _cli_error(probed[step], step)
        assert line.startswith(f"error: TensorRT {trt_api.release.version} is installed but cannot create a builder"), line
    got = probed["notorch_build"]
    assert got["message"].startswith(f"UserError: TensorRT {trt_api.release.version} is installed but cannot create a builder"), got
    assert got["heavy"] == [] and got["attempted"] == [], f"torch/onnx import tried on the engine path: {got}"
    assert not [p for p in got["plans"] if p not in ("model.plan", "trtexec.plan")], f"a failed build left a plan: {got['plans']}"
