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
took, and whether PNGs could be written.

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
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from lramlab import REPO_ROOT
from lramlab._dataclass_cli import ArgumentParser, JsonOutput, add_json_option, command
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
                 cell_timeout: int | None = None, notebook_dir: Path = NOTEBOOK_DIR) -> Path:
    """Execute one notebook into `out/<name>/<name>.ipynb`; raise PipelineError on a failing cell."""
    pm = require("papermill", "running notebooks")
    src = Path(notebook_dir) / f"{name}.ipynb"
    if not src.exists():
        raise FileNotFoundError(f"notebook {src} not found")
    run_dir = out / name
    run_dir.mkdir(parents=True, exist_ok=True)
    dst = run_dir / f"{name}.ipynb"
    try:
        # widgets render only live; their saved state would embed plotly.js (~5 MB) per FigureWidget
        pm.execute_notebook(str(src), str(dst), parameters=dict(parameters), kernel_name=kernel,
                            progress_bar=False, cwd=str(run_dir), execution_timeout=cell_timeout,
                            store_widget_state=False, extra_arguments=KERNEL_QUIET)
    except pm.PapermillExecutionError as err:
        raise _cell_error(err, name, src, dst) from err
    except Exception as err:  # noqa: BLE001 - kernel death, timeouts: name the notebook
        raise PipelineError(name, f"notebook {name} could not run ({dst}): {type(err).__name__}: {err}",
                            ename=type(err).__name__, evalue=str(err), output=str(dst)) from err
    return dst


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
                dst = run_notebook(nb, out, p, kernel, cell_timeout, notebook_dir)
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
        tmp = summary_path.with_name(summary_path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(res), indent=2, default=str))
        os.replace(tmp, summary_path)
    return res


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
    if args.list:
        with JsonOutput(args.json) as out:
            listing = {nb: notebook_parameters(NOTEBOOK_DIR / f"{nb}.ipynb") for nb in NOTEBOOKS}
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
            res = run_pipeline(args.out, args.params, only=args.only, force=args.force,
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
