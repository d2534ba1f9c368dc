"""Training windows are processed exactly as the agent processes the same steps (every backbone).

- A padded window from an episode's first step (the sampler's own batch, real tiny data): its
  logits at the real timesteps equal `model.step` from `init_state` over that episode start.
- Padding cannot reach a real step: garbage in the padded rows leaves the real logits unchanged.
- The check is sensitive: the same window LEFT-padded (zeros through the embedding LayerNorm into
  the state, DT positions shifted) does not match the stepped agent.
- DT positions: past its window, the stepped DT ("exact" mode) equals forward over the training
  window that ends at that step (same tokens, same absolute positions), for k = 3 and 4 tokens.

Weights are the models' own init plus a seeded perturbation (as in tests/test_model.py), so
zero-initialised gates take part. Random values only fill padding (model inputs, not data).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import TINY_SPECS
from lramlab.data.sampling import TrajectoryDataset
from lramlab.models import LRAMConfig, build_model
from lramlab.models.backbones import available_backbones

C = 8  # context in timesteps: pendulum (40 steps) and pong episodes run well past it
TOL = 1e-4
VARIANTS = [("xlstm", "7:1"), ("xlstm", "1:0"), ("mamba", None), ("dt", None)]
VARIANT_IDS = ["xlstm7_1", "xlstm1_0", "mamba", "dt"]
TASKS = ["classic/cartpole", "control/pendulum", "atari/pong"]  # discrete, continuous, images
_AVAILABLE = available_backbones()


def _model(backbone, slstm_at=None, tokens="srr", seed=0):
    if _AVAILABLE.get(backbone):
        pytest.skip(f"backbone {backbone} does not import here: {_AVAILABLE[backbone]}")
    torch.manual_seed(seed)
    model = build_model(LRAMConfig(backbone=backbone, size="tiny", slstm_at=slstm_at, context_steps=C,
                                   tokens=tokens))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model.eval()


@pytest.fixture(scope="module")
def ds(tiny_root):
    return TrajectoryDataset(tiny_root, split="all", context_len=C, task_specs=TINY_SPECS, tasks=TASKS)


def _episode(ds, ti, ep):
    """One stored episode with R̂ and rewards in reward-scale units (as the sampler scales them)."""
    e = ds.data[ti].read(ep)
    scale = ds.infos[ti].reward_scale
    return {"obs": e["states"], "rtg": e["returns_to_go"] / scale, "rewards": e["rewards"] / scale,
            "actions": e["actions"]}


def _stepped(model, e, n):
    """Logits (n, V) of the agent stepping through the first n steps from init_state."""
    state, out = model.init_state(batch_size=1), []
    with torch.no_grad():
        for t in range(n):
            prev_a = None
            if t and model.cfg.tokens == "srra":
                a = np.asarray(e["actions"][t - 1])
                prev_a = torch.as_tensor(a).view(1, -1) if a.ndim else torch.as_tensor([int(a)])
            logits, state = model.step(state, obs=np.asarray(e["obs"][t])[None], rtg=float(e["rtg"][t]),
                                       prev_reward=float(e["rewards"][t - 1]) if t else None, prev_action=prev_a)
            out.append(logits[0])
    return torch.stack(out)


def _first_episode(ds, task, min_len):
    ti = ds.tasks.index(task)
    ep = next(int(e) for e, L in zip(ds.episodes[ti], ds.lengths[ti]) if L >= min_len)
    return ti, ep


def _left_padded(batch):
    """The same windows with the real steps moved to the right edge (the old layout)."""
    out = dict(batch)
    for k in ("states", "images", "rtg", "rewards", "actions", "mask"):
        if k in batch:
            v = batch[k].clone()
            for b in range(v.shape[0]):
                n = int(batch["mask"][b].sum())
                v[b] = torch.roll(batch[k][b], C - n, dims=0)
            out[k] = v
    return out


@pytest.mark.parametrize("task", TASKS, ids=["discrete", "continuous", "image"])
@pytest.mark.parametrize("backbone, slstm_at", VARIANTS, ids=VARIANT_IDS)
def test_padded_window_from_episode_start_equals_stepping_from_init_state(ds, task, backbone, slstm_at):
    model = _model(backbone, slstm_at)
    ti, ep = _first_episode(ds, task, C)
    dom = ds.infos[ti].domain
    ends = [0, 2, C - 2, C - 1]  # 1, 3, C-1 real steps (padded) and a full window from step 0
    batch = ds.make_batch(dom, [(ti, ep, end) for end in ends])
    ref = _stepped(model, _episode(ds, ti, ep), C)
    with torch.no_grad():
        logits = model(batch)
    for b, end in enumerate(ends):
        n = end + 1
        assert batch["mask"][b, :n].all() and not batch["mask"][b, n:].any()
        assert (logits[b, :n] - ref[:n]).abs().max().item() <= TOL, (b, end)
    # padding never reaches a real step: garbage in the padded rows changes no real logit
    noisy = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in batch.items()}
    pad = ~batch["mask"]
    g = torch.Generator().manual_seed(7)
    for k in ("states", "rtg", "rewards"):
        if k in noisy:
            noise = torch.randn(noisy[k].shape, generator=g)
            noisy[k][pad] = noise[pad]
    if "images" in noisy:
        noisy["images"][pad] = torch.randint(0, 256, noisy["images"][pad].shape, generator=g, dtype=torch.uint8)
    with torch.no_grad():
        noisy_logits = model(noisy)
    m = batch["mask"]
    assert (noisy_logits[m] - logits[m]).abs().max().item() <= 1e-5
    # the check can fail: left padding (the old layout) puts zero tokens before the first real one
    with torch.no_grad():
        left = model(_left_padded(batch))
    b = 1  # 3 real steps behind C-3 padded ones
    assert (left[b, C - 3:] - ref[:3]).abs().max().item() > 1e-3


@pytest.mark.parametrize("tokens", ["srr", "srra"])
def test_dt_step_past_the_window_equals_forward_over_the_training_window(ds, tokens):
    # pendulum episodes have 40 steps: the agent's stream overflows the DT window (3C or 4C tokens)
    # after C steps; from then on each step must still see exactly the training window of the
    # last C steps, each token at the position training gives it
    model = _model("dt", tokens=tokens)
    assert model.backbone.window_mode == "exact"
    ti, ep = _first_episode(ds, "control/pendulum", 4 * C)
    e = _episode(ds, ti, ep)
    T = len(e["rewards"])
    ref = _stepped(model, e, T)
    ends = list(range(T))
    batch = ds.make_batch("control", [(ti, ep, end) for end in ends])
    with torch.no_grad():
        logits = model(batch)
    for b, end in enumerate(ends):
        last = min(end, C - 1)  # the row of step `end` in its window
        assert (logits[b, last] - ref[end]).abs().max().item() <= TOL, end


def test_dt_exact_mode_falls_back_when_a_step_leaves_no_boundary():
    # one step of l > W - k + 1 tokens: no timestep boundary fits, the last W tokens are kept
    from types import SimpleNamespace

    from lramlab.models.backbones.dt import DTBackbone

    torch.manual_seed(0)
    m = DTBackbone(SimpleNamespace(d_model=32, n_layers=2, n_heads=4, context_steps=10, dropout=0.0)).eval()
    x = torch.randn(1, 87, 32)
    state = m.init_state(1)
    with torch.no_grad():
        for lo in range(0, 87, 29):
            y, state = m.step(x[:, lo:lo + 29], state)
            ref = m(x[:, max(0, lo + 29 - 30):lo + 29])[:, -29:]
            torch.testing.assert_close(y, ref, atol=TOL, rtol=0)
