"""Run inside a subprocess with the real TensorRT bindings imported as `tensorrt` (harness.TrtApi.env()).

`python dynamic_probe.py WORKDIR STEP...` prints one `PROBE {json}` line per step: what the project's code
did with the real API on a machine without a GPU (the exception type, its message, whether it was the
project's own error). The assertions live in tests/test_tensorrt_api.py; this file only observes.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

WORK = Path(sys.argv[1])


def emit(step: str, **fields: Any) -> None:
    print("PROBE " + json.dumps({"step": step, **fields}), flush=True)


def outcome(fn: Callable[[], Any]) -> dict[str, Any]:
    """Call fn; describe how it ended (the project's error classes are told apart from anything else)."""
    from tedloc_edge.bundle import BundleError
    from tedloc_edge.errors import UserError

    try:
        value = fn()
    except (UserError, BundleError) as exc:
        return {"raised": type(exc).__name__, "project_error": True, "message": str(exc)}
    except SystemExit as exc:
        return {"raised": "SystemExit", "project_error": False, "message": str(exc.code)}
    except BaseException as exc:  # noqa: BLE001 - anything else is what the test must catch
        return {
            "raised": type(exc).__name__,
            "project_error": False,
            "message": str(exc),
            "traceback": traceback.format_exc(),
        }
    return {"raised": None, "project_error": False, "message": "", "value": repr(value)[:200]}


def step_bindings() -> None:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    try:
        trt.Builder(logger)
        builder_error = ""
    except TypeError as exc:
        builder_error = str(exc)
    emit(
        "bindings",
        version=trt.__version__,
        module=trt.__name__,
        has_fp16_flag=hasattr(trt.BuilderFlag, "FP16"),
        strongly_typed=hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"),
        execute_async_v3=hasattr(trt.IExecutionContext, "execute_async_v3"),
        builder_error=builder_error,
    )


def step_build_record() -> None:
    """The compatibility check, fully: this TensorRT vs records from the same, another major, another GPU."""
    import tensorrt as trt

    from tedloc_edge.build_record import check_build_record, make_build_record, version_tuple

    here = trt.__version__
    major = version_tuple(here)[0]
    other_major = "10.13.3.9" if major >= 11 else "11.4.0.106"
    rebuild = "tedloc-edge export runs/demo --format engine --precision fp16 --out demo.plan"

    def record(version: str, cc: str) -> dict[str, Any]:
        return make_build_record(
            tensorrt_version=version, gpu_name="NVIDIA Jetson AGX Orin", compute_capability=cc,
            cuda_version="12.6", precision="fp16",
            input_shapes={"images": {"min": [1, 224, 224, 3], "opt": [4, 224, 224, 3], "max": [8, 224, 224, 3]}},
            onnx_sha256="0" * 64, workspace_bytes=1 << 30, rebuild=rebuild, built_at="2026-01-01T00:00:00Z",
        )

    emit("build_record", here=here, other_major=other_major, rebuild=rebuild,
         same=outcome(lambda: check_build_record(record(here, "8.7"), here, "8.7")),
         other_major_refused=outcome(lambda: check_build_record(record(other_major, "8.7"), here, "8.7")),
         other_cc_refused=outcome(lambda: check_build_record(record(here, "8.7"), here, "11.0")))


def tiny_onnx(path: Path, precision: str = "fp32") -> Path:
    """A small valid ONNX obeying the graph contract's names, with the tedloc metadata the builder reads."""
    import onnx
    from onnx import TensorProto, helper

    from tedloc_edge.bundle import METADATA_KEY, BundleMeta

    extra = {"int8_mode": "tensorrt"} if precision == "int8" else {}
    meta = BundleMeta(class_names=("a", "b", "c"), input_size=(64, 64), patch_grid=(64, 64), precision=precision, extra=extra)
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["images"], ["x"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["x"], ["fg_map"], axes=[3], keepdims=0),
            helper.make_node("ReduceMean", ["x"], ["logits"], axes=[1, 2], keepdims=0),
        ],
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", 64, 64, 3])],
        [helper.make_tensor_value_info("fg_map", TensorProto.FLOAT, ["N", 64, 64]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {METADATA_KEY: meta.to_json()})
    onnx.save(model, str(path))
    return path


def fake_plan(path: Path) -> Path:
    """A plan file with a sidecar whose build record matches the running TensorRT (so only the GPU is missing)."""
    from tedloc_edge.build_record import make_build_record
    from tedloc_edge.bundle import BundleMeta, write_plan_sidecar

    try:
        import tensorrt

        version = str(tensorrt.__version__)
    except ImportError:
        version = "10.13.3.9"
    meta = BundleMeta(class_names=("a", "b", "c"), input_size=(64, 64), patch_grid=(8, 8), precision="fp16")
    record = make_build_record(
        tensorrt_version=version, gpu_name="NVIDIA Jetson AGX Orin", compute_capability="8.7", cuda_version="12.6",
        precision="fp16", input_shapes={"images": {"min": [1, 64, 64, 3], "opt": [1, 64, 64, 3], "max": [8, 64, 64, 3]}},
        onnx_sha256="0" * 64, workspace_bytes=1 << 30, rebuild="tedloc-edge export x.onnx --format engine",
        built_at="2026-01-01T00:00:00Z",
    )
    path.write_bytes(b"not a real plan: the GPU-less failure must come before deserialization")
    write_plan_sidecar(path, meta, record)
    return path


def step_builder() -> None:
    """The engine builder, from a real tedloc ONNX, up to where a GPU is needed."""
    from tedloc_edge.export.tensorrt_build import build_engine

    onnx_path = tiny_onnx(WORK / "tiny.onnx")
    plan = WORK / "out" / "tiny.plan"
    got = outcome(lambda: build_engine(onnx_path, plan))
    leftovers = sorted(p.name for p in plan.parent.glob("*")) if plan.parent.exists() else []
    emit("builder", leftovers=leftovers, **got)


def step_backend() -> None:
    """The TensorRT runner, and the Localizer a camera pipeline embeds, on a plan + sidecar."""
    from tedloc_edge.runtime.backend_tensorrt import TensorRTRunner

    plan = fake_plan(WORK / "model.plan")
    emit("backend", **outcome(lambda: TensorRTRunner(plan)))
    try:
        from tedloc_edge.runtime.localizer import Localizer
    except ImportError as exc:
        emit("localizer", raised="ImportError", project_error=False, message=str(exc))
        return
    emit("localizer", **outcome(lambda: Localizer(plan)))
    foreign = WORK / "trtexec.plan"  # a plan built elsewhere: no sidecar, its bundle from the .onnx
    foreign.write_bytes(b"not a real plan either")
    emit("backend_foreign", **outcome(lambda: TensorRTRunner(foreign, metadata=tiny_onnx(WORK / "tiny.onnx"))))


def cli_command() -> list[str]:
    """The installed `tedloc-edge` console script of this interpreter, else the module it runs."""
    script = Path(sys.executable).with_name("tedloc-edge")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "tedloc_edge.app.cli"]


def run_cli(commands: dict[str, list[str]], env: dict[str, str] | None = None) -> None:
    """Run the commands side by side (each is mostly interpreter start-up) and report each as its own step."""
    import subprocess

    procs = {
        step: subprocess.Popen([*cli_command(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=WORK, env=env)
        for step, args in commands.items()
    }
    for step, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=240)
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        emit(step, command="tedloc-edge " + " ".join(commands[step]), returncode=proc.returncode,
             stdout=stdout[-4000:], stderr=stderr[-4000:], error_lines=errors)


def step_cli() -> None:
    """What a user types: `tedloc-edge export X.onnx --format engine` and `tedloc-edge infer IMG --model X.plan`."""
    import cv2
    import numpy as np

    tiny_onnx(WORK / "tiny.onnx")
    fake_plan(WORK / "model.plan")
    cv2.imwrite(str(WORK / "frame.png"), np.full((48, 64, 3), 127, np.uint8))
    run_cli({
        "cli_export": ["export", "tiny.onnx", "--format", "engine"],
        "cli_infer": ["infer", "frame.png", "--model", "model.plan", "--out", "infer-out"],
    })


# What `pip install tedloc-edge[tensorrt]` lacks: importing any of these must never even be tried on the way
# from an ONNX file to an engine. Each is replaced by a module that logs the attempt and fails as if absent.
HIDDEN = ("torch", "torchvision", "timm", "open_clip", "onnx", "onnxscript", "onnx_ir")
HIDE = """import os
with open(os.environ["TEDLOC_HIDDEN_LOG"], "a") as fh:
    fh.write(__name__ + "\\n")
raise ModuleNotFoundError("No module named " + repr(__name__) + " (hidden by the test)", name=__name__)
"""

IN_PROCESS = """
import json, sys
from tedloc_edge.errors import UserError
from tedloc_edge.export.tensorrt_build import EngineSpec, build_engine
try:
    build_engine(sys.argv[1], sys.argv[2], EngineSpec(1, 1, 1, dla_core=int(sys.argv[3]), gpu_fallback=True))
    message = ""
except UserError as exc:
    message = "UserError: " + str(exc)
except BaseException as exc:
    message = type(exc).__name__ + ": " + str(exc)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in %r)
print(json.dumps({"message": message, "heavy": heavy}))
""" % (HIDDEN,)


def step_no_torch() -> None:
    """`tedloc-edge export X.onnx --format engine --precision fp16|int8 [--dla-core 0 --gpu-fallback]` and
    build_engine in-process, with torch and onnx hidden (the device install): up to where the GPU is needed."""
    import os
    import subprocess

    hidden = WORK / "hidden"
    hidden.mkdir(exist_ok=True)
    for name in HIDDEN:
        (hidden / f"{name}.py").write_text(HIDE)
    log = WORK / "hidden-imports.log"
    log.write_text("")
    for precision in ("fp16", "int8"):
        tiny_onnx(WORK / f"tiny_{precision}.onnx", precision)  # written here, before anything is hidden
    env = dict(os.environ, TEDLOC_HIDDEN_LOG=str(log),
               PYTHONPATH=os.pathsep.join(p for p in (str(hidden), os.environ.get("PYTHONPATH", "")) if p))
    commands = {
        "notorch_fp16": ["export", "tiny_fp16.onnx", "--format", "engine", "--precision", "fp16"],
        "notorch_int8": ["export", "tiny_int8.onnx", "--format", "engine", "--precision", "int8"],
        "notorch_dla": ["export", "tiny_fp16.onnx", "--format", "engine", "--dla-core", "0", "--gpu-fallback"],
    }
    run_cli(commands, env)
    proc = subprocess.run([sys.executable, "-c", IN_PROCESS, str(WORK / "tiny_int8.onnx"), str(WORK / "out" / "x.plan"), "0"],
                          capture_output=True, text=True, env=env, cwd=WORK, timeout=240)
    doc = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {"message": proc.stderr[-2000:], "heavy": ["?"]}
    emit("notorch_build", **doc, attempted=sorted(set(log.read_text().split())), hidden=list(HIDDEN),
         plans=sorted(p.name for p in WORK.rglob("*.plan")))


STEPS = {"bindings": step_bindings, "build_record": step_build_record, "builder": step_builder, "backend": step_backend,
         "cli": step_cli, "notorch": step_no_torch}

if __name__ == "__main__":
    for name in sys.argv[2:]:
        STEPS[name]()
