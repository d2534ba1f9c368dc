"""Command-line plumbing every `lramlab` command shares (the bottom of the import graph).

Dataclass -> argparse: one option per field, so a command line can never drift from its config.
`--batch-size` is `batch_size`, tuples take several values (`--data D1 D2` or `--data D1,D2`),
booleans are `--amp/--no-amp`, Literal fields become choices, and the field's trailing `# comment`
is its --help text. A value the dataclass rejects in `__post_init__` is an argparse error (exit 2).
(Small on purpose; `tyro` does the same for richer configs.) `check_fields(cfg)` checks a config's
scalar fields (types; floats finite), for the configs' `__post_init__`.

User errors vs bugs (the rule `lramlab.cli` documents): `is_user_error(err)`. Every command's
`main(argv)` runs inside `command(prog)`: a user error prints ONE line `PROG: error: MESSAGE` on
stderr and returns 2; a bug propagates with its traceback. `--debug` anywhere on the command line
(or LRAMLAB_DEBUG=1) also prints the traceback of a user error. `ArgumentParser` prints argparse's
errors as one line too.

`--json [FILE|-]` (`add_json_option`, `JsonOutput`): the command's result as JSON to FILE (written
atomically; the usual text still goes to stdout) or to stdout (`--json` alone or `--json -`): then
stdout holds ONLY the JSON -- everything else the command prints, C libraries and worker processes
included, goes to stderr while it runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import functools
import json
import math
import numbers
import os
import sys
import traceback
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Literal, Union, get_args, get_origin

DEBUG_ENV = "LRAMLAB_DEBUG"
USER_ERROR_EXIT = 2  # as argparse: the input was wrong (a bug exits 1, with its traceback)
_PKG_DIR = os.path.dirname(os.path.abspath(__file__))


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but an error is one line (the usage of a config with 40 fields buries it)."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        self.exit(USER_ERROR_EXIT, f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)\n")


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
    p = ArgumentParser(prog=prog, description=description or (cls.__doc__ or "").strip(),
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
              json_help: str = "the result as JSON"):
    """Parse a config dataclass from the command line, plus `--json [FILE|-]`: returns (cfg, json_dest).

    json_dest is None (no JSON), "-" (stdout) or a file path; pass it to `JsonOutput`.
    A value the dataclass rejects becomes an argparse error (exit 2) with its message."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = parser_for(cls, prog=prog, required=required)
    add_json_option(p, json_help)
    args = p.parse_args(argv)
    dest = args.json
    del args.json
    try:
        return config_from_args(cls, args), dest
    except ValueError as err:
        p.error(str(err))


# ----------------------------------------------------------------------------- config fields
def _is_bool(v) -> bool:
    return isinstance(v, bool) or getattr(getattr(v, "dtype", None), "kind", "") == "b"


def check_fields(cfg, name: str | None = None) -> None:
    """ValueError naming `Class.field=value` and what is expected, for a scalar field of the wrong
    type or a float that is NaN / infinite (tuples of floats too). Literal fields are left to the
    config's own checks; call it in `__post_init__` after normalising the fields."""
    cls = type(cfg)
    name = name or cls.__name__
    hints = typing.get_type_hints(cls)
    for f in fields(cfg):
        tp, optional = _unwrap_optional(hints[f.name])
        v = getattr(cfg, f.name)
        if v is None and optional:
            continue
        where = f"{name}.{f.name}={v!r}"
        if tp is bool:
            if not _is_bool(v):
                raise ValueError(f"{where}: expected true or false")
        elif tp is int:
            if _is_bool(v) or not isinstance(v, numbers.Integral):
                raise ValueError(f"{where}: expected an integer")
        elif tp is float:
            if _is_bool(v) or not isinstance(v, numbers.Real):
                raise ValueError(f"{where}: expected a number")
            if not math.isfinite(v):
                raise ValueError(f"{where}: expected a finite number")
        elif tp is str:
            if not isinstance(v, str):
                raise ValueError(f"{where}: expected a string")
        elif get_origin(tp) is tuple and get_args(tp) and get_args(tp)[0] is float:
            if not isinstance(v, (tuple, list)) or not all(
                    isinstance(x, numbers.Real) and not _is_bool(x) and math.isfinite(x) for x in v):
                raise ValueError(f"{where}: expected finite numbers")


# ----------------------------------------------------------------------------- user errors vs bugs
def _raised_in_lramlab(err: BaseException) -> bool:
    """True when the innermost frame that raised `err` is lramlab's own code (a deliberate check)."""
    tb = err.__traceback__
    if tb is None:
        return True
    while tb.tb_next is not None:
        tb = tb.tb_next
    return os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_PKG_DIR + os.sep)


def is_user_error(err: BaseException) -> bool:
    """The rule (documented in `lramlab.cli`): is `err` about the user's input or machine, not a bug?

    - ValueError (and subclasses: TrajectoryFileError, ImportFormatError, ManifestError,
      CheckpointError, ...), RuntimeError (a simulator missing here, ...) and ImportError (a
      missing optional package) that lramlab's own code raised -- its checks, with a message
      written for a person;
    - KeyError subclasses lramlab raises (UnknownTaskError; a bare KeyError is a bug);
    - OSError naming a file (FileNotFoundError, PermissionError, IsADirectoryError, ...), raised by
      lramlab, or a full / read-only disk;
    - MemoryError and torch's OutOfMemoryError.
    Everything else (TypeError, AttributeError, IndexError, a ValueError or RuntimeError raised
    inside numpy, torch or json, ...) is a bug and keeps its traceback.
    """
    if isinstance(err, OSError):
        return (getattr(err, "filename", None) is not None or _raised_in_lramlab(err)
                or err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS))
    if _out_of_memory(err):
        return True
    if isinstance(err, KeyError):
        return type(err) is not KeyError and _raised_in_lramlab(err)
    if isinstance(err, (ValueError, RuntimeError, ImportError)):
        return _raised_in_lramlab(err)
    return False


def _out_of_memory(err: BaseException) -> bool:
    """MemoryError, torch's OutOfMemoryError, or torch's CPU allocator refusing a size (a RuntimeError)."""
    return (isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError"
            or (isinstance(err, RuntimeError) and "can't allocate memory" in str(err)))


def one_line(err: BaseException) -> str:
    """The error's message on one line (OSError: its reason and file)."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        msg = f"{err.filename}: {err.strerror}"
        if err.filename2 is not None:
            msg += f" (-> {err.filename2})"
    elif _out_of_memory(err):
        msg = f"out of memory ({type(err).__name__}: {err}); try a smaller batch, context or model"
    elif isinstance(err, KeyError) and type(err).__str__ is KeyError.__str__ and len(err.args) == 1:
        msg = str(err.args[0])
    else:
        msg = str(err) or type(err).__name__
    return " ".join(msg.split())


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


_INTERRUPTED = [False]


def _on_sigint(signum, frame):
    _INTERRUPTED[0] = True  # remembered: a KeyboardInterrupt raised inside a finaliser is swallowed
    raise KeyboardInterrupt


def check_interrupted() -> None:
    """Raise KeyboardInterrupt if Ctrl-C came while a command ran but its KeyboardInterrupt was lost
    (raised inside a `__del__` or a C callback, which print it and go on); long loops call this."""
    if _INTERRUPTED[0]:
        raise KeyboardInterrupt


def command(prog: str) -> Callable:
    """Decorate a command's `main(argv) -> int` with the error boundary (see the module docstring).

    `--debug` is taken out of argv (and sets LRAMLAB_DEBUG=1 while the command runs, so worker
    processes see it); a user error prints one line and returns 2 (with --debug: the traceback
    first); Ctrl-C prints one line and returns 130; anything else propagates with its traceback."""
    def wrap(main: Callable[[list[str]], int]) -> Callable[[list[str] | None], int]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            argv = list(sys.argv[1:] if argv is None else argv)
            saved = os.environ.get(DEBUG_ENV)
            if "--debug" in argv:
                argv = [a for a in argv if a != "--debug"]
                os.environ[DEBUG_ENV] = "1"
            import signal
            import threading

            handler = None
            # only over Python's own handler: a SIGINT the parent ignores (a background job) stays ignored
            if (threading.current_thread() is threading.main_thread()
                    and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
                _INTERRUPTED[0] = False
                try:
                    handler = signal.signal(signal.SIGINT, _on_sigint)
                except (ValueError, OSError):  # not allowed here (e.g. an embedded interpreter)
                    handler = None
            try:
                rc = main(argv)
                if _INTERRUPTED[0]:  # Ctrl-C came but something swallowed it: still an interrupted run
                    raise KeyboardInterrupt
                return rc
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                return 130
            except Exception as err:  # noqa: BLE001 - sorted by the rule below; bugs re-raised
                if not is_user_error(err):
                    raise
                if debug_enabled():
                    traceback.print_exc()
                print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
                return USER_ERROR_EXIT
            finally:
                if handler is not None:
                    signal.signal(signal.SIGINT, handler)
                    _INTERRUPTED[0] = False
                if saved is None:
                    os.environ.pop(DEBUG_ENV, None)
                else:
                    os.environ[DEBUG_ENV] = saved
        return run
    return wrap


# ----------------------------------------------------------------------------- --json [FILE|-]
def strict_json(x: Any) -> Any:
    """`x` made strict JSON: NaN / inf -> None, numpy scalars and arrays -> Python values, tuples ->
    lists, paths -> strings, dict keys -> strings (`json.dumps` writes bare NaN, which JSON lacks)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): strict_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [strict_json(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if type(x).__module__ == "numpy" and hasattr(x, "tolist"):  # numpy scalars and arrays
        return strict_json(x.tolist())
    return x


def json_dumps(obj: Any, **kw) -> str:
    """`json.dumps` of `strict_json(obj)`: always valid JSON (a non-finite number is null)."""
    return json.dumps(strict_json(obj), allow_nan=False, **kw)


def add_json_option(p: argparse.ArgumentParser, what: str = "the result as JSON") -> None:
    """`--json` / `--json -`: JSON alone on stdout; `--json FILE`: JSON to FILE, text to stdout."""
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE|-",
                   help=f"write {what} to FILE, or to stdout with '-' or no value (stdout then holds only "
                        f"the JSON; everything else goes to stderr)")


class JsonOutput:
    """`with JsonOutput(dest) as out: ... out.write(obj)`; the JSON is written when the block ends
    without an error. dest: None (nothing), "-" (stdout; while the block runs, file descriptor 1
    and sys.stdout point at stderr, so nothing else lands on stdout) or a file path (checked when
    the block starts, written atomically at its end)."""

    def __init__(self, dest: str | None):
        self.dest = dest
        self.obj: Any = None
        self._stdout = None
        self._saved_fd: int | None = None

    @property
    def to_stdout(self) -> bool:
        return self.dest == "-"

    def __enter__(self) -> "JsonOutput":
        if self.dest is None:
            return self
        if not self.to_stdout:
            path = Path(self.dest)
            if path.is_dir():
                raise IsADirectoryError(errno.EISDIR, "--json: a directory, expected a file path or '-'", str(path))
            if not path.parent.is_dir():
                raise FileNotFoundError(errno.ENOENT, "--json: its directory does not exist", str(path))
            return self
        sys.stdout.flush()
        sys.stderr.flush()
        self._stdout = sys.stdout  # the JSON goes here at the end
        try:  # file descriptor 1 too: C libraries and child processes write there
            self._saved_fd = os.dup(1)
            os.dup2(2, 1)
        except OSError:
            self._saved_fd = None
        sys.stdout = sys.stderr
        return self

    def write(self, obj: Any) -> None:
        self.obj = obj

    def text(self) -> str:
        return json_dumps(self.obj, indent=1, default=str)

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._stdout is not None:
            sys.stdout.flush()
            sys.stderr.flush()
            if self._saved_fd is not None:
                os.dup2(self._saved_fd, 1)
                os.close(self._saved_fd)
                self._saved_fd = None
            sys.stdout, self._stdout = self._stdout, None
        if exc_type is not None or self.dest is None or self.obj is None:
            return
        text = self.text() + "\n"
        if self.to_stdout:
            sys.stdout.write(text)
            sys.stdout.flush()
            return
        path = Path(self.dest)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
