"""Publish a study run into `docs/results/<study>/`: what `lramlab report` renders from.

    python -m lramlab.analysis.publish runs/six-domain-cpu 06_multitask docs/results/six-domain-cpu \
        --preset studies/six-domain-cpu.yaml [--note "resumed once: ..."]

writes DEST/results.json = {"preset", "command", "pipeline_seconds", "wall": [...], "code", "versions",
"config", "metrics"} (the notebook's metrics.json with the run directory's absolute paths made
relative to it), DEST/summary.json when the run has one, DEST/quality.json when the metrics hold a
data quality table (01_data_prep's `quality`), and copies each PNG figure the metrics name
to DEST/<figure>.png (the metrics' `figures[<name>]["png"]` then reads `<name>.png`). Every write is
atomic; an existing DEST/results.json whose `wall` list holds earlier segments of the same run (the
same --out directory name) keeps them (a study resumed over several sessions reports every segment's
wall time); a results.json of another run is replaced whole.

Errors name the file and what was expected: a run directory without `pipeline.json`, a notebook
that did not run there, a metrics file that is not a JSON object.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

from lramlab._dataclass_cli import command, json_dumps
from lramlab._io import atomic_write_text


def atomic_json(path: Path, data: Any) -> None:
    """Strict JSON (a NaN score becomes null), written atomically."""
    atomic_write_text(path, json_dumps(data, indent=1) + "\n")


def _run_name(doc: dict) -> str | None:
    """The run directory's name an earlier results.json came from (`run_out`, else its command's --out)."""
    if doc.get("run_out"):
        return str(doc["run_out"])
    parts = str(doc.get("command") or "").split()
    return Path(parts[parts.index("--out") + 1]).name if "--out" in parts[:-1] else None


def _relative(x: Any, root: str) -> Any:
    """`x` with every string under the absolute path `root` made relative to it (recursively)."""
    if isinstance(x, str):
        return x[len(root):].lstrip("/") if x == root or x.startswith(root + "/") else x
    if isinstance(x, dict):
        return {k: _relative(v, root) for k, v in x.items()}
    if isinstance(x, list):
        return [_relative(v, root) for v in x]
    return x


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found ({what})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}); expected {what}") from None


def _versions() -> dict[str, Any]:
    """The run directory's version record (`train.runlog.versions`: packages, git commit) plus the
    machine and its CPU count, which the results page names beside a wall time."""
    from lramlab.train.runlog import versions

    return {**versions(), "machine": f"{platform.machine()}, {_cpus()} CPUs"}


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)


def publish(run_out: str | Path, notebook: str, dest: str | Path, preset: str | None = None,
            note: str = "") -> Path:
    """Copy the results of `notebook` (e.g. "06_multitask") run under `run_out` into `dest` (module
    docstring); returns DEST/results.json."""
    run_out, dest = Path(run_out).resolve(), Path(dest)
    pipe = _read_json(run_out / "pipeline.json", "the pipeline's record of its runs (lramlab pipeline --out)")
    runs = [r for r in pipe.get("runs", []) if isinstance(r, dict) and r.get("name") == notebook]
    if not runs:
        have = ", ".join(str(r.get("name")) for r in pipe.get("runs", []) if isinstance(r, dict)) or "none"
        raise ValueError(f"{run_out / 'pipeline.json'}: notebook {notebook!r} did not run there (runs: {have})")
    run = runs[-1]
    if run.get("status") not in ("ran", "ok", "done"):
        raise ValueError(f"{run_out / 'pipeline.json'}: {notebook} has status {run.get('status')!r}, expected 'ran'")
    nb_dir = run_out / notebook
    metrics = _read_json(nb_dir / "metrics.json", f"{notebook}'s metrics (a JSON object)")
    if not isinstance(metrics, dict):
        raise ValueError(f"{nb_dir / 'metrics.json'}: expected a JSON object, found {type(metrics).__name__}")
    metrics = _relative(metrics, str(nb_dir))
    dest.mkdir(parents=True, exist_ok=True)
    for name, fig in sorted((metrics.get("figures") or {}).items()):
        if not isinstance(fig, dict) or not fig.get("png"):
            continue
        src = nb_dir / fig["png"]
        if not src.is_file():
            raise FileNotFoundError(f"{src}: figure {name!r} named in {nb_dir / 'metrics.json'} is missing")
        tmp = dest / f".{name}.png.tmp"
        shutil.copyfile(src, tmp)
        tmp.replace(dest / f"{name}.png")
        fig["png"] = f"{name}.png"
        fig.pop("html", None)
    config = None
    if preset:
        import yaml

        config = (yaml.safe_load(Path(preset).read_text()) or {}).get(notebook)
    seconds = float(run.get("seconds") or 0.0)
    segment = {"seconds": round(seconds, 1), "finished": pipe.get("finished") or run.get("finished"), "note": note}
    old_path = dest / "results.json"
    out_name = run_out.name
    cmd = (f"lramlab pipeline --params {preset} --only {notebook.split('_')[0]} --out runs/{out_name}"
           if preset else None)
    wall = []
    try:
        old = json.loads(old_path.read_text()) if old_path.is_file() else {}
    except json.JSONDecodeError:
        old = {}
    old = old if isinstance(old, dict) else {}
    if _run_name(old) == out_name:  # a segment of the same run (resumed): keep the earlier ones
        wall = [w for w in old.get("wall", []) if isinstance(w, dict) and w != segment]
        if preset is None:
            preset, cmd, config = old.get("preset"), old.get("command"), old.get("config")
    wall.append(segment)
    vers = _versions()
    doc = {"preset": preset, "command": cmd, "run_out": out_name, "pipeline_seconds": {notebook: round(seconds, 1)},
           "wall": wall, "code": vers.get("git_commit"), "versions": vers, "config": config, "metrics": metrics}
    atomic_json(old_path, doc)
    if isinstance(metrics.get("quality"), list):  # 01_data_prep's quality table (`lramlab data quality`)
        atomic_json(dest / "quality.json", metrics["quality"])
    if (nb_dir / "summary.json").is_file():
        atomic_json(dest / "summary.json", _read_json(nb_dir / "summary.json", "the study's summary"))
    return old_path


@command("python -m lramlab.analysis.publish")
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lramlab.analysis.publish", description=__doc__.split("\n")[0])
    ap.add_argument("run_out", help="the pipeline's --out directory")
    ap.add_argument("notebook", help="the notebook whose results to publish, e.g. 06_multitask")
    ap.add_argument("dest", help="docs/results/<study>")
    ap.add_argument("--preset", help="the studies/*.yaml the run used (its section is recorded as the config)")
    ap.add_argument("--note", default="", help="a note on this run segment (e.g. 'resumed after a session end')")
    a = ap.parse_args(argv)
    try:
        path = publish(a.run_out, a.notebook, a.dest, a.preset, a.note)
    except (FileNotFoundError, ValueError) as err:
        print(f"publish: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}; now run `lramlab report` and commit {Path(a.dest)}/ with docs/results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
