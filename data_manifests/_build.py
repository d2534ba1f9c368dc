"""One-off builder of `data_manifests/<domain>.yaml` from `../shared/reference/`.

Run from the repository root with the project venv:

    .venv/bin/python data_manifests/_build.py [--reference ../shared/reference] [--out data_manifests]

Inputs (facts taken from ml-jku/LRAM, each naming its source): `tasks.yaml` (432 train / 37 hold-out
tasks and the Dark-Room goals), `domain_specs.yaml` (spaces, reward scales, target returns, episode
lengths), `score_normalization.csv` (normalisation constants), `darkroom.yaml`.

Facts the reference leaves open were measured here, not guessed:
- DMControl observation/action dims: loaded with `dm_control.suite` (flat obs = sum of the task's
  observation keys; the paper's 204-dim union layout is applied later, by padding).
- robosuite (standard single-arm tasks, Panda): robosuite 1.4.1 (the version Composuite and Mimicgen
  need) with `lramlab.envs.make_env`: flat object-state + robot0_proprio-state, OSC_POSE controller;
  measured once per task (kept as a table below because building 13 envs takes ~1 min; the sizes
  are smaller than under 1.5.2, e.g. Lift 42 here, 60 on 1.5.2). tests/test_robotics_envs.py checks them.
- Atari minimal action sets (`extra.minimal_actions`, as full-set indices): ale-py's
  `getMinimalActionSet()` for each game's ROM. DQN-Replay stores actions as indices into that set
  (Dopamine plays the minimal set); `lramlab data import dqn-replay` maps them to the full 18-action
  set the envs and the head use. Kept in the manifests so the importer needs no simulator.
- Procgen time-outs: `gym.make("procgen:procgen-<game>-v0")` with the no-op action until done
  (maze 500 steps, heist/coinrun 1000; procgen's default time-out is 1000).
- Composuite (obs 93, act 8; paper App. B.5): measured with `composuite.make(...,
  use_task_id_obs=True)` on robosuite 1.4.1 - the same for all 4 robots (7 joints + gripper).
- Mimicgen (act 7; paper App. B.6 says obs 37): the low-dim keys of LRAM's data (robot0_eef_pos 3,
  robot0_eef_quat 4, robot0_gripper_qpos, object-state) measure 37 only for Threading,
  NutAssembly and HammerCleanup; every task gets its measured size (MIMICGEN_OBS below: the
  Panda/Sawyer size per task + 4 for the Robotiq85 gripper's 6-d qpos on IIWA/UR5e), checked for
  all 85 tasks by `pytest --exhaustive tests/test_robotics_envs.py`.

The output is deterministic (tasks in reference order); `lramlab.manifests` validates it on load.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent

REWARD_SCALE = {"atari": 20.0, "procgen": 1.0, "dmcontrol": 100.0, "metaworld": 200.0,
                "composuite": 1.0, "mimicgen": 1.0, "darkroom": 1.0, "robosuite": 1.0}

# robosuite 1.4.1, Panda, OSC_POSE, object-state + robot0_proprio-state: name -> (obs dim, action dim).
# Horizon 1000 for all. Wipe has no gripper (6-d actions).
ROBOSUITE = {
    "Lift": (42, 7), "Stack": (55, 7), "Door": (46, 7), "NutAssembly": (60, 7),
    "NutAssemblySquare": (46, 7), "NutAssemblyRound": (46, 7), "PickPlace": (88, 7),
    "PickPlaceCan": (46, 7), "PickPlaceMilk": (46, 7), "PickPlaceBread": (46, 7),
    "PickPlaceCereal": (46, 7), "Wipe": (37, 6), "ToolHang": (76, 7),
}
# Mimicgen low-dim observation size per task with a 2-finger-qpos gripper (Panda, Sawyer), robosuite 1.4.1
MIMICGEN_OBS = {
    "Coffee": 66, "CoffeePreparation": 95, "HammerCleanup": 37, "Kitchen_D0": 65, "Kitchen_D1": 79,
    "MugCleanup": 38, "NutAssembly": 37, "PickPlace": 65, "Square_D0": 23, "Square_D1": 26,
    "Square_D2": 26, "StackThree": 48, "Stack": 32, "Threading": 37, "ThreePieceAssembly": 51,
}
MIMICGEN_GRIPPER_QPOS = {"Panda": 2, "Sawyer": 2, "IIWA": 6, "UR5e": 6}  # Robotiq85 on IIWA/UR5e


def mimicgen_obs_dim(task: str, robot: str) -> int:
    """`Square_D1`, `IIWA` -> the measured flat low-dim size (a `<Task>_D<n>` key wins over `<Task>`)."""
    base = MIMICGEN_OBS.get(task, MIMICGEN_OBS.get(task.rsplit("_D", 1)[0]))
    return base - 2 + MIMICGEN_GRIPPER_QPOS[robot]


PROCGEN_TIMEOUT = {"maze": 500}  # measured; every other game: 1000

LRAM = "github.com/ml-jku/LRAM @ a984cdf5b9848369871c033813fe60beceadeb50"


def _gen(policy: str) -> dict:
    return {"generator": "lramlab.collect.generate", "policy": policy}


def _public(release: str, url: str, policy: str, **more) -> dict:
    return {"kind": "public", "release": release, "url": url, **more, **_gen(policy)}


def load_csv(path: Path) -> dict[tuple[str, str], dict]:
    """(domain, task) -> row; for Atari/Procgen prefer the hn_scores rows (human / min-max)."""
    rows: dict[tuple[str, str], dict] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            key = (row["domain"], row["task"])
            if key in rows and "hn_scores" in rows[key]["source"]:
                continue
            rows[key] = row
    return rows


def load_dn(path: Path) -> dict[tuple[str, str], dict]:
    """(domain, task) -> the LRAM dn_scores row (the paper's data-normalisation constants, Fig. 3)."""
    with open(path, newline="") as f:
        return {(r["domain"], r["task"]): r for r in csv.DictReader(f) if "dn_scores" in r["source"]}


def atari_minimal_actions(env_ids: list[str]) -> dict[str, list[int]]:
    """env id (`BreakoutNoFrameskip-v4`) -> the game's minimal action set as full-set indices (ale-py)."""
    import re

    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)
    out = {}
    for env_id in env_ids:
        game = re.fullmatch(r"([A-Za-z0-9]+?)NoFrameskip-v4", env_id).group(1)
        env = gym.make(f"ALE/{game}-v5")
        out[env_id] = [int(a.value) for a in env.unwrapped.ale.getMinimalActionSet()]
        env.close()
    return out


def dmc_dims(names: list[str]) -> dict[str, tuple[int, int, list[str]]]:
    import numpy as np
    from dm_control import suite

    out = {}
    for name in names:
        dom, task = name.split("-")
        env = suite.load(dom, task)
        spec = env.observation_spec()
        obs = sum(int(np.prod(v.shape)) for v in spec.values())
        out[name] = (obs, int(env.action_spec().shape[0]), list(spec.keys()))
    return out


def build(ref: Path) -> dict[str, dict]:
    tasks = yaml.safe_load((ref / "tasks.yaml").read_text())
    specs = yaml.safe_load((ref / "domain_specs.yaml").read_text())["domains"]
    dark = yaml.safe_load((ref / "darkroom.yaml").read_text())
    norm = load_csv(ref / "score_normalization.csv")
    dn = load_dn(ref / "score_normalization.csv")
    dom = tasks["domains"]
    out: dict[str, dict] = {}

    def split_items(d):
        for split in ("train", "holdout"):
            for item in d[split]:
                yield split, item

    def dn_of(domain, name):
        row = dn.get((domain, name))
        return None if row is None else {"low": float(row["low"]), "high": float(row["high"]),
                                         "src": row["source"]}

    def norm_of(domain, name, kind):
        row = norm.get((domain, name))
        if row is None:
            return None
        assert row["kind"] == kind or kind == "success", (domain, name, row)
        return {"low": float(row["low"]), "high": float(row["high"]), "src": row["source"]}

    # --- Atari -----------------------------------------------------------------------------
    targets = specs["atari"]["target_returns"]["value"]
    minimal = atari_minimal_actions([it["envid"] for _, it in split_items(dom["atari"])])
    items = []
    for split, it in split_items(dom["atari"]):
        n = norm_of("atari", it["name"], "human")
        entry = {"name": it["name"], "split": split, "env_id": it["envid"],
                 "target_return": float(targets[it["envid"]])}
        extra = {"minimal_actions": minimal[it["envid"]]}
        if n is None:  # carnival, pooyan: not among the 57 games with human scores
            entry.update(score_kind="raw", score_low=None, score_high=None)
            extra["note"] = "no human/random reference scores for this game in the reference"
        else:
            entry.update(score_low=n["low"], score_high=n["high"])
        d = dn_of("atari", it["name"])
        if d is not None:
            extra["data_score"] = d
        entry["extra"] = extra
        items.append(entry)
    out["atari"] = {
        "defaults": {"obs_kind": "image", "obs_shape": [1, 64, 64], "action_kind": "discrete",
                     "action_dim": 18, "reward_scale": REWARD_SCALE["atari"], "score_kind": "human",
                     "episode_length": 6750,
                     "source": _public("DQN Replay Dataset (Agarwal et al., 2020), last 5M transitions",
                                       "https://research.google/tools/datasets/dqn-replay/", "random",
                                       bucket="gs://atari-replay-datasets/dqn")},
        "notes": ["score_low/high = random/human game scores (src/envs/hn_scores.py); normalise raw, "
                  "unclipped game scores", "target_return = LRAM's per-task target (clipped-reward returns, "
                  "src/envs/target_returns.py); the model sees rewards clipped to [-1, 1] "
                  "(lramlab.manifests.REWARD_RULE)", "full 18-action set, grayscale 64x64, frame skip 4, "
                  "<=30 no-ops; episode_length = 6750 agent steps = 27000 frames (ALE "
                  "max_num_frames_per_episode, no-op frames included), as LRAM's evaluation TimeLimit on "
                  "the NoFrameskip env; DQN-Replay episodes may be longer (Dopamine's 27000-step limit)",
                  "extra.minimal_actions = ale-py's minimal action set (full-set indices); DQN-Replay "
                  "actions index it", "extra.data_score = LRAM dn_scores (for Atari: the human constants)"],
        "tasks": items}

    # --- Procgen ---------------------------------------------------------------------------
    targets = specs["procgen"]["target_returns"]["value"]
    items = []
    for split, name in split_items(dom["procgen"]):
        n = norm_of("procgen", name, "minmax")
        items.append({"name": name, "split": split, "env_id": f"procgen:procgen-{name}-v0",
                      "target_return": float(targets[name]), "score_low": n["low"], "score_high": n["high"],
                      "episode_length": PROCGEN_TIMEOUT.get(name, 1000),
                      "extra": {"data_score": dn_of("procgen", name)}})
    out["procgen"] = {
        "defaults": {"obs_kind": "image", "obs_shape": [1, 64, 64], "action_kind": "discrete",
                     "action_dim": 15, "reward_scale": REWARD_SCALE["procgen"], "score_kind": "minmax",
                     "source": _public("Procgen 20M datasets (Schmied et al., 2024b, RA-DT)",
                                       "https://github.com/ml-jku/RA-DT#datasets", "random"),
                     "extra": {"distribution_mode": "easy", "num_levels": 200, "start_level": 0}},
        "notes": ["score_low/high = Procgen min-max constants (src/envs/hn_scores.py); extra.data_score = "
                  "LRAM dn_scores (the paper's Fig. 3 data-normalised score)",
                  "episode_length = procgen's built-in time-out (measured: maze 500, others 1000)"],
        "tasks": items}

    # --- DMControl -------------------------------------------------------------------------
    targets = specs["dmcontrol"]["target_returns"]["value"]
    names = dom["dmcontrol"]["train"] + dom["dmcontrol"]["holdout"]
    dims = dmc_dims(names)
    items = []
    for split, name in split_items(dom["dmcontrol"]):
        n = norm_of("dmcontrol", name, "data")
        assert n["high"] > n["low"], name
        obs, act, keys = dims[name]
        d, t = name.split("-")
        items.append({"name": name, "split": split, "env_id": f"dm_control/{name}-v0",
                      "obs_shape": [obs], "action_dim": act, "target_return": float(targets[name]),
                      "score_low": n["low"], "score_high": n["high"],
                      "extra": {"suite_domain": d, "suite_task": t, "obs_keys": keys,
                                "data_score": dn_of("dmcontrol", name)}})
    out["dmcontrol"] = {
        "defaults": {"obs_kind": "state", "action_kind": "continuous",
                     "reward_scale": REWARD_SCALE["dmcontrol"], "score_kind": "data",
                     "episode_length": 1000,
                     "source": _public("ml-jku/dm_control_10M (SAC replay, Schmied et al., 2024a)",
                                       "https://huggingface.co/datasets/ml-jku/dm_control_10M", "random")},
        "notes": ["score_low/high = random / dataset scores (src/envs/dn_scores.py); "
                  "data-normalised = (raw - low) / (high - low)",
                  "obs_shape = the task's own flat observation (dm_control.suite keys in order); "
                  "LRAM places them in a 204-dim union layout, lramlab pads"],
        "tasks": items}

    # --- Meta-World ------------------------------------------------------------------------
    targets = specs["metaworld"]["target_returns"]["value"]
    items = []
    for split, name in split_items(dom["metaworld"]):
        n = norm_of("metaworld", name, "success")
        items.append({"name": name, "split": split, "env_id": name[: -len("v2")] + "v3",
                      "target_return": float(targets[name]),
                      "extra": {"paper_name": name, "data_score": n}})
    out["metaworld"] = {
        "defaults": {"obs_kind": "state", "obs_shape": [39], "action_kind": "continuous", "action_dim": 4,
                     "reward_scale": REWARD_SCALE["metaworld"], "score_kind": "success",
                     "score_low": 0.0, "score_high": 1.0, "episode_length": 200,
                     "source": _public("ml-jku/meta-world (2M transitions per task, Schmied et al., 2024a)",
                                       "https://huggingface.co/datasets/ml-jku/meta-world", "scripted-expert")},
        "notes": ["the paper names metaworld v2 tasks (name); env_id is the metaworld 3.x v3 env",
                  "score = success rate; extra.data_score keeps LRAM's data-normalisation constants"],
        "tasks": items}

    # --- Composuite ------------------------------------------------------------------------
    targets = specs["composuite"]["target_returns"]["value"]
    items = []
    for split, it in split_items(dom["composuite"]):
        name = it["envid"]
        n = norm_of("composuite", name, "success")
        items.append({"name": name, "split": split, "env_id": name, "target_return": float(targets[name]),
                      "extra": {"robot": it["robot"], "object": it["object"], "obstacle": it["obstacle"],
                                "objective": it["objective"], "data_score": n}})
    out["composuite"] = {
        "defaults": {"obs_kind": "state", "obs_shape": [93], "action_kind": "continuous", "action_dim": 8,
                     "reward_scale": REWARD_SCALE["composuite"], "score_kind": "success",
                     "score_low": 0.0, "score_high": 1.0, "episode_length": 500,
                     "source": _public("CompoSuite offline datasets (Hussing et al., 2023), expert",
                                       "https://doi.org/10.5061/dryad.9cnp5hqps", "random")},
        "notes": ["obs 93 / act 8 as paper App. B.5, measured with composuite.make(..., use_task_id_obs=True) "
                  "on robosuite 1.4.1: the same for IIWA, Jaco, Kinova3 (Gen3) and Panda; nothing padded",
                  "reward_scale 1 as in LRAM's 432-task mixture config (composuite-only configs use 200)",
                  "score = success rate; extra.data_score keeps LRAM's data min-max constants"],
        "tasks": items}

    # --- Mimicgen --------------------------------------------------------------------------
    items = []
    for split, it in split_items(dom["mimicgen"]):
        name = it["envid"]
        core = "-" not in name
        n = norm_of("mimicgen", it["task"], "success")
        src = (_public("MimicGen core datasets (Mandlekar et al., 2023)",
                       "https://mimicgen.github.io/docs/datasets/mimicgen_corl_2023.html", "random")
               if core else
               _public("ml-jku/mimicgen59 (LRAM-generated robot variants)",
                       "https://huggingface.co/datasets/ml-jku/mimicgen59", "random"))
        extra = {"task": it["task"], "robot": it["robot"], "data_score": n}
        if "data_dir_name" in it:
            extra["data_dir_name"] = it["data_dir_name"]
        items.append({"name": name, "split": split, "env_id": name, "episode_length": int(it["horizon"]),
                      "obs_shape": [mimicgen_obs_dim(it["task"], it["robot"])], "source": src, "extra": extra})
    out["mimicgen"] = {
        "defaults": {"obs_kind": "state", "action_kind": "continuous", "action_dim": 7,
                     "reward_scale": REWARD_SCALE["mimicgen"], "score_kind": "success",
                     "score_low": 0.0, "score_high": 1.0, "target_return": 1.0},
        "notes": ["act 7 (OSC_POSE delta + gripper); obs = robot0_eef_pos, robot0_eef_quat, robot0_gripper_qpos, "
                  "object-state (LRAM's low-dim keys), measured per task on robosuite 1.4.1: paper App. B.6's 37 "
                  "holds for Threading, NutAssembly, HammerCleanup (Panda); IIWA/UR5e (Robotiq85) add 4",
                  "sparse binary reward, episode ends on success -> target 1",
                  "episode_length = mimicgen TASK_TO_HORIZON"],
        "tasks": items}

    # --- Dark-Room -------------------------------------------------------------------------
    env = dark["environment"]
    size = env["grid_size"]["value"][0]
    horizon = int(env["max_episode_steps"]["value"])
    start = env["start_position"]["value"]
    # LRAM's predefined Dark-Room target (src/envs/target_returns.py DARK_ROOM): the same for every goal,
    # so R̂ tells the model nothing about where the hidden goal is
    flat_target = float(dark["target_returns"]["value"]["MiniHack-Room-Dark-Dense-10x10-v0"])
    items = []
    for split, key in (("train", "train_goals"), ("holdout", "eval_goals")):
        for g in dark["goals"][key]["value"]:
            d = abs(g[0] - start[0]) + abs(g[1] - start[1])
            # +1 for every step that ENDS on the goal: the fastest path arrives on step d and then
            # stays, so steps d..100 pay (101 - d); a goal on the start cell pays all 100 steps.
            best = horizon if d == 0 else horizon - d + 1
            items.append({"name": f"goal-{g[0]}-{g[1]}", "split": split, "target_return": flat_target,
                          "extra": {"goal": list(g), "start": list(start), "grid_size": size,
                                    "manhattan_distance": d, "max_return": float(best)}})
    assert len(items) == 100 and len({tuple(i["extra"]["goal"]) for i in items}) == 100
    out["darkroom"] = {
        "defaults": {"env_id": f"lramlab/DarkRoom-{size}x{size}-v0", "obs_kind": "state", "obs_shape": [2],
                     "action_kind": "discrete", "action_dim": 5, "reward_scale": REWARD_SCALE["darkroom"],
                     "score_kind": "raw", "score_low": None, "score_high": None, "episode_length": horizon,
                     "source": {"kind": "generated", "generator": "lramlab.collect.generate",
                                "policy": "q-learning", "history": "learning history (Algorithm Distillation)"}},
        "notes": ["goals from darkroom.yaml (80 train / 20 eval, RandomState(43) permutation)",
                  "target_return = LRAM's flat Dark-Room target (82 for every goal, src/envs/target_returns.py): "
                  "a per-goal target would reveal the hidden goal's distance; extra.max_return = best possible "
                  "return, 100 - manhattan(start, goal) + 1 (100 when the goal is the start)",
                  "actions: up, right, down, left, stay; obs = own (x, y)"],
        "tasks": items}

    # --- robosuite (standard tasks, not in the paper's mixture) ----------------------------
    items = [{"name": name, "split": "train", "env_id": name, "obs_shape": [o], "action_dim": a}
             for name, (o, a) in ROBOSUITE.items()]
    out["robosuite"] = {
        "defaults": {"obs_kind": "state", "action_kind": "continuous", "reward_scale": REWARD_SCALE["robosuite"],
                     "target_return": None, "score_kind": "success", "score_low": 0.0, "score_high": 1.0,
                     "episode_length": 1000,
                     "source": {"kind": "generated", "generator": "lramlab.collect.generate", "policy": "random"},
                     "extra": {"robots": "Panda", "controller": "OSC_POSE", "obs_keys": "object-state, robot0_proprio-state"}},
        "notes": ["standard single-arm robosuite 1.4.1 tasks that run here (not part of the paper's 432)",
                  "split is nominal (all train); target_return unknown until data exists (max return in data)",
                  "dims measured with robosuite 1.4.1, Panda, OSC_POSE controller, object-state + "
                  "robot0_proprio-state; horizon 1000"],
        "tasks": items}

    for domain, m in out.items():
        m["domain"] = domain
    return out


class _Dumper(yaml.SafeDumper):
    """Mappings in block style (one field a line, easy to diff), short lists inline."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence(
    "tag:yaml.org,2002:seq", v, flow_style=all(not isinstance(x, (list, dict)) for x in v)
    and sum(len(str(x)) for x in v) < 60))


def write(out: dict[str, dict], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for domain, m in out.items():
        doc = {"domain": domain, "reference": LRAM, "notes": m["notes"], "defaults": m["defaults"],
               "tasks": m["tasks"]}
        text = (f"# lramlab task manifest: {domain}. Generated by data_manifests/_build.py from "
                f"../shared/reference/; regenerate rather than edit by hand.\n"
                + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=110, default_flow_style=False))
        path = dest / f"{domain}.yaml"
        tmp = path.with_suffix(".yaml.tmp")
        tmp.write_text(text)
        tmp.replace(path)
        print(f"{path}: {len(m['tasks'])} tasks")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", type=Path, default=REPO.parent / "shared" / "reference")
    p.add_argument("--out", type=Path, default=REPO / "data_manifests")
    a = p.parse_args()
    write(build(a.reference), a.out)


if __name__ == "__main__":
    main()
