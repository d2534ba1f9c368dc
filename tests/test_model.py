"""LRAM agent: config validation, step == parallel forward for every backbone, checkpoints,
gradients, the masked action loss, decoding, and parameter counts per preset.

Inputs are real episodes from tiny simulators (conftest `tiny_episodes`): CartPole states,
Pendulum continuous actions, ALE Pong 64x64 frames. Weights are the models' own init plus a
seeded perturbation, so zero-initialised gates and recurrent kernels take part in the checks.
"""
from __future__ import annotations

import functools
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from lramlab.models import LRAMConfig, action_loss, build_model, load_model
from lramlab.models.agent import parameter_counts
from lramlab.models.backbones import available_backbones
from lramlab.models.head import decode
from lramlab.tokenizer import N_DISCRETE, VOCAB_SIZE, bins_to_continuous, continuous_slice

_AVAILABLE = available_backbones()
# (backbone, slstm_at) variants of the paper: xLSTM [7:1], xLSTM [1:0], Mamba, DT
VARIANTS = [("xlstm", "7:1"), ("xlstm", "1:0"), ("mamba", None), ("dt", None)]
VARIANT_IDS = ["xlstm7_1", "xlstm1_0", "mamba", "dt"]
ATOL_FP32 = 1e-4  # step vs parallel forward, fp32


def _need(backbone: str) -> None:
    if _AVAILABLE.get(backbone):
        pytest.skip(f"backbone {backbone} does not import here: {_AVAILABLE[backbone]}")


def tiny_model(backbone="xlstm", slstm_at=None, seed=0, **kw):
    _need(backbone)
    torch.manual_seed(seed)
    kw.setdefault("context_steps", 32)
    cfg = LRAMConfig(backbone=backbone, size="tiny", slstm_at=slstm_at if backbone == "xlstm" else None, **kw)
    model = build_model(cfg)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # perturb so zero-initialised parameters (gates, sLSTM R) matter
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model.eval()


def _rtg(rewards: np.ndarray) -> np.ndarray:
    return np.cumsum(rewards[::-1])[::-1].astype(np.float32)


def stream_batch(episodes, lengths, n_streams, scale, image=False):
    """B streams, each = len(lengths) consecutive real episodes cut to `lengths` (concatenated)."""
    rows = {"obs": [], "rtg": [], "rewards": [], "actions": []}
    i = 0
    for _ in range(n_streams):
        obs, rtg, rew, act = [], [], [], []
        for n in lengths:
            ep = episodes[i % len(episodes)]
            i += 1
            if len(ep["rewards"]) < n:
                raise AssertionError(f"episode too short ({len(ep['rewards'])} < {n})")
            obs.append(ep["states"][:n])
            rew.append(ep["rewards"][:n] / scale)
            rtg.append(_rtg(ep["rewards"][:n]) / scale)
            act.append(ep["actions"][:n])
        for k, v in zip(("obs", "rtg", "rewards", "actions"), (obs, rtg, rew, act)):
            rows[k].append(np.concatenate(v))
    batch = {k: torch.as_tensor(np.stack(v)) for k, v in rows.items()}
    batch["images" if image else "states"] = batch.pop("obs")
    return batch


def step_all(model, batch, chunkwise=True, image=False):
    obs = batch["images" if image else "states"]
    B, T = obs.shape[:2]
    state = model.init_state(batch_size=B)
    out = []
    for t in range(T):
        logits, state = model.step(state, obs=obs[:, t], rtg=batch["rtg"][:, t],
                                   prev_reward=batch["rewards"][:, t - 1] if t else None,
                                   prev_action=batch["actions"][:, t - 1] if t else None, chunkwise=chunkwise)
        out.append(logits)
    return torch.stack(out, dim=1)


# ------------------------------------------------------------------------------- config
@pytest.mark.parametrize("kwargs, needle", [
    ({"backbone": "lstm"}, "'lstm'"),
    ({"size": "17M"}, "'17M'"),
    ({"tokens": "sar"}, "'sar'"),
    ({"context_steps": 0}, "context_steps=0"),
    ({"d_model": -5}, "d_model=-5"),
    ({"slstm_at": (9,)}, "(9,)"),
    ({"slstm_at": (1, 1)}, "(1, 1)"),
    ({"slstm_at": "seven"}, "'seven'"),
    ({"n_heads": 3}, "n_heads=3"),
    ({"backbone": "dt", "n_heads": 7}, "n_heads=7"),
    ({"backbone": "mamba", "slstm_at": (1,)}, "(1,)"),
    ({"dtype": "float64"}, "'float64'"),
    ({"dt_dropout": 1.5}, "1.5"),
    ({"image_encoder": "resnet"}, "'resnet'"),
])
def test_bad_config_values_raise_naming_them(kwargs, needle):
    with pytest.raises(ValueError) as err:
        LRAMConfig(**kwargs)
    assert needle in str(err.value)


def test_unknown_backbone_lists_valid_ones():
    with pytest.raises(ValueError, match="xlstm.*mamba.*dt"):
        LRAMConfig(backbone="gru")


def test_presets_and_ratios_resolve():
    c = LRAMConfig(backbone="xlstm", size="16M")
    assert (c.n_layers, c.d_model, c.n_heads, c.slstm_at, c.context_tokens) == (8, 512, 4, (1,), 150)
    assert LRAMConfig(size="48M").slstm_at == (1, 3)
    assert LRAMConfig(size="206M").slstm_at == (1, 3, 5)
    assert LRAMConfig(size="110M", slstm_at="1:0").slstm_at == ()
    assert LRAMConfig(size="110M", slstm_at="7:1").slstm_at == (1, 3)
    assert LRAMConfig(size="16M", slstm_at="1:1").slstm_at == (1, 3, 5, 7)
    assert LRAMConfig(size="tiny").slstm_at == (1,) and LRAMConfig(size="tiny").n_layers == 2
    dt = LRAMConfig(backbone="dt", size="206M")
    assert (dt.n_layers, dt.d_model, dt.n_heads) == (10, 1280, 20)
    half = LRAMConfig(backbone="xlstm", size="206M-half")
    assert (half.n_layers, half.d_model) == (10, 1792)
    assert LRAMConfig(backbone="mamba", size="48M").n_layers == 12
    assert LRAMConfig(tokens="s").context_tokens == 50 and LRAMConfig(tokens="srra").tokens_per_step == 4
    # a resolved config round-trips through its dict (what a checkpoint stores)
    assert LRAMConfig.from_dict(half.to_dict()) == half
    with pytest.raises(ValueError, match="unknown fields"):
        LRAMConfig.from_dict({**half.to_dict(), "n_layer": 3})


# ------------------------------------------------------------------------------- step == forward
@pytest.mark.parametrize("chunkwise", [True, False], ids=["chunkwise", "token"])
@pytest.mark.parametrize("backbone, slstm_at", VARIANTS, ids=VARIANT_IDS)
def test_step_through_three_episodes_equals_parallel_forward(tiny_episodes, backbone, slstm_at, chunkwise):
    model = tiny_model(backbone, slstm_at)
    # 3 concatenated CartPole episodes per stream; the state carries across the boundaries
    batch = stream_batch(tiny_episodes["classic/cartpole"], lengths=(7, 5, 9), n_streams=2, scale=10.0)
    with torch.no_grad():
        parallel = model(batch)
    stepped = step_all(model, batch, chunkwise=chunkwise)
    assert parallel.shape == stepped.shape == (2, 21, VOCAB_SIZE)
    assert (stepped - parallel).abs().max().item() <= ATOL_FP32


@pytest.mark.parametrize("backbone, slstm_at", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("tokens", ["s", "srra"])
def test_token_variants_step_equals_forward(tiny_episodes, tokens, backbone, slstm_at):
    # every layout x backbone: "srr" above, "ad" and "sr" below (tests/test_icl_tokens.py: the DT past its window)
    model = tiny_model(backbone, slstm_at, tokens=tokens)
    batch = stream_batch(tiny_episodes["classic/cartpole"], lengths=(6, 6), n_streams=2, scale=10.0)
    with torch.no_grad():
        parallel = model(batch)
    for chunkwise in (True, False):
        assert (step_all(model, batch, chunkwise) - parallel).abs().max().item() <= ATOL_FP32


@pytest.mark.parametrize("backbone, slstm_at", VARIANTS, ids=VARIANT_IDS)
def test_ad_tokens_one_per_step_step_equals_forward(tiny_episodes, backbone, slstm_at):
    # AD's embedding: one token per step, E(s_t) + E(a_{t-1}) + E(r_{t-1}); action read at it
    model = tiny_model(backbone, slstm_at, tokens="ad")
    assert model.cfg.tokens_per_step == 1 and model.cfg.context_tokens == model.cfg.context_steps
    batch = stream_batch(tiny_episodes["classic/cartpole"], lengths=(7, 5, 9), n_streams=2, scale=10.0)
    with torch.no_grad():
        parallel = model(batch)
        a, r = batch["actions"].clone(), batch["rewards"].clone()
        a[:, 3] = 1 - a[:, 3]
        r[:, 5] += 5
        changed_a, changed_r = model({**batch, "actions": a}), model({**batch, "rewards": r})
    assert parallel.shape == (2, 21, VOCAB_SIZE)
    for changed, t in ((changed_a, 3), (changed_r, 5)):  # a_t / r_t reach the logits from step t + 1 on
        assert torch.equal(parallel[:, : t + 1], changed[:, : t + 1])
        assert not torch.allclose(parallel[:, t + 1], changed[:, t + 1])
    for chunkwise in (True, False):
        assert (step_all(model, batch, chunkwise) - parallel).abs().max().item() <= ATOL_FP32
    # left padding: the first real step has no previous step, like the first step of a stream
    pad = {k: (torch.cat([torch.zeros_like(v[:, :4]), v[:, :9]], 1) if k in ("states", "rtg", "rewards", "actions")
               else v) for k, v in batch.items()}
    pad["mask"] = torch.cat([torch.zeros(2, 4, dtype=torch.bool), torch.ones(2, 9, dtype=torch.bool)], 1)
    leak = {**pad, "actions": pad["actions"].clone(), "rewards": pad["rewards"].clone()}
    leak["actions"][:, 3] = 1
    leak["rewards"][:, 3] = 7.0
    with torch.no_grad():
        assert torch.equal(model(leak), model(pad))


@pytest.mark.parametrize("backbone, slstm_at", VARIANTS, ids=VARIANT_IDS)
def test_sr_tokens_step_equals_forward_and_ignore_rtg(tiny_episodes, backbone, slstm_at):
    # AD conditioning (s_t, r_t): 2 tokens per step, the action read at s_t, no R̂ anywhere
    model = tiny_model(backbone, slstm_at, tokens="sr")
    assert model.cfg.tokens_per_step == 2 and not hasattr(model, "rtg_encoder")
    batch = stream_batch(tiny_episodes["classic/cartpole"], lengths=(7, 5, 9), n_streams=2, scale=10.0)
    with torch.no_grad():
        parallel = model(batch)
        other_rtg = model({**batch, "rtg": batch["rtg"] * 0 + 123.0})
        later_reward = model({**batch, "rewards": torch.cat([batch["rewards"][:, :-1], batch["rewards"][:, -1:] + 5], 1)})
    assert torch.equal(parallel, other_rtg)
    # r_t enters after the read token of step t: changing the last reward changes no logits
    assert torch.equal(parallel, later_reward)
    with torch.no_grad():  # ... while r_0 reaches the logits of step 1 on
        r0 = batch["rewards"].clone()
        r0[:, 0] += 5
        first_reward = model({**batch, "rewards": r0})
    assert torch.equal(parallel[:, 0], first_reward[:, 0]) and not torch.allclose(parallel[:, 1], first_reward[:, 1])
    for chunkwise in (True, False):
        assert (step_all(model, batch, chunkwise) - parallel).abs().max().item() <= ATOL_FP32


def test_image_step_equals_forward(tiny_episodes):
    model = tiny_model("xlstm", "7:1")
    batch = stream_batch(tiny_episodes["atari/pong"], lengths=(5, 4), n_streams=1, scale=20.0, image=True)
    assert batch["images"].dtype == torch.uint8 and batch["images"].shape[2:] == (1, 64, 64)
    with torch.no_grad():
        parallel = model(batch)
    assert (step_all(model, batch, image=True) - parallel).abs().max().item() <= ATOL_FP32


def test_step_needs_prev_reward_after_first_step():
    model = tiny_model("xlstm", "7:1")
    state = model.init_state(batch_size=1)
    obs = np.zeros((1, 4), np.float32)
    _, state = model.step(state, obs=obs, rtg=1.0)
    with pytest.raises(ValueError, match="prev_reward"):
        model.step(state, obs=obs, rtg=1.0)
    with pytest.raises(ValueError, match="batch 2"):
        model.step(model.init_state(batch_size=1), obs=np.zeros((2, 4), np.float32), rtg=1.0)


def test_hidden_states(tiny_episodes):
    model = tiny_model("xlstm", "7:1")
    batch = stream_batch(tiny_episodes["classic/cartpole"], lengths=(6,), n_streams=2, scale=10.0)
    with torch.no_grad():
        h = model.hidden_states(batch)
        h0 = model.hidden_states(batch, layer=0)
        logits = model(batch)
    assert h.shape == h0.shape == (2, 6, model.cfg.d_model)
    assert torch.allclose(model.head(h), logits, atol=1e-6)  # layer=-1 is what the head reads
    assert not torch.allclose(h0, h)
    with pytest.raises(ValueError, match="layer=5"):
        model.hidden_states(batch, layer=5)


# ------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("backbone, slstm_at", VARIANTS, ids=VARIANT_IDS)
def test_save_load_is_bit_identical(tmp_path, tiny_episodes, backbone, slstm_at):
    model = tiny_model(backbone, slstm_at)
    path = tmp_path / "ckpt" / "model.pt"
    model.save(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]  # no temp file left
    loaded = load_model(path)
    assert loaded.cfg == model.cfg
    batch = stream_batch(tiny_episodes["classic/cartpole"], lengths=(6,), n_streams=2, scale=10.0)
    with torch.no_grad():
        assert torch.equal(model(batch), loaded.eval()(batch))
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_load_rejects_non_checkpoints(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"weights": torch.zeros(3)}, bad)
    with pytest.raises(ValueError, match="bad.pt.*not an lramlab model checkpoint"):
        load_model(bad)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_model(tmp_path / "missing.pt")


# ------------------------------------------------------------------------------- gradients
def _train_batch(episodes, scale, image, n_actions, act_dim, T=6):
    batch = stream_batch(episodes, lengths=(T,), n_streams=2, scale=scale, image=image)
    mask = torch.ones(2, T, dtype=torch.bool)
    mask[1, -2:] = False  # row 1 is right-padded, as the sampler does
    for k in ("images", "states", "rtg", "rewards", "actions"):
        if k in batch:
            batch[k][1, -2:] = 0
    batch["mask"] = mask
    if batch["actions"].dim() == 2:
        batch["actions"] = batch["actions"].long()
    else:
        batch["actions"] = torch.nn.functional.pad(batch["actions"].float(), (0, 8 - batch["actions"].shape[-1]))
    batch["n_actions"] = torch.full((2,), n_actions)
    batch["act_dim"] = torch.full((2,), act_dim)
    return batch


@pytest.mark.parametrize("backbone, slstm_at", VARIANTS, ids=VARIANT_IDS)
def test_gradients_reach_every_parameter(tiny_episodes, backbone, slstm_at):
    model = tiny_model(backbone, slstm_at).train()
    image_batch = _train_batch(tiny_episodes["atari/pong"], 20.0, True, n_actions=6, act_dim=0)
    state_batch = _train_batch(tiny_episodes["control/pendulum"], 100.0, False, n_actions=0, act_dim=1)
    reached = set()
    for batch, unused in ((image_batch, "state_encoder."), (state_batch, "image_encoder.")):
        model.zero_grad(set_to_none=True)
        loss, metrics = action_loss(model(batch), batch)
        loss.backward()
        assert math.isfinite(metrics["loss"]) and metrics["n_targets"] > 0
        for name, p in model.named_parameters():
            # every parameter gets a gradient (DDP-safe); the unused encoder's is exactly zero
            assert p.grad is not None, name
            if name.startswith(unused):
                assert p.grad.abs().max() == 0, name
            elif p.grad.abs().max() > 0:
                reached.add(name)
    dead = [n for n, _ in model.named_parameters() if n not in reached]
    assert not dead, f"parameters without gradient from either batch: {dead}"


# ------------------------------------------------------------------------------- loss
def test_discrete_loss_is_masked_and_matches_hand_ce():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, VOCAB_SIZE, generator=g)
    batch = {"actions": torch.tensor([[0, 2, 1], [0, 4, 3]]), "mask": torch.tensor([[True, True, True], [False, True, True]]),
             "n_actions": torch.tensor([3, 5]), "act_dim": torch.tensor([0, 0])}
    loss, metrics = action_loss(logits, batch)
    hand = []
    for b, n in ((0, 3), (1, 5)):
        for t in range(3):
            if batch["mask"][b, t]:
                z = logits[b, t, :n]
                hand.append(-(z[batch["actions"][b, t]] - torch.logsumexp(z, 0)))
    assert torch.allclose(loss, torch.stack(hand).mean(), atol=1e-6)
    assert metrics["n_targets"] == 5
    changed = logits.clone()
    changed[0, :, 3:] = 50.0       # classes >= n_actions of row 0
    changed[1, :, 5:] = -30.0      # ... of row 1 (incl. the continuous part)
    changed[1, 0] = 99.0           # padded timestep
    assert torch.equal(action_loss(changed, batch)[0], loss)
    x = logits.clone().requires_grad_(True)
    action_loss(x, batch)[0].backward()
    assert x.grad[0, :, 3:].abs().max() == 0 and x.grad[1, 0].abs().max() == 0
    with pytest.raises(ValueError, match="outside"):
        action_loss(logits, {**batch, "actions": torch.tensor([[0, 3, 1], [0, 4, 3]])})


def test_continuous_loss_is_masked_and_matches_hand_ce():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 2, VOCAB_SIZE, generator=g)
    actions = torch.zeros(2, 2, 8)
    actions[0, :, :2] = torch.tensor([[-1.0, 0.3], [0.99, -0.5]])
    actions[1, :, :3] = torch.tensor([[0.1, 0.2, 0.3], [-0.7, 1.0, 0.0]])
    batch = {"actions": actions, "mask": torch.tensor([[True, True], [False, True]]),
             "n_actions": torch.tensor([0, 0]), "act_dim": torch.tensor([2, 3])}
    loss, metrics = action_loss(logits, batch)
    hand = []
    for b, t, dims in ((0, 0, 2), (0, 1, 2), (1, 1, 3)):
        for d in range(dims):
            z = logits[b, t, continuous_slice(d)]
            target = int(min(255, math.floor((float(actions[b, t, d]) + 1.0) / (2.0 / 256))))
            hand.append(-(z[target] - torch.logsumexp(z, 0)))
    assert torch.allclose(loss, torch.stack(hand).mean(), atol=1e-6)
    assert metrics["n_targets"] == 7
    changed = logits.clone()
    changed[0, :, continuous_slice(2).start:] = 40.0  # padded dims of row 0
    changed[1, 1, continuous_slice(3).start:] = -40.0
    changed[:, :, :N_DISCRETE] = 7.0                   # discrete part
    changed[1, 0] = 123.0                              # padded timestep
    assert torch.equal(action_loss(changed, batch)[0], loss)


# ------------------------------------------------------------------------------- decode
def test_decode_respects_task_dims():
    logits = torch.zeros(2, VOCAB_SIZE)
    logits[:, 10] = 100.0  # an invalid class for a 4-action task
    logits[:, 2] = 5.0
    assert decode(logits, n_actions=4).tolist() == [2, 2]
    assert decode(logits, n_actions=torch.tensor([4, 12])).tolist() == [2, 10]
    c = torch.zeros(2, VOCAB_SIZE)
    c[:, continuous_slice(0).start + 200] = 50.0
    c[:, continuous_slice(1).start + 3] = 50.0
    c[:, continuous_slice(5).start + 100] = 50.0  # dim 5 is padding for a 2-dim task
    a = decode(c, act_dim=2)
    assert a.shape == (2, 8)
    assert torch.allclose(a[:, 0], bins_to_continuous(torch.tensor(200)))
    assert torch.allclose(a[:, 1], bins_to_continuous(torch.tensor(3)))
    assert a[:, 2:].abs().max() == 0
    x = torch.randn(64, VOCAB_SIZE, generator=torch.Generator().manual_seed(4))
    s1 = decode(x, n_actions=5, greedy=False, temperature=2.0, generator=torch.Generator().manual_seed(3))
    s2 = decode(x, n_actions=5, greedy=False, temperature=2.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(s1, s2) and s1.max() < 5 and s1.min() >= 0 and len(set(s1.tolist())) > 1
    sc = decode(x, act_dim=3, greedy=False, generator=torch.Generator().manual_seed(5))
    assert sc[:, 3:].abs().max() == 0 and sc.abs().max() <= 1
    with pytest.raises(ValueError, match="exactly one"):
        decode(logits, n_actions=3, act_dim=2)
    model = tiny_model("xlstm", "7:1")
    assert torch.equal(model.decode(logits, n_actions=4), decode(logits, n_actions=4))


# ------------------------------------------------------------------------------- sizes
@functools.lru_cache(maxsize=None)
def _counts() -> tuple:
    # built on the meta device: no memory, but ~1 s per preset on 2 cores, so computed once
    return tuple(parameter_counts(backbones=[b for b in ("xlstm", "mamba", "dt") if not _AVAILABLE.get(b)]))


def test_parameter_counts_match_preset_names():
    rows = _counts()
    assert {r["backbone"] for r in rows} >= {"xlstm"}
    for row in rows:
        target = float(row["size"].split("-")[0].rstrip("M")) * 1e6
        assert 0.75 * target <= row["total"] <= 1.25 * target, row


def test_models_doc_lists_current_parameter_counts():
    doc = Path(__file__).resolve().parents[1] / "docs" / "models.md"
    text = doc.read_text()
    # only the xLSTM rows are pinned here: the Mamba / DT rows follow their own files
    for row in (r for r in _counts() if r["backbone"] == "xlstm"):
        pattern = rf"\|\s*{re.escape(row['model'])}\s*\|\s*{re.escape(row['size'])}\s*\|.*\|\s*{row['total']:,}\s*\|"
        assert re.search(pattern, text), f"docs/models.md is stale for {row['backbone']} {row['size']}: {row['total']:,}"


# ------------------------------------------------------------------------------- latency bench
def test_measure_latency_counts_and_orders():
    from lramlab.bench.latency import measure_latency

    calls = []
    res = measure_latency(lambda: calls.append(1), warmup=3, reps=7)
    assert len(calls) == 10 and res.reps == 7 and res.warmup == 3
    assert res.min_ms <= res.p10_ms <= res.median_ms <= res.p90_ms
    with pytest.raises(ValueError, match="reps=0"):
        measure_latency(lambda: None, reps=0)


def test_latency_cli_runs_tiny_models(tmp_path):
    import json

    from lramlab.bench.latency import main

    out = tmp_path / "lat.json"
    backbones = ",".join(b for b in ("xlstm", "mamba", "dt") if not _AVAILABLE.get(b))
    assert main(["--backbones", backbones, "--sizes", "tiny", "--contexts", "3,7", "--batch-sizes", "2",
                 "--reps", "2", "--warmup", "1", "--threads", "1", "--references", "xlstm-pkgstep",
                 "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    names = {r["backbone"] for r in rows}
    assert "xlstm" in names and "xlstm-pkgstep" in names  # the package's own step loop as reference
    for r in rows:
        assert r["median_ms"] > 0 and r["batch_size"] == 2 and r["state_mb"] > 0
    dt = {r["context_steps"]: r for r in rows if r["backbone"] == "dt"}
    if dt:  # the KV cache grows with the context, recurrent states do not
        assert dt[7]["state_mb"] > dt[3]["state_mb"]
    x = {r["context_steps"]: r for r in rows if r["backbone"] == "xlstm"}
    assert x[7]["state_mb"] == x[3]["state_mb"] and x[7]["prefill"] == "computed"
    with pytest.raises(SystemExit):
        main(["--backbones", "lstm"])


@pytest.mark.parametrize("kind", ["discrete", "continuous", "mixed_dims"])
def test_fused_head_loss_equals_action_loss_on_full_logits(tiny_episodes, kind):
    """forward(batch, return_loss=True) computes the head on real timesteps and valid columns only:
    the loss, metrics and every parameter gradient equal action_loss on the full logits."""
    from lramlab.models import action_loss

    torch.manual_seed(0)
    model = tiny_model("dt", None)
    if kind == "discrete":
        batch = stream_batch(tiny_episodes["classic/cartpole"], lengths=(7, 5, 9), n_streams=3, scale=10.0)
        B, T = batch["actions"].shape
        batch["n_actions"] = torch.full((B,), 2)
        batch["act_dim"] = torch.zeros(B, dtype=torch.long)
    else:
        batch = stream_batch(tiny_episodes["control/pendulum"], lengths=(7, 5, 9), n_streams=3, scale=100.0)
        a = batch["actions"].float().reshape(*batch["actions"].shape[:2], -1)
        B, T = a.shape[:2]
        batch["actions"] = torch.nn.functional.pad(a, (0, 8 - a.shape[-1]))
        batch["act_dim"] = torch.full((B,), a.shape[-1])
        batch["n_actions"] = torch.zeros(B, dtype=torch.long)
    batch["mask"] = torch.ones(B, T, dtype=torch.bool)
    batch["mask"][1, -4:] = False  # right padding on one row
    if kind == "mixed_dims":  # rows of one domain with different act_dim (padded dims are ignored)
        batch["act_dim"][0] = 3
        batch["actions"][0, :, :3] = torch.linspace(-0.9, 0.9, 3)
    model.zero_grad()
    ref, ref_m = action_loss(model(batch), batch)
    ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    fused, fused_m = model(batch, return_loss=True)
    fused.backward()
    assert abs(float(fused) - float(ref)) <= 1e-6 * max(1.0, abs(float(ref)))
    assert fused_m["n_targets"] == ref_m["n_targets"] and fused_m["acc"] == pytest.approx(ref_m["acc"])
    for n, p in model.named_parameters():
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        want = ref_grads.get(n, torch.zeros_like(p))
        assert torch.allclose(g, want, rtol=1e-5, atol=1e-7), n
