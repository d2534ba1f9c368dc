"""Nothing lost: run directories, --resume / --finetune-from changes, warm-up, and imports that
replace data -- including real processes killed with SIGKILL in the middle of a write.

Data: real Dark-Room learning histories written by `lramlab data generate`'s generator; models:
tiny DTs trained on them (fp32, CPU, one thread).
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from lramlab.train import TrainConfig, run
from lramlab.train.step import lr_at

TASKS = ("darkroom/goal-2-0", "darkroom/goal-3-1")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from lramlab.collect.generate import generate

    root = tmp_path_factory.mktemp("safety_data")
    for t in TASKS:
        generate(t, 6, policy="history", out=root, progress=False)
    return root


def _cfg(root, out, **kw) -> TrainConfig:
    d = dict(data=(str(root),), backbone="dt", size="tiny", steps=4, batch_size=4, context=10, lr=3e-3, warmup=1,
             amp=False, device="cpu", out=str(out), val_every=0, ckpt_every=2, log_every=1, progress=False,
             num_threads=1, seed=0, tensorboard=False)
    d.update(kw)
    return TrainConfig(**d)


def _digest(d: Path) -> dict[str, str]:
    """Every file under d (hidden ones too, but a run's lock file) -> sha256 of its bytes."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def _steps(run_dir: Path, key: str = "train/loss") -> list[int]:
    return [x["step"] for x in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if key in x]


def _env() -> dict:
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = here + os.pathsep + env.get("PYTHONPATH", "")
    return env


# ----------------------------------------------------------------------------- run directories
def test_train_refuses_an_existing_run_unless_resume_or_overwrite(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    run(_cfg(data_root, out))
    before = _digest(out)
    with pytest.raises(ValueError, match=rf"{out}.*already holds a run.*--resume.*--overwrite"):
        run(_cfg(data_root, out, lr=1e-3))
    assert _digest(out) == before  # not one byte touched
    # --overwrite replaces that run's files, and only those
    (out / "notes.txt").write_text("mine")
    res = run(_cfg(data_root, out, steps=3, overwrite=True))
    assert res.step == 3 and (out / "notes.txt").read_text() == "mine"
    assert _steps(out) == [1, 2, 3]  # nothing of the first run's 4 steps left
    assert "removed the earlier run" in capsys.readouterr().err
    with pytest.raises(ValueError, match="resume=True and overwrite=True"):
        _cfg(data_root, out, resume=True, overwrite=True)


def test_a_directory_in_use_is_refused_and_a_killed_holder_frees_it(data_root, tmp_path):
    """Two runs never write one directory: a real process holds the run lock; a second run is
    refused naming its pid; once the holder is SIGKILLed (no cleanup) the directory is free."""
    out = tmp_path / "busy"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from lramlab.train.rundir import RunLock; "
                               f"lock = RunLock(Path({str(out)!r})); print('locked', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match=rf"in use by another training process \(pid {holder.pid}\)"):
            run(_cfg(data_root, out))
        assert not (out / "config.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert run(_cfg(data_root, out, steps=2)).step == 2


# ----------------------------------------------------------------------------- --resume policy
def test_resume_refuses_schedule_and_data_changes_naming_old_and_new(data_root, tmp_path):
    out = tmp_path / "r"
    run(_cfg(data_root, out))
    with pytest.raises(ValueError) as exc:
        run(_cfg(data_root, out, resume=True, lr=1e-3, weight_decay=0.5, batch_size=2))
    msg = str(exc.value)
    for part in ("lr=0.003 -> 0.001", "weight_decay=0.01 -> 0.5", "batch_size=4 -> 2", "last.pt"):
        assert part in msg, msg
    with pytest.raises(ValueError, match=r"at step 4, past steps=3"):
        run(_cfg(data_root, out, resume=True, steps=3))
    # the default warm-up follows steps: growing steps without --warmup names it and the fix
    run(_cfg(data_root, tmp_path / "auto", warmup=None, steps=20, ckpt_every=0))
    with pytest.raises(ValueError, match=r"warmup=2 -> 4.*pass --warmup 2"):
        run(_cfg(data_root, tmp_path / "auto", resume=True, warmup=None, steps=40))


def test_resume_applies_and_records_allowed_changes(data_root, tmp_path):
    """steps may grow: the cosine is re-spread over the new length -- the lr the optimizer uses
    after the resume is the new schedule's -- and config.json records the change."""
    out = tmp_path / "grow"
    run(_cfg(data_root, out, steps=4))
    res = run(_cfg(data_root, out, steps=8, resume=True, log_every=2))
    assert res.step == 8
    new = _cfg(data_root, out, steps=8)
    logged = {x["step"]: x["train/lr"] for x in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
              if "train/lr" in x}
    assert sorted(logged) == [1, 2, 3, 4, 6, 8]  # log_every=2 from the resume on
    for step in (6, 8):
        assert logged[step] == pytest.approx(lr_at(step - 1, new))
    rec = json.loads((out / "config.json").read_text())
    assert rec["resumes"] == [{"step": 4, "changed": {"steps": [4, 8], "log_every": [1, 2]}}]
    assert rec["train"]["steps"] == 8 and rec["train"]["log_every"] == 2
    ck = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert ck["train_config"]["steps"] == 8  # the next resume compares against what is in use


def test_finetune_refuses_a_checkpoint_of_another_model(data_root, tmp_path):
    src = run(_cfg(data_root, tmp_path / "src"))
    with pytest.raises(ValueError) as exc:
        run(_cfg(data_root, tmp_path / "ft", backbone="xlstm", finetune_from=str(src.run_dir)))
    msg = str(exc.value)
    assert "backbone='dt' in the checkpoint, 'xlstm' in this run" in msg and "--backbone dt" in msg, msg
    with pytest.raises(ValueError, match=r"context_steps=10 in the checkpoint, 20 in this run.*--context 10"):
        run(_cfg(data_root, tmp_path / "ft2", context=20, finetune_from=str(src.run_dir)))
    ok = run(_cfg(data_root, tmp_path / "ft3", finetune_from=str(src.run_dir), steps=2))
    rec = json.loads((ok.run_dir / "config.json").read_text())
    assert rec["train"]["backbone"] == rec["model"]["backbone"] == "dt"  # recorded = used


# ----------------------------------------------------------------------------- warm-up
def test_warmup_defaults_to_a_tenth_of_a_short_run():
    assert TrainConfig(data=("x",), steps=200_000).warmup == 4000  # the paper's
    assert TrainConfig(data=("x",), steps=300).warmup == 30
    assert TrainConfig(data=("x",), steps=300, warmup=4000).warmup == 4000  # given: kept


def test_a_short_run_learns_out_of_the_box_and_a_long_warmup_is_named(data_root, tmp_path, capsys):
    def loss_drop(**kw):
        res = run(_cfg(data_root, tmp_path / f"w{kw.get('warmup')}", steps=60, batch_size=8, lr=1e-4, ckpt_every=0,
                       **kw))
        tl = [x["train/loss"] for x in map(json.loads, (res.run_dir / "metrics.jsonl").read_text().splitlines())
              if "train/loss" in x]
        return np.mean(tl[-5:]) / np.mean(tl[:5])

    assert loss_drop(warmup=None) < 0.8  # defaults (lr 1e-4, warm-up 6 of 60 steps): it learns
    assert "warning" not in capsys.readouterr().err
    assert loss_drop(warmup=4000) > 0.95  # the paper's 4000 over 60 steps: lr never gets off the ground
    err = capsys.readouterr().err
    assert "warning: warmup=4000 steps is not shorter than the run (steps=60)" in err and "for 6" in err


# ----------------------------------------------------------------------------- killed training
KILL_IN_CHECKPOINT = textwrap.dedent("""
    import os, signal, sys
    import lramlab._io as io
    from lramlab.cli import main

    orig, seen = io.fsync_file, []

    def fsync_file(path, missing_ok=False):
        # the checkpoint's temporary file is complete but not yet renamed over last.pt
        if os.path.basename(str(path)).startswith(".last.pt."):
            seen.append(path)
            if len(seen) == int(sys.argv[1]):
                os.kill(os.getpid(), signal.SIGKILL)
        return orig(path, missing_ok)

    io.fsync_file = fsync_file
    sys.exit(main(sys.argv[2:]))
""")


def test_train_killed_while_writing_a_checkpoint_loses_nothing(data_root, tmp_path):
    out = tmp_path / "killed"
    args = ["train", "--data", str(data_root), "--backbone", "dt", "--size", "tiny", "--steps", "6", "--batch-size",
            "4", "--context", "10", "--lr", "3e-3", "--warmup", "1", "--no-amp", "--device", "cpu", "--out", str(out),
            "--val-every", "0", "--ckpt-every", "2", "--log-every", "1", "--no-progress", "--num-threads", "1",
            "--no-tensorboard"]
    proc = subprocess.run([sys.executable, "-c", KILL_IN_CHECKPOINT, "2", *args], capture_output=True, text=True,
                          timeout=300, env=_env())
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    from lramlab.train.checkpoint import load_checkpoint

    ckpts = out / "checkpoints"
    assert load_checkpoint(ckpts / "last.pt")["step"] == 2  # the step-4 write never replaced it
    assert [p.name for p in ckpts.iterdir() if p.name.startswith(".last.pt.")]  # its whole tmp file, unseen
    assert not (out / "model.pt").exists() and not (out / "metrics.json").exists()
    # a line torn by a kill (the OS flushed half of it) must not stop the resume
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "train/lo')
    with pytest.raises(ValueError, match="already holds a run"):
        run(TrainConfig(**{**_cfg(data_root, out).to_dict(), "steps": 6}))
    from lramlab.cli import main

    assert main([*args, "--resume"]) == 0
    assert load_checkpoint(ckpts / "last.pt")["step"] == 6 and (out / "model.pt").is_file()
    assert not [p for p in ckpts.iterdir() if p.name.startswith(".")]  # the stale tmp was removed
    assert _steps(out) == [1, 2, 3, 4, 5, 6]


# ----------------------------------------------------------------------------- imports
def _native_source(data_root, tmp_path, name, n, corrupt_at=None) -> Path:
    """A directory in LRAM's released per-episode layout, copied from real generated episodes."""
    import h5py

    src = tmp_path / name
    src.mkdir()
    eps = sorted((data_root / TASKS[0]).glob("episode_*.hdf5"))[:n]
    for i, p in enumerate(eps):
        with h5py.File(p, "r") as f, h5py.File(src / f"{i}.hdf5", "w") as g:
            for k in ("states", "actions", "rewards", "dones"):
                g[k] = f[k][()]
            if i == corrupt_at:
                del g["rewards"]
                g["rewards"] = f["rewards"][()][:-3]  # 3 steps short: not an episode
    return src


def test_import_overwrite_that_fails_leaves_the_old_data(data_root, tmp_path):
    from lramlab.data.importers import ImportFormatError, import_dataset
    from lramlab.data.store import check_dataset

    out = tmp_path / "store"
    task_dir = import_dataset("native", _native_source(data_root, tmp_path, "a", 3), TASKS[0], out, progress=False)
    before = _digest(task_dir)
    bad = _native_source(data_root, tmp_path, "b", 5, corrupt_at=3)
    with pytest.raises(ValueError, match=r"3\.hdf5"):
        import_dataset("native", bad, TASKS[0], out, overwrite=True, progress=False)
    assert _digest(task_dir) == before
    assert [p.name for p in task_dir.parent.iterdir()] == [task_dir.name]  # no staging directory left
    rep = check_dataset(out)
    assert rep.ok and rep.episodes == 3
    with pytest.raises(ValueError, match="already holds 3 episode files; pass --overwrite"):
        import_dataset("native", bad, TASKS[0], out, progress=False)
    with pytest.raises(ValueError, match="--max-episodes must be >= 1"):
        import_dataset("native", bad, TASKS[0], out, overwrite=True, max_episodes=0, progress=False)
    assert issubclass(ImportFormatError, ValueError)


KILL_IN_IMPORT = textwrap.dedent("""
    import os, signal, sys
    import lramlab.data.store.episodes as E
    from lramlab.cli import main

    orig, calls = E._raw_dataset, [0]

    def raw_dataset(*a, **k):  # the store writes each dataset of an episode file through this
        calls[0] += 1
        if calls[0] == int(sys.argv[1]):  # inside an episode file, some datasets written
            os.kill(os.getpid(), signal.SIGKILL)
        return orig(*a, **k)

    E._raw_dataset = raw_dataset
    sys.exit(main(sys.argv[2:]))
""")


def test_import_killed_mid_write_leaves_old_data_and_nothing_that_passes_check(data_root, tmp_path):
    from lramlab.data.store import check_dataset

    out = tmp_path / "store"
    src_a = _native_source(data_root, tmp_path, "a", 3)
    src_b = _native_source(data_root, tmp_path, "b", 5)
    task_dir = out / TASKS[0]

    def imp(src, kill_at, *extra):
        cmd = [sys.executable, "-c", KILL_IN_IMPORT, str(kill_at), "data", "import", "native", str(src), "--task",
               TASKS[0], "--out", str(out), "--no-progress", *extra]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())

    # a first import killed in its 3rd episode: no task directory, nothing for `data check` to accept
    assert imp(src_b, 13).returncode == -signal.SIGKILL
    assert not task_dir.exists() and not check_dataset(out).tasks
    assert imp(src_a, 0).returncode == 0  # the next import cleans the killed one's staging directory
    before = _digest(task_dir)
    assert [p.name for p in task_dir.parent.iterdir()] == [task_dir.name]
    # an --overwrite killed in its 3rd episode: the old data, whole, and still valid
    assert imp(src_b, 13, "--overwrite").returncode == -signal.SIGKILL
    assert _digest(task_dir) == before
    staged = [p for p in task_dir.parent.iterdir() if p.name != task_dir.name]
    assert len(staged) == 1 and staged[0].name.startswith(".goal-2-0.import-")
    assert len(list(staged[0].glob("episode_*.hdf5"))) == 2  # what the killed import had finished
    rep = check_dataset(out)
    assert rep.ok and [t.dir for t in rep.tasks] == [str(task_dir)] and rep.episodes == 3
    from lramlab.cli import main

    assert main(["data", "check", str(out)]) == 0
    done = imp(src_b, 0, "--overwrite")
    assert done.returncode == 0, done.stderr
    assert [p.name for p in task_dir.parent.iterdir()] == [task_dir.name]
    assert check_dataset(out).episodes == 5


def test_import_overwrite_from_the_directory_it_replaces(data_root, tmp_path):
    """`--overwrite` with the task directory as its own source: the new data is read whole before
    anything is replaced (deleting the old episodes first left nothing to import)."""
    import shutil

    from lramlab.data.importers import import_dataset
    from lramlab.data.store import check_dataset

    out = tmp_path / "store"
    shutil.copytree(data_root / TASKS[0], out / TASKS[0])
    import_dataset("native", out / TASKS[0], TASKS[0], out, overwrite=True, progress=False)
    rep = check_dataset(out)
    assert rep.ok and rep.episodes == 6
    assert json.loads((out / TASKS[0] / "meta.json").read_text())["policy"] == "imported:native"


def test_eval_record_never_overwrites_a_dataset(data_root, tmp_path, capsys):
    import shutil

    from lramlab.cli import main
    from lramlab.models import LRAMConfig, build_model

    store = tmp_path / "store"
    shutil.copytree(data_root / TASKS[0], store / TASKS[0])
    before = _digest(store)
    model = tmp_path / "model.pt"
    build_model(LRAMConfig(backbone="dt", size="tiny", context_steps=10)).save(model)
    rc = main(["eval", "--checkpoint", str(model), "--tasks", TASKS[0], "--episodes", "1", "--record", str(store)])
    err = capsys.readouterr().err
    assert rc == 2 and "already holds 6 episode files" in err, err
    assert _digest(store) == before
