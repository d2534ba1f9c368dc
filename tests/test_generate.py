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
    assert "scripted experts exist for Meta-World, Composuite and Mimicgen" in capsys.readouterr().err
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


# ------------------------------------------------------------------ checkpoints and SB3 specialists


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


def test_ppo_specialist_improves_and_its_data_resumes(tmp_path):
    """SB3 PPO trained briefly on Dark-Room goal (1, 1) beats random; --policy ppo trains once per
    data directory and resumes with the same model; same seed, same weights."""
    import torch

    from lramlab.collect.specialists import read_meta

    cfg = P.PPOConfig(steps=8192, n_envs=4, n_steps=256, batch_size=256, epochs=10, lr=1e-3)
    path = P.train_specialist("darkroom/goal-1-1", tmp_path / "ppo.zip", cfg, progress=False)
    assert P.is_sb3_file(path) and not list(tmp_path.glob(".*.tmp"))
    meta = read_meta(path)
    assert meta["algorithm"] == "ppo" and meta["task"] == "darkroom/goal-1-1" and meta["config"]["steps"] == 8192
    log = meta["episode_returns"]
    assert len(log) == 80 and np.mean(log[-10:]) > np.mean(log[:10]) + 10  # it learned while training
    d = generate("darkroom/goal-1-1", 6, f"checkpoint:{path}", tmp_path / "trained", progress=False)
    r = generate("darkroom/goal-1-1", 6, "random", tmp_path / "random", progress=False)
    trained = [e["rewards"].sum() for e in _arrays(d)]
    rand = [e["rewards"].sum() for e in _arrays(r)]
    assert np.mean(trained) > np.mean(rand) + 20, (trained, rand)
    assert json.loads((d / "meta.json").read_text())["policy_config"] == {
        "kind": "sb3", "algorithm": "ppo", "deterministic": False}
    # sampled actions come from the policy's own seeded stream: the same seeds give the same data
    d_again = generate("darkroom/goal-1-1", 6, f"checkpoint:{path}", tmp_path / "again", progress=False)
    assert _same(_arrays(d), _arrays(d_again))
    greedy = P.SB3Policy.load(path, "darkroom/goal-1-1", deterministic=True)
    assert greedy.config()["deterministic"]

    # --policy ppo:... trains into the task dir once (seeded by the run's seed) and reuses it
    spec = "ppo:steps=512,n_envs=2,n_steps=128,batch_size=64,epochs=1"
    d2 = generate("darkroom/goal-1-1", 2, spec, tmp_path / "p", seed=0, progress=False)
    ckpt = d2 / "ppo_specialist.zip"
    stamp = ckpt.stat().st_mtime_ns
    generate("darkroom/goal-1-1", 3, spec, tmp_path / "p", seed=0, progress=False)
    assert ckpt.stat().st_mtime_ns == stamp and check_dataset(tmp_path / "p").ok
    pc = json.loads((d2 / "meta.json").read_text())["policy_config"]
    assert pc["algorithm"] == "ppo" and pc["ppo"]["steps"] == 512 and pc["ppo"]["seed"] == 0
    # the same config and seed trained again gives the same weights
    again = P.train_specialist("darkroom/goal-1-1", tmp_path / "again.zip",
                               P.PPOConfig(steps=512, n_envs=2, n_steps=128, batch_size=64, epochs=1, seed=0),
                               progress=False)
    a = P.SB3Policy.load(ckpt).model.policy.state_dict()
    b = P.SB3Policy.load(again).model.policy.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sac_specialist_on_a_dmcontrol_task(tmp_path):
    """``specialist`` picks SAC for continuous actions; its data is valid and reproducible."""
    spec = "specialist:steps=200,learning_starts=100,batch_size=32,hidden=32"
    args = dict(episodes=2, policy=spec, seed=1, progress=False, max_steps=40)
    d = generate("dmcontrol/cartpole-balance", out=tmp_path / "a", **args)
    eps = _arrays(d)
    assert eps[0]["actions"].shape == (40, 1) and eps[0]["actions"].dtype == np.float32
    assert np.abs(eps[0]["actions"]).max() <= 1 and not np.array_equal(eps[0]["actions"], eps[1]["actions"])
    assert (d / "sac_specialist.zip").is_file() and check_dataset(tmp_path / "a").ok
    pc = json.loads((d / "meta.json").read_text())["policy_config"]
    assert pc["algorithm"] == "sac" and pc["sac"]["hidden"] == 32 and pc["sac"]["seed"] == 1
    d_b = generate("dmcontrol/cartpole-balance", out=tmp_path / "b", **args)  # trained again, same seed
    assert _same(eps, _arrays(d_b))
    # the deterministic policy takes the mode: the same observation, the same action, whatever the seed
    pol = P.SB3Policy.load(d / "sac_specialist.zip", "dmcontrol/cartpole-balance", deterministic=True)
    obs = eps[0]["states"][5]
    pol.reset(0)
    a0 = pol.act(obs)
    pol.reset(99)
    assert np.array_equal(a0, pol.act(obs))


def test_dqn_specialist_and_cnn_policy_on_images(tmp_path):
    from lramlab.collect.specialists import read_meta

    d = generate("darkroom/goal-2-0", 2, "dqn:steps=300,learning_starts=50,deterministic=1", tmp_path / "dqn",
                 progress=False)
    eps = _arrays(d)
    assert np.array_equal(eps[0]["actions"], eps[1]["actions"])  # greedy Q in a deterministic room
    assert read_meta(d / "dqn_specialist.zip")["algorithm"] == "dqn"
    # images (1, 64, 64) uint8 are channel-first images to SB3: PPO gets its CnnPolicy
    d2 = generate("atari/pong", 1, "ppo:steps=64,n_envs=1,n_steps=64,batch_size=32,epochs=1", tmp_path / "img",
                  progress=False, max_steps=20)
    ep = _arrays(d2)[0]
    assert ep["states"].shape == (20, 1, 64, 64) and ep["states"].dtype == np.uint8 and ep["actions"].max() < 18
    pol = P.SB3Policy.load(d2 / "ppo_specialist.zip", "atari/pong")
    assert type(pol.model.policy).__name__ == "ActorCriticCnnPolicy"


def test_specialist_specs_and_checkpoints_are_checked(tmp_path):
    from stable_baselines3 import A2C

    from lramlab.collect.specialists import parse_specialist_spec

    assert parse_specialist_spec("specialist", "specialist", "", "darkroom/goal-1-1")[0] == "ppo"
    algo, cfg = parse_specialist_spec("specialist:steps=10", "specialist", "steps=10", "metaworld/reach-v2", seed=3)
    assert algo == "sac" and isinstance(cfg, P.SACConfig) and cfg.steps == 10 and cfg.seed == 3
    with pytest.raises(ValueError, match="SAC needs continuous actions"):
        P.make_policy("sac", "darkroom/goal-1-1", tmp_path)
    with pytest.raises(ValueError, match="DQN needs discrete actions"):
        P.make_policy("dqn", "metaworld/reach-v2", tmp_path)
    with pytest.raises(ValueError, match="batch_size=48 must be >= 2 and divide n_envs\\*n_steps=512"):
        P.make_policy("ppo:batch_size=48,n_envs=4,n_steps=128", "darkroom/goal-1-1", tmp_path)
    with pytest.raises(ValueError, match="bad option 'bogus=1'"):
        P.make_policy("ppo:bogus=1", "darkroom/goal-1-1", tmp_path)
    with pytest.raises(ValueError, match="needs a work_dir"):
        P.make_policy("ppo", "darkroom/goal-1-1")
    # an SB3 model saved by SB3 itself (no lramlab entry): its algorithm is read from the file
    from lramlab.envs import make_env

    model = A2C("MlpPolicy", make_env("darkroom/goal-1-1"), n_steps=5, seed=0, device="cpu")
    model.learn(10)
    model.save(tmp_path / "a2c.zip")
    pol = P.load_checkpoint_policy(tmp_path / "a2c.zip", "darkroom/goal-1-1")
    assert pol.config()["algorithm"] == "a2c" and isinstance(pol.act(np.zeros(2, np.float32)), int)
    with pytest.raises(ValueError, match="observes shape \\(2,\\), task metaworld/reach-v2 has obs_shape \\(39,\\)"):
        P.make_policy(f"checkpoint:{tmp_path / 'a2c.zip'}", "metaworld/reach-v2")
    # a checkpoint of the former hand-written PPO says what to do instead
    import torch

    torch.save({"format": "lramlab-ppo/1", "state_dict": {}}, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="stable-baselines3 models now"):
        P.make_policy(f"checkpoint:{tmp_path / 'old.pt'}", "darkroom/goal-1-1")


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
