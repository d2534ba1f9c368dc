"""Scripted Composuite / Mimicgen experts (lramlab.collect.robotics) solve seeded episodes of the real
suites through `make_env`, where a random policy does not; `data generate --policy expert` writes them.

CI runs one Panda task per Composuite objective and one Mimicgen Stack_D0, Square_D0 and
NutAssembly_D0 episode; the sweeps (all 64 Panda tasks, 3 episodes per Mimicgen task) are
`exhaustive` (pytest --exhaustive).
"""
from __future__ import annotations

import numpy as np
import pytest

composuite = pytest.importorskip("composuite")
pytest.importorskip("mimicgen")

from lramlab.collect.generate import episode_seed  # noqa: E402
from lramlab.collect.policies import RandomPolicy, bind_policy, make_policy  # noqa: E402
from lramlab.envs import make_env  # noqa: E402


def _episode(task: str, policy_spec: str, seed: int, stop_on_success: bool):
    """(success at the last step, success at any step, steps) for one seeded episode."""
    env = make_env(task, seed=seed)
    try:
        if policy_spec == "random":
            pol = RandomPolicy("continuous", env.action_space.shape[0])
        else:
            pol = make_policy(policy_spec, task)
        bind_policy(pol, env)
        obs, _ = env.reset(seed=seed)
        pol.reset(seed)
        ever, t = False, 0
        while True:
            obs, _r, term, trunc, info = env.step(pol.act(obs))
            t += 1
            ever = ever or bool(info["success"])
            if term or trunc or (stop_on_success and ever):
                break
        return bool(info["success"]), ever, t
    finally:
        env.close()


@pytest.mark.slow
@pytest.mark.parametrize("task", ["composuite/Panda_Box_None_PickPlace", "composuite/Panda_Box_None_Push",
                                  "composuite/Panda_Box_None_Shelf", "composuite/Panda_Box_None_Trashcan"])
def test_composuite_expert_solves_each_objective(task):
    seed = episode_seed(0, 0)
    end, ever, t = _episode(task, "expert", seed, stop_on_success=True)
    assert end and ever, f"{task}: expert did not succeed in {t} steps"
    assert t < 500


@pytest.mark.slow
@pytest.mark.parametrize("task", ["composuite/Panda_Box_GoalWall_PickPlace",
                                  "composuite/Panda_Hollowbox_ObjectDoor_PickPlace"])
def test_composuite_expert_passes_goal_wall_and_object_door(task):
    """Over the wall between the bins; reaching over the door frame (down to the object behind it
    and back out) without the arm folding back into the frame."""
    end, ever, t = _episode(task, "expert", episode_seed(0, 0), stop_on_success=True)
    assert end and ever, f"{task}: expert did not succeed in {t} steps"


@pytest.mark.slow
def test_composuite_expert_topples_the_dumbbell_and_carries_it_by_the_handle():
    """A dumbbell's disks hide its handle from above: the expert pushes it over at its top disk, grasps
    the handle lying between the disks and places it in bin 2."""
    task = "composuite/Panda_Dumbbell_None_PickPlace"
    seed = episode_seed(0, 0)
    env = make_env(task, seed=seed)
    try:
        pol = make_policy("expert", task)
        bind_policy(pol, env)
        obs, _ = env.reset(seed=seed)
        pol.reset(seed)
        phases, ever, t = [], False, 0
        while not ever and t < 500:
            obs, _r, term, trunc, info = env.step(pol.act(obs))
            t += 1
            ever = bool(info["success"])
            name = pol.phases[min(pol.phase_i, len(pol.phases) - 1)].name
            if not phases or phases[-1] != name:
                phases.append(name)
            if term or trunc:
                break
        assert ever, f"{task}: expert did not succeed in {t} steps (phases {phases})"
        assert "tip-push" in phases and phases.index("tip-push") < phases.index("grasp")
        assert not pol.upright(0.7)  # carried lying, by the handle
        m, d = pol.m_d()
        assert abs(float(d.xpos[pol.rs.obj_body_id][2] - pol.arm.pos()[2])) < 0.03
    finally:
        env.close()


@pytest.mark.slow
def test_composuite_random_policy_fails():
    end, ever, t = _episode("composuite/Panda_Box_None_PickPlace", "random", episode_seed(0, 0), False)
    assert t == 500 and not ever


@pytest.mark.parametrize("task,episode,horizon", [
    ("mimicgen/Stack_D0", 0, 400),
    # the suite's own check: the nut around the square peg, below table + 5 cm, the gripper off it
    pytest.param("mimicgen/Square_D0", 1, 400, marks=pytest.mark.slow),
    # both nuts, each on its own peg (Sawyer)
    pytest.param("mimicgen/NutAssembly_D0", 2, 500, marks=pytest.mark.slow),
])
def test_mimicgen_expert_solves_and_random_does_not(task, episode, horizon):
    from lramlab.collect.policies import default_policy

    assert default_policy("mimicgen", task.split("/")[1]) == "expert"
    seed = episode_seed(0, episode)
    end, ever, t = _episode(task, "expert", seed, stop_on_success=False)
    assert end, f"{task}: expert ended without success after {t} steps"
    assert t < horizon  # Mimicgen episodes end on success
    end_r, ever_r, t_r = _episode(task, "random", seed, stop_on_success=False)
    assert not ever_r and t_r == horizon


def test_expert_noise_changes_actions_and_stays_in_range():
    env = make_env("mimicgen/Stack_D0", seed=3)
    try:
        acts = {}
        for spec in ("expert", "expert:noise=0.3"):
            pol = make_policy(spec, "mimicgen/Stack_D0")
            bind_policy(pol, env)
            obs, _ = env.reset(seed=3)
            pol.reset(3)
            acts[spec] = np.stack([pol.act(obs) for _ in range(3)])
        assert np.all(np.abs(acts["expert:noise=0.3"]) <= 1.0)
        assert not np.allclose(acts["expert"], acts["expert:noise=0.3"])
    finally:
        env.close()


def test_expert_needs_bind_and_rejects_unknown_tasks():
    pol = make_policy("expert", "mimicgen/Stack_D0")
    with pytest.raises(RuntimeError, match="bind"):
        pol.act(np.zeros(32, np.float32))
    with pytest.raises(ValueError, match="no scripted expert"):
        make_policy("expert", "mimicgen/Coffee_D0")
    with pytest.raises(ValueError, match="noise"):
        make_policy("expert:noise=-1", "mimicgen/Stack_D0")


def test_generate_writes_expert_data_for_mimicgen(tmp_path):
    from lramlab.collect.generate import generate
    from lramlab.data.store import list_episode_files, read_episode

    d = generate("mimicgen/Stack_D0", 1, "expert", tmp_path, seed=0, progress=False)
    files = list_episode_files(d)
    assert len(files) == 1
    ep = read_episode(files[0])
    assert ep["success"][-1] and ep["dones"][-1]  # ends on success
    assert ep["actions"].shape[1] == 7 and np.all(np.abs(ep["actions"]) <= 1.0)
    assert ep["states"].shape[0] == ep["actions"].shape[0] < 400
    # resume: a re-run keeps the file as it is
    before = files[0].stat().st_mtime_ns
    generate("mimicgen/Stack_D0", 1, "expert", tmp_path, seed=0, progress=False)
    assert files[0].stat().st_mtime_ns == before


@pytest.mark.exhaustive
def test_composuite_panda_sweep_mean_success():
    from lramlab.manifests import list_tasks

    tasks = [t.id for t in list_tasks("composuite") if t.name.startswith("Panda_")]
    assert len(tasks) == 64
    succ = [_episode(t, "expert", episode_seed(0, 0), stop_on_success=True)[1] for t in tasks]
    assert np.mean(succ) >= 0.8, [t for t, s in zip(tasks, succ) if not s]


@pytest.mark.exhaustive
@pytest.mark.parametrize("task", ["mimicgen/Stack_D1", "mimicgen/StackThree_D0", "mimicgen/StackThree_D1",
                                  "mimicgen/Square_D0", "mimicgen/NutAssembly_D0"])
def test_mimicgen_expert_sweep(task):
    succ = [_episode(task, "expert", episode_seed(0, i), stop_on_success=False)[0] for i in range(3)]
    assert np.mean(succ) >= 2 / 3, succ
