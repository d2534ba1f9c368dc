"""Scripted experts for Composuite and Mimicgen from the simulator's privileged state.

The policies read object, obstacle and goal poses from the robosuite env under the wrapper
(``env.sim`` body / geom / site positions), walk a list of end-effector waypoints (rise over the
obstacles, above the object, descend, grasp, lift, carry, place / release) and turn each step's
Cartesian command -- end-effector velocity, angular velocity holding the gripper vertical, gripper
open/close -- into the env's action vector:

- robosuite's OSC_POSE controller (Mimicgen): the delta pose scaled by the controller's output range;
- robosuite's JOINT_POSITION controller (Composuite's ``make()`` default, the 8-d actions of the
  paper's Composuite data): joint deltas from the end-effector Jacobian (damped least squares, the
  same task-space law the OSC applies), scaled by the controller's output range.

Every action is clipped to [-1, 1]; ``expert:noise=<std>`` adds Gaussian action noise (then clips)
for data diversity, as the Meta-World experts do. The expert needs the simulator, not only the
observation: `bind(env)` is called by `lramlab.collect.generate` (and by
`benchmarks/robotics_experts.py`) with the env the policy acts in; any wrapper chain whose
``.env`` / ``.rs`` / ``.unwrapped`` links lead to a robosuite env (an object with ``sim`` and
``robots``) works, including Composuite's and robosuite's GymWrappers and a raw robosuite env.
"""
from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np

from lramlab.collect.base import Policy
from lramlab.collect.experts import ExpertConfig

COMPOSUITE_OBJECTIVES = ("PickPlace", "Push", "Shelf", "Trashcan")
MIMICGEN_TASKS = ("Stack", "StackThree", "Square", "NutAssembly")  # <Task>_D<n> with these base names


def find_robosuite(env):
    """The robosuite env (an object with ``sim`` and ``robots``) under a wrapper chain."""
    try:
        from robosuite.environments.base import MujocoEnv
    except ImportError:  # pragma: no cover - robosuite is what the experts act in
        MujocoEnv = ()
    seen = set()
    stack = [env]
    while stack:
        e = stack.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        # robosuite's wrappers forward attributes (a GymWrapper "has" .sim): take the env itself
        if isinstance(e, MujocoEnv) or (not MujocoEnv and hasattr(e, "sim") and hasattr(e, "robots")):
            return e
        for attr in ("rs", "env", "_env", "unwrapped"):
            try:
                stack.append(getattr(e, attr, None))
            except Exception:  # some wrappers raise on unknown attributes
                pass
    raise ValueError(f"{type(env).__name__}: no robosuite env (with .sim and .robots) under this wrapper")


# ============================================================================ Cartesian arm control


class Arm:
    """End-effector state of robot 0 and Cartesian command -> action for its controller."""

    #: the joint-position controller's soft gains (kp 50) move the arm only part of the commanded
    #: delta per step: joint deltas are scaled up by this factor (then clipped to [-1, 1])
    joint_gain = 3.0

    def __init__(self, rs):
        import mujoco

        self.mj = mujoco
        self.rs = rs
        self.robot = rs.robots[0]
        self.m, self.d = rs.sim.model._model, rs.sim.data._data
        ctrl = self.robot.controller
        name = type(ctrl).__name__
        if name == "OperationalSpaceController":
            if getattr(ctrl, "control_dim", 6) != 6 or not getattr(ctrl, "use_delta", True):
                raise ValueError(f"robotics expert: OSC controller must be OSC_POSE with deltas, got {ctrl.name}")
            self.kind = "osc"
        elif name == "JointPositionController":
            if not getattr(ctrl, "use_delta", True):
                raise ValueError("robotics expert: JOINT_POSITION controller must take deltas")
            self.kind = "joint"
        else:
            raise ValueError(f"robotics expert: controller {name} is not supported (OSC_POSE or JOINT_POSITION)")
        self.out_max = np.asarray(ctrl.output_max, dtype=np.float64)
        self.site = self.robot.eef_site_id
        self.dofs = np.asarray(self.robot._ref_joint_vel_indexes)
        self.qpos_idx = np.asarray(self.robot._ref_joint_pos_indexes)
        self.grip_dim = int(self.robot.gripper.dof)
        self.act_dim = int(rs.action_spec[0].shape[0])
        self.calibrate()

    def calibrate(self):
        """Finger geometry in the eef-site frame: approach axis (towards the fingertips) and closing axis."""
        g = self.robot.gripper.important_geoms
        lp = np.mean([self.d.geom_xpos[self.m.geom(n).id] for n in g["left_fingerpad"]], axis=0)
        rp = np.mean([self.d.geom_xpos[self.m.geom(n).id] for n in g["right_fingerpad"]], axis=0)
        R = self.rot()
        # the gripper starts pointing down (every Composuite / Mimicgen reset pose): the approach
        # axis is the site axis nearest to world down, the closing axis the one nearest pad-to-pad
        a_s = _snap_axis(R.T @ np.array([0.0, 0.0, -1.0]))
        u_s = R.T @ (lp - rp)
        u_s = _snap_axis(u_s - a_s * (u_s @ a_s))
        self.a_site, self.u_site = a_s, u_s
        self.q0 = self.d.qpos[self.qpos_idx].copy()

    def pos(self) -> np.ndarray:
        return self.d.site_xpos[self.site].copy()

    def rot(self) -> np.ndarray:
        return self.d.site_xmat[self.site].reshape(3, 3).copy()

    def target_rot(self, close_dir_world: np.ndarray) -> np.ndarray:
        """Rotation with the fingers pointing down and closing along `close_dir_world` (horizontal)."""
        down = np.array([0.0, 0.0, -1.0])
        u = np.asarray(close_dir_world, dtype=np.float64)
        u = u - down * (u @ down)
        u /= np.linalg.norm(u)
        W = np.stack([down, u, np.cross(down, u)], axis=1)
        S = np.stack([self.a_site, self.u_site, np.cross(self.a_site, self.u_site)], axis=1)
        return W @ S.T

    def closing_dir(self) -> np.ndarray:
        return self.rot() @ self.u_site

    def action(self, v: np.ndarray, R_target: np.ndarray, grip: float, max_speed: float = 0.04,
               rot_gain: float = 1.0, smooth: bool = False) -> np.ndarray:
        """Action for linear velocity `v` (m per control step), orientation target, gripper (+1 close)."""
        R = self.rot()
        err = 0.5 * sum(np.cross(R[:, i], R_target[:, i]) for i in range(3))
        w = rot_gain * err
        ang = np.linalg.norm(w)
        if smooth and ang > 0.08:  # turn at most ~5 degrees per step
            w = w * (0.08 / ang)
        speed = np.linalg.norm(v)
        if speed > max_speed:
            v = v * (max_speed / speed)
        a = np.zeros(self.act_dim)
        if self.kind == "osc":
            a[:3] = v / self.out_max[:3]
            a[3:6] = w / self.out_max[3:6]
        else:
            jp = np.zeros((3, self.m.nv))
            jr = np.zeros((3, self.m.nv))
            self.mj.mj_jacSite(self.m, self.d, jp, jr, self.site)
            J = np.vstack([jp[:, self.dofs], jr[:, self.dofs]])
            lam = 0.05
            JJt = J @ J.T + lam ** 2 * np.eye(6)
            J_pinv = J.T @ np.linalg.solve(JJt, np.eye(6))
            dq = J_pinv @ np.r_[v, w]
            # null space: drift towards the initial posture (keeps the elbow where it started)
            q = self.d.qpos[self.qpos_idx]
            dq += (np.eye(len(self.dofs)) - J_pinv @ J) @ (0.05 * (self.q0 - q))
            n = len(self.dofs)
            a[:n] = self.joint_gain * dq / self.out_max[:n]
            peak = np.max(np.abs(a[:n]))
            if smooth and peak > 1.0:  # scale all joints together: clipping one by one would bend the path
                a[:n] /= peak
        a[self.act_dim - self.grip_dim:] = grip
        return np.clip(a, -1.0, 1.0)


def _snap_axis(x: np.ndarray) -> np.ndarray:
    """The signed unit basis vector nearest to x."""
    out = np.zeros(3)
    i = int(np.argmax(np.abs(x)))
    out[i] = 1.0 if x[i] >= 0 else -1.0
    return out


def _aabb(m, d, gid: int) -> tuple[np.ndarray, np.ndarray]:
    """World axis-aligned bounds of a box / cylinder / capsule / sphere geom."""
    size = m.geom_size[gid]
    R = d.geom_xmat[gid].reshape(3, 3)
    t = int(m.geom_type[gid])
    if t == 6:  # box
        half = size
    elif t == 5:  # cylinder
        half = np.array([size[0], size[0], size[1]])
    elif t == 3:  # capsule
        half = np.array([size[0], size[0], size[1] + size[0]])
    else:
        half = np.full(3, size[0])
    h = np.abs(R) @ half
    c = d.geom_xpos[gid]
    return c - h, c + h


# ============================================================================ waypoint experts


#: the same options as the Meta-World experts' (``noise=<std>``)
RoboticsExpertConfig = ExpertConfig


class Phase:
    """One waypoint: target(expert) -> eef position, gripper command, tolerance, step limits."""

    def __init__(self, name, target, grip, tol=0.01, min_steps=0, max_steps=120, speed=0.04, check=None, rot=None,
                 smooth=False):
        self.name, self.target, self.grip, self.tol, self.rot = name, target, grip, tol, rot
        self.smooth = smooth  # large re-orientations: cap the turn rate, scale joint deltas together
        self.min_steps, self.max_steps, self.speed, self.check = min_steps, max_steps, speed, check


class WaypointExpert(Policy):
    """Shared machinery: bind to a robosuite env, plan phases at reset, step through them."""

    gain = 0.6  # fraction of the remaining distance commanded per step (before the speed cap)

    def __init__(self, task_name: str, config: RoboticsExpertConfig | None = None):
        self.task_name = task_name
        self.cfg = config or RoboticsExpertConfig()
        self.spec = "expert" + (f":noise={self.cfg.noise}" if self.cfg.noise else "")
        self.rng = np.random.default_rng(0)
        self.rs = None
        self.arm = None
        self._fresh = True

    # -- Policy API
    def bind(self, env) -> None:
        """Attach to the env the policy acts in (its robosuite env is found under the wrappers)."""
        rs = find_robosuite(env)
        if rs is not self.rs:
            self.rs = rs
            self.arm = None
        self._fresh = True

    def reset(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self._fresh = True

    def act(self, obs):
        if self.rs is None:
            raise RuntimeError(f"{type(self).__name__}: call bind(env) before act() (it reads the simulator)")
        if self._fresh:  # first step of an episode: the scene is the reset one
            self._fresh = False
            if self.arm is None or self.arm.rs is not self.rs or self.arm.m is not self.rs.sim.model._model:
                self.arm = Arm(self.rs)
            else:
                self.arm.calibrate()
            self.t = 0
            self.err_sum = np.zeros(3)
            self.phase_i = 0
            self.phase_t = 0
            self.plan()
        a = self.step_phases()
        self.t += 1
        if self.cfg.noise > 0:
            a = a + self.cfg.noise * self.rng.standard_normal(a.shape)
        return np.clip(a, -1.0, 1.0).astype(np.float32)

    def config(self) -> dict:
        return {"expert": type(self).__name__, **asdict(self.cfg)}

    # -- helpers for subclasses
    def m_d(self):
        return self.arm.m, self.arm.d

    def body_pos(self, body_id) -> np.ndarray:
        return self.arm.d.xpos[body_id].copy()

    def geoms_aabb(self, names) -> tuple[np.ndarray, np.ndarray]:
        m, d = self.m_d()
        boxes = [_aabb(m, d, m.geom(n).id) for n in names]
        return np.min([b[0] for b in boxes], axis=0), np.max([b[1] for b in boxes], axis=0)

    def step_phases(self) -> np.ndarray:
        while True:
            if self.phase_i >= len(self.phases):
                ph = self.phases[-1]
            else:
                ph = self.phases[self.phase_i]
            target = ph.target()
            p = self.arm.pos()
            err = target - p
            done = np.linalg.norm(err) < ph.tol and self.phase_t >= ph.min_steps
            if ph.check is not None and self.phase_i < len(self.phases):
                jump = ph.check()
                if jump is not None:  # e.g. the object slipped: start over from phase `jump`
                    self.phase_i, self.phase_t = jump, 0
                    self.on_phase_start(self.phases[jump])
                    continue
            if self.phase_i < len(self.phases) and (done or self.phase_t >= ph.max_steps):
                self.phase_i += 1
                self.phase_t = 0
                if self.phase_i < len(self.phases):
                    self.on_phase_start(self.phases[self.phase_i])
                    continue
            break
        self.phase_t += 1
        v = self.gain * err
        if self.arm.kind == "joint":  # integral term: the soft joint controller sags under gravity
            # only the steady-state error (< 3 cm) is integrated: a sum wound up during a long move
            # overshoots the next waypoint by centimetres (fingers landing on a dumbbell's disk)
            near = float(np.linalg.norm(err) < 0.03)
            self.err_sum = np.clip(0.97 * self.err_sum + near * err, -0.3, 0.3)
            v = v + 0.05 * self.err_sum
            # the height is held on its own: under one speed cap a long sideways move dilutes the vertical
            # correction and the carried object drifts up by centimetres (Push's 10 cm height limit)
            h = float(np.linalg.norm(v[:2]))
            if h > ph.speed:
                v = np.r_[v[:2] * (ph.speed / h), v[2]]
            v[2] = float(np.clip(v[2], -ph.speed, ph.speed))
            return self.arm.action(v, self.R_target, ph.grip, max_speed=1.5 * ph.speed, smooth=ph.smooth)
        return self.arm.action(v, self.R_target, ph.grip, max_speed=ph.speed, smooth=ph.smooth)

    def on_phase_start(self, phase) -> None:
        self.phase_start_pos = self.arm.pos()
        if phase.rot is not None:  # a new orientation target from this phase on
            self.R_target = phase.rot()

    def plan(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


OPEN, CLOSE = -1.0, 1.0


class ComposuiteExpert(WaypointExpert):
    """Pick the object (grasp chosen per object shape), carry it over the obstacles, and finish the
    objective: PickPlace (lower into bin 2 and hold), Trashcan (drop into the can), Shelf (slide
    onto the shelf board), Push (carry low to the goal, keeping under the height limit, release)."""

    def plan(self) -> None:
        rs, arm = self.rs, self.arm
        m, d = self.m_d()
        self.objective = type(rs).__name__.replace("Subtask", "")
        self.obj_type = rs.object_type
        self.obj_geoms = list(rs.object.contact_geoms)
        # fingers close along world y (the scene's long axis runs along y: bins, shelf, trashcan)
        cd = arm.closing_dir()
        sign = 1.0 if cd[1] >= 0 else -1.0
        self.R_target = arm.target_rot(np.array([0.0, sign, 0.0]))
        obst = getattr(rs, "obstacle_type", None)
        self.obstacle_top = 0.0
        self.obstacle_kind = obst
        if obst is not None:
            lo, hi = self.geoms_aabb(rs.obstacle.contact_geoms)
            self.obstacle_top = float(hi[2])
            self.obstacle_lo, self.obstacle_hi = lo, hi
        self.table_z = float(rs.bin1_pos[2]) + 0.02
        lo, hi = self.geoms_aabb(self.obj_geoms)
        self.obj_h = float(hi[2] - lo[2])
        self.obj_half_xy = 0.5 * (hi[:2] - lo[:2])
        # approach height: fingertips above the bins and above an obstacle between the robot and the
        # object (ObjectWall / ObjectDoor); the GoalWall stands between the bins, beside the approach
        between = obst in ("ObjectWall", "ObjectDoor")
        self.z_clear = max(1.0, self.obstacle_top + 0.06 if between else 0.0)
        self.R_y = self.R_target.copy()
        P = []
        P.append(Phase("rise", lambda: np.r_[self.phase_start_pos[:2], self.z_clear], OPEN, tol=0.03, max_steps=60))
        P.extend(self._topple_phases(len(P)))
        P.append(Phase("over", lambda: np.r_[self.grasp_point()[:2], self.z_clear], OPEN, tol=0.03, max_steps=120,
                       rot=self.grasp_rot))
        P.append(Phase("pre", self.pre_grasp, OPEN, tol=0.006, max_steps=80, rot=self.grasp_rot))
        P.append(Phase("down", lambda: self.grasp_point(), OPEN, tol=0.006, max_steps=60, speed=0.02))
        P.append(Phase("grasp", lambda: self.grasp_point(), CLOSE, tol=0.0, min_steps=12, max_steps=12, speed=0.01))
        self.grasp_phase = len(P) - 1
        P.extend(getattr(self, "_plan_" + self.objective)())
        if obst in ("GoalWall", "ObjectDoor"):
            # every command saturates the joint controller on these long paths: scale the joint deltas
            # together (clipping each joint bends the path into the door frame / above Push's limit)
            # (not the rise / over of the approach: short, nearly single-joint moves, faster clipped)
            for ph in P:
                ph.smooth = ph.smooth or ph.name not in ("rise", "over")
        self.phases = P
        self.phase_start_pos = arm.pos()

    # -- grasp geometry (world frame)
    #: objects that cannot be grasped top-down as they stand: a Dumbbell's 9 cm disks hide its 4 cm handle
    #: from a gripper opening 6 cm (a chord of a disk's rim slips out: its contact normals lie outside the
    #: friction cone), so it is pushed over at its top disk first and grasped by the handle lying between
    #: its disks. (object type -> height of the gripper site below the object's top while pushing (the
    #: fingertips just under the top disk's rim: lower pushes only lean it), push travel past its centre)
    TOPPLE = {"Dumbbell": (0.012, 0.06)}

    def _obj_axis(self) -> np.ndarray:
        m, d = self.m_d()
        return d.xmat[self.rs.obj_body_id].reshape(3, 3)[:, 2].copy()

    def upright(self, cos_tilt: float = 0.9) -> bool:
        return abs(float(self._obj_axis()[2])) > cos_tilt

    def _free_room(self, c: np.ndarray, direction: np.ndarray) -> float:
        """Free floor from the object's centre along a horizontal unit direction: to bin 1's walls and to
        an obstacle standing in the bin."""
        rs = self.rs
        lo = np.asarray(rs.bin1_pos[:2]) - np.asarray(rs.bin1_size[:2]) + 0.01
        hi = np.asarray(rs.bin1_pos[:2]) + np.asarray(rs.bin1_size[:2]) - 0.01
        i = int(np.argmax(np.abs(direction)))
        sgn = float(np.sign(direction[i]))
        room = (hi[i] - c[i]) if sgn > 0 else (c[i] - lo[i])
        if self.obstacle_kind is not None and self.obstacle_lo[2] < self.table_z + 0.1:
            j = 1 - i
            if self.obstacle_lo[j] - 0.05 < c[j] < self.obstacle_hi[j] + 0.05:  # the obstacle is in line
                gap = (self.obstacle_lo[i] - c[i]) if sgn > 0 else (c[i] - self.obstacle_hi[i])
                if gap > 0:
                    room = min(room, gap)
        return float(room)

    def _topple_phases(self, start_i: int) -> list:
        """Push a tall object over at its top (object-type table TOPPLE) along the horizontal axis with
        the most free floor on both sides; skipped (check) once the object lies."""
        if self.obj_type not in self.TOPPLE or not self.upright():
            return []
        below_top, travel = self.TOPPLE[self.obj_type]
        c = self.obj_center()
        lo, hi = self.geoms_aabb(self.obj_geoms)
        r = 0.5 * float(hi[0] - lo[0])
        h = float(hi[2] - lo[2])
        best = None
        for dirn in (np.array([1.0, 0, 0]), np.array([-1.0, 0, 0]), np.array([0, 1.0, 0]), np.array([0, -1.0, 0])):
            ahead = self._free_room(c, dirn) - (h + r)  # it falls over its length
            behind = self._free_room(c, -dirn) - (r + 0.04)  # the closed fingers start beside it
            margin = min(ahead, behind)
            if c[0] - dirn[0] * (r + 0.03) > 0.2:  # a start this far from the robot is at the edge of its reach
                margin -= 0.1
            if best is None or margin > best[0]:
                best = (margin, dirn)
        dirn = best[1]
        z = float(hi[2]) - below_top
        start = np.r_[c[:2] - dirn[:2] * (r + 0.03), z]
        end = np.r_[c[:2] + dirn[:2] * travel, z]
        after = start_i + 4  # the phase after these: the approach to the grasp ("over", then "pre")

        def lying():
            return after if not self.upright(0.7) else None

        def fallen():
            return after - 1 if not self.upright(0.7) else None

        def up():
            return np.r_[self.phase_start_pos[:2], max(self.phase_start_pos[2], self.geoms_aabb(self.obj_geoms)[1][2] + 0.05)]

        def clear():  # straight on to "pre" once turned: the fingers are beside the object, nothing in between
            R, Rt = self.arm.rot(), self.R_target
            turned = np.linalg.norm(0.5 * sum(np.cross(R[:, i], Rt[:, i]) for i in range(3))) < 0.1
            if self.phase_t >= 45 or (turned and np.linalg.norm(up() - self.arm.pos()) < 0.02):
                return after + 1
            return None

        return [
            Phase("tip-over", lambda: np.r_[start[:2], self.z_clear], CLOSE, tol=0.03, max_steps=120, check=lying),
            Phase("tip-down", lambda: start, CLOSE, tol=0.008, max_steps=80, check=lying),
            Phase("tip-push", lambda: end, CLOSE, tol=0.01, max_steps=100, speed=0.015, check=fallen),
            Phase("tip-up", up, OPEN, tol=0.0, max_steps=60, check=clear, rot=self.grasp_rot, smooth=True),
        ]

    def grasp_rot(self) -> np.ndarray:
        """Gripper orientation for the grasp: fingers down, closing along world y, or across a lying
        dumbbell's handle (the sign nearest the current closing direction)."""
        if self.obj_type == "Dumbbell" and not self.upright(0.7):
            ax = self._obj_axis()
            u = np.array([-ax[1], ax[0], 0.0])
            if np.linalg.norm(u) > 1e-6:
                u /= np.linalg.norm(u)
                if u @ self.arm.closing_dir() < 0:
                    u = -u
                return self.arm.target_rot(u)
        return self.R_y

    def grasp_point(self) -> np.ndarray:
        m, d = self.m_d()
        t = self.obj_type
        if t == "Dumbbell":
            if not self.upright(0.7):  # lying: the handle's middle, pads over its equator
                c = d.xpos[self.rs.obj_body_id]
                return np.array([c[0], c[1], c[2] - 0.005])
            # upright: pinch a chord of the top disk beside the handle (rarely holds)
            disks = sorted(self.obj_geoms, key=lambda n: d.geom_xpos[m.geom(n).id][2])
            c = d.geom_xpos[m.geom(disks[-1]).id]
            return np.array([c[0] - 0.043, c[1], c[2] - 0.006])
        if t == "Plate":  # pinch a chord of the plate's rim
            disk = max(self.obj_geoms, key=lambda n: m.geom_size[m.geom(n).id][0])
            c = d.geom_xpos[m.geom(disk).id]
            return np.array([c[0] - 0.056, c[1], c[2] - 0.005])
        lo, hi = self.geoms_aabb(self.obj_geoms)
        c = 0.5 * (lo + hi)
        if t == "Hollowbox":  # straddle the wall on the -y side
            wall = min(self.obj_geoms, key=lambda n: d.geom_xpos[m.geom(n).id][1])
            wlo, whi = _aabb(m, d, m.geom(wall).id)
            return np.array([c[0], 0.5 * (wlo[1] + whi[1]), whi[2] - 0.018])
        return np.array([c[0], c[1], hi[2] - 0.025])  # Box: the upper half of its sides

    def pre_grasp(self) -> np.ndarray:
        """Above the grasp point with the fingertips over the object's top."""
        g = self.grasp_point()
        top = float(self.geoms_aabb(self.obj_geoms)[1][2])
        return np.r_[g[:2], max(g[2] + 0.04, top + 0.03)]

    def obj_bottom(self) -> float:
        return float(self.geoms_aabb(self.obj_geoms)[0][2])

    def obj_center(self) -> np.ndarray:
        lo, hi = self.geoms_aabb(self.obj_geoms)
        return 0.5 * (lo + hi)

    def held_offset(self) -> np.ndarray:
        """eef - object centre while held (from the grasp geometry)."""
        return self.arm.pos() - self.obj_center()

    def slipped(self):
        """Back to the approach when the object is no longer between the fingers."""
        off = self.arm.pos() - self.obj_center()
        if np.linalg.norm(off[:2]) > 0.09 or off[2] > self.obj_h / 2 + 0.06:
            return 0
        return None

    def carry_z(self, bottom: float) -> float:
        """eef height that puts the held object's bottom at `bottom`."""
        return float(bottom + (self.arm.pos()[2] - self.obj_bottom()))

    def _goal_xy(self) -> np.ndarray:
        return self.rs.sim.model.body_pos[self.rs.goal_body_id][:2].copy()

    push_wall_pitch = 25.0  # degrees, see _pitched_back

    def _pitched_back(self):
        """Orientation target for Push past a GoalWall / ObjectDoor: the fingers pitched back towards
        the robot, so the wrist sits ahead (+x) of the fingertips and the forearm higher: with the
        fingers down and the object low, the forearm / wrist ride on the wall's or the frame's top."""
        th = np.deg2rad(self.push_wall_pitch)
        Ry = np.array([[math.cos(th), 0.0, math.sin(th)], [0.0, 1.0, 0.0], [-math.sin(th), 0.0, math.cos(th)]])
        return lambda: Ry @ self.R_target  # at the phase's start: the grasp's orientation

    def _past_wall(self, z, speed=0.04):
        """Waypoints carrying the object past the GoalWall (28 cm tall, between the bins, in x from
        20 cm before the bins' centre to 1 cm past it). Push (the object stays under 10 cm and bin 2
        has 10 cm walls, open towards bin 1): through the gap between the wall's far end and bin 2's
        front wall at height `z()`, the fingers pitched back. Otherwise diagonally up over the wall's top and on: the
        detour around its robot-side end folds the arm near its joint limits and takes ~130 steps
        more (measured on Panda_Box_GoalWall_PickPlace)."""
        if self.obstacle_kind != "GoalWall":
            return []
        lo, hi = self.obstacle_lo, self.obstacle_hi
        hx, hy = self.obj_half_xy
        rot = None
        if self.objective == "Push":
            x = float(hi[0]) + 0.09
            rot = self._pitched_back()  # the forearm passes over the wall's top

            def at(y):
                def f():
                    off = self.held_offset()
                    return np.r_[x + off[0], y + off[1], z()]
                return f
        else:
            zb = float(hi[2]) + 0.03  # object bottom over the wall's top

            def at(y):
                def f():
                    off = self.held_offset()
                    return np.r_[self.phase_start_pos[0], y + off[1], self.carry_z(zb)]
                return f
        ys = (float(lo[1] - hy - 0.03), float(hi[1] + hy + 0.05))  # past it: the gripper's base too
        return [Phase("via", at(ys[0]), CLOSE, tol=0.03, max_steps=150, speed=speed, check=self.slipped, rot=rot),
                Phase("via2", at(ys[1]), CLOSE, tol=0.03, max_steps=100, speed=speed, check=self.slipped)]

    def _carry_phases(self, dest_xy, bottom_z, end_tol=0.025):
        """Lift to the travel height, move over dest (object centre over dest_xy), past the GoalWall."""
        # ObjectDoor: the arm reaches far over the frame and sags ~3 cm under its target while carrying;
        # 3 cm more keeps the object over bin 2's 10 cm near wall
        z_travel_bottom = max(bottom_z, 0.96 if self.obstacle_kind == "ObjectDoor" else 0.93)

        def lift():
            return np.r_[self.phase_start_pos[:2], self.carry_z(z_travel_bottom)]

        def over():
            off = self.held_offset()
            return np.r_[np.asarray(dest_xy()) + off[:2], self.carry_z(z_travel_bottom)]

        return [Phase("lift", lift, CLOSE, tol=0.03, max_steps=80, check=self.slipped),
                *self._past_wall(lambda: self.carry_z(z_travel_bottom)),
                Phase("carry", over, CLOSE, tol=end_tol, max_steps=150, check=self.slipped)]

    def _plan_PickPlace(self):
        bin_floor = float(self.rs.bin2_pos[2]) + 0.02  # bin 2's floor surface

        def place():
            off = self.held_offset()
            return np.r_[self._goal_xy() + off[:2], self.carry_z(bin_floor + 0.012)]

        return self._carry_phases(self._goal_xy, 0.93) + [
            Phase("place", place, CLOSE, tol=0.01, max_steps=120, speed=0.025, check=self.slipped),
            Phase("hold", place, CLOSE, tol=0.0, max_steps=10 ** 6, speed=0.01),
        ]

    def _plan_Trashcan(self):
        rs = self.rs
        can_xy = np.asarray(rs.trashcan_pos[:2], dtype=np.float64)
        rim = float(rs.trashcan_pos[2]) + 0.165  # top of the can's walls

        def drop():
            off = self.held_offset()
            return np.r_[can_xy + off[:2], self.carry_z(rim + 0.025)]

        def up():
            return np.r_[self.phase_start_pos[:2], max(self.phase_start_pos[2], rim + 0.08)]

        return self._carry_phases(lambda: can_xy, rim + 0.04) + [
            Phase("lower", drop, CLOSE, tol=0.012, max_steps=80, speed=0.02, check=self.slipped),
            Phase("release", lambda: self.phase_start_pos, OPEN, tol=0.0, min_steps=15, max_steps=15),
            Phase("up", up, OPEN, tol=0.0, max_steps=10 ** 6, speed=0.02),
        ]

    def _plan_Shelf(self):
        """The board sits under a top 15 cm above it: a gripper pointing straight down cannot reach in
        (its wrist hits the top). The held object is carried in front of the shelf, pitched forward
        (fingers towards +y, wrist back and up), slid in low over the board, released, and the
        gripper backs out."""
        rs = self.rs
        board = float(rs.shelf_pos[2] + rs.shelf_z_offset)  # top of the shelf board
        front = float(rs.shelf_pos[1] - 2 * rs.shelf_y_size)  # front edge of the shelf (y)
        x = float(rs.shelf_pos[0])
        inside_y = front + 0.09  # object centre: past the success region's front (front + 0.04)
        # GoalWall: the wall stands ~14 cm before the shelf's front and the tilted wrist leans back
        # over it: tilt less, tilt and stage closer to the shelf and higher (the wrist over the wall)
        wall = self.obstacle_kind == "GoalWall"
        stage_y, stage_z, dest_y = (front - 0.04, 0.06, front - 0.04) if wall else (front - 0.07, 0.025, front - 0.1)
        th = np.deg2rad(45.0 if wall else 60.0)
        c, s_ = math.cos(th), math.sin(th)
        Rx = np.array([[1.0, 0, 0], [0, c, -s_], [0, s_, c]])  # fingers from down towards +y

        def to(y, bottom):
            def f():
                off = self.held_offset()
                return np.r_[x + off[0], y + off[1], self.carry_z(bottom)]
            return f

        def back():
            return np.r_[self.phase_start_pos[0], front - 0.12, self.phase_start_pos[2] + 0.01]

        return self._carry_phases(lambda: np.array([x, dest_y]), board + max(0.05, stage_z)) + [
            Phase("tilt", lambda: self.phase_start_pos, CLOSE, tol=0.0, min_steps=30, max_steps=30, speed=0.01,
                  rot=lambda: Rx @ self.R_target, smooth=True),
            Phase("stage", to(stage_y, board + stage_z), CLOSE, tol=0.015, max_steps=80, speed=0.02,
                  check=self.slipped, smooth=True),
            Phase("slide", to(inside_y, board + 0.015), CLOSE, tol=0.015, max_steps=100, speed=0.015,
                  check=self.slipped, smooth=True),
            Phase("release", lambda: self.phase_start_pos, OPEN, tol=0.0, min_steps=15, max_steps=15, smooth=True),
            Phase("back", back, OPEN, tol=0.0, max_steps=10 ** 6, speed=0.015, smooth=True),
        ]

    def _plan_Push(self):
        # object bottom while carried: its centre well under the 0.1 m height limit (a dumbbell's centre is
        # 4.5-4.9 cm above its bottom: it is dragged over the floor)
        low = min(self.table_z + 0.02, float(self.rs.bin2_pos[2]) + 0.064 - (self.obj_center()[2] - self.obj_bottom()))

        def lift():
            return np.r_[self.phase_start_pos[:2], self.carry_z(low)]

        def over():
            off = self.held_offset()
            return np.r_[self._goal_xy() + off[:2], self.carry_z(low)]

        def place():
            off = self.held_offset()
            return np.r_[self._goal_xy() + off[:2], self.carry_z(self.table_z + 0.003)]

        P = [Phase("lift", lift, CLOSE, tol=0.01, max_steps=40, check=self.slipped),
             *self._past_wall(lambda: self.carry_z(low), speed=0.025)]
        door = self._pitched_back() if self.obstacle_kind == "ObjectDoor" else None
        P += [Phase("carry", over, CLOSE, tol=0.006, max_steps=200, speed=0.025, check=self.slipped, rot=door),
              Phase("place", place, CLOSE, tol=0.006, max_steps=40, speed=0.01, check=self.slipped),
              Phase("release", lambda: self.phase_start_pos, OPEN, tol=0.0, min_steps=12, max_steps=12),
              Phase("up", lambda: self.phase_start_pos + [0, 0, 0.08], OPEN, tol=0.0, max_steps=10 ** 6,
                    speed=0.01)]
        return P


class MimicgenExpert(WaypointExpert):
    """Mimicgen Stack / StackThree (and their D1 variants): pick a cube with the fingers turned to its
    faces, carry it over the target cube, lower until it rests on it, release, rise; StackThree
    does it twice (A on B, then C on A). Square / NutAssembly: put the nut(s) on their pegs
    (`_nut_on_peg`)."""

    gain = 1.0
    #: integral gain on the position error (per step, leaky); the nut tasks turn it on: the OSC leaves
    #: Sawyer (NutAssembly's robot) 2-3 cm short of its targets
    i_gain = 0.0

    def step_phases(self) -> np.ndarray:
        a = super().step_phases()
        if self.i_gain > 0:
            i = min(self.phase_i, len(self.phases) - 1)
            if i != getattr(self, "_i_phase", None):  # a new phase: forget the old error
                self._i_phase, self.i_err = i, np.zeros(3)
            err = self.phases[i].target() - self.arm.pos()
            self.i_err = np.clip(0.95 * self.i_err + err, -0.15, 0.15)
            a[:3] = np.clip(a[:3] + self.i_gain * self.i_err / self.arm.out_max[:3], -1.0, 1.0)
        return a

    def plan(self) -> None:
        rs, arm = self.rs, self.arm
        name = type(rs).__name__
        base = name.rsplit("_D", 1)[0]
        self.table_z = float(rs.table_offset[2])
        self.close_dir = arm.closing_dir()
        self.R_target = arm.target_rot(self.close_dir)
        if base in ("Square", "NutAssembly"):  # Square: the square nut; NutAssembly: both nuts, each on its peg
            self.i_gain, self._i_phase = 0.1, None
            pegs = (rs.peg1_body_id, rs.peg2_body_id)
            ids = [rs.nut_id] if base == "Square" else range(len(rs.nuts))
            P = []
            for i in ids:
                P += self._nut_on_peg(rs.nuts[i], pegs[i], first=len(P), square=rs.nuts[i].name == "SquareNut")
            P.append(Phase("wait", lambda: self.phase_start_pos, OPEN, tol=0.0, max_steps=10 ** 6, speed=0.01))
            self.phases = P
            self.phase_start_pos = arm.pos()
            return
        if base == "Stack":
            pairs = [(rs.cubeA_body_id, rs.cubeA, rs.cubeB_body_id, rs.cubeB)]
        elif base == "StackThree":
            pairs = [(rs.cubeA_body_id, rs.cubeA, rs.cubeB_body_id, rs.cubeB),
                     (rs.cubeC_body_id, rs.cubeC, rs.cubeA_body_id, rs.cubeA)]
        else:
            raise ValueError(f"mimicgen expert: no scripted expert for {name} (have: {MIMICGEN_HAVE})")
        P = []
        self._n_phases = 0
        for pick_id, pick_obj, place_id, place_obj in pairs:
            P += self._pick_place(pick_id, pick_obj, place_id, place_obj)
        P.append(Phase("wait", lambda: self.phase_start_pos, OPEN, tol=0.0, max_steps=10 ** 6, speed=0.01))
        self.phases = P
        self.phase_start_pos = arm.pos()

    def _half(self, obj) -> float:
        return float(np.max(obj.size)) if hasattr(obj, "size") else 0.02

    def _align(self, body_id):
        """Orientation target turning the closing axis onto the nearest face normal of the body."""
        R = self.arm.d.xmat[body_id].reshape(3, 3)
        cur = self.arm.closing_dir()
        cands = [s * R[:, i] for i in (0, 1) for s in (1.0, -1.0)]
        best = max(cands, key=lambda c: float(c[:2] @ cur[:2]) / max(np.linalg.norm(c[:2]), 1e-9))
        return self.arm.target_rot(best)

    def _pick_place(self, pick_id, pick_obj, place_id, place_obj):
        hp, hq = self._half(pick_obj), self._half(place_obj)
        z_clear = self.table_z + 0.15

        def pos(i):
            return self.arm.d.xpos[i].copy()

        def start_align():
            self.R_target = self._align(pick_id)
            return np.r_[pos(pick_id)[:2], z_clear]

        def held():
            return self.arm.pos() - pos(pick_id)

        def slipped():
            off = held()
            if np.linalg.norm(off) > 0.05:
                return first
            return None

        def above_place():
            return np.r_[pos(place_id)[:2] + held()[:2], z_clear]

        def on_place():
            return np.r_[pos(place_id)[:2] + held()[:2], pos(place_id)[2] + hq + hp + 0.006 + held()[2]]

        first = getattr(self, "_n_phases", 0)
        P = [
            Phase("rise", lambda: np.r_[self.phase_start_pos[:2], max(self.phase_start_pos[2], z_clear)], OPEN,
                  tol=0.02, max_steps=40),
            Phase("over", start_align, OPEN, tol=0.01, max_steps=80),
            Phase("pre", lambda: pos(pick_id) + [0, 0, 0.05], OPEN, tol=0.008, max_steps=60),
            Phase("down", lambda: pos(pick_id) + [0, 0, 0.002], OPEN, tol=0.006, max_steps=50, speed=0.02),
            Phase("grasp", lambda: pos(pick_id), CLOSE, tol=0.0, min_steps=10, max_steps=10, speed=0.005),
            Phase("lift", lambda: np.r_[pos(pick_id)[:2] + held()[:2], z_clear], CLOSE, tol=0.02, max_steps=60,
                  check=slipped),
            Phase("carry", above_place, CLOSE, tol=0.006, max_steps=100, check=slipped),
            Phase("lower", on_place, CLOSE, tol=0.004, max_steps=60, speed=0.015, check=slipped),
            Phase("release", lambda: self.phase_start_pos, OPEN, tol=0.0, min_steps=8, max_steps=8),
            Phase("up", lambda: self.phase_start_pos + [0, 0, 0.08], OPEN, tol=0.01, max_steps=40, speed=0.02),
        ]
        self._n_phases = first + len(P)
        return P

    def _nut_on_peg(self, nut, peg_id, first: int = 0, square: bool = True):
        """Square / NutAssembly: grasp the nut by its handle (fingers closing across it), lift it over the
        peg's top, turn it (handle towards the robot; a square nut square to its peg), centre its hole
        over the peg, lower it down the peg, release, rise. `first`: index of the first phase (a
        slipped nut restarts there).

        robosuite's check (`NutAssembly.on_peg`): the nut's centre within 3 cm (x and y) of the peg's
        axis, below table + 5 cm, and the gripper off it (> ~4 cm from the nut's centre)."""
        m, d = self.m_d()
        nut_id = m.body(nut.root_body).id
        handle = m.site(nut.important_sites["handle"]).id
        peg_geom = [g for g in range(m.ngeom) if m.geom_bodyid[g] == peg_id][0]
        peg_top = float(_aabb(m, d, peg_geom)[1][2])
        half_t = 0.01  # the nut's plates are 2 cm thick
        carry_c = peg_top + half_t + 0.035  # nut centre while carried: its bottom 3.5 cm over the peg
        low_c = self.table_z + half_t + 0.012  # nut centre lowered to (ends within 1 cm; success: < table + 5 cm)

        def nut_c():
            return d.xpos[nut_id].copy()

        def peg_xy():
            return d.xpos[peg_id][:2].copy()

        def held():  # eef - nut centre while held
            return self.arm.pos() - nut_c()

        q7 = self.arm.qpos_idx[-1]  # the wrist's last joint turns the gripper about the vertical
        # +1: this joint turns the gripper like a world yaw (its axis points up), -1: the other way
        q7_sign = 1.0 if d.xaxis[self.arm.robot._ref_joint_indexes[-1]][2] >= 0 else -1.0
        q7_lim = 0.95 * float(np.min(np.abs(m.jnt_range[self.arm.robot._ref_joint_indexes[-1]])))
        plan = {}

        def nut_yaw():
            R = d.xmat[nut_id].reshape(3, 3)
            return math.atan2(R[1, 0], R[0, 0])  # the handle's direction

        def grasp_rot():
            """Fingers close across the handle (the nut's y axis). Of the two grasps (180 deg apart) and
            the handle's final directions (nut square to the peg; handle towards the robot, else
            sideways: the far side is out of the arm's reach), the pair nearest the robot that keeps
            the wrist joint inside its limits, then the least turning."""
            yaw, cur = nut_yaw(), self.arm.closing_dir()
            c0, q_now = math.atan2(cur[1], cur[0]), float(d.qpos[q7])
            best = None
            for sign in (0.0, math.pi):
                turn_g = _wrap(yaw + math.pi / 2 + sign - c0)
                q_g = q_now + q7_sign * turn_g
                for pref, phi in enumerate((math.pi, math.pi / 2, -math.pi / 2)):
                    turn = _wrap(phi - yaw)
                    q_f = q_g + q7_sign * turn
                    if abs(q_g) > q7_lim or abs(q_f) > q7_lim:
                        continue
                    key = (pref, abs(turn_g) + abs(turn))
                    if best is None or key < best[0]:
                        best = (key, yaw + math.pi / 2 + sign, q_f)
            if best is None:  # no turn keeps the joint in range: grasp the nearest way, turn later as far as it goes
                best = (None, yaw + math.pi / 2 + (0.0 if math.cos(yaw + math.pi / 2 - c0) >= 0 else math.pi),
                        float(np.clip(q_now, -q7_lim, q7_lim)))
            plan["q7_final"] = best[2]
            return self.arm.target_rot(np.array([math.cos(best[1]), math.sin(best[1]), 0.0]))

        def _turn_left():
            return q7_sign * (plan["q7_final"] - float(d.qpos[q7]))  # world yaw still to turn

        def turning():
            """Head for the peg at the carry height while turning the held nut to its planned direction
            (<= 0.4 rad per step); turned: the target is where the eef is (the phase ends)."""
            rem = _turn_left()
            if abs(rem) < 0.05:
                return self.arm.pos()
            self.R_target = _rot_z(float(np.clip(rem, -0.4, 0.4))) @ self.arm.rot()
            return at_c(carry_c)()

        def square_rot():
            """Turn the held nut so that its sides are parallel to the peg's (yaw error mod 90 deg)."""
            if not square:  # a round nut fits its round peg at any yaw
                return self.arm.rot()
            err = (nut_yaw() + math.pi / 4) % (math.pi / 2) - math.pi / 4
            return _rot_z(-err) @ self.arm.rot()

        def slipped():
            if np.linalg.norm(self.arm.pos() - d.site_xpos[handle]) > 0.035:
                return first
            return None

        def at_c(z, xy=None):
            def f():
                h = held()
                base = peg_xy() if xy is None else xy()
                return np.r_[base + h[:2], z + h[2]]
            return f

        def grasp_point():
            return d.site_xpos[handle] + [0.0, 0.0, 0.002]

        z_clear = max(self.table_z + 0.15, carry_c + 0.02)
        return [
            Phase("rise", lambda: np.r_[self.phase_start_pos[:2], max(self.phase_start_pos[2], z_clear)], OPEN,
                  tol=0.02, max_steps=40),
            Phase("over", lambda: np.r_[d.site_xpos[handle][:2], z_clear], OPEN, tol=0.015, max_steps=80,
                  rot=grasp_rot),
            Phase("pre", lambda: grasp_point() + [0, 0, 0.05], OPEN, tol=0.006, max_steps=60),
            Phase("down", grasp_point, OPEN, tol=0.006, max_steps=30, speed=0.015),
            Phase("grasp", grasp_point, CLOSE, tol=0.0, min_steps=12, max_steps=12, speed=0.005),
            Phase("lift", at_c(carry_c, lambda: nut_c()[:2]), CLOSE, tol=0.015, max_steps=60, check=slipped),
            Phase("turn", turning, CLOSE, tol=1e-9, max_steps=40, check=slipped),
            Phase("carry", at_c(carry_c), CLOSE, tol=0.01, max_steps=100, check=slipped, rot=square_rot),
            Phase("align", at_c(peg_top + half_t + 0.01), CLOSE, tol=0.003, max_steps=60, speed=0.01,
                  check=slipped),
            Phase("lower", at_c(low_c), CLOSE, tol=0.01, max_steps=80, speed=0.01, check=slipped),
            Phase("release", lambda: self.phase_start_pos, OPEN, tol=0.0, min_steps=10, max_steps=10),
            Phase("up", lambda: self.phase_start_pos + [0, 0, 0.1], OPEN, tol=0.01, max_steps=30, speed=0.03),
        ]


def _wrap(a: float) -> float:
    """Angle in [-pi, pi)."""
    return (a + math.pi) % (2 * math.pi) - math.pi


def _rot_z(a: float) -> np.ndarray:
    c, s_ = math.cos(a), math.sin(a)
    return np.array([[c, -s_, 0.0], [s_, c, 0.0], [0.0, 0.0, 1.0]])


MIMICGEN_HAVE = ", ".join(f"{t}_D*" for t in MIMICGEN_TASKS)


def robotics_expert(task_id: str, config: RoboticsExpertConfig | None = None) -> WaypointExpert:
    """The scripted expert for a ``composuite/...`` or ``mimicgen/...`` task id (or TaskSpec)."""
    tid = getattr(task_id, "id", task_id)
    domain, _, name = str(tid).partition("/")
    if domain == "composuite":
        parts = name.split("_")
        if len(parts) != 4 or parts[3] not in COMPOSUITE_OBJECTIVES:
            raise ValueError(f"composuite expert: {tid!r} is not <Robot>_<Object>_<Obstacle>_<Objective> with "
                             f"Objective in {COMPOSUITE_OBJECTIVES}")
        return ComposuiteExpert(name, config)
    if domain == "mimicgen":
        base = name.split("-")[0].rsplit("_D", 1)[0]
        if base not in MIMICGEN_TASKS:
            raise ValueError(f"mimicgen expert: no scripted expert for {tid!r}; have {MIMICGEN_HAVE}")
        return MimicgenExpert(name, config)
    raise ValueError(f"robotics expert: {tid!r} is not a composuite/ or mimicgen/ task")
