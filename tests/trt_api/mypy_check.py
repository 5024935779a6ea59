"""mypy over the TensorRT-using modules, through mypy's API so the typed tree can be read afterwards.

`python mypy_check.py CONFIG CACHE_DIR SEARCH_PATH MODULE=FILE...` (harness.run_mypy runs it) prints one JSON
document: mypy's error lines, and every TensorRT API name the modules use on a receiver mypy cannot see
into (`Any`, or a plain `types.ModuleType` such as `importlib.import_module("tensorrt")` gives). A call
there is checked against nothing, so a name that exists in no TensorRT would pass; the test fails on it.
Also the names read with getattr/hasattr on TensorRT objects (the version guards), for the cross-version test.
"""

from __future__ import annotations

import json
import os
import sys

from mypy import build, nodes
from mypy import types as mt
from mypy.config_parser import parse_config_file
from mypy.modulefinder import BuildSource
from mypy.options import Options
from mypy.traverser import NameAndMemberCollector

# Member names too generic to call TensorRT's when the receiver is unknown (numpy, pathlib and friends).
GENERIC = {"name", "shape", "dtype", "size", "value", "type", "get", "copy", "append", "read", "write",
           "close", "reset", "clear", "items", "keys", "values", "update", "format", "join", "split", "strip",
           "data", "location", "mode", "flags", "min", "max", "opt"}


def trt_api_names(graph: dict[str, build.State]) -> set[str]:
    names: set[str] = set()
    for module in ("tensorrt", "tensorrt.tensorrt"):
        state = graph.get(module)
        if state is None or state.tree is None:
            continue
        for key, sym in state.tree.names.items():
            if isinstance(sym.node, nodes.MypyFile):  # `import numpy`, `import ctypes` inside the stub
                continue
            names.add(key)
            if isinstance(sym.node, nodes.TypeInfo):
                names.update(sym.node.names)
    return {n for n in names if not n.startswith("_") and n not in GENERIC}


def is_trt_module(expr: nodes.Expression) -> bool:
    node = getattr(expr, "node", None)
    return isinstance(node, nodes.MypyFile) and node.fullname.split(".")[0] == "tensorrt"


def receiver_kind(expr: nodes.Expression, types: dict[nodes.Expression, mt.Type]) -> str:
    """'tensorrt' (typed by the stubs), 'typed'/'other' (something else), 'any' or 'module' (unchecked)."""
    if is_trt_module(expr):
        return "tensorrt"
    node = getattr(expr, "node", None)
    if isinstance(node, nodes.TypeInfo):
        return "tensorrt" if node.fullname.startswith("tensorrt.") else "typed"
    typ = types.get(expr)
    if typ is None:
        return "typed"  # not an expression mypy typed (e.g. a module reference it resolved)
    proper = mt.get_proper_type(typ)
    if isinstance(proper, mt.AnyType):
        origin = proper
        while origin.type_of_any == mt.TypeOfAny.from_another_any and origin.source_any is not None:
            origin = origin.source_any
        # Any that comes from a module mypy does not follow (numpy, cuda-python, pycuda...) is not TensorRT.
        return "other" if origin.type_of_any == mt.TypeOfAny.from_unimported_type else "any"
    if isinstance(proper, mt.Instance) and proper.type.fullname == "types.ModuleType":
        return "module"
    text = str(proper)
    return "tensorrt" if "tensorrt." in text else "typed"


def member_of(target: nodes.Expression, name: str, types: dict[nodes.Expression, mt.Type]) -> tuple[str, bool]:
    """(what `target` is, whether this TensorRT version has `name` on it) for getattr/hasattr guards."""
    node = getattr(target, "node", None)
    if isinstance(node, nodes.MypyFile):
        return node.fullname, name in node.names
    if isinstance(node, nodes.TypeInfo):
        return node.fullname, node.get(name) is not None
    proper = mt.get_proper_type(types.get(target))
    if isinstance(proper, mt.Instance):
        return proper.type.fullname, proper.type.get(name) is not None
    if isinstance(proper, mt.CallableType) and proper.type_object() is not None:
        info = proper.type_object()
        return info.fullname, info.get(name) is not None
    return str(proper), False


def main(argv: list[str]) -> int:
    config, cache_dir, search_path, *specs = argv
    options = Options()
    parse_config_file(options, lambda: None, config, stdout=sys.stderr, stderr=sys.stderr)
    options.cache_dir = cache_dir
    options.mypy_path = search_path.split(os.pathsep)
    options.export_types = True
    options.preserve_asts = True
    for name, value in (("show_error_codes", True), ("hide_error_codes", False), ("hide_error_context", True),
                        ("color_output", False), ("pretty", False)):
        if hasattr(options, name):  # these have moved between mypy releases
            setattr(options, name, value)
    modules = dict(spec.split("=", 1) for spec in specs)
    sources = [BuildSource(path, module, None) for module, path in modules.items()]
    try:
        result = build.build(sources, options)
    except Exception as exc:  # mypy's own CompileError carries the messages
        messages = getattr(exc, "messages", None) or [f"{type(exc).__name__}: {exc}"]
        print(json.dumps({"errors": messages, "untyped": [], "guards": [], "fatal": True}))
        return 0
    api_names = trt_api_names(result.graph)
    untyped, guards = [], []
    for module, path in modules.items():
        tree = result.graph[module].tree
        if tree is None:
            untyped.append({"path": path, "line": 0, "name": "", "receiver": "module not re-checked (cached)"})
            continue
        collector = NameAndMemberCollector()
        tree.accept(collector)
        for expr in collector.member_exprs:
            kind = receiver_kind(expr.expr, result.types)
            if kind in ("any", "module") and expr.name in api_names:
                untyped.append({"path": path, "line": expr.line, "name": expr.name, "receiver": kind})
        callees = {id(name) for name in collector.name_exprs if name.name in ("getattr", "hasattr")}
        for call in (e for e in result.types if isinstance(e, nodes.CallExpr) and id(e.callee) in callees):
            if len(call.args) < 2 or not isinstance(call.args[1], nodes.StrExpr):
                continue
            target = call.args[0]
            if receiver_kind(target, result.types) == "tensorrt":
                name = call.args[1].value
                owner, exists = member_of(target, name, result.types)
                guards.append({"path": path, "line": call.line, "owner": owner, "name": name, "exists": exists})
    print(json.dumps({"errors": result.errors, "untyped": untyped, "guards": guards,
                      "api_names": len(api_names), "fatal": False}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
