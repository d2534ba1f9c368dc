"""Environments with the paper's conventions (App. B): `make_env(task, seed, render)`.

    env = make_env("atari/freeway", seed=0)         # obs (1, 64, 64) uint8, 18 discrete actions
    env = make_env("dmcontrol/cheetah-run", seed=0) # obs (17,) float32, actions (6,) in [-1, 1]
    ok, reason = domain_available("composuite")
    ok, reason = task_available("mimicgen/Kitchen_D0")  # a task's own extra needs, too

A task is a manifest task id `"<domain>/<name>"` (or a bare unique name, or a TaskSpec from
`lramlab.manifests.get_task`). The env's spaces are checked against the manifest's `obs_shape`
and `action_dim`. Simulators are imported only when a task of their domain is made, so
`import lramlab.envs` needs none of them. MUJOCO_GL defaults to "egl" (headless rendering).
"""
from __future__ import annotations

import functools
import os
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")  # before anything imports mujoco / dm_control

from lramlab._optional import available as _available

__all__ = ["DOMAINS", "make_env", "domain_available", "task_available", "list_domains", "check_spaces"]

DOMAINS: tuple[str, ...] = (
    "atari", "procgen", "dmcontrol", "metaworld", "composuite", "mimicgen", "robosuite", "darkroom",
)

# domain -> (module, builder function) inside lramlab.envs; all builders take
# (name, env_id=None, seed=None, render=False, **options)
_BUILDERS = {
    "atari": ("lramlab.envs.atari", "make_atari"),
    "procgen": ("lramlab.envs.procgen", "make_procgen"),
    "dmcontrol": ("lramlab.envs.dmcontrol", "make_dmcontrol"),
    "metaworld": ("lramlab.envs.metaworld", "make_metaworld"),
    "robosuite": ("lramlab.envs.robosuite", "make_robosuite"),
    "composuite": ("lramlab.envs.robosuite", "make_composuite"),
    "mimicgen": ("lramlab.envs.robosuite", "make_mimicgen"),
}

# Composuite and Mimicgen are not on the package registries (README: "Robotics suites")
COMPOSUITE_INSTALL = ("composuite is not on PyPI: run `make install` (puts ../shared/vendor/CompoSuite, "
                      "else a clone of github.com/Lifelong-ML/CompoSuite, on the venv's path; "
                      "needs robosuite==1.4.1)")
MIMICGEN_INSTALL = ("mimicgen is not on PyPI: run `make install` (puts ../shared/vendor/mimicgen and "
                    "robosuite-task-zoo, else clones of github.com/NVlabs/mimicgen and "
                    "github.com/ARISE-Initiative/robosuite-task-zoo, on the venv's path; "
                    "needs robosuite==1.4.1)")
ZOO_INSTALL = ("mimicgen's HammerCleanup and Kitchen import robosuite_task_zoo: run `make install` "
               "(../shared/vendor/robosuite-task-zoo, else github.com/ARISE-Initiative/robosuite-task-zoo)")

# what must import for a domain to run here, and how to get it when it does not
_REQUIREMENTS: dict[str, tuple[tuple[str, ...], str]] = {
    "atari": (("gymnasium", "ale_py", "cv2"), 'pip install -e ".[envs]" (ale-py ships the ROMs)'),
    "procgen": (("gymnasium", "procgen", "gym3", "cv2"),
                'pip install -e ".[envs]" (procgen2 wheels: CPython 3.11 x86_64; needs numpy<2)'),
    "dmcontrol": (("gymnasium", "dm_control.suite"), 'pip install -e ".[envs]"'),
    "metaworld": (("gymnasium", "metaworld"), 'pip install -e ".[envs]" (metaworld==3.1.1, mujoco==3.3.0)'),
    "robosuite": (("gymnasium", "robosuite"), 'pip install -e ".[envs]" (robosuite==1.4.1, numpy<2)'),
    "composuite": (("gymnasium", "robosuite", "composuite"), COMPOSUITE_INSTALL),
    "mimicgen": (("gymnasium", "robosuite", "mimicgen.envs.robosuite"), MIMICGEN_INSTALL),
    "darkroom": (("gymnasium", "lramlab.envs.darkroom"), "lramlab.envs.darkroom is part of lramlab"),
}


def list_domains() -> list[str]:
    """All domains make_env knows, available here or not (see domain_available)."""
    return list(DOMAINS)


def _check_domain(domain: str) -> None:
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {list(DOMAINS)}")


@functools.lru_cache(maxsize=None)
def domain_available(domain: str) -> tuple[bool, str]:
    """(True, "") if the domain's simulator imports here, else (False, reason with the fix).

    Cached: the first call per domain imports the simulator (robosuite ~2 s)."""
    _check_domain(domain)
    modules, hint = _REQUIREMENTS[domain]
    for module in modules:
        ok, err = _available(module)
        if not ok:
            return False, f"{domain}: cannot import '{module}' ({err}). {hint}"
    if domain == "mimicgen":  # it imports under robosuite 1.5 too, but registers no task there
        import robosuite

        if "Stack_D0" not in robosuite.ALL_ENVIRONMENTS:
            return False, (f"mimicgen: imported but registered no task with robosuite "
                           f"{robosuite.__version__}. {hint}")
    return True, ""


#: (domain, task-name prefix) -> modules one task needs beyond its domain's, and how to get them
_TASK_REQUIREMENTS: dict[tuple[str, str], tuple[tuple[str, ...], str]] = {
    ("mimicgen", "HammerCleanup_"): (("robosuite_task_zoo",), ZOO_INSTALL),
    ("mimicgen", "Kitchen_"): (("robosuite_task_zoo",), ZOO_INSTALL),
}


def task_available(task: Any) -> tuple[bool, str]:
    """(True, "") if `task` (id, bare name or TaskSpec) can be made here, else (False, why + fix):
    its domain's simulator imports and the task's own extra modules (Mimicgen's task zoo) do."""
    _, domain, name = _lookup(task)
    ok, reason = domain_available(domain)
    if not ok:
        return ok, reason
    for (dom, prefix), (modules, hint) in _TASK_REQUIREMENTS.items():
        if dom == domain and name.startswith(prefix):
            for module in modules:
                ok, err = _available(module)
                if not ok:
                    return False, f"{domain}/{name}: cannot import '{module}' ({err}). {hint}"
    return True, ""


def _lookup(task: Any):
    """TaskSpec for `task` from the manifests; (None, domain, name) if lramlab.manifests is absent."""
    if not isinstance(task, str):  # a TaskSpec (or anything with its fields)
        return task, task.domain, task.name
    try:
        from lramlab.manifests import get_task
    except ModuleNotFoundError as err:
        if err.name != "lramlab.manifests":
            raise
        if "/" not in task:
            raise ValueError(f"task {task!r}: without lramlab.manifests a task must be "
                             "'<domain>/<name>'") from err
        domain, name = task.split("/", 1)
        return None, domain, name
    spec = get_task(task)
    return spec, spec.domain, spec.name


def make_env(task: Any, seed: int | None = None, render: bool = False, **options: Any):
    """A gymnasium env for `task` (task id, bare unique name, or TaskSpec).

    seed: used by the first `reset()` that passes none (and seeds the action space); two envs
    made with the same seed give the same first observations. render: env.render() returns
    (H, W, 3) uint8 rgb frames. options: per-domain switches (e.g. Atari `clip_rewards=True`,
    DMControl `obs_layout="full"`); an unknown option is a TypeError from the domain builder.
    """
    spec, domain, name = _lookup(task)
    _check_domain(domain)
    ok, reason = domain_available(domain)
    if not ok:
        raise RuntimeError(f"task {domain}/{name}: domain unavailable here: {reason}")
    ok, reason = task_available(spec if spec is not None else f"{domain}/{name}")
    if not ok:
        raise RuntimeError(f"task {domain}/{name}: unavailable here: {reason}")
    if domain == "darkroom":
        from lramlab.envs.darkroom import make_darkroom

        env = make_darkroom(spec if spec is not None else f"{domain}/{name}", seed, render)
    else:
        import importlib

        module, fn = _BUILDERS[domain]
        builder = getattr(importlib.import_module(module), fn)
        env_id = getattr(spec, "env_id", None) if spec is not None else None
        options = {**_spec_options(domain, spec), **options}  # explicit options win
        env = builder(name, env_id=env_id or None, seed=seed, render=render, **options)
    if spec is not None:
        check_spaces(env, spec)
    return env


def _spec_options(domain: str, spec: Any) -> dict[str, Any]:
    """Builder options that a manifest entry fixes (episode length, procgen levels, robot)."""
    if spec is None:
        return {}
    extra = dict(getattr(spec, "extra", None) or {})
    length = int(spec.episode_length)
    if domain == "atari":
        return {"max_episode_steps": length}
    if domain == "procgen":  # procgen ends episodes itself; episode_length only documents that
        return {k: extra[k] for k in ("distribution_mode", "num_levels", "start_level") if k in extra}
    if domain in ("dmcontrol", "metaworld"):
        return {"episode_length": length}
    if domain == "robosuite":
        opts: dict[str, Any] = {"horizon": length}
        if isinstance(extra.get("robots"), str):
            opts["robot"] = extra["robots"]
        return opts
    if domain in ("composuite", "mimicgen"):
        return {"horizon": length}
    return {}


def check_spaces(env, spec) -> None:
    """ValueError unless env's observation shape and action size equal the TaskSpec's."""
    obs_shape = tuple(env.observation_space.shape or ())
    if tuple(spec.obs_shape) != obs_shape:
        raise ValueError(f"task {spec.id}: env observation shape {obs_shape} != manifest obs_shape "
                         f"{tuple(spec.obs_shape)}")
    space = env.action_space
    if spec.action_kind == "discrete":
        n = getattr(space, "n", None)
        if n is None or int(n) != int(spec.action_dim):
            raise ValueError(f"task {spec.id}: env action space {space} != manifest discrete "
                             f"action_dim {spec.action_dim}")
    else:
        dim = space.shape[0] if getattr(space, "shape", None) else None
        if dim != int(spec.action_dim):
            raise ValueError(f"task {spec.id}: env action space {space} != manifest continuous "
                             f"action_dim {spec.action_dim}")
