"""`lramlab pipeline`: run the study notebooks headlessly with papermill, in order.

    lramlab pipeline [--params FILE] [--out DIR] [--only NAME ...] [--force]

Each notebook `notebooks/NN_name.ipynb` runs in `OUT/NN_name/` (executed notebook, `metrics.json`,
figures as HTML, and PNG where kaleido finds a Chromium). A notebook's inputs come from the
outputs of the ones before it (`CHAIN`: the data directory of 01 goes to training, ICL,
embeddings and the multi-task study; the checkpoint of 02 goes to embeddings), then from
`--params` (a YAML/JSON file mapping notebook name -> {parameter: value}), which wins.

Resumable: a notebook whose `OUT/NN_name/metrics.json` exists is skipped (its metrics still feed
the chain) unless `--force`. A re-run sets the earlier attempt aside (`OUT/.NN_name.previous`),
except for the notebooks in `RESUMES_IN_PLACE` (06: its jobs continue from what they left
there; delete the directory to start over). A failing cell stops the pipeline with the notebook, the cell and
the error named, and a non-zero exit status. `OUT/pipeline.json` records what ran, how long it
took, and whether PNGs could be written; an `--only` run updates its notebooks' records and keeps
the others'.

Executed notebooks read right without a kernel: every figure carries a PNG beside its plotly JSON
(`analysis.display.show_figures`), each widget a static snapshot, and progress bars end in their
final state (the kernels run with LRAMLAB_HEADLESS=1: plain-text bars, folded by
`finalize_outputs`). While a notebook runs, the pipeline's bar shows its latest progress line.

The kernel is the `python3` kernelspec when it resolves to this interpreter (jupyter_client maps
a bare `python` argv to `sys.executable`); otherwise a kernelspec for this interpreter is
installed into `sys.prefix/share/jupyter/kernels/` and used, so the notebooks always import the
same lramlab as the pipeline.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from lramlab import REPO_ROOT
from lramlab._dataclass_cli import ArgumentParser, JsonOutput, add_json_option, command, json_dumps
from lramlab._optional import require

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS: tuple[str, ...] = ("01_data_prep", "02_training", "03_icl", "04_embeddings_umap", "05_latency",
                              "06_multitask")

#: notebook -> {its parameter: (earlier notebook, key of that notebook's metrics.json)}
CHAIN: dict[str, dict[str, tuple[str, str]]] = {
    "02_training": {"data_dir": ("01_data_prep", "data_dir")},
    "03_icl": {"data_dir": ("01_data_prep", "data_dir")},
    "04_embeddings_umap": {"data_dir": ("01_data_prep", "data_dir"), "checkpoint": ("02_training", "checkpoint")},
    "06_multitask": {"data_dir": ("01_data_prep", "data_dir")},
}
#: notebooks that continue their own earlier work in OUT/<notebook> (the multi-task study's jobs skip
#: what is done): a re-run (after a failure, or --force) runs in place instead of setting it aside
RESUMES_IN_PLACE = frozenset({"06_multitask"})
#: parameters the pipeline sets for a notebook (before --params); "{out}" is the run directory
DEFAULTS: dict[str, dict[str, str]] = {"01_data_prep": {"data_dir": "{out}/data"}}
KERNEL_NAME = "python3"


class PipelineError(RuntimeError):
    """A notebook failed; `.notebook`, `.cell_index`, `.ename`, `.evalue` name where and why."""

    def __init__(self, notebook: str, message: str, cell_index: int | None = None, ename: str = "",
                 evalue: str = "", output: str | None = None):
        self.notebook, self.cell_index, self.ename, self.evalue, self.output = notebook, cell_index, ename, evalue, output
        super().__init__(message)


@dataclass
class NotebookRun:
    name: str
    status: str  # "ran" | "skipped" | "failed"
    seconds: float
    output: str  # executed notebook
    metrics: dict = field(default_factory=dict)
    parameters: dict = field(default_factory=dict)
    error: str | None = None


@dataclass
class PipelineResult:
    out: str
    runs: list[NotebookRun]
    seconds: float
    kernel: str
    png: bool
    png_error: str | None

    @property
    def ok(self) -> bool:
        return all(r.status != "failed" for r in self.runs)

    def metrics(self, name: str) -> dict:
        return next(r.metrics for r in self.runs if r.name == name)


# ----------------------------------------------------------------------------- kernel
def ensure_kernel(name: str = KERNEL_NAME) -> str:
    """A kernelspec name whose kernel runs `sys.executable`; installs one into this prefix if needed."""
    ksm_mod = require("jupyter_client.kernelspec", "running notebooks")
    ksm = ksm_mod.KernelSpecManager()
    aliases = {"python", f"python{sys.version_info[0]}", f"python{sys.version_info[0]}.{sys.version_info[1]}"}

    def runs_here(spec_name: str) -> bool:
        try:
            argv0 = ksm.get_kernel_spec(spec_name).argv[0]
        except Exception:  # noqa: BLE001 - missing or broken spec: not usable
            return False
        if argv0 in aliases:
            return True
        try:
            return Path(argv0).resolve() == Path(sys.executable).resolve() or Path(argv0) == Path(sys.executable)
        except OSError:
            return False

    if runs_here(name):
        return name
    import hashlib

    # a stable name per interpreter (str hash() is salted per process)
    own = "lramlab-" + hashlib.sha1(sys.executable.encode()).hexdigest()[:8]
    if not runs_here(own):
        ipk = require("ipykernel.kernelspec", "running notebooks")
        # ipykernel writes argv[0] = sys.executable, i.e. this venv's interpreter
        ipk.install(kernel_name=own, display_name=f"Python (lramlab, {sys.prefix})", prefix=sys.prefix)
    return own


# ----------------------------------------------------------------------------- params
class Params(dict):
    """`load_params`' result, {notebook: {parameter: value}}, which remembers its file and the
    line of each entry, so a bad name or value is reported as FILE:LINE."""

    def __init__(self, data: Mapping | None = None, source: str | None = None,
                 lines: Mapping[tuple[str, str | None], int] | None = None):
        super().__init__(data or {})
        self.source = source
        self.lines = dict(lines or {})

    def where(self, notebook: str, parameter: str | None = None) -> str:
        line = self.lines.get((notebook, parameter)) or self.lines.get((notebook, None))
        if self.source is None:
            return "parameters"
        return f"{self.source}:{line}" if line else self.source


def _yaml_lines(text: str) -> dict[tuple[str, str | None], int]:
    """{(notebook key as written, parameter or None): 1-based line} from the YAML/JSON node tree."""
    import yaml

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    out: dict[tuple[str, str | None], int] = {}
    if not isinstance(root, yaml.MappingNode):
        return out
    for k, v in root.value:
        nb = str(k.value)
        out[(nb, None)] = k.start_mark.line + 1
        if isinstance(v, yaml.MappingNode):
            for pk, _ in v.value:
                out[(nb, str(pk.value))] = pk.start_mark.line + 1
    return out


def _non_finite(v) -> bool:
    if isinstance(v, float):
        return not math.isfinite(v)
    if isinstance(v, (list, tuple)):
        return any(_non_finite(x) for x in v)
    if isinstance(v, dict):
        return any(_non_finite(x) for x in v.values())
    return False


def load_params(path: str | Path | None) -> Params:
    """Per-notebook overrides from a YAML or JSON file: {notebook name: {parameter: value}}.

    A parse error, an unknown notebook, a non-mapping entry or a NaN / infinite number is a
    ValueError naming FILE:LINE."""
    if path is None:
        return Params()
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"--params {p}: no such file")
    if p.is_dir():
        raise IsADirectoryError(f"--params {p}: is a directory, expected a YAML or JSON file")
    text = p.read_text()
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{p}:{err.lineno}: not valid JSON: {err.msg} (column {err.colno})") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ValueError(f"{p}{line}: not valid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a mapping notebook name -> {{parameter: value}}, got {type(data).__name__}")
    raw_lines = _yaml_lines(text)
    out = Params(source=str(p))
    for nb, vals in data.items():
        line = raw_lines.get((str(nb), None))
        where = f"{p}:{line}" if line else str(p)
        key = _notebook_key(str(nb), where=where)
        if vals is None:
            vals = {}
        if not isinstance(vals, dict):
            raise ValueError(f"{where}: entry {nb!r} must be a mapping parameter -> value, got {type(vals).__name__}")
        out[key] = dict(vals)
        out.lines[(key, None)] = line
        for name, v in vals.items():
            out.lines[(key, str(name))] = raw_lines.get((str(nb), str(name)))
            if _non_finite(v):
                raise ValueError(f"{out.where(key, str(name))}: {key}.{name}={v!r}: expected a finite number")
    return out


_PY_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "list": (list,), "dict": (dict,)}


def check_overrides(params: Params, nb: str, declared: Mapping[str, dict]) -> None:
    """Unknown parameter names and values of the wrong type (against the notebook's `parameters`
    cell, as papermill infers it) are a ValueError naming FILE:LINE -- before any notebook runs."""
    given = params.get(nb, {})
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise ValueError(f"{params.where(nb, unknown[0])}: parameters for {nb}: unknown name(s) {unknown}; the "
                         f"notebook's parameters are {sorted(declared)}")
    for name, v in given.items():
        kind = declared[name].get("inferred_type_name")
        ok = _PY_TYPES.get(kind)
        if ok is None:
            continue  # a type papermill could not infer: the notebook's own config checks it
        if isinstance(v, bool) and kind != "bool" or not isinstance(v, ok):
            raise ValueError(f"{params.where(nb, name)}: {nb}.{name}={v!r}: expected {kind} (the notebook's "
                             f"default is {declared[name].get('default')})")


#: notebook -> the config its parameters feed (same field names): values are checked by the config itself
_CONFIG_OF = {"02_training": ("lramlab.train.config", "TrainConfig", {"data": ("x",), "out": "x"}),
              "03_icl": ("lramlab.icl.study", "ICLStudyConfig", {"data_dir": "x"}),
              "06_multitask": ("lramlab.multitask.config", "MultiTaskConfig", {})}


def check_values(params: Params, nb: str, declared: Mapping[str, dict]) -> None:
    """Values out of range, before any kernel starts: a number below zero where the notebook's default
    is not, and every override the notebook hands to a config (02: TrainConfig, 03: ICLStudyConfig,
    with its parameter match; 06: MultiTaskConfig) put through that config's own checks. A ValueError
    naming FILE:LINE."""
    import dataclasses
    import importlib

    given = params.get(nb, {})
    for name, v in given.items():
        default = declared.get(name, {}).get("default")
        try:
            d = float(default)
        except (TypeError, ValueError):
            continue
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0 <= d:
            raise ValueError(f"{params.where(nb, name)}: {nb}.{name}={v!r}: expected a number >= 0 (the "
                             f"notebook's default is {default})")
    if nb not in _CONFIG_OF:
        return
    module, cls_name, required = _CONFIG_OF[nb]
    cls = getattr(importlib.import_module(module), cls_name)
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in given.items() if k in names and (nb in ("03_icl", "06_multitask") or not isinstance(v, (list, dict)))}
    if not kw:
        return
    try:
        cls(**{**required, **kw})
    except (ValueError, TypeError) as err:
        msg = str(err)
        bad = next((k for k in kw if f"{k}=" in msg or f".{k}" in msg), next(iter(kw)))
        raise ValueError(f"{params.where(nb, bad)}: parameters for {nb}: {msg}") from None


def _notebook_key(name: str, where: str = "") -> str:
    """'02_training', '02', 'training' or '02_training.ipynb' -> '02_training'."""
    stem = Path(name).stem
    for nb in NOTEBOOKS:
        if stem in (nb, nb[:2], nb[3:]):
            return nb
    src = f"{where}: " if where else ""
    raise ValueError(f"{src}unknown notebook {name!r}; the pipeline's notebooks are {', '.join(NOTEBOOKS)}")


def notebook_parameters(path: str | Path) -> dict[str, dict]:
    """The notebook's `parameters` cell as papermill sees it: {name: {inferred_type_name, default, help}}."""
    pm = require("papermill", "running notebooks")
    return pm.inspect_notebook(str(path))


# ----------------------------------------------------------------------------- run
def _read_metrics(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def _cell_error(err, nb: str, src: Path, output: Path) -> PipelineError:
    """A PipelineError naming the notebook, the cell (index in the SOURCE notebook, as a person
    edits it) and the error, from papermill's exception."""
    idx = getattr(err, "cell_index", None)
    ename, evalue = getattr(err, "ename", type(err).__name__), getattr(err, "evalue", str(err))
    source = (getattr(err, "source", "") or "").strip().splitlines()
    first = source[0] if source else ""
    # papermill's index counts the injected-parameters cell, placed right after the `parameters` cell
    src_idx = idx
    try:
        import nbformat

        cells = nbformat.read(str(src), as_version=4).cells
        tagged = [i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])]
        if idx is not None and tagged and idx > tagged[0]:
            src_idx = idx - 1
    except Exception:  # noqa: BLE001 - the index of the executed notebook is still useful
        pass
    count = getattr(err, "exec_count", None)
    msg = (f"notebook {nb} failed in cell {src_idx} of {src} (In [{count}], first line: {first!r}): "
           f"{ename}: {evalue}; executed notebook: {output}")
    return PipelineError(nb, msg, cell_index=src_idx, ename=ename, evalue=evalue, output=str(output))


#: the kernel's own log at ERROR: its "Kernel is running over TCP without encryption" warning, once
#: per notebook, is noise for a local papermill kernel (cells' warnings and errors are unaffected)
KERNEL_QUIET = ["--IPKernelApp.log_level=ERROR"]


def run_notebook(name: str, out: Path, parameters: Mapping[str, Any], kernel: str,
                 cell_timeout: int | None = None, notebook_dir: Path = NOTEBOOK_DIR,
                 on_progress=None) -> Path:
    """Execute one notebook into `out/<name>/<name>.ipynb`; raise PipelineError on a failing cell.

    `on_progress(line)` (optional) gets the kernel's latest progress-bar line while it runs."""
    pm = require("papermill", "running notebooks")
    src = Path(notebook_dir) / f"{name}.ipynb"
    if not src.exists():
        raise FileNotFoundError(f"notebook {src} not found")
    run_dir = out / name
    run_dir.mkdir(parents=True, exist_ok=True)
    dst = run_dir / f"{name}.ipynb"
    stderr_log = run_dir / f".{name}.stderr.log"
    watcher = _ProgressWatcher(stderr_log, on_progress) if on_progress is not None else None
    try:
        # widgets render only live; their saved state would embed plotly.js (~5 MB) per FigureWidget
        # (each widget leaves a static snapshot instead, see widgets.static_html); the kernel
        # inherits HEADLESS_ENV: plain-text progress bars (lramlab/__init__.py), one line a second
        with _environ(HEADLESS_ENV), open(stderr_log, "w") as err_file:
            if watcher is not None:
                watcher.start()
            pm.execute_notebook(str(src), str(dst), parameters=dict(parameters), kernel_name=kernel,
                                progress_bar=False, cwd=str(run_dir), execution_timeout=cell_timeout,
                                store_widget_state=False, stderr_file=err_file,
                                extra_arguments=KERNEL_QUIET)
    except pm.PapermillExecutionError as err:
        raise _cell_error(err, name, src, dst) from err
    except Exception as err:  # noqa: BLE001 - kernel death, timeouts: name the notebook
        raise PipelineError(name, f"notebook {name} could not run ({dst}): {type(err).__name__}: {err}",
                            ename=type(err).__name__, evalue=str(err), output=str(dst)) from err
    finally:
        if watcher is not None:
            watcher.stop()
        if dst.exists():
            finalize_outputs(dst)
    return dst


#: environment of the notebooks' kernels (and the job processes they start)
HEADLESS_ENV = {"LRAMLAB_HEADLESS": "1", "TQDM_MININTERVAL": "1"}


class _environ:
    """Set environment variables for a block (the kernel papermill starts inherits them)."""

    def __init__(self, values: Mapping[str, str]):
        self.values, self.saved = dict(values), {}

    def __enter__(self):
        self.saved = {k: os.environ.get(k) for k in self.values}
        os.environ.update(self.values)

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_CR = re.compile(r"[^\n]*\r(?=[^\n])")
_WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def _fold_stream(text: str) -> str:
    """A stream's text as a terminal shows it: what a carriage return overwrote is gone."""
    return _CR.sub("", text.replace("\r\n", "\n")).replace("\r", "")


def _bar_desc(line: str) -> str | None:
    m = _TQDM_LINE.search(line)
    return line[: m.start()].split(":")[0].strip() if m else None


def _final_bars(text: str) -> str:
    """Only the last state of each progress bar: a bar line followed later by the same bar (same
    description, no other bar in between) is an earlier state the terminal would have overwritten."""
    lines = text.split("\n")
    keep = [True] * len(lines)
    last_bar: dict[str, int] = {}
    for i, line in enumerate(lines):
        desc = _bar_desc(line)
        if desc is None:
            continue
        j = last_bar.get(desc)
        if j is not None and all(_bar_desc(x) in (None, desc) for x in lines[j + 1: i]):
            keep[j] = False
        last_bar[desc] = i
    return "\n".join(x for x, k in zip(lines, keep) if k)


def _coalesce_streams(outputs: list) -> list:
    """Consecutive stream outputs of one name merged (the kernel sends each bar refresh as its own
    message, its carriage return dropped), carriage returns folded, each bar in its last state."""
    merged: list = []
    for out in outputs:
        if out.get("output_type") == "stream":
            text = _fold_stream(out["text"])
            if merged and merged[-1].get("output_type") == "stream" and merged[-1].get("name") == out.get("name"):
                prev = merged[-1]["text"]
                # a bar's refresh has no newline: whatever follows it starts a line of its own
                sep = "\n" if prev and not prev.endswith("\n") and not text.startswith("\n") \
                    and _bar_desc(prev.rsplit("\n", 1)[-1]) else ""
                merged[-1]["text"] = prev + sep + text
                continue
            out["text"] = text
        merged.append(out)
    for out in merged:
        if out.get("output_type") == "stream":
            out["text"] = _final_bars(out["text"])
    return merged


def finalize_outputs(path: str | Path) -> int:
    """Make an executed notebook read right without a kernel: a cell's stream outputs merged, each
    progress bar kept in its final state only (no bar saved at "0%"), and a widget's live view
    dropped where the output carries a static snapshot (no widget state is saved, so the view could
    only show "model not found"). Returns the number of cells changed; rewrites the file atomically."""
    import json

    import nbformat

    path = Path(path)
    nb = nbformat.read(str(path), as_version=4)
    changed = 0
    for cell in nb.cells:
        outputs = cell.get("outputs", [])
        if not outputs:
            continue
        before = json.dumps(outputs, sort_keys=True)
        outputs = _coalesce_streams(outputs)
        for out in outputs:
            data = out.get("data", {})
            if _WIDGET_MIME in data and ("text/html" in data or "image/png" in data):
                del data[_WIDGET_MIME]
        if json.dumps(outputs, sort_keys=True) != before:
            cell["outputs"] = outputs
            changed += 1
    if changed:
        tmp = path.with_name(f".{path.name}.tmp")
        nbformat.write(nb, str(tmp))
        os.replace(tmp, path)
    return changed


_TQDM_LINE = re.compile(r"(\d+)%\|")


class _ProgressWatcher:
    """Follows a running kernel's stderr (papermill's stderr_file) and reports its latest progress
    bar line to `callback(line)`, so that the pipeline's bar shows the progress inside a notebook."""

    def __init__(self, path: Path, callback, interval_s: float = 1.0):
        import threading

        self.path, self.callback, self.interval_s = Path(path), callback, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="pipeline-progress")
        self._pos, self._last = 0, None

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=5)
        self.poll()

    def poll(self) -> str | None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._pos)
                chunk = f.read()
                self._pos = f.tell()
        except OSError:
            return None
        lines = [ln.strip() for ln in re.split(r"[\r\n]", chunk.decode("utf-8", "replace")) if ln.strip()]
        bars = [ln for ln in lines if _TQDM_LINE.search(ln)]
        if bars and bars[-1] != self._last:
            self._last = bars[-1]
            self.callback(_short_bar(bars[-1]))
        return self._last

    def _run(self):
        while not self._stop.wait(self.interval_s):
            self.poll()


def _short_bar(line: str) -> str:
    """'train dt/tiny:  40%|####      | 12/30 [00:03<00:05, 3.1it/s, loss=1.2]' -> 'train dt/tiny 40% 12/30 [00:03<00:05]'"""
    m = re.match(r"(?P<desc>.*?):?\s*(?P<pct>\d+%)\|[^|]*\|\s*(?P<n>\S+)\s*(?P<t>\[[^,\]]*)?", line)
    if not m:
        return line[:80]
    return " ".join(x for x in (m["desc"].strip(), m["pct"], m["n"], (m["t"] + "]") if m["t"] else "") if x)[:80]


def _set_aside(run_dir: Path) -> Path | None:
    """Move an earlier attempt's OUT/NN_name to OUT/.NN_name.previous (replacing an older one)."""
    if not run_dir.exists():
        return None
    aside = run_dir.with_name(f".{run_dir.name}.previous")
    if aside.exists():
        shutil.rmtree(aside)
    os.rename(run_dir, aside)
    return aside


def run_pipeline(out: str | Path = "runs/demo", params: Mapping[str, Mapping[str, Any]] | str | Path | None = None,
                 only: Sequence[str] | None = None, force: bool = False, progress: bool = True,
                 cell_timeout: int | None = None, notebook_dir: str | Path = NOTEBOOK_DIR,
                 kernel: str | None = None) -> PipelineResult:
    """Run the notebooks in order (see the module docstring). Raises PipelineError on a failing cell."""
    from tqdm.auto import tqdm

    from lramlab.analysis.plots import png_export_available

    t0 = time.perf_counter()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(params, Params):
        overrides = params
    elif isinstance(params, (str, Path)) or params is None:
        overrides = load_params(params)
    else:
        overrides = Params({_notebook_key(k): dict(v or {}) for k, v in params.items()})
        for nb, vals in overrides.items():
            for name, v in vals.items():
                if _non_finite(v):
                    raise ValueError(f"parameters: {nb}.{name}={v!r}: expected a finite number")
    names = list(NOTEBOOKS) if not only else [_notebook_key(n) for n in only]
    names = [n for n in NOTEBOOKS if n in names]  # always in pipeline order
    notebook_dir = Path(notebook_dir)
    # validate every override before running anything: a typo should not cost a 10-minute run
    declared = {}
    for nb in names:
        declared[nb] = notebook_parameters(notebook_dir / f"{nb}.ipynb")
        check_overrides(overrides, nb, declared[nb])
        check_values(overrides, nb, declared[nb])
    kernel = kernel or ensure_kernel()
    png_ok, png_error = png_export_available()
    results: list[NotebookRun] = []
    done: dict[str, dict] = {}
    # metrics of notebooks not selected this time but present on disk still feed the chain
    for nb in NOTEBOOKS:
        m = out / nb / "metrics.json"
        if nb not in names and m.exists():
            done[nb] = _read_metrics(m)
    bar = tqdm(names, desc="pipeline", unit="notebook", disable=not progress)
    summary_path = out / "pipeline.json"
    try:
        for nb in bar:
            bar.set_postfix_str(nb)
            run_dir = out / nb
            metrics_path = run_dir / "metrics.json"
            if metrics_path.exists() and not force:
                done[nb] = _read_metrics(metrics_path)
                results.append(NotebookRun(nb, "skipped", 0.0, str(run_dir / f"{nb}.ipynb"), done[nb]))
                continue
            p: dict[str, Any] = {k: v.format(out=out) for k, v in DEFAULTS.get(nb, {}).items() if k in declared[nb]}
            for param, (src_nb, key) in CHAIN.get(nb, {}).items():
                if param in declared[nb] and src_nb in done and key in done[src_nb]:
                    p[param] = done[src_nb][key]
            p.update(overrides.get(nb, {}))
            if "out_dir" in declared[nb]:
                p["out_dir"] = str(run_dir)
            if "save_png" in declared[nb] and "save_png" not in overrides.get(nb, {}):
                p["save_png"] = bool(png_ok)
            # a re-run starts clean (the training run inside would refuse to overwrite itself); the
            # earlier attempt stays aside until this one succeeds
            previous = None if nb in RESUMES_IN_PLACE else _set_aside(run_dir)
            if nb in RESUMES_IN_PLACE:
                metrics_path.unlink(missing_ok=True)  # an interrupted re-run must not leave the old numbers
            t = time.perf_counter()
            try:
                dst = run_notebook(nb, out, p, kernel, cell_timeout, notebook_dir,
                                   on_progress=(lambda line, nb=nb: bar.set_postfix_str(f"{nb}: {line}"))
                                   if progress else None)
            except PipelineError as err:
                results.append(NotebookRun(nb, "failed", time.perf_counter() - t, err.output or "", {}, p, str(err)))
                raise
            if not metrics_path.exists():
                err = PipelineError(nb, f"notebook {nb} ran but wrote no {metrics_path} (its last cell must)",
                                    output=str(dst))
                results.append(NotebookRun(nb, "failed", time.perf_counter() - t, str(dst), {}, p, str(err)))
                raise err
            done[nb] = _read_metrics(metrics_path)
            results.append(NotebookRun(nb, "ran", time.perf_counter() - t, str(dst), done[nb], p))
            if previous is not None:
                shutil.rmtree(previous, ignore_errors=True)
    finally:
        bar.close()
        res = PipelineResult(str(out), results, time.perf_counter() - t0, kernel, png_ok, png_error)
        _write_summary(summary_path, res)
    return res


def _write_summary(path: Path, res: PipelineResult) -> None:
    """pipeline.json: this run's records, merged with the earlier ones of notebooks it did not run
    (an `--only` run keeps the others' records), in pipeline order."""
    record = asdict(res)
    try:
        old = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, json.JSONDecodeError):
        old = {}
    mine = {r["name"] for r in record["runs"]}
    kept = [r for r in old.get("runs", []) if isinstance(r, dict) and r.get("name") not in mine]
    record["runs"] = sorted(kept + record["runs"], key=lambda r: (NOTEBOOKS + (r.get("name"),)).index(r.get("name")))
    record["this_run"] = sorted(mine, key=NOTEBOOKS.index)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json_dumps(record, indent=2, default=str))  # strict JSON: a NaN metric is null
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="lramlab pipeline", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--params", default=None, help="YAML/JSON file: {notebook: {parameter: value}} overrides")
    p.add_argument("--out", default="runs/demo", help="run directory (one sub-directory per notebook)")
    p.add_argument("--only", nargs="+", default=None, metavar="NOTEBOOK",
                   help=f"run only these notebooks ({', '.join(NOTEBOOKS)}; '02' or 'training' work too)")
    p.add_argument("--force", action="store_true", help="re-run notebooks whose metrics.json exists")
    p.add_argument("--cell-timeout", type=int, default=None, help="seconds per cell (default: none)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    p.add_argument("--list", action="store_true", help="list the notebooks and their parameters, run nothing")
    add_json_option(p, "the pipeline's record (pipeline.json; with --list: the notebooks' parameters)")
    return p


@command("lramlab pipeline")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cell_timeout is not None and args.cell_timeout < 1:
        raise ValueError(f"--cell-timeout {args.cell_timeout}: expected seconds >= 1 (leave it out for no limit)")
    only = [_notebook_key(n, "--only") for n in args.only] if args.only else None  # before any work, --list too
    params = load_params(args.params) if args.params else None
    if args.list:
        with JsonOutput(args.json) as out:
            listing = {nb: notebook_parameters(NOTEBOOK_DIR / f"{nb}.ipynb") for nb in (only or NOTEBOOKS)}
            for nb in (params or {}):  # a bad params file is refused here too, as a run would
                if nb in listing:
                    check_overrides(params, nb, listing[nb])
                    check_values(params, nb, listing[nb])
            out.write(listing)
        if not out.to_stdout:
            for nb, params in listing.items():
                print(nb)
                for name, info in params.items():
                    print(f"  {name:<22} {info['inferred_type_name']:<14} = {info['default']:<22} {info['help']}")
        return 0
    os.environ.setdefault("MUJOCO_GL", "egl")  # headless MuJoCo for the kernels (inherited env)
    with JsonOutput(args.json) as out:
        try:
            res = run_pipeline(args.out, params, only=only, force=args.force,
                               progress=not args.no_progress, cell_timeout=args.cell_timeout)
        except PipelineError as err:  # a notebook failed: its own exit status (1), named in one line
            print(f"lramlab pipeline: {err}", file=sys.stderr)
            return 1
        out.write(asdict(res))
    if not out.to_stdout:
        for r in res.runs:
            print(f"{r.name:<20} {r.status:<8} {r.seconds:7.1f} s  {r.output}")
        print(f"total {res.seconds:.1f} s; kernel {res.kernel}; outputs in {res.out}")
        print("figures: HTML" + (" + PNG" if res.png else f" only (no PNG: {res.png_error})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
