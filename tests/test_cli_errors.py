"""Errors a user can act on (the rule in `lramlab.cli`'s docstring), `--json [FILE|-]`, and
NaN / inf refused where they enter: configs, `model.step`, the pipeline's params file.

Every bad case found by probing the commands as a hostile user is one parametrized case below:
one line on stderr naming the file / field / value, exit status 2, no traceback (unless --debug).
Data are real Dark-Room histories from the generator; the model file is a real `model.save`.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lramlab.cli import main

TASK = "darkroom/goal-2-0"


@pytest.fixture(scope="module")
def F(tmp_path_factory):
    """Paths for the cases: data, a model file, damaged checkpoints, bad params files."""
    from lramlab.collect.generate import generate
    from lramlab.models import LRAMConfig, build_model

    tmp = tmp_path_factory.mktemp("cli_errors")
    data = tmp / "data"
    generate(TASK, 3, policy="history", out=data, progress=False)
    torch.manual_seed(0)
    model = tmp / "model.pt"
    build_model(LRAMConfig(backbone="dt", size="tiny", context_steps=10)).save(model)
    (tmp / "truncated.pt").write_bytes(model.read_bytes()[:2000])  # a copy cut short
    episode = sorted((data / TASK).glob("episode_*.hdf5"))[0]
    (tmp / "episode.pt").write_bytes(episode.read_bytes())  # an HDF5 file where a checkpoint should be
    (tmp / "emptyrun").mkdir()
    (tmp / "afile").write_text("not a directory")
    (tmp / "bad.yaml").write_text("02_training:\n  steps: 10\n  lr: [1, 2\n")
    (tmp / "bad.json").write_text('{"02_training": {\n  "steps": 10,\n}}\n')
    (tmp / "nan.yaml").write_text("02_training:\n  steps: 10\n  lr: .nan\n")
    (tmp / "type.yaml").write_text("02_training:\n  lr: 0.001\n  steps: abc\n")
    (tmp / "name.yaml").write_text("02_training:\n  lr: 0.001\n\n  stepz: 10\n")
    (tmp / "nb.yaml").write_text("# comment\n99_foo:\n  steps: 10\n")
    return type("F", (), {"tmp": tmp, "data": data, "model": model, "episode": episode})


TRAIN = ["--backbone", "dt", "--size", "tiny", "--steps", "2", "--batch-size", "2", "--context", "10", "--no-amp",
         "--device", "cpu", "--no-progress", "--num-threads", "1", "--no-tensorboard"]

# (id, argv from the fixture, substrings the one line must hold)
CASES = [
    ("train-no-data", lambda f: ["train", "--data", f"{f.tmp}/nope", "--out", f"{f.tmp}/o1", *TRAIN],
     ["lramlab train: error:", "/nope", "does not exist"]),
    ("train-lr-inf", lambda f: ["train", "--data", str(f.data), "--out", f"{f.tmp}/o2", *TRAIN, "--lr", "inf"],
     ["TrainConfig.lr=inf", "finite"]),
    ("train-lr-nan", lambda f: ["train", "--data", str(f.data), "--out", f"{f.tmp}/o2", *TRAIN, "--lr", "nan"],
     ["TrainConfig.lr=nan", "finite"]),
    ("train-betas-nan", lambda f: ["train", "--data", str(f.data), "--out", f"{f.tmp}/o2", *TRAIN, "--betas", "nan",
                                   "0.9"], ["betas=(nan, 0.9)"]),
    ("train-steps-word", lambda f: ["train", "--data", str(f.data), "--out", f"{f.tmp}/o2", *TRAIN, "--steps", "abc"],
     ["--steps", "'abc'"]),
    ("train-bad-backbone", lambda f: ["train", "--data", str(f.data), "--out", f"{f.tmp}/o3", *TRAIN, "--backbone",
                                      "foo"], ["backbone='foo'", "xlstm, mamba, dt"]),
    ("train-n-heads", lambda f: ["train", "--data", str(f.data), "--out", f"{f.tmp}/o3", *TRAIN, "--n-heads", "3"],
     ["n_heads=3", "d_model=64"]),
    ("train-out-is-file", lambda f: ["train", "--data", str(f.data), "--out", f"{f.tmp}/afile", *TRAIN],
     ["afile", "not a directory"]),
    ("train-seed-negative", lambda f: ["train", "--data", str(f.data), "--out", f"{f.tmp}/o3", *TRAIN, "--seed", "-1"],
     ["seed=-1", ">= 0"]),
    ("train-batch-beyond-memory", lambda f: ["train", "--data", str(f.data), "--out", f"{f.tmp}/o3", *TRAIN,
                                             "--batch-size", "1000000000"], ["batch_size=1000000000", "GiB"]),
    ("train-unknown-task", lambda f: ["train", "--data", str(f.data), "--out", f"{f.tmp}/o4", *TRAIN, "--tasks",
                                      "goal-9-9"], ["goal-9-9", "not in the data"]),
    ("train-finetune-damaged", lambda f: ["train", "--data", str(f.data), "--out", f"{f.tmp}/o5", *TRAIN,
                                          "--finetune-from", f"{f.tmp}/truncated.pt"], ["truncated.pt", "could not be read"]),
    ("eval-truncated-checkpoint", lambda f: ["eval", "--checkpoint", f"{f.tmp}/truncated.pt", "--tasks", TASK],
     ["lramlab eval: error:", "truncated.pt", "could not be read"]),
    ("eval-hdf5-as-checkpoint", lambda f: ["eval", "--checkpoint", f"{f.tmp}/episode.pt", "--tasks", TASK],
     ["episode.pt", "could not be read"]),
    ("eval-empty-run-dir", lambda f: ["eval", "--checkpoint", f"{f.tmp}/emptyrun", "--tasks", TASK],
     ["emptyrun", "neither checkpoints/last.pt nor model.pt"]),
    ("eval-missing-checkpoint", lambda f: ["eval", "--checkpoint", f"{f.tmp}/nope.pt", "--tasks", TASK],
     ["nope.pt", "does not exist"]),
    ("eval-target-nan", lambda f: ["eval", "--checkpoint", str(f.model), "--tasks", TASK, "--target",
                                   "nan"], ["target=nan"]),
    ("eval-target-inf", lambda f: ["eval", "--checkpoint", str(f.model), "--tasks", TASK, "--target",
                                   "inf"], ["target=inf"]),
    ("eval-seed-negative", lambda f: ["eval", "--checkpoint", str(f.model), "--tasks", TASK, "--seed", "-3"],
     ["seed=-3"]),
    ("eval-unknown-task", lambda f: ["eval", "--checkpoint", str(f.model), "--tasks", "darkroom/goal-99-0"],
     ["'darkroom/goal-99-0'", "did you mean"]),
    ("icl-target-return-inf", lambda f: ["icl", "--checkpoint", str(f.model), "--target-return", "inf", "--out",
                                         f"{f.tmp}/icl"], ["target_return=inf"]),
    ("icl-damaged-checkpoint", lambda f: ["icl", "--checkpoint", f"{f.tmp}/truncated.pt", "--out", f"{f.tmp}/icl",
                                          "--no-progress"], ["truncated.pt", "could not be read"]),
    ("check-missing-dir", lambda f: ["data", "check", f"{f.tmp}/nope"], ["lramlab data check: error:", "/nope"]),
    ("import-missing-src", lambda f: ["data", "import", "native", f"{f.tmp}/nope", "--task", TASK, "--out",
                                      f"{f.tmp}/imp"], ["/nope", "not a directory"]),
    ("import-max-episodes-0", lambda f: ["data", "import", "native", str(f.data / TASK), "--task", TASK, "--out",
                                         f"{f.tmp}/imp", "--max-episodes", "0"], ["--max-episodes must be >= 1", "got 0"]),
    ("import-not-hdf5", lambda f: ["data", "import", "robomimic", f"{f.tmp}/afile", "--task", "robosuite/lift",
                                   "--out", f"{f.tmp}/imp", "--no-progress"], ["afile", "cannot be opened as HDF5"]),
    ("generate-max-steps-0", lambda f: ["data", "generate", "--task", TASK, "--episodes", "1", "--out",
                                        f"{f.tmp}/gen", "--max-steps", "0", "--no-progress"], ["--max-steps", "got 0"]),
    ("generate-max-steps-history", lambda f: ["data", "generate", "--task", TASK, "--episodes", "1", "--out",
                                              f"{f.tmp}/gen", "--max-steps", "5", "--no-progress"],
     ["--max-steps 5", "learning history"]),
    ("generate-seed-negative", lambda f: ["data", "generate", "--task", TASK, "--episodes", "1", "--out",
                                          f"{f.tmp}/gen", "--seed", "-5"], ["--seed must be >= 0", "-5"]),
    ("generate-unknown-task", lambda f: ["data", "generate", "--task", "foo/bar", "--episodes", "1", "--out",
                                         f"{f.tmp}/gen"], ["'foo/bar'"]),
    ("pack-missing-dir", lambda f: ["data", "pack", f"{f.tmp}/nope"], ["/nope"]),
    ("bench-data-nan-rate", lambda f: ["bench", "data", "--data", str(f.data), "--updates-per-s", "nan"],
     ["--updates-per-s", "nan"]),
    ("bench-data-zero-windows", lambda f: ["bench", "data", "--data", str(f.data), "--windows", "0"],
     ["--windows", "got 0"]),
    ("bench-latency-inf-cap", lambda f: ["bench", "latency", "--max-state-gb", "inf"], ["--max-state-gb", "'inf'"]),
    ("bench-latency-json-dir", lambda f: ["bench", "latency", "--backbones", "dt", "--sizes", "tiny", "--json",
                                          str(f.tmp)], ["cli_errors", "--json: a directory"]),
    ("tasks-missing-manifests", lambda f: ["tasks", "--manifests", f"{f.tmp}/nope"], ["/nope", "manifest directory"]),
    ("pipeline-bad-yaml", lambda f: ["pipeline", "--params", f"{f.tmp}/bad.yaml", "--out", f"{f.tmp}/p"],
     ["bad.yaml:4", "not valid YAML"]),
    ("pipeline-bad-json", lambda f: ["pipeline", "--params", f"{f.tmp}/bad.json", "--out", f"{f.tmp}/p"],
     ["bad.json:3", "not valid JSON"]),
    ("pipeline-nan", lambda f: ["pipeline", "--params", f"{f.tmp}/nan.yaml", "--out", f"{f.tmp}/p"],
     ["nan.yaml:3", "02_training.lr=nan", "finite"]),
    ("pipeline-wrong-type", lambda f: ["pipeline", "--params", f"{f.tmp}/type.yaml", "--out", f"{f.tmp}/p", "--only",
                                       "02"], ["type.yaml:3", "02_training.steps='abc'", "expected int"]),
    ("pipeline-unknown-parameter", lambda f: ["pipeline", "--params", f"{f.tmp}/name.yaml", "--out", f"{f.tmp}/p",
                                              "--only", "02"], ["name.yaml:4", "['stepz']"]),
    ("pipeline-unknown-notebook", lambda f: ["pipeline", "--params", f"{f.tmp}/nb.yaml", "--out", f"{f.tmp}/p"],
     ["nb.yaml:2", "'99_foo'"]),
]


def _rc(argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:  # argparse and config values rejected at parse time
        return e.code


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_user_error_is_one_line_naming_what_is_wrong(F, case, capsys):
    _, argv, expect = case
    rc = _rc(argv(F))
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("lramlab ") and ": error: " in lines[0], err
    for part in expect:
        assert part in lines[0], (part, lines[0])
    assert "Traceback" not in err


def test_debug_and_env_show_the_traceback(F, capsys, monkeypatch):
    assert main(["--debug", "data", "check", f"{F.tmp}/nope"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().splitlines()[-1].startswith(
        "lramlab data check: error:")
    assert "LRAMLAB_DEBUG" not in os.environ  # set only while the command ran
    assert main(["eval", "--checkpoint", f"{F.tmp}/truncated.pt", "--tasks", TASK, "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err  # --debug after the command works too
    monkeypatch.setenv("LRAMLAB_DEBUG", "1")
    assert main(["data", "check", f"{F.tmp}/nope"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_a_bug_keeps_its_traceback_and_says_so(monkeypatch, capsys):
    from lramlab.envs import tasks_cli

    def broken(*a, **k):
        return np.reshape(np.zeros(3), (2, 2))  # a ValueError, but raised inside numpy: a bug

    monkeypatch.setattr(tasks_cli, "list_tasks", broken)
    assert main(["tasks"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "cannot reshape" in err and "this is a bug in lramlab" in err
    with pytest.raises(ValueError, match="cannot reshape"):  # a direct call lets it through
        tasks_cli.main([])


def test_the_rule(tmp_path):
    from lramlab._dataclass_cli import is_user_error
    from lramlab.manifests import get_task
    from lramlab.train import TrainConfig
    from lramlab.train.checkpoint import CheckpointError, load_checkpoint

    def caught(fn):
        try:
            fn()
        except BaseException as err:  # noqa: BLE001
            return err
        raise AssertionError("no error")

    user = [lambda: open(tmp_path / "nope"), lambda: get_task("darkroom/goal-99-0"),
            lambda: TrainConfig(data=("x",), lr=-1.0), lambda: load_checkpoint(tmp_path / "nope.pt")]
    bugs = [lambda: {}["k"], lambda: json.loads("{"), lambda: torch.zeros(2) @ torch.zeros(3), lambda: None + 1,
            lambda: TrainConfig(data=("x",), bogus=1)]
    assert [is_user_error(caught(f)) for f in user] == [True] * len(user)
    assert [is_user_error(caught(f)) for f in bugs] == [False] * len(bugs)
    assert isinstance(caught(user[3]), CheckpointError) and is_user_error(MemoryError())


# ----------------------------------------------------------------------------- --json
def _json_cases(f):
    return [
        ["tasks", "--domain", "darkroom", "--split", "holdout"],
        ["data", "check", str(f.data)],
        ["data", "generate", "--task", "darkroom/goal-3-1", "--episodes", "2", "--out", str(f.tmp / "gen_json"),
         "--no-progress"],
        ["data", "import", "native", str(f.data / TASK), "--task", TASK, "--out", str(f.tmp / "imp_json"),
         "--no-progress"],
        ["data", "pack", str(f.data)],
        ["train", "--data", str(f.data), "--out", str(f.tmp / "run_json"), *TRAIN],
        ["eval", "--checkpoint", str(f.model), "--tasks", TASK, "--episodes", "1"],
        ["icl", "--checkpoint", str(f.model), "--eval-goals", "darkroom/goal-9-0", "--trials", "1", "--out",
         str(f.tmp / "icl_json"), "--no-progress", "--device", "cpu"],
        ["bench", "latency", "--backbones", "dt", "--sizes", "tiny", "--contexts", "3", "--batch-sizes", "1", "--reps",
         "2", "--warmup", "0", "--threads", "1", "--no-reference"],
        ["bench", "data", "--data", str(f.data), "--batch-size", "2", "--windows", "4", "--layout", "episode"],
        ["pipeline", "--list"],
    ]


def test_json_dash_is_the_only_thing_on_stdout(F, capfd):
    """Every command: `--json -` leaves exactly one JSON document on file descriptor 1 (what a
    shell pipe sees); the text each command prints otherwise goes to stderr."""
    for argv in _json_cases(F):
        assert main([*argv, "--json", "-"]) == 0, argv
        out, err = capfd.readouterr()
        doc = json.loads(out)  # the whole of stdout
        assert doc, argv
    # the text went to stderr, e.g. bench latency's table row and the import summary line
    assert main(["bench", "latency", "--backbones", "dt", "--sizes", "tiny", "--contexts", "3", "--batch-sizes", "1",
                 "--reps", "2", "--warmup", "0", "--threads", "1", "--no-reference", "--json"]) == 0
    out, err = capfd.readouterr()
    assert json.loads(out)["rows"][0]["backbone"] == "dt" and "median" in err


def test_json_file_and_the_text_on_stdout(F, capfd, tmp_path):
    dest = tmp_path / "check.json"
    assert main(["data", "check", str(F.data), "--json", str(dest)]) == 0
    out, _ = capfd.readouterr()
    assert json.loads(dest.read_text())["ok"] is True and "valid episodes" in out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # written atomically, no tmp left
    assert main(["data", "check", str(F.data), "--json", str(tmp_path / "no" / "such" / "x.json")]) == 2
    assert "its directory does not exist" in capfd.readouterr().err


def test_bench_latency_json_dash_in_a_real_process(tmp_path):
    """The issue's case, through the console entry point in its own process."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", "lramlab.cli", "bench", "latency", "--backbones", "dt", "--sizes",
                           "tiny", "--contexts", "3", "--batch-sizes", "1", "--reps", "2", "--warmup", "0",
                           "--threads", "1", "--no-reference", "--json", "-"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["rows"][0]["context_steps"] == 3 and "median" in proc.stderr


# ----------------------------------------------------------------------------- NaN / inf at the door
@pytest.mark.parametrize("make,field", [
    (lambda: __import__("lramlab.train", fromlist=["x"]).TrainConfig(data=("x",), lr=math.inf), "TrainConfig.lr=inf"),
    (lambda: __import__("lramlab.train", fromlist=["x"]).TrainConfig(data=("x",), grad_clip=math.inf),
     "TrainConfig.grad_clip=inf"),
    (lambda: __import__("lramlab.train", fromlist=["x"]).TrainConfig(data=("x",), steps="10"),
     "TrainConfig.steps='10': expected an integer"),
    (lambda: __import__("lramlab.models", fromlist=["x"]).LRAMConfig(norm_eps=math.nan), "LRAMConfig.norm_eps=nan"),
    (lambda: __import__("lramlab.models", fromlist=["x"]).LRAMConfig(mlstm_proj_factor=math.inf),
     "LRAMConfig.mlstm_proj_factor=inf"),
    (lambda: __import__("lramlab.evaluate", fromlist=["x"]).EvalConfig(checkpoint="c", target=math.nan),
     "EvalConfig.target=nan"),
    (lambda: __import__("lramlab.icl", fromlist=["x"]).ICLConfig(checkpoint="c", target_return=math.inf),
     "ICLConfig.target_return=inf"),
    (lambda: __import__("lramlab.icl", fromlist=["x"]).ICLConfig(checkpoint="c", lr=math.nan), "ICLConfig.lr=nan"),
])
def test_configs_refuse_non_finite_and_wrong_types(make, field):
    with pytest.raises(ValueError) as exc:
        make()
    assert field in str(exc.value)


@pytest.mark.parametrize("backbone", ["dt", "mamba"])  # a KV cache and a recurrent state
def test_model_step_refuses_non_finite_inputs_and_keeps_its_state(backbone):
    from lramlab.models import LRAMConfig, build_model

    torch.manual_seed(0)
    model = build_model(LRAMConfig(backbone=backbone, size="tiny", context_steps=10)).eval()
    obs = torch.randn(2, 5)
    state = model.init_state(2)
    _, state = model.step(state, obs=obs, rtg=torch.tensor([3.0, 2.0]))
    bad = [dict(obs=torch.tensor([[0.0, 1, 2, 3, 4], [0, 1, math.nan, 3, 4]]), rtg=1.0, prev_reward=0.0),
           dict(obs=obs, rtg=torch.tensor([1.0, math.inf]), prev_reward=0.0),
           dict(obs=obs, rtg=1.0, prev_reward=np.array([-math.inf, 0.0], dtype=np.float32))]
    names = ["obs is nan at index (1, 2)", "rtg is inf at index (1, 0)", "prev_reward is -inf at index (0, 0)"]
    for kw, name in zip(bad, names):
        with pytest.raises(ValueError, match=rf"step: {name.replace('(', '[(]').replace(')', '[)]')}"):
            model.step(state, **kw)
    assert state.steps == 1  # refused before the state moved
    # the state is not poisoned: the next step equals a twin that never saw the bad inputs
    twin = model.init_state(2)
    _, twin = model.step(twin, obs=obs, rtg=torch.tensor([3.0, 2.0]))
    a, _ = model.step(state, obs=obs, rtg=1.0, prev_reward=0.5)
    b, _ = model.step(twin, obs=obs, rtg=1.0, prev_reward=0.5)
    assert torch.isfinite(a).all() and torch.equal(a, b)


def test_icl_refuses_to_overwrite_its_results(F, tmp_path):
    from lramlab.icl import ICLConfig, run_icl

    cfg = dict(checkpoint=str(F.model), eval_goals="darkroom/goal-9-0", trials=1, out=str(tmp_path), progress=False,
               device="cpu")
    run_icl(ICLConfig(**cfg))
    before = (tmp_path / "icl.json").read_bytes()
    with pytest.raises(ValueError, match=r"icl\.json exists.*--overwrite"):
        run_icl(ICLConfig(**cfg, seed=1))
    assert (tmp_path / "icl.json").read_bytes() == before
    run_icl(ICLConfig(**cfg, seed=1, overwrite=True))
    assert json.loads((tmp_path / "icl.json").read_text())["config"]["seed"] == 1
