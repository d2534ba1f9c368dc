"""The paper's robotics domains on the real suites (robosuite 1.4.1 + Composuite + Mimicgen).

CI runs a sample: one Composuite task per robot, object, obstacle and objective (4 envs), three
Mimicgen tasks (a Panda task, a non-Panda robot, a task-zoo task), robosuite's Wipe (Lift is in
tests/test_envs.py), and the "unavailable" branch in a subprocess whose imports of the suites
fail. Every Composuite and Mimicgen task of the manifests is built and stepped under
`pytest --exhaustive` (docs/results/robotics-envs/exhaustive.json has the last run).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from lramlab.envs import domain_available, make_env, task_available
from lramlab.manifests import get_task, list_tasks

COMPOSUITE_SAMPLE = [  # every robot, object, obstacle and objective once
    "composuite/IIWA_Box_None_PickPlace",
    "composuite/Jaco_Dumbbell_GoalWall_Push",
    "composuite/Kinova3_Plate_ObjectDoor_Shelf",
    "composuite/Panda_Hollowbox_ObjectWall_Trashcan",
]
# Stack_D0 (Panda) is built in the success test below; HammerCleanup_D0 is Panda + the task zoo
MIMICGEN_SAMPLE = ["mimicgen/Threading_D0-UR5e", "mimicgen/HammerCleanup_D0"]
STACK = "mimicgen/Stack_D0"
ROBOSUITE_SAMPLE = ["robosuite/Wipe"]  # Lift: tests/test_envs.py; Wipe has no gripper (6-d)


def _need(task_id: str) -> None:
    ok, reason = task_available(task_id)
    if not ok:
        pytest.skip(f"{task_id} cannot run here: {reason}")


def check_task(task_id: str, *, render: bool = True, steps: int = 5) -> dict:
    """Build, check spaces against the manifest, step, seeding, success, a frame; returns timings.

    Raises AssertionError naming the task on any mismatch."""
    spec = get_task(task_id)
    t0 = time.perf_counter()
    env = make_env(task_id, seed=11, render=render)  # make_env also checks the manifest's spaces
    build_s = time.perf_counter() - t0
    try:
        rs = env.unwrapped.rs
        assert env.observation_space.shape == tuple(spec.obs_shape), task_id
        assert env.action_space.shape == (spec.action_dim,), task_id
        assert np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1), task_id
        assert env.unwrapped.horizon == spec.episode_length, (task_id, env.unwrapped.horizon)

        first, _ = env.reset()  # the first reset without a seed uses make_env's seed
        assert first.shape == tuple(spec.obs_shape) and first.dtype == np.float32, task_id
        assert np.all(np.isfinite(first)), task_id
        rng = np.random.default_rng(0)
        t1 = time.perf_counter()
        for _ in range(steps):
            obs, reward, terminated, truncated, info = env.step(rng.uniform(-1, 1, spec.action_dim))
            assert obs.shape == tuple(spec.obs_shape) and np.isfinite(reward), task_id
            # info["success"] is the task's own check, as a float
            assert info["success"] == float(bool(rs._check_success())), task_id
            if "Success" in info:  # Composuite's own spelling agrees
                assert info["success"] == float(info["Success"]), task_id
        step_ms = (time.perf_counter() - t1) / steps * 1000
        moved = not np.array_equal(obs, first)
        assert moved, f"{task_id}: {steps} random actions left the observation unchanged"

        again, _ = env.reset(seed=11)  # reset(seed) reproduces make_env(seed)'s first scene
        np.testing.assert_array_equal(again, first, err_msg=f"{task_id}: seed 11 gave another scene")
        other, _ = env.reset(seed=12)
        assert not np.array_equal(other, first), f"{task_id}: seeds 11 and 12 gave one scene"
        if task_id.startswith("composuite/"):
            check_composuite_layout(env, other)
        if render:
            frame = env.render()
            assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3, task_id
            assert frame.std() > 5, f"{task_id}: rendered frame is (nearly) constant"
    finally:
        env.close()
    return {"build_s": round(build_s, 2), "step_ms": round(step_ms, 1)}


@pytest.mark.parametrize("task_id", COMPOSUITE_SAMPLE + MIMICGEN_SAMPLE + ROBOSUITE_SAMPLE)
def test_sample_task_builds_steps_seeds_and_renders(task_id):
    _need(task_id)
    check_task(task_id)


def check_composuite_layout(env, obs) -> None:
    """The 93-d state (`obs`, the env's latest) = the suite's own keys in its order; the arm is
    8-d (7 joints + gripper), unpadded."""
    keys = env.unwrapped.obs_keys
    assert keys == ("object-state", "obstacle-state", "goal-state", "object_id", "robot_id",
                    "obstacle_id", "subtask_id", "robot0_proprio-state")
    raw = env.unwrapped.rs._get_observations(force_update=True)
    np.testing.assert_allclose(obs, np.concatenate([raw[k] for k in keys]).astype(np.float32))
    for k in ("object_id", "robot_id", "obstacle_id", "subtask_id"):  # one-hot task indicators
        assert sorted(raw[k].tolist()) == [0, 0, 0, 1], (k, raw[k])
    assert env.unwrapped.rs.robots[0].controller.control_dim == 7  # joint positions; +1 gripper


def test_mimicgen_success_is_the_tasks_check_with_sparse_reward_and_termination():
    """Put Stack_D0's cube A on cube B: the next steps report success 1.0, reward 1.0, terminated."""
    _need(STACK)
    env = make_env(STACK, seed=0)
    try:
        env.reset()
        rs = env.unwrapped.rs
        obs, reward, terminated, _, info = env.step(np.zeros(7))
        assert (info["success"], reward, terminated) == (0.0, 0.0, False)
        b = rs.sim.data.body_xpos[rs.cubeB_body_id].copy()
        rs.sim.data.set_joint_qpos(rs.cubeA.joints[0], np.concatenate([b + [0, 0, 0.05], [1, 0, 0, 0]]))
        rs.sim.forward()
        for _ in range(15):
            obs, reward, terminated, truncated, info = env.step(np.zeros(7))
            if terminated:
                break
        assert info["success"] == 1.0 and bool(rs._check_success())
        assert reward == 1.0 and terminated and not truncated
        # the observation's object part carries the cube's new pose (object-state starts at 3+4+2)
        np.testing.assert_allclose(obs[9:12], rs.sim.data.body_xpos[rs.cubeA_body_id], atol=1e-5)
    finally:
        env.close()


def test_sawyer_swings_its_shoulder_under_the_osc():
    """Sawyer's first link touches the arm base; unexcluded, that contact's friction held right_j0
    still under MuJoCo 3 and the end effector could not move sideways (NutAssembly_D0's robot)."""
    task = "mimicgen/NutAssembly_D0"
    _need(task)
    env = make_env(task, seed=0)
    try:
        env.reset(seed=0)
        rs = env.unwrapped.rs
        robot = rs.robots[0]
        assert robot.name == "Sawyer"
        j0 = robot._ref_joint_pos_indexes[0]
        q0, y0 = float(rs.sim.data.qpos[j0]), float(rs.sim.data.site_xpos[robot.eef_site_id][1])
        a = np.zeros(7)
        a[1] = -1.0  # -y: a swing of the vertical shoulder joint
        for _ in range(20):
            env.step(a)
        assert float(rs.sim.data.qpos[j0]) - q0 < -0.1
        assert float(rs.sim.data.site_xpos[robot.eef_site_id][1]) - y0 < -0.1
    finally:
        env.close()


def test_horizon_end_is_truncation_and_the_callers_global_rng_is_left_alone():
    _need("robosuite/Lift")
    np.random.seed(123)
    want = np.random.RandomState(123).rand(3)
    env = make_env("robosuite/Lift", seed=5, horizon=3)
    try:
        env.reset()
        ends = [env.step(np.zeros(7))[2:4] for _ in range(3)]
        assert ends == [(False, False), (False, False), (False, True)]
        env.reset(seed=6)
    finally:
        env.close()
    # robosuite 1.4.1 samples scenes from np.random: the env swaps its own state in and out
    np.testing.assert_array_equal(np.random.rand(3), want)


_UNAVAILABLE = textwrap.dedent("""
    import json, sys
    for name in ("composuite", "mimicgen", "robosuite_task_zoo"):
        sys.modules[name] = None  # any import of them now fails, as when not installed
    from lramlab.envs import tasks_cli, make_env
    rc = tasks_cli.main(["--domain", sys.argv[1], "--json"])
    try:
        make_env(sys.argv[2])
        made = "made"
    except RuntimeError as e:
        made = str(e)
    print(json.dumps({"rc": rc, "made": made}))
""")


@pytest.mark.parametrize("domain,task,module", [
    ("composuite", "composuite/IIWA_Box_None_PickPlace", "composuite"),
    ("mimicgen", STACK, "mimicgen"),
])
def test_not_installed_is_unavailable_by_name_with_the_install_command(domain, task, module):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", _UNAVAILABLE, domain, task], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    rows = json.loads("\n".join(lines[:-1]))
    result = json.loads(lines[-1])
    assert result["rc"] == 0 and len(rows) == len(list_tasks(domain)) > 0
    for r in rows:
        assert r["available"] is False
        assert f"cannot import '{module}" in r["reason"] and "make install" in r["reason"]
        assert "github.com/" in r["reason"]
    assert "unavailable" in result["made"] and "make install" in result["made"]


def test_zoo_tasks_need_the_task_zoo(monkeypatch):
    """Mimicgen present but robosuite_task_zoo missing: only HammerCleanup/Kitchen are unavailable."""
    import lramlab.envs as envs

    if not domain_available("mimicgen")[0]:
        pytest.skip("mimicgen not installed here")
    real = envs._available
    monkeypatch.setattr(envs, "_available", lambda m: (False, "ImportError: simulated")
                        if m == "robosuite_task_zoo" else real(m))
    ok, reason = task_available("mimicgen/Kitchen_D1-UR5e")
    assert not ok and "robosuite_task_zoo" in reason and "make install" in reason
    assert task_available("mimicgen/HammerCleanup_D0")[0] is False
    assert task_available("mimicgen/Stack_D0") == (True, "")


# ---------------------------------------------------------------------------- exhaustive
def _logged(path: str) -> dict[str, dict]:
    try:
        with open(path) as f:
            return {r["task"]: r for r in map(json.loads, f) if r.get("ok")}
    except FileNotFoundError:
        return {}


@pytest.mark.exhaustive
@pytest.mark.parametrize("task_id", [s.id for d in ("composuite", "mimicgen", "robosuite") for s in list_tasks(d)])
def test_every_robotics_task(task_id):
    """Every task of the three manifests. LRAMLAB_EXHAUSTIVE_LOG=FILE appends one JSON line per task
    (ok, timings, error); with LRAMLAB_EXHAUSTIVE_RESUME=1 tasks already ok in FILE are skipped."""
    _need(task_id)
    log = os.environ.get("LRAMLAB_EXHAUSTIVE_LOG")
    if log and os.environ.get("LRAMLAB_EXHAUSTIVE_RESUME") == "1" and task_id in _logged(log):
        pytest.skip(f"passed in an earlier run ({log})")
    spec = get_task(task_id)
    row = {"task": task_id, "obs": list(spec.obs_shape), "act": spec.action_dim,
           "episode_length": spec.episode_length}
    try:
        row.update(check_task(task_id, render=False, steps=5), ok=True)
    except BaseException as err:
        row.update(ok=False, error=f"{type(err).__name__}: {err}"[:500])
        raise
    finally:
        if log:
            with open(log, "a") as f:
                f.write(json.dumps(row) + "\n")


# ------------------------------------------------------------------ installing the suites
def _fake_vendor(root):
    """A vendor folder shaped like ../shared/vendor (one small module per suite), read-only."""
    from lramlab.envs.suites import PACKAGE

    for folder, package in PACKAGE.items():
        pkg = root / folder / package
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text(f"NAME = {folder!r}\n")
    for p in sorted(root.rglob("*"), reverse=True):
        p.chmod(0o555 if p.is_dir() else 0o444)
    return root


def test_suites_install_copies_writes_the_pth_and_redoes_only_changed_copies(tmp_path):
    from lramlab.envs import suites

    vendor = _fake_vendor(tmp_path / "vendor")
    prefix, site = tmp_path / "venv", tmp_path / "site"
    site.mkdir()
    lines = []
    out = suites.install(vendor, prefix, site, use_git=False, log=lines.append)
    assert out == {name: "copied" for name in suites.SUITES}
    pth = (site / suites.PTH_NAME).read_text().split()
    assert pth == [str((prefix / "vendor" / name).resolve()) for name in suites.SUITES]
    copy = prefix / "vendor" / "mimicgen" / "mimicgen" / "__init__.py"
    assert copy.read_text() == "NAME = 'mimicgen'\n" and os.access(copy, os.W_OK | os.R_OK)
    # the .pth really puts the packages on a fresh interpreter's path (-S: no other site dirs)
    probe = subprocess.run([sys.executable, "-I", "-S", "-c", f"import site; site.addsitedir({str(site)!r}); "
                            "import composuite, mimicgen, robosuite_task_zoo; print(mimicgen.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, env={"PATH": os.environ["PATH"]})
    assert probe.returncode == 0 and probe.stdout.strip() == str(copy.resolve()), probe.stderr
    # nothing changed: nothing copied
    assert set(suites.install(vendor, prefix, site, use_git=False, log=lines.append).values()) == {"up to date"}
    # the vendor copy of one suite changes: that one is copied again
    src = vendor / "CompoSuite" / "composuite" / "__init__.py"
    src.chmod(0o644)
    src.write_text("NAME = 'changed'\n")
    os.utime(src, (1, 1))
    again = suites.install(vendor, prefix, site, use_git=False, log=lines.append)
    assert again == {"CompoSuite": "copied", "mimicgen": "up to date", "robosuite-task-zoo": "up to date"}
    assert (prefix / "vendor" / "CompoSuite" / "composuite" / "__init__.py").read_text() == "NAME = 'changed'\n"


def test_suites_install_without_vendor_or_network_reports_each_suite_and_succeeds(tmp_path, capsys):
    from lramlab.envs import suites

    site = tmp_path / "site"
    site.mkdir()
    rc = suites.main(["--vendor", str(tmp_path / "absent"), "--no-git", "--prefix", str(tmp_path / "v"),
                      "--site", str(site)])
    out = capsys.readouterr().out
    assert rc == 0 and not (site / suites.PTH_NAME).exists()
    for name in suites.SUITES:
        assert f"suites: {name}: unavailable (no vendor copy and --no-git)" in out
    assert suites.main(["--site", str(tmp_path / "nope")]) == 2
