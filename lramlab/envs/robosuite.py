"""robosuite adapters (robosuite 1.4.1): standard tasks, Composuite (App. B.5), Mimicgen (App. B.6).

Every env made here is a `RobosuiteEnv` (a gymnasium.Env): flat float32 observations, actions in
[-1, 1], the horizon's end as `truncated`, `info["success"]` = float(the task's own
`_check_success()`), offscreen rgb frames with render=True. The robosuite env itself (a
`robosuite.environments.MujocoEnv`: `sim`, `robots`, object bodies, `_check_success`) is
`env.unwrapped.rs`; `env.unwrapped.obs_keys` names the observation keys concatenated in order.

- Standard tasks (`robosuite/Lift`, ... or `lift`, `pick-place-can`): `suite.make(<Task>,
  robots="Panda", controller OSC_POSE, use_camera_obs=False, reward_shaping=True)`; observation =
  object-state + robot0_proprio-state (Lift 42-d on 1.4.1), 7-d actions (Wipe 6: no gripper).
- Composuite (`composuite/<Robot>_<Object>_<Obstacle>_<Objective>`): `composuite.make(robot, obj,
  obstacle, objective, use_task_id_obs=True, ignore_done=False)` with the suite's defaults (joint
  position controller, RethinkGripper on every arm, shaped reward): 93-d observation = object (14)
  + obstacle (14) + goal (17) + object/robot/obstacle/objective one-hots (4 x 4) + proprio (32),
  8-d action (7 joints + gripper) for all four arms (IIWA, Jaco, Kinova3 = the paper's Gen3,
  Panda) - nothing is padded; 500 steps.
- Mimicgen (`mimicgen/Stack_D0`, `mimicgen/Coffee_D0-IIWA`): the task's registered env with LRAM's
  OSC_POSE controller (7-d delta pose + gripper), sparse success reward, ends on success, horizon
  from the manifest; observation = robot0_eef_pos (3) + robot0_eef_quat (4) + robot0_gripper_qpos
  (2; 6 with the Robotiq85 gripper of IIWA/UR5e) + object-state (task-dependent) - the low-dim
  keys of LRAM's data. That is 37-d (the paper's number) for Threading, NutAssembly and
  HammerCleanup with Panda; other tasks differ (Stack 32, Coffee 66, CoffeePreparation 95), so
  the manifest records each task's measured size (the model pads every task to 204).

Sawyer (Mimicgen's NutAssembly_D0, PickPlace_D0 and the -Sawyer variants): robosuite 1.4.1's model
does not compile under MuJoCo 3 ("mesh volume is too small: robot0_head_1"); its massless visual
meshes get inertia="shell" here (`_visual_meshes_shell_inertia`), which leaves the physics as is.
Under MuJoCo 3 its first link's collision sphere also rests on the arm base's cylinder (a contact
MuJoCo does not filter: the base is welded to the world), and that contact's friction holds the
first joint (right_j0, the vertical shoulder pan) still: the OSC never swings the arm sideways.
The same subclass excludes that pair of bodies (`ROBOT_CONTACT_EXCLUDES`), as MuJoCo does for any
other parent and child.

Composuite and Mimicgen (and the robosuite task zoo that Mimicgen's HammerCleanup/Kitchen import)
are not on the package registries: `make install` puts them on the path from ../shared/vendor or
their git repositories; without them `lramlab.envs.domain_available` says why and how to install.

Seeding: robosuite 1.4.1 draws placements, object sizes and robot noise from the global numpy
RNG. Each env keeps its own RandomState (from `seed`) and swaps it in only around its resets (and
its construction), so the same seed gives the same initial scene whatever else uses np.random,
and the caller's global RNG state is left as it was.
"""
from __future__ import annotations

import contextlib
import os
import xml.etree.ElementTree as ET

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np

from lramlab._optional import require
from lramlab.envs import COMPOSUITE_INSTALL, MIMICGEN_INSTALL, ZOO_INSTALL

gym = require("gymnasium", "robosuite environments")

HORIZON = 500
RENDER_HW = (256, 256)
RENDER_CAMERAS = ("frontview", "agentview")  # first one the model has
STANDARD_OBS_KEYS = ("object-state", "robot0_proprio-state")
STANDARD_CONTROLLER = "OSC_POSE"


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


@contextlib.contextmanager
def numpy_global_rng(state: np.random.RandomState):
    """Run the block with np.random's global state taken from `state`; afterwards `state`
    holds where the block left it and the caller's global state is restored."""
    saved = np.random.get_state()
    np.random.set_state(state.get_state())
    try:
        yield
    finally:
        state.set_state(np.random.get_state())
        np.random.set_state(saved)


def _new_rng(seed: int | None) -> np.random.RandomState:
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0])  # fresh entropy
    return np.random.RandomState(int(seed) % 2**32)


class RobosuiteEnv(gym.Env):
    """A robosuite MujocoEnv (`self.rs`) as a gymnasium env: flat float32 observations of
    `obs_keys`, actions clipped to [-1, 1], horizon end -> `truncated`, `info["success"]`
    (float) from `rs._check_success()`, reproducible seeding, offscreen rgb frames."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, rs, obs_keys, seed: int | None, render: bool, *, rng=None,
                 sparse_success_reward: bool = False, terminate_on_success: bool = False):
        self.rs = rs
        self.obs_keys = tuple(obs_keys)
        self._rng = rng if rng is not None else _new_rng(seed)
        self._render = render
        self._sparse = sparse_success_reward
        self._terminate_on_success = terminate_on_success
        self._default_seed = seed
        self._started = False
        # robosuite builds the sim and resets it in its constructor: read the observation size
        # from that state rather than paying for another model load here
        obs = self._flat(rs._get_observations(force_update=True))
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=obs.shape, dtype=np.float32)
        low, high = rs.action_spec
        self.action_space = gym.spaces.Box(np.asarray(low, np.float32), np.asarray(high, np.float32),
                                           dtype=np.float32)
        if seed is not None:
            self.action_space.seed(int(seed))
        self._camera = None
        if render:
            names = list(rs.sim.model.camera_names)
            self._camera = next((c for c in RENDER_CAMERAS if c in names), names[0] if names else None)

    @property
    def render_mode(self):
        return "rgb_array" if self._render else None

    @property
    def horizon(self) -> int:
        return int(self.rs.horizon)

    def _flat(self, obs_dict) -> np.ndarray:
        return np.concatenate([np.asarray(obs_dict[k], dtype=np.float32).ravel()
                               for k in self.obs_keys])

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is None and not self._started:
            seed = self._default_seed
        self._started = True
        if seed is not None:
            self._rng = _new_rng(int(seed))
        with numpy_global_rng(self._rng):
            obs = self.rs.reset()
        return self._flat(obs), {"success": float(self.rs._check_success())}

    def step(self, action):
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(-1), -1.0, 1.0)
        obs, reward, done, info = self.rs.step(a)
        info = dict(info)
        success = float(bool(self.rs._check_success()))
        info["success"] = success
        if self._sparse:
            reward = success
        terminated = bool(success) and self._terminate_on_success
        # robosuite only ends an episode at its horizon: that is a time limit, not a terminal state
        truncated = bool(done) and not terminated
        return self._flat(obs), float(reward), terminated, truncated, info

    def render(self):
        if not self._render:
            raise RuntimeError("robosuite: made with render=False; use make_env(..., render=True)")
        h, w = RENDER_HW
        frame = self.rs.sim.render(width=w, height=h, camera_name=self._camera)
        return np.ascontiguousarray(np.asarray(frame, dtype=np.uint8)[::-1])  # GL rows are bottom-up

    def close(self):
        close = getattr(self.rs, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()


def _visual_meshes_shell_inertia(robot: str) -> None:
    """Let MuJoCo 3 compile `robot`'s model: its purely visual meshes get inertia="shell".

    robosuite 1.4.1's Sawyer has visual head meshes (geom group 1) too thin for MuJoCo 3's volume
    check ("mesh volume is too small: robot0_head_1"). Those geoms carry no mass (the base model
    counts only group-0 geoms, and the head body has its own <inertial>), so the physics is
    unchanged. The same subclass excludes the contacts of `ROBOT_CONTACT_EXCLUDES` (a Sawyer joint
    held still by one). Done by registering a subclass under the robot's name, once per process."""
    from robosuite.models.robots import robot_model

    base = robot_model.REGISTERED_ROBOTS.get(robot)
    if base is None or getattr(base, "_lramlab_shell_visual_meshes", False):
        return

    class ShellVisualMeshes(base):
        _lramlab_shell_visual_meshes = True

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            massive = {g.get("mesh") for g in self.worldbody.iter("geom")
                       if g.get("mesh") and g.get("group", "0") == "0"}
            for mesh in self.asset.iter("mesh"):
                if mesh.get("name") not in massive:
                    mesh.set("inertia", "shell")
            for b1, b2 in ROBOT_CONTACT_EXCLUDES.get(robot, ()):  # names are prefixed by now (robot0_...)
                ET.SubElement(self.contact, "exclude", body1=self.naming_prefix + b1, body2=self.naming_prefix + b2)

    ShellVisualMeshes.__name__ = ShellVisualMeshes.__qualname__ = base.__name__
    robot_model.REGISTERED_ROBOTS[robot] = ShellVisualMeshes


#: robots whose robosuite 1.4.1 model needs _visual_meshes_shell_inertia under MuJoCo 3
SHELL_MESH_ROBOTS = ("Sawyer",)
#: body pairs of those models whose contact locks a joint under MuJoCo 3 (excluded by the same subclass)
ROBOT_CONTACT_EXCLUDES = {"Sawyer": (("right_arm_base_link", "right_l0"),)}


def _check_horizon(horizon: int) -> int:
    if int(horizon) <= 0:
        raise ValueError(f"robosuite: horizon={horizon}, expected > 0")
    return int(horizon)


def make_robosuite(name: str, env_id: str | None = None, seed: int | None = None,
                   render: bool = False, *, robot: str = "Panda", horizon: int = HORIZON,
                   reward_shaping: bool = True, hard_reset: bool = True):
    """A standard robosuite task with one arm (Panda) and the OSC_POSE controller (2-6 s to build).

    hard_reset=True (robosuite's default) rebuilds the MuJoCo model on every reset (~1 s CPU),
    re-drawing object sizes too; False only resets the sim and re-samples placements."""
    horizon = _check_horizon(horizon)
    suite = _suite()
    task = robosuite_task(name, env_id)
    if robot in SHELL_MESH_ROBOTS:
        _visual_meshes_shell_inertia(robot)
    rng = _new_rng(seed)
    with numpy_global_rng(rng):
        rs = suite.make(
            task, robots=robot, has_renderer=False, has_offscreen_renderer=render,
            controller_configs=suite.load_controller_config(default_controller=STANDARD_CONTROLLER),
            use_camera_obs=False, reward_shaping=reward_shaping, horizon=horizon,
            ignore_done=False, hard_reset=hard_reset,
        )
    return RobosuiteEnv(rs, STANDARD_OBS_KEYS, seed, render, rng=rng)


# ----------------------------------------------------------------------------------- Composuite
COMPOSUITE_HORIZON = 500
COMPOSUITE_ROBOTS = ("IIWA", "Jaco", "Kinova3", "Panda")
COMPOSUITE_OBJECTS = ("Box", "Dumbbell", "Plate", "Hollowbox")
COMPOSUITE_OBSTACLES = ("None", "GoalWall", "ObjectDoor", "ObjectWall")
COMPOSUITE_OBJECTIVES = ("PickPlace", "Push", "Shelf", "Trashcan")


def composuite_parts(name: str, env_id: str | None = None) -> tuple[str, str, str, str]:
    """`IIWA_Box_None_PickPlace` -> (robot, object, obstacle, objective)."""
    raw = env_id or name
    parts = raw.replace("-", "_").split("_")
    if len(parts) != 4:
        raise ValueError(f"composuite: {raw!r} is not <Robot>_<Object>_<Obstacle>_<Objective> "
                         "(e.g. IIWA_Box_None_PickPlace)")
    for value, allowed, what in zip(parts, (COMPOSUITE_ROBOTS, COMPOSUITE_OBJECTS,
                                            COMPOSUITE_OBSTACLES, COMPOSUITE_OBJECTIVES),
                                    ("robot", "object", "obstacle", "objective")):
        if value not in allowed:
            raise ValueError(f"composuite: {raw!r} has {what} {value!r}, expected one of {list(allowed)}")
    return parts[0], parts[1], parts[2], parts[3]


def _import_composuite():
    try:
        return require("composuite", "Composuite environments")
    except ImportError as err:
        raise ImportError(COMPOSUITE_INSTALL) from err


def make_composuite(name: str, env_id: str | None = None, seed: int | None = None,
                    render: bool = False, *, horizon: int = COMPOSUITE_HORIZON):
    """A Composuite task as LRAM builds it (task-id observations on, episodes end at 500 steps)."""
    horizon = _check_horizon(horizon)
    composuite = _import_composuite()
    robot, obj, obstacle, objective = composuite_parts(name, env_id)
    rng = _new_rng(seed)
    with numpy_global_rng(rng):  # composuite.make resets the env twice while building it
        wrapped = composuite.make(robot, obj, obstacle, objective, use_task_id_obs=True,
                                  ignore_done=False, env_horizon=horizon,
                                  has_offscreen_renderer=render)
    # the suite's own GymWrapper fixes the key order (object, obstacle, goal, ids, proprio)
    return RobosuiteEnv(wrapped.env, wrapped.keys, seed, render, rng=rng)


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
#: LRAM's MAIN_LOWDIM_KEYS as robosuite names them (robomimic's "object" is "object-state")
MIMICGEN_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object-state")
#: grippers of LRAM's self-generated robot variants (reference/tasks.yaml data_dir_name)
MIMICGEN_GRIPPER = {"IIWA": "Robotiq85Gripper", "UR5e": "Robotiq85Gripper", "Sawyer": "RethinkGripper"}
MIMICGEN_DEFAULT_ROBOT = {"NutAssembly_D0": "Sawyer", "PickPlace_D0": "Sawyer"}  # others: Panda
MIMICGEN_HORIZON = {
    "CoffeePreparation": 800, "Coffee": 400, "HammerCleanup": 800, "Kitchen": 800,
    "MugCleanup": 500, "NutAssembly": 500, "PickPlace": 1000, "Square": 400, "StackThree": 400,
    "Stack": 400, "Threading": 400, "ThreePieceAssembly": 500,
}
#: tasks whose Mimicgen module imports robosuite_task_zoo
MIMICGEN_ZOO_TASKS = ("HammerCleanup", "Kitchen")


def mimicgen_parts(name: str, env_id: str | None = None) -> tuple[str, str]:
    """`Coffee_D0` -> ("Coffee_D0", "Panda"); `Stack_D0-IIWA` -> ("Stack_D0", "IIWA")."""
    raw = env_id or name
    task, _, robot = raw.partition("-")
    base = task.rsplit("_D", 1)[0]
    if base not in MIMICGEN_HORIZON or "_D" not in task:
        raise ValueError(f"mimicgen: {raw!r} is not <Task>_D<n>[-<Robot>] with Task in "
                         f"{sorted(MIMICGEN_HORIZON)}")
    return task, robot or MIMICGEN_DEFAULT_ROBOT.get(task, "Panda")


def _import_mimicgen():
    try:
        return require("mimicgen.envs.robosuite", "Mimicgen environments")  # registers the tasks
    except ImportError as err:
        raise ImportError(MIMICGEN_INSTALL) from err


def make_mimicgen(name: str, env_id: str | None = None, seed: int | None = None,
                  render: bool = False, *, horizon: int | None = None):
    """A Mimicgen task as LRAM evaluates it: low-dim keys, sparse success reward, ends on success."""
    _import_mimicgen()
    suite = _suite()
    task, robot = mimicgen_parts(name, env_id)
    if task not in suite.ALL_ENVIRONMENTS:
        zoo = task.rsplit("_D", 1)[0] in MIMICGEN_ZOO_TASKS
        raise RuntimeError(f"mimicgen registered no task {task!r} with robosuite {suite.__version__}"
                           + (f" ({ZOO_INSTALL})" if zoo else f" ({MIMICGEN_INSTALL})"))
    horizon = _check_horizon(horizon or MIMICGEN_HORIZON[task.rsplit("_D", 1)[0]])
    kwargs = {}
    if robot in MIMICGEN_GRIPPER:
        kwargs["gripper_types"] = MIMICGEN_GRIPPER[robot]
    if robot in SHELL_MESH_ROBOTS:
        _visual_meshes_shell_inertia(robot)
    rng = _new_rng(seed)
    with numpy_global_rng(rng):
        rs = suite.make(
            task, robots=robot, controller_configs=dict(MIMICGEN_CONTROLLER), has_renderer=False,
            has_offscreen_renderer=render, use_camera_obs=False, reward_shaping=False,
            ignore_done=False, horizon=horizon, control_freq=20, **kwargs,
        )
    return RobosuiteEnv(rs, MIMICGEN_KEYS, seed, render, rng=rng,
                        sparse_success_reward=True, terminate_on_success=True)
