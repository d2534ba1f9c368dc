"""Task manifests: real files against the reference, bad files, lookup, score normalisation, CLI."""
from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

import lramlab
from lramlab import manifests as M
from lramlab.manifests import (DOMAINS, REWARD_SCALE, AmbiguousTaskError, ManifestError, TaskSpec,
                               UnknownTaskError, domain_of, get_task, list_tasks, load_manifests,
                               normalize_score)

REFERENCE = lramlab.REPO_ROOT.parent / "shared" / "reference"
needs_reference = pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"{REFERENCE} not present")

COUNTS = {  # (train, holdout), paper Table 1 / reference/tasks.yaml, Dark-Room 80/20 goals
    "atari": (41, 5), "procgen": (12, 4), "dmcontrol": (11, 5), "metaworld": (45, 5),
    "composuite": (240, 16), "mimicgen": (83, 2), "darkroom": (80, 20),
}


@pytest.fixture(autouse=True)
def _default_manifests(monkeypatch):
    monkeypatch.delenv(M.ENV_VAR, raising=False)


def _csv_rows() -> dict[tuple[str, str], dict]:
    rows = {}
    with open(REFERENCE / "score_normalization.csv", newline="") as f:
        for row in csv.DictReader(f):
            rows.setdefault((row["domain"], row["task"]), row)  # hn_scores rows come first
    return rows


# --- the real manifests -----------------------------------------------------------------------

def test_counts_per_domain_and_split():
    specs = load_manifests()
    got = Counter((s.domain, s.split) for s in specs.values())
    for domain, (n_train, n_hold) in COUNTS.items():
        assert got[(domain, "train")] == n_train, domain
        assert got[(domain, "holdout")] == n_hold, domain
    paper = [s for s in specs.values() if s.domain not in ("darkroom", "robosuite")]
    assert sum(s.split == "train" for s in paper) == 432
    assert sum(s.split == "holdout" for s in paper) == 37
    assert len(list_tasks("darkroom", "holdout")) == 20
    assert len(list_tasks("robosuite")) >= 5  # standard tasks that run here (Lift, Stack, Door, ...)


@needs_reference
def test_task_lists_match_reference():
    ref = yaml.safe_load((REFERENCE / "tasks.yaml").read_text())["domains"]
    key = {"atari": lambda it: it["name"], "procgen": str, "dmcontrol": str, "metaworld": str,
           "composuite": lambda it: it["envid"], "mimicgen": lambda it: it["envid"]}
    for domain, name_of in key.items():
        for split in ("train", "holdout"):
            want = {name_of(it) for it in ref[domain][split]}
            assert {s.name for s in list_tasks(domain, split)} == want, (domain, split)
    dark = yaml.safe_load((REFERENCE / "darkroom.yaml").read_text())["goals"]
    for split, key_ in (("train", "train_goals"), ("holdout", "eval_goals")):
        want = {f"goal-{x}-{y}" for x, y in dark[key_]["value"]}
        assert {s.name for s in list_tasks("darkroom", split)} == want


def test_every_spec_is_typed_and_valid():
    for tid, s in load_manifests().items():
        assert isinstance(s, TaskSpec) and s.id == tid == f"{s.domain}/{s.name}"
        assert s.domain in DOMAINS and s.split in ("train", "holdout")
        assert isinstance(s.env_id, str) and s.env_id
        assert isinstance(s.obs_shape, tuple) and all(type(d) is int and d > 0 for d in s.obs_shape)
        assert len(s.obs_shape) == (3 if s.obs_kind == "image" else 1)
        assert type(s.action_dim) is int
        assert 1 <= s.action_dim <= (18 if s.action_kind == "discrete" else 8)
        assert s.reward_scale == REWARD_SCALE[s.domain]
        assert s.target_return is None or isinstance(s.target_return, float)
        assert s.score_kind in M.SCORE_KINDS
        if s.score_kind in ("human", "minmax", "data"):
            assert isinstance(s.score_low, float) and isinstance(s.score_high, float)
            assert s.score_high != s.score_low
        assert type(s.episode_length) is int and s.episode_length > 0
        assert s.source["kind"] in ("public", "generated") and isinstance(s.source["policy"], str)
        if s.source["kind"] == "public":
            assert s.source["url"] and s.source["release"]
        hash(s)  # usable in sets / as dict keys despite the dict fields


def test_reward_scales():
    assert REWARD_SCALE == {"metaworld": 200.0, "dmcontrol": 100.0, "atari": 20.0, "procgen": 1.0,
                            "composuite": 1.0, "mimicgen": 1.0, "darkroom": 1.0, "robosuite": 1.0}
    assert get_task("metaworld/reach-v2").reward_scale == 200.0
    assert get_task("dmcontrol/cheetah-run").reward_scale == 100.0
    assert get_task("atari/freeway").reward_scale == 20.0


def test_domain_facts():
    for s in list_tasks("atari"):
        assert (s.obs_kind, s.obs_shape, s.action_kind, s.action_dim) == ("image", (1, 64, 64), "discrete", 18)
        assert s.env_id.endswith("NoFrameskip-v4")
    for s in list_tasks("procgen"):
        assert (s.obs_kind, s.obs_shape, s.action_kind, s.action_dim) == ("image", (1, 64, 64), "discrete", 15)
        assert s.score_kind == "minmax"
    for s in list_tasks("metaworld"):
        assert (s.obs_shape, s.action_kind, s.action_dim, s.episode_length) == ((39,), "continuous", 4, 200)
        assert s.name.endswith("-v2") and s.env_id == s.name[:-2] + "v3"
        assert s.extra["paper_name"] == s.name and s.score_kind == "success"
        assert s.source["policy"] == "scripted-expert"
    assert get_task("dmcontrol/cheetah-run").obs_shape == (17,)
    assert get_task("dmcontrol/cheetah-run").action_dim == 6
    for s in list_tasks("dmcontrol"):
        assert s.score_kind == "data" and s.episode_length == 1000
    for s in list_tasks("composuite") + list_tasks("mimicgen"):
        assert s.score_kind == "success" and s.action_kind == "continuous" and s.obs_kind == "state"
    for s in list_tasks("darkroom"):
        assert (s.obs_shape, s.action_kind, s.action_dim, s.episode_length) == ((2,), "discrete", 5, 100)
        assert s.source == {"kind": "generated", "generator": "lramlab.collect.generate", "policy": "q-learning",
                            "history": "learning history (Algorithm Distillation)"}
        x, y = s.extra["goal"]
        assert s.name == f"goal-{x}-{y}"
        d = x + y  # start (0, 0)
        assert s.extra["max_return"] == (100.0 if d == 0 else 101.0 - d)
        assert s.target_return == 82.0  # LRAM's flat target: R̂ must not reveal where the goal is


def test_dmcontrol_dims_match_the_simulator():
    suite = pytest.importorskip("dm_control.suite")
    import numpy as np

    for s in list_tasks("dmcontrol"):
        env = suite.load(*s.name.split("-"))
        obs = sum(int(np.prod(v.shape)) for v in env.observation_spec().values())
        assert s.obs_shape == (obs,), s.id
        assert s.action_dim == env.action_spec().shape[0], s.id


def test_metaworld_and_atari_env_ids_exist():
    env_dict = pytest.importorskip("metaworld.env_dict")
    assert {s.env_id for s in list_tasks("metaworld")} == set(env_dict.ALL_V3_ENVIRONMENTS)
    gym = pytest.importorskip("gymnasium")
    ale_py = pytest.importorskip("ale_py")
    gym.register_envs(ale_py)
    missing = [s.env_id for s in list_tasks("atari") if s.env_id not in gym.registry]
    assert not missing


def test_darkroom_max_return_is_the_best_return_in_the_real_env():
    """Walk the shortest path, then stay: the return must equal the manifest's best return
    (extra.max_return) and envs.darkroom.max_return -- 100, not 101, for the goal on the start cell."""
    try:
        from lramlab.envs.darkroom import DarkRoom
        from lramlab.envs.darkroom import max_return as dr_max_return
    except ImportError as e:
        pytest.skip(f"lramlab.envs.darkroom not importable: {e}")
    for name in ("goal-0-0", "goal-2-0", "goal-9-9", "goal-3-4"):
        spec = get_task(f"darkroom/{name}")
        gx, gy = spec.extra["goal"]
        env = DarkRoom(goal=(gx, gy))
        env.reset(seed=0)
        total, done, t = 0.0, False, 0
        while not done:  # actions: 1 = +x, 2 = +y, 4 = stay
            x, y = env.position
            a = 1 if x < gx else 2 if y < gy else 4
            _, r, term, trunc, _ = env.step(a)
            total, done, t = total + r, term or trunc, t + 1
        assert t == spec.episode_length
        assert total == spec.extra["max_return"] == dr_max_return((gx, gy)), name


@needs_reference
def test_target_returns_match_reference():
    specs = yaml.safe_load((REFERENCE / "domain_specs.yaml").read_text())["domains"]
    assert get_task("atari/pong").target_return == specs["atari"]["target_returns"]["value"]["PongNoFrameskip-v4"]
    assert get_task("procgen/chaser").target_return == specs["procgen"]["target_returns"]["value"]["chaser"]
    assert get_task("metaworld/reach-v2").target_return == specs["metaworld"]["target_returns"]["value"]["reach-v2"]
    cs = "Panda_Box_ObjectWall_Push"
    assert get_task(f"composuite/{cs}").target_return == specs["composuite"]["target_returns"]["value"][cs]
    assert get_task("mimicgen/Threading_D2").target_return == 1.0


# --- score normalisation, expectations computed from the CSV -----------------------------------

@needs_reference
@pytest.mark.parametrize("domain,name,raw", [
    ("atari", "breakout", 20.0), ("atari", "double-dunk", -17.0), ("procgen", "coinrun", 7.5),
    ("procgen", "fruitbot", 0.0), ("dmcontrol", "cheetah-run", 200.0), ("dmcontrol", "walker-walk", 900.0),
])
def test_normalize_score_matches_csv(domain, name, raw):
    row = _csv_rows()[(domain, name)]
    low, high = float(row["low"]), float(row["high"])
    want = (raw - low) / (high - low)
    assert normalize_score(f"{domain}/{name}", raw) == pytest.approx(want, rel=1e-12)
    assert normalize_score(get_task(f"{domain}/{name}"), low) == pytest.approx(0.0, abs=1e-12)
    assert normalize_score(f"{domain}/{name}", high) == pytest.approx(1.0, rel=1e-12)


def test_normalize_score_success_and_raw():
    assert normalize_score("metaworld/reach-v2", 0.8) == 0.8
    assert normalize_score("composuite/IIWA_Box_None_PickPlace", 1) == 1.0
    with pytest.raises(ValueError, match=r"success rate.*\[0, 1\].*1500"):
        normalize_score("metaworld/reach-v2", 1500.0)
    assert normalize_score("darkroom/goal-2-0", 42.0) == 42.0
    assert normalize_score("atari/carnival", 300.0) == 300.0  # no human scores exist for Carnival
    with pytest.raises(ValueError, match="must be a number"):
        normalize_score("atari/breakout", "lots")


# --- lookup -----------------------------------------------------------------------------------

def test_lookup_by_id_bare_name_and_env_id():
    assert get_task("atari/freeway").name == "freeway"
    assert get_task("freeway").id == "atari/freeway"
    assert get_task("reach-v3").id == "metaworld/reach-v2"  # the metaworld 3.x env id
    assert get_task("ATARI/Freeway").id == "atari/freeway"
    assert domain_of("cheetah-run") == "dmcontrol"
    spec = get_task("goal-2-0")
    assert get_task(spec) is spec


def test_unknown_task_suggests_close_matches():
    with pytest.raises(UnknownTaskError) as exc:
        get_task("atari/freewya")
    assert isinstance(exc.value, KeyError)
    assert "atari/freeway" in str(exc.value) and "did you mean" in str(exc.value)
    with pytest.raises(KeyError, match="cheetah-run"):
        get_task("cheeta-run")


def test_list_tasks_rejects_bad_filters():
    with pytest.raises(ValueError, match="domain='mujoco'"):
        list_tasks("mujoco")
    with pytest.raises(ValueError, match="split='test'"):
        list_tasks(split="test")


# --- bad manifests in tmp_path ------------------------------------------------------------------

def _task(**over) -> dict:
    base = {"name": "t1", "split": "train", "env_id": "Env-v0", "obs_kind": "state", "obs_shape": [4],
            "action_kind": "continuous", "action_dim": 2, "reward_scale": 1.0, "target_return": 10.0,
            "score_kind": "minmax", "score_low": 0.0, "score_high": 10.0, "episode_length": 50,
            "source": {"kind": "generated", "generator": "lramlab.collect.generate", "policy": "random"}}
    base.update(over)
    return base


def _write(dirpath: Path, domain: str, tasks: list[dict], fname: str | None = None, **doc) -> Path:
    dirpath.mkdir(parents=True, exist_ok=True)
    path = dirpath / (fname or f"{domain}.yaml")
    path.write_text(yaml.safe_dump({"domain": domain, **doc, "tasks": tasks}, sort_keys=False))
    return path


def test_tmp_manifest_loads_and_env_var_overrides(tmp_path, monkeypatch):
    _write(tmp_path, "procgen", [_task(name="a", reward_scale=1.0), _task(name="b", split="holdout")])
    specs = load_manifests(tmp_path)
    assert sorted(specs) == ["procgen/a", "procgen/b"]
    monkeypatch.setenv(M.ENV_VAR, str(tmp_path))
    assert [s.id for s in list_tasks()] == ["procgen/a", "procgen/b"]
    assert get_task("b").split == "holdout"


def test_defaults_are_merged(tmp_path):
    t = _task(name="a")
    defaults = {k: t.pop(k) for k in ("obs_kind", "obs_shape", "source")}
    _write(tmp_path, "robosuite", [t], defaults=defaults)
    assert load_manifests(tmp_path)["robosuite/a"].obs_shape == (4,)


@pytest.mark.parametrize("bad,field,expected", [
    ({"drop": "env_id"}, "env_id", "missing field"),
    ({"action_dim": "two"}, "action_dim", "positive integer"),
    ({"action_dim": True}, "action_dim", "positive integer"),
    ({"action_dim": 9}, "action_dim", "<= 8"),
    ({"obs_shape": [1, 64, 64]}, "obs_shape", "(obs_dim,)"),
    ({"split": "test"}, "split", "'train', 'holdout'"),
    ({"score_kind": "zscore"}, "score_kind", "'human'"),
    ({"score_low": None}, "score_low", "needs score_low and score_high"),
    ({"target_return": "max"}, "target_return", "finite number or null"),
    ({"reward_scale": 200.0}, "reward_scale", "REWARD_SCALE['procgen']"),
    ({"source": {"kind": "public", "policy": "random"}}, "source.release", "public source"),
    ({"episode_lenght": 5}, "episode_lenght", "known fields"),
])
def test_bad_entry_names_file_task_and_field(tmp_path, bad, field, expected):
    t = _task(name="broken")
    if "drop" in bad:
        del t[bad.pop("drop")]
    t.update(bad)
    path = _write(tmp_path, "procgen", [_task(name="fine"), t])
    with pytest.raises(ManifestError) as exc:
        load_manifests(tmp_path)
    msg = str(exc.value)
    assert str(path) in msg and "'broken'" in msg and repr(field) in msg and expected in msg, msg


def test_unknown_domain_and_duplicates(tmp_path):
    path = _write(tmp_path / "a", "mujoco", [_task()])
    with pytest.raises(ManifestError, match=r"atari") as exc:
        load_manifests(tmp_path / "a")
    assert str(path) in str(exc.value) and "'domain'" in str(exc.value) and "'mujoco'" in str(exc.value)

    path = _write(tmp_path / "b", "procgen", [_task(name="x"), _task(name="x")])
    with pytest.raises(ManifestError, match=r"'x'.*'name'.*duplicates 'procgen/x'"):
        load_manifests(tmp_path / "b")

    _write(tmp_path / "c", "procgen", [_task(name="x")], fname="one.yaml")
    _write(tmp_path / "c", "procgen", [_task(name="x")], fname="two.yaml")
    with pytest.raises(ManifestError, match=r"two\.yaml.*already defined in .*one\.yaml"):
        load_manifests(tmp_path / "c")

    with pytest.raises(ManifestError, match="manifest directory not found"):
        load_manifests(tmp_path / "nowhere")


def test_ambiguous_bare_name_is_rejected(tmp_path):
    _write(tmp_path, "procgen", [_task(name="shared")])
    _write(tmp_path, "robosuite", [_task(name="shared", score_kind="success", score_low=0.0, score_high=1.0)])
    with pytest.raises(AmbiguousTaskError) as exc:
        get_task("shared", directory=tmp_path)
    assert "procgen/shared" in str(exc.value) and "robosuite/shared" in str(exc.value)
    assert isinstance(exc.value, KeyError)
    assert get_task("procgen/shared", directory=tmp_path).domain == "procgen"


# --- CLI ----------------------------------------------------------------------------------------

def test_cli_json_darkroom_holdout(capsys):
    from lramlab.cli import main

    assert main(["tasks", "--json", "--domain", "darkroom", "--split", "holdout"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 20
    for r in rows:
        assert {"domain", "name", "id", "split", "available"} <= set(r)
        assert r["domain"] == "darkroom" and r["split"] == "holdout" and r["id"] == f"darkroom/{r['name']}"
        assert isinstance(r["available"], bool) and (r["available"] or r["reason"])


def test_cli_reports_unavailable_domains_with_reason(capsys):
    from lramlab.envs import tasks_cli

    from lramlab.envs import domain_available

    assert tasks_cli.main(["--domain", "mimicgen", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 85
    if domain_available("mimicgen")[0]:  # installed: the not-installed branch is in test_robotics_envs
        assert all(r["available"] for r in rows)
    else:
        assert not any(r["available"] for r in rows)
        assert all("mimicgen" in r["reason"] and "make install" in r["reason"] for r in rows)


def test_cli_table_and_fallback_when_the_availability_check_fails(capsys, monkeypatch):
    from lramlab.envs import tasks_cli

    def broken(domain):
        raise ImportError("simulated: the simulator's import raised")

    monkeypatch.setattr(tasks_cli, "domain_available", broken)
    assert tasks_cli.main(["--domain", "procgen"]) == 0
    out = capsys.readouterr().out
    assert "procgen/coinrun" in out
    assert ("procgen: 16 tasks (12 train, 4 holdout), available: no (domain_available('procgen') raised "
            "ImportError: simulated") in out
