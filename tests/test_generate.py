"""`lramlab data generate`: datasets from real simulators, resume after SIGKILL, policies."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lramlab.collect import policies as P
from lramlab.collect.generate import episode_seed, generate, main
from lramlab.data.store import TaskData, check_dataset, list_episode_files


def _arrays(task_dir: Path) -> list[dict]:
    td = TaskData(task_dir)
    return [td.read(i) for i in range(len(td))]


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        set(x) == set(y) and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


def test_history_dataset_layout_meta_stats(tmp_path):
    d = generate("darkroom/goal-6-4", 40, None, tmp_path, seed=3, progress=False)
    assert d == tmp_path / "darkroom" / "goal-6-4"
    assert [p.name for p in list_episode_files(d)] == [f"episode_{i:06d}.hdf5" for i in range(40)]
    meta = json.loads((d / "meta.json").read_text())
    assert meta["task"] == "darkroom/goal-6-4" and meta["policy"] == "history" and meta["seed"] == 3
    assert meta["policy_config"]["explore_episodes"] == 20 and meta["policy_config"]["alpha"] == 0.1
    stats = json.loads((d / "stats.json").read_text())
    assert stats["n_episodes"] == 40 and stats["lengths"] == [100] * 40 and "success_rate" in stats
    rep = check_dataset(tmp_path)
    assert rep.ok and rep.episodes == 40
    # the stored episodes are the learner's, in learning order
    ref = list(P.iter_darkroom_history((6, 4), 40, seed=3))
    got = _arrays(d)
    for e, g in zip(ref, got):
        assert np.array_equal(e["actions"], g["actions"]) and np.array_equal(e["states"], g["states"])
    assert not got[0]["dones"].any()  # truncated, never terminated


def test_per_step_policy_determinism_and_resume(tmp_path):
    a = generate("darkroom/goal-3-3", 6, "random", tmp_path / "a", seed=1, progress=False)
    b = generate("darkroom/goal-3-3", 6, "random", tmp_path / "b", seed=1, progress=False)
    c = generate("darkroom/goal-3-3", 6, "random", tmp_path / "c", seed=2, progress=False)
    ref = _arrays(a)
    assert _same(ref, _arrays(b)) and not _same(ref, _arrays(c))
    # remove an episode and leave a killed write's tmp file: a rerun redoes exactly that episode
    (b / "episode_000003.hdf5").unlink()
    (b / ".episode_000003.hdf5.abc.tmp").write_bytes(b"partial")
    generate("darkroom/goal-3-3", 6, "random", tmp_path / "b", seed=1, progress=False)
    assert _same(ref, _arrays(b)) and not list(b.glob(".*.tmp"))
    # extending the run appends episodes without changing the first ones
    generate("darkroom/goal-3-3", 8, "random", tmp_path / "b", seed=1, progress=False)
    ext = _arrays(b)
    assert len(ext) == 8 and _same(ref, ext[:6])
    # other settings in the same directory are refused, naming the field
    with pytest.raises(ValueError, match="'seed'"):
        generate("darkroom/goal-3-3", 6, "random", tmp_path / "b", seed=5, progress=False)
    with pytest.raises(ValueError, match="'policy'"):
        generate("darkroom/goal-3-3", 6, "history", tmp_path / "b", seed=1, progress=False)


def test_killed_generate_resumes_to_identical_data(tmp_path):
    args = ["--task", "darkroom/goal-8-2", "--episodes", "30", "--seed", "4", "--no-progress"]
    ref_dir = tmp_path / "ref"
    assert main(args + ["--out", str(ref_dir)]) == 0
    ref = _arrays(ref_dir / "darkroom" / "goal-8-2")

    out = tmp_path / "killed"
    task_dir = out / "darkroom" / "goal-8-2"
    cmd = [sys.executable, "-m", "lramlab.cli", "data", "generate", *args, "--out", str(out), "--throttle", "0.1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(list(task_dir.glob("episode_*.hdf5"))) < 5:
            assert proc.poll() is None, "generate finished before it could be killed"
            assert time.monotonic() < deadline, "no episodes appeared"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    n_before = len(list_episode_files(task_dir))
    assert 5 <= n_before < 30
    assert main(args + ["--out", str(out)]) == 0
    got = _arrays(task_dir)
    assert _same(ref, got)
    rep = check_dataset(out)
    assert rep.ok and rep.episodes == 30
    assert json.loads((task_dir / "stats.json").read_text())["returns"] == \
        json.loads((ref_dir / "darkroom" / "goal-8-2" / "stats.json").read_text())["returns"]


def test_episode_seed_depends_on_seed_and_index():
    seeds = {episode_seed(s, i) for s in range(3) for i in range(50)}
    assert len(seeds) == 150 and episode_seed(0, 7) == episode_seed(0, 7)


def test_cli_errors_are_reported(tmp_path, capsys):
    assert main(["--task", "darkroom/goal-77-1", "--episodes", "2", "--out", str(tmp_path)]) == 2
    assert main(["--task", "darkroom/goal-1-1", "--episodes", "2", "--out", str(tmp_path),
                 "--policy", "expert"]) == 2
    assert "Meta-World only" in capsys.readouterr().err
    assert main(["--task", "darkroom/goal-1-1", "--episodes", "2", "--out", str(tmp_path),
                 "--policy", "noisy:0.2"]) == 2
    assert "inner policy" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown policy 'bogus'"):
        P.parse_spec("bogus:1")


def test_task_glob_generates_several_tasks(tmp_path):
    assert main(["--task", "darkroom/goal-9-?", "--episodes", "2", "--out", str(tmp_path), "--no-progress",
                 "--policy", "history:explore_episodes=1"]) == 0
    rep = check_dataset(tmp_path)
    assert rep.ok and len(rep.tasks) == 10


# ------------------------------------------------------------------ checkpoints and PPO


def test_module_checkpoint_policy(tmp_path):
    import torch

    net = torch.nn.Linear(2, 5)  # obs (x, y) -> logits; always "right"
    with torch.no_grad():
        net.weight.zero_()
        net.bias.copy_(torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0]))
    path = tmp_path / "right.pt"
    torch.save(net, path)
    d = generate("darkroom/goal-9-0", 2, f"checkpoint:{path}", tmp_path / "data", progress=False)
    eps = _arrays(d)
    assert all((e["actions"] == 1).all() and e["rewards"].sum() == 92 for e in eps)  # 101 - 9
    with pytest.raises(FileNotFoundError):
        P.make_policy(f"checkpoint:{tmp_path / 'nope.pt'}", "darkroom/goal-9-0")


def test_ppo_discrete_specialist_and_checkpoint(tmp_path):
    cfg = P.PPOConfig(steps=1024, n_envs=2, n_steps=128, epochs=2)
    path = P.train_ppo("darkroom/goal-1-1", tmp_path / "ppo.pt", cfg, progress=False)
    import torch

    ck = torch.load(path, weights_only=False)
    assert ck["format"] == P.PPO_FORMAT and ck["action_kind"] == "discrete" and len(ck["episode_returns"]) == 10
    d = generate("darkroom/goal-1-1", 3, f"checkpoint:{path}", tmp_path / "data", progress=False)
    assert check_dataset(tmp_path / "data").ok
    meta = json.loads((d / "meta.json").read_text())
    assert meta["policy_config"] == {"kind": "ppo", "greedy": False}
    # --policy ppo:... trains a specialist into the task dir once and reuses it on resume
    spec = "ppo:steps=256,n_envs=2,n_steps=128,epochs=1"
    d2 = generate("darkroom/goal-1-1", 2, spec, tmp_path / "p", progress=False)
    ckpt = d2 / "ppo_specialist.pt"
    stamp = ckpt.stat().st_mtime_ns
    generate("darkroom/goal-1-1", 3, spec, tmp_path / "p", progress=False)
    assert ckpt.stat().st_mtime_ns == stamp and check_dataset(tmp_path / "p").ok
    assert json.loads((d2 / "meta.json").read_text())["policy_config"]["ppo"]["steps"] == 256
    # same training seed -> same weights
    path2 = P.train_ppo("darkroom/goal-1-1", tmp_path / "ppo2.pt", cfg, progress=False)
    ck2 = torch.load(path2, weights_only=False)
    assert all(torch.equal(ck["state_dict"][k], ck2["state_dict"][k]) for k in ck["state_dict"])


def test_ppo_continuous_on_pendulum(tmp_path):
    import gymnasium as gym
    from gymnasium.wrappers import RescaleAction

    def env_fn(seed):
        return RescaleAction(gym.make("Pendulum-v1", max_episode_steps=100), -1.0, 1.0)

    cfg = P.PPOConfig(steps=512, n_envs=2, n_steps=128, epochs=1)
    path = P.train_ppo("control/pendulum", tmp_path / "ppo.pt", cfg, env_fn=env_fn, progress=False)
    pol = P.load_checkpoint_policy(path, "control/pendulum")
    pol.reset(0)
    a = pol.act(np.zeros(3, np.float32))
    assert a.shape == (1,) and a.dtype == np.float32 and -1 <= a[0] <= 1
    pol.reset(0)
    assert np.array_equal(a, pol.act(np.zeros(3, np.float32)))  # seeded sampling


def test_noisy_wrapper_changes_some_actions():
    inner = P.RandomPolicy("discrete", 5)
    always4 = type("Always4", (P.Policy,), {"act": lambda self, obs: 4, "spec": "four"})()
    pol = P.NoisyPolicy(always4, 0.3, "discrete", 5)
    pol.reset(0)
    acts = np.array([pol.act(None) for _ in range(2000)])
    frac_random = (acts != 4).mean()  # random actions that are not 4: 0.3 * 4/5
    assert 0.2 < frac_random < 0.28
    with pytest.raises(ValueError, match="eps"):
        P.NoisyPolicy(inner, 1.5, "discrete", 5)


# ------------------------------------------------------------------ Meta-World scripted experts

MW_TASKS = ["reach-v2", "push-v2", "door-open-v2", "drawer-close-v2", "button-press-topdown-v2"]


@pytest.mark.slow
def test_metaworld_experts_succeed():
    from lramlab.collect.generate import rollout_episode
    from lramlab.envs import make_env

    for name in MW_TASKS:
        env = make_env(f"metaworld/{name}", seed=0)
        pol = P.make_policy("expert", f"metaworld/{name}")
        succ = [rollout_episode(env, pol, episode_seed(0, i))["success"].any() for i in range(10)]
        env.close()
        assert np.mean(succ) >= 0.9, (name, succ)


def test_metaworld_noisy_expert_dataset(tmp_path):
    d = generate("metaworld/reach-v2", 2, "expert:noise=0.3", tmp_path, seed=0, progress=False)
    eps = _arrays(d)
    assert eps[0]["states"].shape == (200, 39) and eps[0]["actions"].shape == (200, 4)
    assert eps[0]["actions"].dtype == np.float32 and np.abs(eps[0]["actions"]).max() <= 1
    assert "success" in eps[0] and check_dataset(tmp_path).ok
    meta = json.loads((d / "meta.json").read_text())
    assert meta["policy"] == "expert:noise=0.3" and meta["policy_config"] == {"noise": 0.3}
    # the expert maps every task name to its scripted policy
    from lramlab.manifests import list_tasks

    for t in list_tasks("metaworld"):
        P.metaworld_policy_class(t.name)


def test_lram_model_checkpoint_policy(tmp_path):
    """An lramlab model checkpoint acts through model.step/decode, conditioned on the target return."""
    import torch

    from lramlab.models import build_model

    torch.manual_seed(0)
    model = build_model(backbone="dt", size="tiny")
    path = tmp_path / "model.pt"
    model.save(path)
    pol = P.make_policy(f"checkpoint:{path}", "darkroom/goal-2-2")
    assert isinstance(pol, P.LRAMPolicy) and pol.target == 82.0  # the manifest's flat Dark-Room target
    d = generate("darkroom/goal-2-2", 2, f"checkpoint:{path}", tmp_path / "data", progress=False)
    eps = _arrays(d)
    assert check_dataset(tmp_path / "data").ok and eps[0]["actions"].max() < 5
    assert np.array_equal(eps[0]["actions"], eps[1]["actions"])  # greedy decoding, deterministic env
    # the return-to-go fed to the model falls with the rewards received
    pol.reset(0)
    pol.act(np.zeros(2, np.float32))
    pol.observe(1.0)
    assert pol.rtg == 81.0 and pol.prev_reward == 1.0
    # Atari: the model's reward rule (clip to [-1, 1]) applies to what the policy feeds the model
    atari = P.make_policy(f"checkpoint:{path}", "atari/asterix")
    atari.reset(0)
    atari.observe(50.0)
    assert atari.rtg == atari.target - 1.0 and atari.prev_reward == 1.0
