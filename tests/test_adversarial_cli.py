"""Issue 20, the command line: group help, strict JSON everywhere, ordinary file permissions,
options and values refused before any work starts, and the error contract (one line naming the
thing, exit 2) for the cases the adversarial pass found. In process (`lramlab.cli.main`)."""
from __future__ import annotations

import json
import math
import os
import stat

import numpy as np
import pytest

from lramlab.cli import main


@pytest.mark.parametrize("group,commands", [("data", ["data check", "data generate", "data pack", "data import"]),
                                            ("bench", ["bench data", "bench latency", "bench train"])])
def test_group_help(capsys, group, commands):
    assert main([group, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"usage: lramlab {group} COMMAND" in out
    assert all(c in out for c in commands)
    assert main([group]) == 2  # a group alone: its commands, and a usage error
    assert "expected a command" in capsys.readouterr().err


# ----------------------------------------------------------------------------- strict JSON, 0644
def test_json_outputs_are_strict(tmp_path):
    from lramlab._dataclass_cli import JsonOutput
    from lramlab._dataclass_cli import json_dumps
    from lramlab.train.runlog import MetricLogger, write_json

    obj = {"a": float("nan"), "b": [np.float32("inf"), 1.5], "c": np.array([np.nan, 2.0]), "d": (np.int64(3),)}
    text = json_dumps(obj)
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}")) == \
        {"a": None, "b": [None, 1.5], "c": [None, 2.0], "d": [3]}
    write_json(tmp_path / "m.json", obj)
    log = MetricLogger(tmp_path, True, False)
    log.log(1, {"train/loss": float("nan")})
    log.close()
    with JsonOutput(str(tmp_path / "out.json")) as out:
        out.write({"x": math.inf})
    for name in ("m.json", "metrics.jsonl", "out.json"):
        for line in (tmp_path / name).read_text().splitlines() if name.endswith("l") else [
                (tmp_path / name).read_text()]:
            json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in {name}"))


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    from lramlab._io import atomic_write_text

    old = os.umask(0o022)
    try:
        p = atomic_write_text(tmp_path / "r.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o644


# ----------------------------------------------------------------------------- checked before the work
def _line(err: str, prog: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith(f"{prog}: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    import torch

    from lramlab.models import LRAMConfig, build_model

    torch.manual_seed(0)
    p = tmp_path_factory.mktemp("adv_cli") / "model.pt"
    build_model(LRAMConfig(backbone="dt", size="tiny", context_steps=10)).save(p)
    return p


def test_icl_bad_eval_goals_refused_before_training(tmp_path, capsys, monkeypatch):
    import lramlab.train as train

    monkeypatch.setattr(train, "run", lambda *a, **k: pytest.fail("trained before checking --eval-goals"))
    (tmp_path / "data").mkdir()
    rc = main(["icl", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "icl"), "--eval-goals",
               "darkroom/goal-42", "--steps", "1", "--no-progress"])
    assert rc == 2 and "goal-42" in _line(capsys.readouterr().err, "lramlab icl")


def test_eval_record_to_a_regular_file_refused_before_rollouts(model_file, tmp_path, capsys, monkeypatch):
    import lramlab.evaluate as ev

    monkeypatch.setattr(ev, "evaluate_model", lambda *a, **k: pytest.fail("rolled out before checking --record"))
    f = tmp_path / "rec.txt"
    f.write_text("x")
    rc = main(["eval", "--checkpoint", str(model_file), "--tasks", "darkroom/goal-2-0", "--record", str(f)])
    line = _line(capsys.readouterr().err, "lramlab eval")
    assert rc == 2 and "rec.txt" in line and "not a directory" in line


@pytest.mark.parametrize("text,want", [
    ("02_training:\n  steps: -3\n", ["steps=-3", ":2"]),
    ("02_training:\n  lr: 0.001\n  batch_size: 0\n", ["batch_size=0", ":3"]),
    ("03_icl:\n  trials: 0\n", ["trials=0"]),
    ("06_multitask:\n  context: -5\n", ["context=-5"]),
    ("01_data_prep:\n  darkroom_episodes: -1\n", ["darkroom_episodes=-1", ">= 0"]),
])
def test_pipeline_param_values_checked_before_a_kernel(tmp_path, capsys, monkeypatch, text, want):
    import lramlab.pipeline as pl

    monkeypatch.setattr(pl, "ensure_kernel", lambda *a, **k: pytest.fail("a kernel started before the check"))
    params = tmp_path / "p.yaml"
    params.write_text(text)
    rc = main(["pipeline", "--params", str(params), "--out", str(tmp_path / "o"), "--no-progress"])
    line = _line(capsys.readouterr().err, "lramlab pipeline")
    assert rc == 2 and "p.yaml" in line and all(w in line for w in want), line
    # --list checks the same file
    rc = main(["pipeline", "--params", str(params), "--list"])
    err = capsys.readouterr().err
    assert rc == 2 and all(w in err for w in want), err


@pytest.mark.parametrize("argv,want", [
    (["--only", "99", "--list"], "unknown notebook '99'"),
    (["--params", "none.yaml", "--list"], "none.yaml"),
    (["--cell-timeout", "-1", "--list"], "--cell-timeout -1"),
    (["--cell-timeout", "0", "--list"], "--cell-timeout 0"),
])
def test_pipeline_bad_options_refused(tmp_path, capsys, monkeypatch, argv, want):
    monkeypatch.chdir(tmp_path)
    rc = main(["pipeline", *argv])
    assert rc == 2 and want in _line(capsys.readouterr().err, "lramlab pipeline")


def test_context_beyond_memory_refused_up_front(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    rc = main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "o"), "--size", "tiny",
               "--backbone", "xlstm", "--context", "100000", "--batch-size", "4", "--device", "cpu", "--no-progress"])
    line = _line(capsys.readouterr().err, "lramlab train")
    assert rc == 2 and "context=100000" in line and "GiB" in line
    assert not (tmp_path / "o").exists()


def test_allocator_refusal_is_out_of_memory_not_a_bug():
    import torch

    from lramlab._dataclass_cli import is_user_error, one_line

    try:
        torch.empty(2 ** 62, dtype=torch.uint8)
    except RuntimeError as err:
        assert is_user_error(err)
        assert one_line(err).startswith("out of memory")
    else:
        pytest.skip("this machine allocated 2^62 bytes")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_ctrl_c_swallowed_by_a_finaliser_still_stops_eval(model_file, capsys, monkeypatch):
    """numba's finalisers print a KeyboardInterrupt raised inside them and go on: the eval ran to its
    end and exited 0. The command remembers the Ctrl-C: the rollout stops at its next step, exit 130."""
    import gc
    import signal

    from lramlab.rollout import Agent

    class Finaliser:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)  # the handler runs here, inside __del__: swallowed

    calls = []
    act = Agent.act

    def act_once_interrupted(self, obs):
        calls.append(1)
        if len(calls) == 3:
            Finaliser()
            gc.collect()
        return act(self, obs)

    monkeypatch.setattr(Agent, "act", act_once_interrupted)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (not a background job)
    rc = main(["eval", "--checkpoint", str(model_file), "--tasks", "darkroom/goal-2-0", "--episodes", "1",
               "--num-threads", "1"])
    err = capsys.readouterr().err
    assert rc == 130 and "lramlab eval: interrupted" in err
    assert len(calls) < 10  # stopped at the next step, not after the 100-step episode
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back as it was
    signal.signal(signal.SIGINT, before)


def test_pipeline_json_is_strict_and_keeps_other_notebooks(tmp_path):
    """pipeline.json: a NaN metric is written as null (bare NaN is not JSON), and an `--only` run
    keeps the records of the notebooks it did not run."""
    from lramlab.pipeline import NotebookRun, PipelineResult, _write_summary

    path = tmp_path / "pipeline.json"
    first = PipelineResult(str(tmp_path), [NotebookRun("01_data_prep", "ran", 1.0, "a.ipynb", {"x": 1.0})],
                           1.0, "python3", False, None)
    _write_summary(path, first)
    second = PipelineResult(str(tmp_path), [NotebookRun("02_training", "ran", 2.0, "b.ipynb",
                                                        {"loss": float("nan"), "ppl": math.inf})],
                            2.0, "python3", False, None)
    _write_summary(path, second)
    rec = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"bare {c} in pipeline.json"))
    runs = {r["name"]: r for r in rec["runs"]}
    assert set(runs) == {"01_data_prep", "02_training"}
    assert runs["02_training"]["metrics"] == {"loss": None, "ppl": None}
    assert rec["this_run"] == ["02_training"]
