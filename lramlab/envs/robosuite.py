"""robosuite adapters: standard robosuite tasks, Composuite (App. B.5) and Mimicgen (App. B.6).

Standard tasks (`robosuite/Lift`, `robosuite/PickPlaceCan`, ... or kebab-case `lift`,
`pick-place-can`): `suite.make(<Task>, robots="Panda", use_camera_obs=False, reward_shaping=True)`
+ robosuite's GymWrapper: flat float32 observation (object-state + robot0_proprio-state, 60-d for
Lift), 7-d actions in [-1, 1] (Panda, default controller), horizon = the manifest's
episode_length (1000; 500 when built without a manifest entry), its end is `truncated`,
`info["success"]` from the task's success check. The offscreen renderer exists only with
render=True; env.render() is then a (256, 256, 3) uint8 frame from the `frontview` camera.

Composuite and Mimicgen are not on the package registries; their adapters build envs the way
LRAM does (src/envs/composuite_utils.py, mimicgen_utils.py) when `composuite` / `mimicgen` import,
and `lramlab.envs.domain_available` reports them unavailable, with the install command, when not.

Seeding: robosuite draws placements from `env.rng` (a numpy Generator made from `seed`); a
reset with a seed replaces it, so the same seed gives the same initial scene.
"""
from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np

from lramlab._optional import require

gym = require("gymnasium", "robosuite environments")

HORIZON = 500
RENDER_HW = (256, 256)
RENDER_CAMERA = "frontview"
COMPOSUITE_INSTALL = "pip install git+https://github.com/Lifelong-ML/CompoSuite"
MIMICGEN_INSTALL = ("pip install git+https://github.com/NVlabs/mimicgen "
                    "(it also needs robomimic and a matching robosuite)")


def _suite():
    return require("robosuite", "robosuite environments")


def robosuite_task(name: str, env_id: str | None = None) -> str:
    """`lift` / `Lift` / `pick-place-can` / `PickPlaceCan` -> robosuite's registered name."""
    suite = _suite()
    raw = env_id or name
    key = raw.replace("-", "").replace("_", "").lower()
    for registered in suite.ALL_ENVIRONMENTS:
        if registered.replace("_", "").lower() == key:
            return registered
    raise ValueError(f"robosuite: {raw!r} is not a registered robosuite task; "
                     f"known: {sorted(suite.ALL_ENVIRONMENTS)}")


def reseed_robosuite(rs, seed: int) -> None:
    """Point every RNG a robosuite env samples its scene from at one Generator seeded by `seed`.

    Objects and robot noise use `env.rng` (re-read on each hard reset), but the placement
    sampler made at the first model load keeps its own reference, so it is replaced too."""
    rng = np.random.default_rng(seed)
    rs.rng = rng
    rs.seed = seed
    stack = [getattr(rs, "placement_initializer", None)]
    while stack:
        sampler = stack.pop()
        if sampler is None:
            continue
        if hasattr(sampler, "rng"):
            sampler.rng = rng
        stack.extend(getattr(sampler, "samplers", {}).values())


class RobosuiteEnv(gym.Wrapper):
    """robosuite GymWrapper -> float32 obs, horizon end as `truncated`, info["success"], seeding,
    offscreen rgb frames."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, gym_env, seed: int | None, render: bool,
                 sparse_success_reward: bool = False, terminate_on_success: bool = False):
        super().__init__(gym_env)
        self.rs = gym_env.env  # the robosuite MujocoEnv under robosuite's GymWrapper
        shape = gym_env.observation_space.shape
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=shape, dtype=np.float32)
        low, high = gym_env.action_space.low, gym_env.action_space.high
        self.action_space = gym.spaces.Box(low.astype(np.float32), high.astype(np.float32),
                                           dtype=np.float32)
        self._render = render
        self._sparse = sparse_success_reward
        self._terminate_on_success = terminate_on_success
        self._default_seed = seed
        self._started = False
        if seed is not None:
            self.action_space.seed(int(seed))

    @property
    def render_mode(self):
        return "rgb_array" if self._render else None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is None and not self._started:
            seed = self._default_seed
        self._started = True
        if seed is not None:
            reseed_robosuite(self.rs, int(seed))
        obs, info = self.env.reset()
        return np.asarray(obs, dtype=np.float32), dict(info)

    def step(self, action):
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        obs, reward, done, _, info = self.env.step(a)
        info = dict(info)
        success = bool(self.rs._check_success())
        info["success"] = success
        if self._sparse:
            reward = float(success)
        terminated = success and self._terminate_on_success
        # robosuite only ends an episode at its horizon: that is a time limit, not a terminal state
        truncated = bool(done) and not terminated
        return np.asarray(obs, dtype=np.float32), float(reward), terminated, truncated, info

    def render(self):
        if not self._render:
            raise RuntimeError("robosuite: made with render=False; use make_env(..., render=True)")
        h, w = RENDER_HW
        frame = self.rs.sim.render(width=w, height=h, camera_name=RENDER_CAMERA)
        return np.ascontiguousarray(np.asarray(frame, dtype=np.uint8)[::-1])  # GL rows are bottom-up


def make_robosuite(name: str, env_id: str | None = None, seed: int | None = None,
                   render: bool = False, *, robot: str = "Panda", horizon: int = HORIZON,
                   reward_shaping: bool = True, hard_reset: bool = True):
    """A standard robosuite task with a single Panda arm (slow: 2.5-6 s to build).

    hard_reset=True (robosuite's default) rebuilds the MuJoCo model on every reset (~1 s CPU),
    re-drawing object sizes too; False only resets the sim (~5 ms) and re-samples placements,
    keeping the object sizes drawn when the env was built."""
    if horizon <= 0:
        raise ValueError(f"robosuite: horizon={horizon}, expected > 0")
    suite = _suite()
    from robosuite.wrappers import GymWrapper

    task = robosuite_task(name, env_id)
    env = suite.make(
        task, robots=robot, has_renderer=False, has_offscreen_renderer=render,
        use_camera_obs=False, reward_shaping=reward_shaping, horizon=int(horizon),
        ignore_done=False, seed=seed, hard_reset=hard_reset,
    )
    return RobosuiteEnv(GymWrapper(env), seed, render)


# ----------------------------------------------------------------------------------- Composuite
COMPOSUITE_HORIZON = 500


def composuite_parts(name: str, env_id: str | None = None) -> tuple[str, str, str, str]:
    """`IIWA_Box_None_PickPlace` -> (robot, object, obstacle, objective)."""
    raw = env_id or name
    parts = raw.replace("-", "_").split("_")
    if len(parts) != 4:
        raise ValueError(f"composuite: {raw!r} is not <Robot>_<Object>_<Obstacle>_<Objective> "
                         "(e.g. IIWA_Box_None_PickPlace)")
    return parts[0], parts[1], parts[2], parts[3]


def make_composuite(name: str, env_id: str | None = None, seed: int | None = None,
                    render: bool = False, *, horizon: int = COMPOSUITE_HORIZON):
    """A Composuite task as LRAM builds it: task-id observations on, episodes end (500 steps)."""
    try:
        composuite = require("composuite", "Composuite environments")
    except ImportError as err:
        raise ImportError(f"composuite is not installed (not on PyPI): {COMPOSUITE_INSTALL}") from err
    from lramlab.envs.wrappers import LegacyToGymnasium

    robot, obj, obstacle, objective = composuite_parts(name, env_id)
    cs_env = composuite.make(robot, obj, obstacle, objective, use_task_id_obs=True,
                             ignore_done=False, env_horizon=int(horizon),
                             has_offscreen_renderer=render)
    inner = getattr(cs_env, "env", cs_env)

    def reseed(s: int):
        reseed_robosuite(inner, s)
        np.random.seed(s)  # robosuite < 1.5 samples placements from the global numpy RNG

    def frame():
        h, w = RENDER_HW
        return np.ascontiguousarray(
            np.asarray(inner.sim.render(width=w, height=h, camera_name=RENDER_CAMERA))[::-1])

    env = LegacyToGymnasium(cs_env, seed_fn=reseed, render_fn=frame if render else None)
    from lramlab.envs.wrappers import DefaultSeed, Float32Obs

    return DefaultSeed(Float32Obs(env), seed)


# ------------------------------------------------------------------------------------- Mimicgen
#: LRAM mimicgen_utils.COMMON_OPTIONS controller (reference/domain_specs.yaml: mimicgen)
MIMICGEN_CONTROLLER = {
    "type": "OSC_POSE", "input_max": 1, "input_min": -1,
    "output_max": [0.05, 0.05, 0.05, 0.5, 0.5, 0.5],
    "output_min": [-0.05, -0.05, -0.05, -0.5, -0.5, -0.5],
    "kp": 150, "damping": 1, "impedance_mode": "fixed", "kp_limits": [0, 300],
    "damping_limits": [0, 10], "position_limits": None, "orientation_limits": None,
    "uncouple_pos_ori": True, "control_delta": True, "interpolation": None, "ramp_ratio": 0.2,
}
MIMICGEN_KEYS = ["robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object"]
#: grippers of LRAM's self-generated robot variants (reference/tasks.yaml data_dir_name)
MIMICGEN_GRIPPER = {"IIWA": "Robotiq85Gripper", "UR5e": "Robotiq85Gripper", "Sawyer": "RethinkGripper"}
MIMICGEN_DEFAULT_ROBOT = {"NutAssembly_D0": "Sawyer", "PickPlace_D0": "Sawyer"}  # others: Panda
MIMICGEN_HORIZON = {
    "CoffeePreparation": 800, "Coffee": 400, "HammerCleanup": 800, "Kitchen": 800,
    "MugCleanup": 500, "NutAssembly": 500, "PickPlace": 1000, "Square": 400, "StackThree": 400,
    "Stack": 400, "Threading": 400, "ThreePieceAssembly": 500,
}


def mimicgen_parts(name: str, env_id: str | None = None) -> tuple[str, str]:
    """`Coffee_D0` -> ("Coffee_D0", "Panda"); `Stack_D0-IIWA` -> ("Stack_D0", "IIWA")."""
    raw = env_id or name
    task, _, robot = raw.partition("-")
    base = task.rsplit("_D", 1)[0]
    if base not in MIMICGEN_HORIZON or "_D" not in task:
        raise ValueError(f"mimicgen: {raw!r} is not <Task>_D<n>[-<Robot>] with Task in "
                         f"{sorted(MIMICGEN_HORIZON)}")
    return task, robot or MIMICGEN_DEFAULT_ROBOT.get(task, "Panda")


def make_mimicgen(name: str, env_id: str | None = None, seed: int | None = None,
                  render: bool = False, *, horizon: int | None = None):
    """A Mimicgen task as LRAM evaluates it: low-dim keys, sparse success reward, ends on success."""
    try:
        require("mimicgen", "Mimicgen environments")  # registers its tasks with robosuite
    except ImportError as err:
        raise ImportError(f"mimicgen is not installed (not on PyPI): {MIMICGEN_INSTALL}") from err
    suite = _suite()
    from robosuite.wrappers import GymWrapper

    task, robot = mimicgen_parts(name, env_id)
    horizon = int(horizon or MIMICGEN_HORIZON[task.rsplit("_D", 1)[0]])
    controller = dict(MIMICGEN_CONTROLLER)
    try:  # robosuite >= 1.5 wants a composite controller config around the arm part
        from robosuite.controllers.composite.composite_controller_factory import (
            refactor_composite_controller_config,
        )

        controller = refactor_composite_controller_config(controller, robot, ["right"])
    except ImportError:
        pass
    kwargs = {}
    if robot in MIMICGEN_GRIPPER:
        kwargs["gripper_types"] = MIMICGEN_GRIPPER[robot]
    env = suite.make(
        task, robots=robot, controller_configs=controller, has_renderer=False,
        has_offscreen_renderer=render, use_camera_obs=False, reward_shaping=False,
        ignore_done=False, horizon=horizon, control_freq=20, **kwargs,
    )
    return RobosuiteEnv(GymWrapper(env, keys=MIMICGEN_KEYS), seed, render,
                        sparse_success_reward=True, terminate_on_success=True)
