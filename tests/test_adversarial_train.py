"""Issue 20, training and checkpoints: nothing lost, nothing silent.

Each test is a case of the adversarial pass, run as a user would (`lramlab.cli.main`, in process):
`train --overwrite` that keeps the earlier run when the new one is refused, a run that diverges
(one line, exit 2, the last good checkpoint kept), non-finite weights refused where a model is
loaded, checkpoints loaded with `weights_only=True` (a crafted pickle runs nothing), and a resume
that compares the data's content and resolved path, not the spelling of `--data`.
Data are real Dark-Room histories from the generator.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from lramlab.cli import main

TASKS = ("darkroom/goal-2-0", "darkroom/goal-0-2")
T = ["--backbone", "dt", "--size", "tiny", "--batch-size", "4", "--context", "10", "--no-amp", "--device", "cpu",
     "--no-progress", "--num-threads", "1", "--no-tensorboard", "--val-every", "0"]


@pytest.fixture(scope="module")
def D(tmp_path_factory):
    """Two Dark-Room tasks of history-policy episodes and one finished 3-step run on them."""
    from lramlab.collect.generate import generate

    tmp = tmp_path_factory.mktemp("adv_train")
    data = tmp / "data"
    for t in TASKS:
        generate(t, 4, policy="history", out=data, progress=False)
    run = tmp / "run"
    assert main(["train", "--data", str(data), "--out", str(run), *T, "--steps", "3", "--ckpt-every", "1"]) == 0
    return type("D", (), {"tmp": tmp, "data": data, "run": run})


def _one_line(err: str, prog: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    errs = [ln for ln in lines if ln.startswith(f"{prog}: error:")]
    assert len(errs) == 1 and "Traceback" not in err, err
    return errs[0]


def _copy_run(D, name: str) -> Path:
    dst = D.tmp / name
    shutil.copytree(D.run, dst)
    return dst


# ----------------------------------------------------------------------------- --overwrite loses nothing
@pytest.mark.parametrize("bad", ["task", "data"])
def test_overwrite_refused_for_its_input_keeps_the_earlier_run(D, capsys, bad):
    run = _copy_run(D, f"ow_{bad}")
    before = sorted(p.name for p in run.iterdir())
    if bad == "task":
        extra = ["--data", str(D.data), "--tasks", "darkroom/goal-9-9"]
        want = "goal-9-9"
    else:
        empty = D.tmp / f"empty_{bad}"
        (empty / "darkroom" / "goal-1-1").mkdir(parents=True, exist_ok=True)
        extra = ["--data", str(empty)]
        want = "no valid episode"
    rc = main(["train", *extra, "--out", str(run), *T, "--steps", "3", "--overwrite"])
    err = capsys.readouterr().err
    assert rc == 2
    assert want in _one_line(err, "lramlab train")
    assert "removed the earlier run" not in err
    assert sorted(p.name for p in run.iterdir()) == before
    assert (run / "model.pt").is_file() and (run / "checkpoints" / "last.pt").is_file()


def test_overwrite_replaces_once_the_checks_pass(D, capsys):
    run = _copy_run(D, "ow_ok")
    (run / "metrics.jsonl").write_text('{"step": 999}\n')
    assert main(["train", "--data", str(D.data), "--out", str(run), *T, "--steps", "2", "--overwrite"]) == 0
    assert "removed the earlier run" in capsys.readouterr().err
    assert '"step": 999' not in (run / "metrics.jsonl").read_text()


# ----------------------------------------------------------------------------- divergence
def test_divergence_stops_at_the_first_nonfinite_loss(D, capsys):
    from lramlab.train.checkpoint import load_checkpoint

    out = D.tmp / "diverged"
    rc = main(["train", "--data", str(D.data), "--out", str(out), *T, "--steps", "20", "--lr", "1e6",
               "--warmup", "1", "--ckpt-every", "1", "--log-every", "1"])
    err = capsys.readouterr().err
    line = _one_line(err, "lramlab train")
    assert rc == 2
    assert "training diverged at step" in line and "last good checkpoint" in line
    assert not (out / "model.pt").exists() and not (out / "metrics.json").exists()
    ck = load_checkpoint(out / "checkpoints" / "last.pt")  # refuses non-finite weights itself
    stopped = int(line.split("diverged at step ")[1].split(":")[0])
    assert ck["step"] == stopped - 1 and f"(step {stopped - 1})" in line
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert stopped < 20


# ----------------------------------------------------------------------------- non-finite weights
@pytest.fixture(scope="module")
def nan_model(D):
    from lramlab.models import load_model
    from lramlab.models.agent import model_payload

    m = load_model(D.run / "model.pt")
    with torch.no_grad():
        next(m.parameters()).fill_(float("nan"))
    path = D.tmp / "nan_model.pt"
    torch.save(model_payload(m), path)  # as a diverged run of an older lramlab wrote it
    return path


def test_nan_model_file_refused_by_eval(D, nan_model, capsys):
    rc = main(["eval", "--checkpoint", str(nan_model), "--tasks", TASKS[0], "--episodes", "1"])
    line = _one_line(capsys.readouterr().err, "lramlab eval")
    assert rc == 2 and "nan_model.pt" in line and "not finite" in line


def test_nan_model_refused_by_icl_and_finetune(D, nan_model, capsys):
    rc = main(["icl", "--checkpoint", str(nan_model), "--out", str(D.tmp / "icl_nan"), "--trials", "1",
               "--device", "cpu", "--no-progress"])
    line = _one_line(capsys.readouterr().err, "lramlab icl")
    assert rc == 2 and "not finite" in line
    rc = main(["train", "--data", str(D.data), "--out", str(D.tmp / "ft_nan"), *T, "--steps", "1",
               "--finetune-from", str(nan_model)])
    line = _one_line(capsys.readouterr().err, "lramlab train")
    assert rc == 2 and "nan_model.pt" in line and "not finite" in line


def test_nan_weights_never_saved(D):
    from lramlab.models import load_model

    m = load_model(D.run / "model.pt")
    with torch.no_grad():
        next(m.parameters()).fill_(float("inf"))
    with pytest.raises(ValueError, match="not finite"):
        m.save(D.tmp / "never.pt")
    assert not (D.tmp / "never.pt").exists()


# ----------------------------------------------------------------------------- checkpoints run no code
class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("where", ["eval", "finetune", "resume", "load_model"])
def test_crafted_checkpoint_runs_no_code(D, capsys, where):
    from lramlab.train.checkpoint import FORMAT, VERSION

    marker = D.tmp / f"PWNED_{where}"
    payload = torch.load(D.run / "checkpoints" / "last.pt", weights_only=False)
    assert payload["format"] == FORMAT and payload["version"] == VERSION
    payload["metrics"] = {"x": _Evil(marker)}
    evil = D.tmp / f"evil_{where}.pt"
    torch.save(payload, evil)
    if where == "eval":
        rc, prog = main(["eval", "--checkpoint", str(evil), "--tasks", TASKS[0], "--episodes", "1"]), "lramlab eval"
    elif where == "finetune":
        rc, prog = main(["train", "--data", str(D.data), "--out", str(D.tmp / "ft_evil"), *T, "--steps", "1",
                         "--finetune-from", str(evil)]), "lramlab train"
    elif where == "resume":
        run = _copy_run(D, "resume_evil")
        evil = Path(shutil.copy(evil, run / "checkpoints" / "last.pt"))
        rc, prog = main(["train", "--data", str(D.data), "--out", str(run), *T, "--steps", "4", "--ckpt-every",
                         "1", "--resume"]), "lramlab train"
    else:
        from lramlab.models import load_model
        from lramlab.models.agent import model_payload

        p = model_payload(load_model(D.run / "model.pt"))
        p["extra"] = _Evil(marker)
        torch.save(p, evil)
        with pytest.raises(ValueError, match="refused to load"):
            load_model(evil)
        assert not marker.exists()
        return
    line = _one_line(capsys.readouterr().err, prog)
    assert not marker.exists(), "loading the checkpoint ran its code"
    assert rc == 2 and evil.name in line and "refused to load" in line and "system" in line


def test_resumed_checkpoints_load_weights_only(D):
    """What lramlab writes loads under weights_only=True alone (no numpy objects in the RNG state)."""
    ck = torch.load(D.run / "checkpoints" / "last.pt", weights_only=True)
    assert ck["step"] == 3 and isinstance(ck["rng"][0]["numpy"][1], torch.Tensor)


# ----------------------------------------------------------------------------- resume compares content
def test_resume_same_data_by_absolute_path_and_refuses_changed_data(D, tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    shutil.copytree(D.data, data)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", "data", "--out", "run", *T, "--steps", "2", "--ckpt-every", "1"]) == 0
    # the same data named by its absolute path resumes
    assert main(["train", "--data", str(data), "--out", "run", *T, "--steps", "3", "--ckpt-every", "1",
                 "--resume"]) == 0
    capsys.readouterr()
    # episodes deleted between runs: refused, naming the task and the counts
    victim = sorted((data / TASKS[0]).glob("episode_*.hdf5"))[-1]
    victim.unlink()
    rc = main(["train", "--data", "data", "--out", "run", *T, "--steps", "4", "--resume"])
    line = _one_line(capsys.readouterr().err, "lramlab train")
    assert rc == 2 and "changed" in line and f"{TASKS[0]}: 4 -> 3 episodes" in line


def test_eval_from_another_directory_finds_the_runs_data(D, tmp_path, monkeypatch, capsys):
    data = tmp_path / "proj" / "data"
    shutil.copytree(D.data, data)
    monkeypatch.chdir(tmp_path / "proj")
    assert main(["train", "--data", "data", "--out", "run", *T, "--steps", "1"]) == 0
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    capsys.readouterr()
    rc = main(["eval", "--checkpoint", str(tmp_path / "proj" / "run"), "--tasks", TASKS[0], "--episodes", "1",
               "--num-threads", "1"])
    assert rc == 0, capsys.readouterr().err


# ----------------------------------------------------------------------------- attacking the fixes
def test_older_checkpoint_with_numpy_rng_state_still_resumes(D, capsys):
    """Checkpoints written before weights_only (numpy RNG state as an ndarray) load and resume."""
    import numpy as np

    run = _copy_run(D, "old_format")
    last = run / "checkpoints" / "last.pt"
    ck = torch.load(last, weights_only=False)
    for r in ck["rng"]:
        r["numpy"] = np.random.get_state()  # the old layout: ('MT19937', ndarray, pos, has_gauss, cached)
    ck["train_config"].pop("data_fingerprint")  # and no fingerprint yet
    torch.save(ck, last)
    assert main(["train", "--data", str(D.data), "--out", str(run), *T, "--steps", "4", "--ckpt-every", "1",
                 "--resume"]) == 0, capsys.readouterr().err
    assert torch.load(last, weights_only=True)["step"] == 4


def test_rng_state_round_trip_is_exact():
    import random

    import numpy as np

    from lramlab.train.checkpoint import rng_state, set_rng_state

    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    st = rng_state()
    a = (random.random(), np.random.rand(3).tolist(), torch.rand(2).tolist())
    set_rng_state(st)
    assert (random.random(), np.random.rand(3).tolist(), torch.rand(2).tolist()) == a


def test_diverged_run_without_a_checkpoint_says_so(D, capsys):
    out = D.tmp / "diverged_no_ckpt"
    rc = main(["train", "--data", str(D.data), "--out", str(out), *T, "--steps", "20", "--lr", "1e6",
               "--warmup", "1", "--ckpt-every", "0"])
    line = _one_line(capsys.readouterr().err, "lramlab train")
    assert rc == 2 and "no checkpoint had been written yet" in line
    assert not (out / "checkpoints" / "last.pt").exists() and not (out / "model.pt").exists()
