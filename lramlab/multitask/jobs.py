"""Study jobs in their own processes: `Job`, `run_jobs` (at most N at once, each after the jobs it
needs, resumable by their outputs), and the job bodies (train, eval, embed) run in spawned children.

A job is done when its output is current: a training run's metrics.json at its step count (and, for
a fine-tuning run, `pretrained.json` naming the sha256 of the model file it started from); an
evaluation JSON or embedding file whose "study" record holds the sha256 of the model file it used
and the settings it was made with (`args["stamp"]`).
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from lramlab._dataclass_cli import strict_json
from lramlab._io import file_sha256
from lramlab._proc import die_with_parent
from lramlab.analysis.publish import atomic_json


#: NaN / inf -> None, numpy -> Python, tuples -> lists (strict JSON)
clean_json = strict_json


# ============================================================================ jobs
@dataclass
class Job:
    """One unit of work in its own process: `kind` in train | eval | embed; `needs` other job names."""

    name: str
    kind: str
    args: dict
    needs: tuple[str, ...] = ()
    output: str = ""  # the file whose presence (and agreement) says the job is done
    status: str = "waiting"  # waiting | done | running | failed | blocked
    log: str = ""
    seconds: float = 0.0
    error: str = ""


def _train_done(run_dir: Path, steps: int) -> bool:
    try:
        m = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return False
    return int(m.get("step", -1)) >= steps and (run_dir / "model.pt").is_file()


def _output_done(path: Path, model_file: Path, extra: Mapping[str, Any]) -> bool:
    """An eval JSON / embedding npz is current when it records this model file's sha256 and `extra`."""
    meta = path.with_suffix(".meta.json") if path.suffix == ".npz" else path
    try:
        rec = json.loads(meta.read_text()).get("study", {})
    except (OSError, ValueError, AttributeError):
        return False
    if not model_file.is_file() or (path.suffix == ".npz" and not path.is_file()):
        return False
    return rec.get("model_sha256") == file_sha256(model_file) and all(rec.get(k) == clean_json(v) for k, v in extra.items())


def _pretrained_stamp(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "pretrained.json").read_text())["model_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def job_done(job: Job) -> bool:
    a = job.args
    if job.kind == "train":
        run_dir = Path(a["train"]["out"])
        if not _train_done(run_dir, int(a["train"]["steps"])):
            return False
        # a fine-tuned run is current only while its pretrained model file is the one it started from
        pre = a["train"].get("finetune_from")
        return pre is None or (Path(pre).is_file() and _pretrained_stamp(run_dir) == file_sha256(pre))
    return _output_done(Path(job.output), Path(a["model"]), a["stamp"])


def _redirect(log: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _child(kind: str, args: dict, log: str) -> None:
    """A job's process (spawned): output to its log, one torch thread pool of `threads`; it ends when
    the process that started it dies (a killed pipeline kernel leaves no job running)."""
    die_with_parent()
    _redirect(log)
    import torch

    torch.set_num_threads(int(args.get("threads", 1)))
    {"train": _do_train, "eval": _do_eval, "embed": _do_embed}[kind](args)


def _do_train(a: dict) -> None:
    from lramlab.train import TrainConfig, run

    cfg = TrainConfig(**a["train"])
    sha = file_sha256(cfg.finetune_from) if cfg.finetune_from else None
    run_dir = Path(cfg.out)
    if sha is not None and (run_dir / "config.json").exists() and _pretrained_stamp(run_dir) != sha:
        # fine-tuned from another pretrained model (it was retrained): start the fine-tuning over
        cfg.resume, cfg.overwrite = False, True
    print(f"train {cfg.out}: {cfg.backbone} steps={cfg.steps} finetune_from={cfg.finetune_from}", flush=True)
    res = run(cfg)
    if sha is not None:
        atomic_json(run_dir / "pretrained.json", {"model": cfg.finetune_from, "model_sha256": sha})
    print(f"done: step {res.step}, {res.wall_s:.1f} s", flush=True)


def _do_eval(a: dict) -> None:
    from lramlab.evaluate import EvaluationFailed, evaluate_model
    from lramlab.train.checkpoint import load_model_from_checkpoint

    model = load_model_from_checkpoint(a["model"], map_location=a["device"])
    failed = None
    try:
        res = evaluate_model(model, a["tasks"], a["episodes"], workers=a["workers"], seed=a["seed"],
                             greedy=a["greedy"], device=a["device"], skip_unavailable=True, target="data",
                             data=(a["data"],), on_failure=a["on_failure"], max_steps=a["max_steps"] or None,
                             progress=True)
    except EvaluationFailed as err:  # on_failure "raise": keep the results, then fail the job
        res, failed = err.result, err
    out = res.to_dict()
    out["protocol"].update(checkpoint=a["model"], checkpoint_sha256=file_sha256(a["model"]))
    out["study"] = {"model_sha256": file_sha256(a["model"]), **clean_json(a["stamp"])}
    path = Path(a["out"])
    # a failure under on_failure "raise" is kept beside the output, which a re-run would take as done
    atomic_json(path if failed is None else path.with_suffix(".failed.json"), out)
    if failed is not None:
        raise failed


def _do_embed(a: dict) -> None:
    import numpy as np

    from lramlab.analysis.embeddings import embed_tasks, load_for_embeddings, make_dataset

    model = load_for_embeddings(a["model"], a["device"])
    ds = make_dataset(a["data"], a["context"], a["tasks"])
    res = embed_tasks(model, ds, a["n_per_task"], -1, a["seed"], 32, a["device"], progress=True)
    out = Path(a["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, task=res.task, domain=res.domain, hidden=res.hidden, coords=res.coords)
    os.replace(tmp, out)
    meta = {"silhouette": res.silhouette, "silhouette_2d": res.silhouette_2d, "layer": res.layer, "info": res.info,
            "study": {"model_sha256": file_sha256(a["model"]), **clean_json(a["stamp"])}}
    atomic_json(out.with_suffix(".meta.json"), meta)


def load_embedding(path: str | Path):
    """An `EmbeddingResult` from an embedding job's npz + meta.json."""
    import numpy as np

    from lramlab.analysis.embeddings import EmbeddingResult

    p = Path(path)
    meta = json.loads(p.with_suffix(".meta.json").read_text())
    z = np.load(p)
    nan = float("nan")
    return EmbeddingResult(task=z["task"], domain=z["domain"], hidden=z["hidden"], coords=z["coords"],
                           silhouette=nan if meta["silhouette"] is None else meta["silhouette"],
                           silhouette_2d=nan if meta["silhouette_2d"] is None else meta["silhouette_2d"],
                           layer=meta["layer"], info=meta["info"])


def _progress_note(job: Job) -> str:
    """"train-dt 120/1000" for a running training job (the last step in its metrics.jsonl), else the name."""
    if job.kind != "train":
        return job.name
    path = Path(job.args["train"]["out"]) / "metrics.jsonl"
    try:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 4096))
            last = f.read().decode(errors="replace").strip().splitlines()[-1]
        step = json.loads(last)["step"]
    except (OSError, ValueError, IndexError, KeyError):
        step = 0
    return f"{job.name} {step}/{job.args['train']['steps']}"


def _log_tail(path: str, n: int = 2000) -> str:
    try:
        return Path(path).read_text(errors="replace")[-n:]
    except OSError:
        return ""


def run_jobs(jobs: Sequence[Job], workers: int, log_dir: Path, progress: bool = True,
             target: Callable = _child, poll: float = 0.5) -> list[Job]:
    """Run `jobs` (each after the jobs it needs), at most `workers` processes at once, in list order
    among the ready ones. Jobs already done are skipped; a failed job blocks the jobs that need it."""
    import multiprocessing as mp

    from tqdm.auto import tqdm

    ctx = mp.get_context("spawn")
    log_dir.mkdir(parents=True, exist_ok=True)
    by = {j.name: j for j in jobs}
    for j in jobs:
        unknown = [n for n in j.needs if n not in by]
        if unknown:
            raise ValueError(f"job {j.name} needs unknown job(s) {unknown}")
        j.log = str(log_dir / f"{j.name}.log")
    running: dict[str, tuple[Any, float]] = {}
    bar = tqdm(total=len(jobs), desc="multitask", unit="job", disable=not progress)
    try:
        while True:
            changed = False
            for j in jobs:
                if j.status == "waiting" and any(by[n].status in ("failed", "blocked") for n in j.needs):
                    j.status, j.error = "blocked", "needs " + ", ".join(n for n in j.needs if by[n].status != "done")
                    changed = True
                    bar.update(1)
            ready = [j for j in jobs if j.status == "waiting" and all(by[n].status == "done" for n in j.needs)]
            for j in ready:
                if job_done(j):
                    j.status, changed = "done", True
                    bar.update(1)
            ready = [j for j in ready if j.status == "waiting"]
            while ready and len(running) < workers:
                j = ready.pop(0)
                p = ctx.Process(target=target, args=(j.kind, j.args, j.log), name=f"lramlab-{j.name}")
                p.start()
                j.status = "running"
                running[j.name] = (p, time.perf_counter())
            if not running:
                if changed:
                    continue  # statuses changed: the next pass starts or blocks what follows them
                break
            bar.set_postfix_str(", ".join(_progress_note(by[n]) for n in running), refresh=True)
            time.sleep(poll)
            for name, (p, t0) in list(running.items()):
                if p.is_alive():
                    continue
                p.join()
                j = by[name]
                j.seconds = time.perf_counter() - t0
                del running[name]
                if p.exitcode == 0 and job_done(j):
                    j.status = "done"
                else:
                    j.status = "failed"
                    why = f"exit status {p.exitcode}" if p.exitcode else "finished without its output"
                    j.error = f"{why}; log {j.log}:\n{_log_tail(j.log)}"
                bar.update(1)
        for j in jobs:
            if j.status == "waiting":  # needs that can never finish (a cycle)
                j.status, j.error = "blocked", "needs " + ", ".join(j.needs)
    finally:
        for p, _ in running.values():  # interrupted: stop the job processes this call started
            p.terminate()
            p.join()
        bar.close()
    return list(jobs)
