"""Options declared once: a dataclass field carries its CLI flag, help and panel; `typer_command` builds the typer
command from the dataclass, so a new field is a new option. A plain field (`seed: int = 0`) is an option without
help; `internal(...)` keeps one off the command line.

    lr: float = option(1e-3, "Learning rate.", panel="Optimization")     # --lr [default: 0.001]
    amp: bool = option(True, "Mixed precision.", flag="--amp/--no-amp")   # a bool is a lone --flag unless told

Typer reads the command's `inspect.Signature`, built from the fields; the body gets the options the user set,
as field values: an unset one (None, no values) is left out so the field's default holds (as timm drops None
keyword arguments). Torch-free and light: `tedloc-edge --help` builds every command from these declarations.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence

import typer


@dataclass(frozen=True)
class Spec:
    help: str | None = None
    panel: str | None = None  # rich help panel
    flag: str | None = None  # default: --field-name
    short: str | None = None  # e.g. "-f"
    path: str | None = None  # a str field holding a path: the CLI takes a PATH, stored "absolute" or as "given"
    no_default: bool = False  # --help shows none: unset keeps the field's default (or a resumed run's value)


def option(default: Any, help: str | None = None, **spec: Any) -> Any:
    """A dataclass field that is also a CLI option (keywords: `Spec`'s)."""
    assert spec.get("path") in (None, "absolute", "given"), spec
    return dataclasses.field(default=default, metadata={"cli": Spec(help, **spec)})


def internal(default: Any) -> Any:
    """A dataclass field that is not a CLI option."""
    return dataclasses.field(default=default, metadata={"cli": None})


def param(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    """A command parameter beside the dataclass's options, e.g. param("verbose", bool, typer.Option(False, "-v"))."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def _cli_type(hint: Any, default: Any, spec: Spec) -> tuple[Any, Any]:
    """(annotation, default) of the option: a path field takes a PATH, a tuple field repeated values."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]  # X | None: X, and the default stays None
    if spec.path:
        return Optional[Path], Path(default) if default else None
    if typing.get_origin(hint) is tuple:
        return Optional[List[typing.get_args(hint)[0]]], None
    if spec.no_default:
        return Optional[hint], None
    return (Optional[hint] if default is None else hint), default


def _parameter(field: dataclasses.Field, hint: Any) -> inspect.Parameter | None:
    spec = field.metadata.get("cli", Spec())
    if spec is None:
        return None
    annotation, default = _cli_type(hint, field.default, spec)
    decls = [spec.flag or "--" + field.name.replace("_", "-"), *([spec.short] if spec.short else [])]
    return param(field.name, annotation, typer.Option(default, *decls, help=spec.help, rich_help_panel=spec.panel))


def given(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Field values from a command's arguments; unset ones (None, no values) are left out."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        value = values.get(field.name)
        if value is None or (isinstance(value, (list, tuple)) and not value):
            continue
        path = (field.metadata.get("cli") or Spec()).path
        if path:  # absolute: found from any working folder later (a run's dataset, its anchors)
            value = str(Path(value).resolve()) if path == "absolute" else str(value)
        out[field.name] = tuple(value) if isinstance(value, list) else value
    return out


def typer_command(cls: type, body: Callable[..., None], *, before: Sequence[inspect.Parameter] = (),
                  after: Sequence[inspect.Parameter] = ()) -> Callable[..., None]:
    """A typer command: `before` (e.g. an argument), one option per field of `cls`, `after` (e.g. --verbose); it
    calls body(given(cls, options), **the before and after values). The body's docstring is the command's help."""
    hints = typing.get_type_hints(cls)
    fields = [p for f in dataclasses.fields(cls) if (p := _parameter(f, hints[f.name])) is not None]
    extra = [p.name for p in (*before, *after)]

    def command(**kwargs: Any) -> None:
        return body(given(cls, kwargs), **{name: kwargs[name] for name in extra})

    command.__signature__ = inspect.Signature([*before, *fields, *after])  # type: ignore[attr-defined]
    command.__name__, command.__doc__ = body.__name__.lstrip("_"), body.__doc__
    return command
