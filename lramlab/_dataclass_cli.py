"""Dataclass -> argparse: one option per field, so a command line can never drift from its config.

`--batch-size` is `batch_size`, tuples take several values (`--data D1 D2` or `--data D1,D2`),
booleans are `--amp/--no-amp`, Literal fields become choices, and the field's trailing `# comment`
is its --help text. A value the dataclass rejects in `__post_init__` is an argparse error (exit 2).
(Small on purpose; `tyro` does the same for richer configs.)
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import fields
from typing import Any, Literal, Union, get_args, get_origin


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _comment_help(cls: type) -> dict[str, str]:
    """Trailing `# comments` of the field lines, used as --help text."""
    import inspect

    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out = {}
    for line in src.splitlines():
        s = line.strip()
        if ":" in s and "#" in s and not s.startswith("#"):
            name = s.split(":", 1)[0].strip()
            if name.isidentifier():
                out[name] = s.split("#", 1)[1].strip()
    return out


def parser_for(cls: type, prog: str | None = None, description: str | None = None,
               required: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """An argparse parser with one option per dataclass field (`--field-name`)."""
    hints = typing.get_type_hints(cls)
    helps = _comment_help(cls)
    p = argparse.ArgumentParser(prog=prog, description=description or (cls.__doc__ or "").strip(),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in fields(cls):
        tp, optional = _unwrap_optional(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        kw: dict[str, Any] = {"dest": f.name, "default": default, "help": helps.get(f.name, "")}
        origin = get_origin(tp)
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif origin is tuple:
            args = get_args(tp)
            elem = args[0]
            kw["type"] = elem if elem in (int, float, str) else str
            kw["nargs"] = len(args) if (len(args) > 1 and args[-1] is not Ellipsis) else "*"
            kw["metavar"] = f.name.upper()
        elif origin is Literal:
            kw["choices"] = list(get_args(tp))
            kw["type"] = type(get_args(tp)[0])
        elif tp in (int, float, str):
            kw["type"] = tp
        else:
            kw["type"] = str
        if f.name in required:
            kw["required"] = True
        p.add_argument(flag, **kw)
    return p


def config_from_args(cls: type, args: argparse.Namespace):
    """Build the dataclass from parsed args (tuples/commas normalised)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in fields(cls):
        val = getattr(args, f.name)
        tp, _ = _unwrap_optional(hints[f.name])
        if get_origin(tp) is tuple and val is not None:
            items = []
            for v in (val if isinstance(val, (list, tuple)) else [val]):
                if isinstance(v, str):
                    # "T1,T2" and "T1 T2" both work for lists of names
                    items.extend(x for x in v.split(",") if x != "")
                else:
                    items.append(v)
            elem = get_args(tp)[0]
            val = tuple(elem(x) if elem in (int, float) else x for x in items)
        kwargs[f.name] = val
    return cls(**kwargs)


def parse_cli(cls: type, argv: list[str] | None, prog: str, required: tuple[str, ...] = (),
              json_help: str = "print the result as JSON"):
    """Parse a config dataclass from the command line, plus `--json`: returns (cfg, as_json).

    A value the dataclass rejects becomes an argparse error (exit 2) with its message."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    p = parser_for(cls, prog=prog, required=required)
    p.add_argument("--json", action="store_true", help=json_help)
    args = p.parse_args(argv)
    as_json = args.json
    del args.json
    try:
        return config_from_args(cls, args), as_json
    except ValueError as err:
        p.error(str(err))
