"""Windows, validation split, domain balance, rank split and sampler resume, on real tiny data."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from conftest import TINY_SPECS
from lramlab.data.sampling import (
    DomainBalancedSampler,
    SamplerConfig,
    TaskInfo,
    TrajectoryDataset,
    permute,
    split_episodes,
    validation_batches,
    validation_episodes,
    validation_items,
)
from lramlab.data.store import read_episode
from lramlab.tokenizer import MAX_ACT_DIM, STATE_DIM


@pytest.fixture(scope="module")
def train_ds(tiny_root):
    return TrajectoryDataset(tiny_root, split="train", task_specs=TINY_SPECS)


def _all_steps(ds, ti):
    return {(int(e), t) for e, L in zip(ds.episodes[ti], ds.lengths[ti]) for t in range(int(L))}


def test_batch_matches_contract(train_ds):
    s = DomainBalancedSampler(train_ds, SamplerConfig(batch_size=8, seed=1))
    update = s.next_update()
    assert [b["domain"] for b in update] == ["atari", "classic", "control"]
    B, C = 8, 50
    for b in update:
        assert b["rtg"].shape == b["rewards"].shape == b["mask"].shape == (B, C)
        assert b["rtg"].dtype == b["rewards"].dtype == torch.float32 and b["mask"].dtype == torch.bool
        for k in ("n_actions", "act_dim", "task_index"):
            assert b[k].shape == (B,) and b[k].dtype == torch.int64
        domains = {train_ds.infos[int(t)].domain for t in b["task_index"]}
        assert domains == {b["domain"]}  # one domain per batch
        pad = ~b["mask"]
        assert (b["rtg"][pad] == 0).all() and (b["rewards"][pad] == 0).all()
    atari, classic, control = update
    assert atari["images"].shape == (B, C, 1, 64, 64) and atari["images"].dtype == torch.uint8 and "states" not in atari
    assert classic["states"].shape == (B, C, STATE_DIM) and classic["actions"].dtype == torch.int64
    assert control["actions"].shape == (B, C, MAX_ACT_DIM) and control["actions"].dtype == torch.float32
    assert (control["act_dim"] == 1).all() and (control["n_actions"] == 0).all()
    assert (control["actions"][..., 1:] == 0).all() and control["actions"].abs().max() <= 1
    assert set(classic["n_actions"].tolist()) <= {2, 3} and (classic["act_dim"] == 0).all()
    assert (classic["states"][..., 6:] == 0).all()  # zero-padded beyond the largest real obs (acrobot: 6)


def test_window_padding_mask_and_last_step(train_ds):
    ti = train_ds.tasks.index("control/pendulum")
    ep = int(train_ds.episodes[ti][0])
    full = read_episode(train_ds.data[ti].episode_paths[ep])
    T = len(full["rewards"])
    scale = TINY_SPECS["control/pendulum"]["reward_scale"]
    b = train_ds.make_batch("control", [(ti, ep, 0), (ti, ep, 10), (ti, ep, T - 1)], as_torch=False)
    C = train_ds.context_len
    # end=0: one real step, at row 0 (right-padded: padding only after the real steps)
    assert b["mask"][0].tolist() == [True] + [False] * (C - 1)
    np.testing.assert_array_equal(b["states"][0, 0, :3], full["states"][0])
    assert not b["states"][0, 1:].any() and not b["actions"][0, 1:].any()
    # end=10: 11 real steps, the episode's first step at row 0
    assert b["mask"][1].sum() == 11 and b["mask"][1, :11].all()
    np.testing.assert_array_equal(b["actions"][1, :11, :1], full["actions"][:11])
    # the last step of the episode is a valid window end; T=40 < C so the whole episode is in it
    assert b["mask"][2].sum() == min(T, C) and b["mask"][2, :T].all()
    np.testing.assert_array_equal(b["states"][2, T - 1, :3], full["states"][T - 1])
    np.testing.assert_allclose(b["rtg"][2, :T], full["returns_to_go"] / scale, rtol=1e-6)
    np.testing.assert_allclose(b["rewards"][2, :T], full["rewards"] / scale, rtol=1e-6)
    np.testing.assert_allclose(b["rtg"][2, T - 1], full["rewards"][-1] / scale, rtol=1e-6)


def test_long_episode_window_is_the_last_C_steps(train_ds):
    ti = train_ds.tasks.index("classic/cartpole")
    ep = next(int(e) for e, L in zip(train_ds.episodes[ti], train_ds.lengths[ti]) if L > 60)
    full = read_episode(train_ds.data[ti].episode_paths[ep])
    T = len(full["rewards"])
    b = train_ds.make_batch("classic", [(ti, ep, T - 1)], as_torch=False)
    assert b["mask"].all()
    np.testing.assert_array_equal(b["states"][0, :, :4], full["states"][T - 50:])
    np.testing.assert_array_equal(b["actions"][0], full["actions"][T - 50:])
    assert bool(full["dones"][-1])  # a terminated CartPole episode: its final step is sampled too


def test_one_epoch_covers_every_timestep_once(train_ds):
    s = DomainBalancedSampler(train_ds, SamplerConfig(seed=3))
    for ti in range(len(train_ds.tasks)):
        n = int(train_ds.n_steps[ti])
        eps, ends = s.draw_endpoints(ti, n)
        got = list(zip(eps.tolist(), ends.tolist()))
        assert len(set(got)) == n and set(got) == _all_steps(train_ds, ti)  # uniform over timesteps


@pytest.mark.parametrize("n", [1, 2, 3, 17, 64, 65, 1000, 4097])
def test_permute_is_a_bijection(n):
    p = permute(np.arange(n), n, key=12345)
    assert sorted(p.tolist()) == list(range(n))
    if n > 16:
        assert not np.array_equal(p, np.arange(n))
        assert not np.array_equal(p, permute(np.arange(n), n, key=54321))


def test_validation_split(tiny_root, train_ds):
    val = TrajectoryDataset(tiny_root, split="val", task_specs=TINY_SPECS)
    again = TrajectoryDataset(tiny_root, split="val", task_specs=TINY_SPECS)
    assert val.tasks == train_ds.tasks  # same task list, so task_index agrees across splits
    for ti, task in enumerate(val.tasks):
        n = len(val.data[ti])
        tr, va = set(train_ds.episodes[ti].tolist()), set(val.episodes[ti].tolist())
        assert not tr & va and tr | va == set(range(n))
        assert len(va) == (0 if n < 2 else max(1, round(0.025 * n)))
        assert val.episodes[ti].tolist() == again.episodes[ti].tolist()
    # rule on larger tasks: 2.5 %, deterministic, depends on the task id
    v = validation_episodes("atari/pong", 400)
    assert len(v) == 10 and v.tolist() == validation_episodes("atari/pong", 400).tolist()
    assert v.tolist() != validation_episodes("atari/breakout", 400).tolist()
    assert len(split_episodes("atari/pong", 400, "train")) == 390
    assert validation_episodes("x/y", 1).size == 0
    # validation batches cover every held-out timestep exactly once as a target
    total = int(val.n_steps.sum())
    batches = list(validation_batches(val, batch_size=4))
    assert sum(int(b["mask"].sum()) for b in batches) == total
    assert {b["domain"] for b in batches} == {d for d in val.domains if any(val.n_steps[t] for t in val.domain_tasks[d])}


def test_validation_windows_are_training_windows_tiling_each_episode(tiny_root):
    # every validation window is one training samples (the C steps ending at its end point, or
    # fewer only from the episode's first step), and every timestep is a target exactly once
    C = 16
    val = TrajectoryDataset(tiny_root, split="all", context_len=C, task_specs=TINY_SPECS,
                            tasks=["classic/cartpole", "control/pendulum"])
    for dom in val.domains:
        items = validation_items(val, dom)
        covered = Counter()
        for ti, ep, end in items:
            start = max(0, end - C + 1)
            L = int(val.data[ti].lengths[ep])
            assert end < L and (end - start + 1 == C or start == 0)
            covered.update((ti, ep, t) for t in range(start, end + 1))
            assert items.count((ti, ep, end)) == 1
        want = {(ti, int(ep), t) for ti in val.domain_tasks[dom]
                for ep, L in zip(val.episodes[ti], val.lengths[ti]) for t in range(int(L))}
        assert set(covered) == want and set(covered.values()) == {1}
        # the short window of an episode longer than C is its first one, from step 0
        long_ep = [(ti, ep) for ti in val.domain_tasks[dom] for ep, L in zip(val.episodes[ti], val.lengths[ti])
                   if L > C and L % C]
        for ti, ep in long_ep:
            ends = [e for t, p, e in items if (t, p) == (ti, int(ep))]
            assert ends[0] < C - 1 and all(e >= C - 1 for e in ends[1:])
        assert long_ep or dom == "control"  # cartpole has long episodes: the rule is exercised
        # rank split: disjoint, together everything
        parts = [validation_items(val, dom, r, 3) for r in range(3)]
        assert sorted(sum(parts, [])) == sorted(items)


def test_domain_balance_and_task_weighting(train_ds):
    s = DomainBalancedSampler(train_ds, SamplerConfig(batch_size=32, seed=0), as_torch=False)
    per_task = Counter()
    for _ in range(6):
        update = s.next_update()
        assert [b["domain"] for b in update] == train_ds.domains
        assert all(len(b["task_index"]) == 32 for b in update)
        for b in update:
            per_task.update(b["task_index"].tolist())
    # "size": tasks drawn in proportion to their training timesteps within the domain
    classic = train_ds.domain_tasks["classic"]
    n = train_ds.n_steps[classic].astype(float)
    frac = np.array([per_task[t] for t in classic]) / sum(per_task[t] for t in classic)
    np.testing.assert_allclose(frac, n / n.sum(), atol=0.1)
    u = DomainBalancedSampler(train_ds, SamplerConfig(batch_size=32, seed=0, task_weighting="uniform"), as_torch=False)
    cnt = Counter(t for _ in range(6) for t in u.next_update()[1]["task_index"].tolist())
    assert abs(cnt[classic[0]] - cnt[classic[1]]) < 40  # 96 each expected; "size" would give ~ 30 vs 162


def test_rank_split_disjoint_and_covering(train_ds):
    W = 3
    ti = train_ds.tasks.index("classic/cartpole")
    n = int(train_ds.n_steps[ti])
    draws = []
    for r in range(W):
        s = DomainBalancedSampler(train_ds, SamplerConfig(seed=5, rank=r, world_size=W))
        k = len(range(r, n, W))  # this rank's share of one epoch
        eps, ends = s.draw_endpoints(ti, k)
        draws.append(set(zip(eps.tolist(), ends.tolist())))
        assert len(draws[-1]) == k
    assert all(not (draws[i] & draws[j]) for i in range(W) for j in range(i + 1, W))
    assert set().union(*draws) == _all_steps(train_ds, ti)
    # ranks together draw exactly what one process draws from the same stream
    one = DomainBalancedSampler(train_ds, SamplerConfig(seed=5))
    e, t = one.draw_endpoints(ti, n)
    assert set(zip(e.tolist(), t.tolist())) == set().union(*draws)
    # whole updates on two ranks hold different windows
    a = DomainBalancedSampler(train_ds, SamplerConfig(batch_size=16, seed=5, rank=0, world_size=2), as_torch=False)
    b = DomainBalancedSampler(train_ds, SamplerConfig(batch_size=16, seed=5, rank=1, world_size=2), as_torch=False)
    ia, ib = a.sample_items("control"), b.sample_items("control")
    assert not set(ia) & set(ib)


def _same(u1, u2):
    for x, y in zip(u1, u2):
        assert x["domain"] == y["domain"]
        for k in x:
            if k != "domain":
                assert torch.equal(x[k], y[k]), k


def test_sampler_state_round_trip(train_ds):
    cfg = SamplerConfig(batch_size=8, seed=11)
    a = DomainBalancedSampler(train_ds, cfg)
    for _ in range(3):
        a.next_update()
    state = json.loads(json.dumps(a.state_dict()))  # survives a JSON checkpoint
    expected = [a.next_update() for _ in range(2)]
    b = DomainBalancedSampler(train_ds, cfg)
    b.load_state_dict(state)
    assert b.updates == 3
    for u1, u2 in zip(expected, [b.next_update() for _ in range(2)]):
        _same(u1, u2)
    # same seed -> same stream; another seed -> another
    c, d = DomainBalancedSampler(train_ds, cfg), DomainBalancedSampler(train_ds, cfg)
    _same(c.next_update(), d.next_update())
    e = DomainBalancedSampler(train_ds, SamplerConfig(batch_size=8, seed=12))
    assert not torch.equal(e.next_update()[1]["states"], DomainBalancedSampler(train_ds, cfg).next_update()[1]["states"])
    with pytest.raises(ValueError, match="config"):
        DomainBalancedSampler(train_ds, SamplerConfig(batch_size=8, seed=99)).load_state_dict(state)


def test_reward_scale_sources(tiny_root):
    ds = TrajectoryDataset(tiny_root, tasks=["control/pendulum"], task_specs=TINY_SPECS, reward_scale={"control": 50.0})
    assert ds.infos[0].reward_scale == 50.0 and ds.infos[0].action_dim == 1
    with pytest.raises(ValueError, match="reward scale"):
        TrajectoryDataset(tiny_root, tasks=["classic/cartpole"])  # not a manifest task, no override
    bad = dict(TINY_SPECS, **{"control/pendulum": dict(TINY_SPECS["control/pendulum"], action_dim=4)})
    with pytest.raises(ValueError, match="action_dim 4"):
        TrajectoryDataset(tiny_root, tasks=["control/pendulum"], task_specs=bad)
    with pytest.raises(KeyError, match="nope/task"):
        TrajectoryDataset(tiny_root, tasks=["nope/task"], task_specs=TINY_SPECS)


def test_config_validation():
    with pytest.raises(ValueError, match="rank"):
        SamplerConfig(rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        SamplerConfig(batch_size=0)
    with pytest.raises(ValueError, match="task_weighting"):
        SamplerConfig(task_weighting="by-vibes")
    with pytest.raises(ValueError, match="reward_scale"):
        TaskInfo("a/b", "a", 0.0, "discrete", 2, "state")


def test_worker_loader_gives_the_same_batches_and_resumes(train_ds):
    from lramlab.data.sampling import DomainBalancedLoader

    cfg = SamplerConfig(batch_size=4, seed=2)
    ref = DomainBalancedSampler(train_ds, cfg)
    expected = [ref.next_update() for _ in range(5)]
    loader = DomainBalancedLoader(DomainBalancedSampler(train_ds, cfg), num_workers=2)
    it = iter(loader)
    for k in range(3):
        _same(next(it), expected[k])
    state = loader.state_dict()  # after 3 consumed updates, although workers prefetched more
    assert state["updates"] == 3
    del it
    resumed = DomainBalancedLoader(DomainBalancedSampler(train_ds, cfg), num_workers=0)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    it = iter(resumed)
    _same(next(it), expected[3])
    _same(next(it), expected[4])


def test_reward_scale_from_manifests_when_not_given(tiny_root):
    manifests = pytest.importorskip("lramlab.manifests", reason="manifests module not available")
    spec = manifests.get_task("atari/pong")
    ds = TrajectoryDataset(tiny_root, tasks=["atari/pong"], split="all")
    assert ds.infos[0].reward_scale == spec.reward_scale == manifests.REWARD_SCALE["atari"]
    assert ds.infos[0].action_dim == spec.action_dim and ds.infos[0].obs_kind == "image"
    b = ds.make_batch("atari", [(0, 0, 20)], as_torch=False)
    full = read_episode(ds.data[0].episode_paths[0], 0, 21)
    np.testing.assert_allclose(b["rtg"][0, :21], full["returns_to_go"] / spec.reward_scale)
    assert b["n_actions"][0] == spec.action_dim
