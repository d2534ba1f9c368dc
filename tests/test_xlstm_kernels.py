"""xLSTM fused CPU training kernels (`_xlstm_train`, C++ in `_xlstm_cpu_src`) against the reference
path: the xlstm package's blocks (sLSTM "vanilla" backend, mLSTM `parallel_stabilized_simple`).

Outputs and gradients of every parameter and of the input are compared
  - in float64, to 1e-10 relative: the hand-written backward passes are the reference's autograd
    rules (tie splitting of maximum/minimum, argmax routing of the stabiliser), not approximations;
  - in float32, to 1e-5 relative (max |fast - ref| / max |ref| per tensor): what training sees.
Chunk sizes are shrunk so sequences cross several chunk boundaries of both mLSTM cell forms
(block-causal parallel, chunkwise with states). Kernel-level tests use seeded Gaussian inputs;
the model-level ones real CartPole episodes (conftest `tiny_episodes`): windows of concatenated
episodes (crossing episode boundaries) and a left-padded row, as the sampler makes them.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("xlstm")

from lramlab.models import LRAMConfig, action_loss, build_model, load_model  # noqa: E402
from lramlab.models.backbones import _xlstm_train as XT  # noqa: E402
from lramlab.models.backbones.xlstm import XLSTMBackbone  # noqa: E402
from lramlab.models.checkpoint import load_checkpoint_payload  # noqa: E402

RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}
FORMS = ["parallel", "chunkwise"]


@pytest.fixture(scope="module", autouse=True)
def _kernels():
    ok, why = XT.kernels_available()
    if not ok:
        pytest.skip(why)


@pytest.fixture
def small_chunks(monkeypatch):
    """7-token chunks: the test sequences cross several chunk boundaries in either cell form."""
    monkeypatch.setattr(XT, "CELL_CHUNK", 7)
    monkeypatch.setattr(XT, "CHUNKWISE_CHUNK", 7)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


# ------------------------------------------------------------------------------- mLSTM cell
class _Cell(torch.autograd.Function):
    """The fused cell alone, on the row layout the layer uses: qkv (B, L, 3I), g (B, L, 2NH)."""

    @staticmethod
    def forward(ctx, qkv, g, nh, chunk, chunkwise):
        ext = XT.load_kernels()
        h, *saved = ext.mlstm_cell_fwd(qkv, g, nh, 1e-6, chunk, chunkwise)
        ctx.save_for_backward(qkv, g, h, *saved)
        ctx.args = (nh, chunk, chunkwise)
        return h

    @staticmethod
    def backward(ctx, dh):
        qkv, g, h, *saved = ctx.saved_tensors
        nh, chunk, chunkwise = ctx.args
        dqkv, dg = XT.load_kernels().mlstm_cell_bwd(dh.contiguous(), h, qkv, g, *saved, nh, 1e-6, chunk, chunkwise)
        return dqkv, dg, None, None, None


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("form", FORMS)
def test_mlstm_cell_equals_parallel_stabilized_simple(form, dtype):
    from xlstm.blocks.mlstm.backends import parallel_stabilized_simple

    B, NH, L, DH = 2, 3, 33, 8  # 33 tokens: 4 full chunks of 7 and a partial one
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, NH, L, DH, generator=gen, dtype=torch.float64) for _ in range(3))
    i = torch.randn(B, NH, L, 1, generator=gen, dtype=torch.float64) * 3
    f = torch.randn(B, NH, L, 1, generator=gen, dtype=torch.float64) * 3 + 1
    f[:, 0] -= 5  # head 0 forgets strongly: the row max moves into the current chunk
    i[:, 2] -= 12  # head 2 writes weakly: the normaliser's exp(-m) branch wins
    ref_in = [t.to(dtype).requires_grad_(True) for t in (q, k, v, i, f)]
    ref = parallel_stabilized_simple(*ref_in)  # (B, NH, L, DH)
    w = torch.randn(ref.shape, generator=gen, dtype=torch.float64).to(dtype)
    ref_grads = torch.autograd.grad((ref * w).sum(), ref_in)

    rows = lambda t: t.permute(0, 2, 1, 3).reshape(B, L, NH * t.shape[-1])  # noqa: E731 - (B,NH,L,X) -> (B,L,NH*X)
    qkv = torch.cat([rows(t) for t in (q, k, v)], dim=-1).to(dtype).requires_grad_(True)
    g = torch.cat([rows(i), rows(f)], dim=-1).to(dtype).requires_grad_(True)
    h = _Cell.apply(qkv, g, NH, 7, form == "chunkwise")
    assert rel(h, rows(ref)) <= RTOL[dtype]
    dqkv, dg = torch.autograd.grad((h * rows(w)).sum(), (qkv, g))
    got = list(dqkv.split(NH * DH, dim=-1)) + list(dg.split(NH, dim=-1))
    for name, a, b in zip("qkvif", got, ref_grads):
        assert rel(a, rows(b)) <= RTOL[dtype], name
    # both branches of the normaliser max(|r|, exp(-m)) took part
    _, *saved = XT.load_kernels().mlstm_cell_fwd(qkv.detach(), g.detach(), NH, 1e-6, 7, form == "chunkwise")
    m, r = saved[1], saved[2]
    assert bool((r.abs() < torch.exp(-m)).any()) and bool((r.abs() > torch.exp(-m)).any())


# ------------------------------------------------------------------------------- blocks
def _backbone(slstm_at, n_layers=2, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    cfg = LRAMConfig(backbone="xlstm", size="tiny", n_layers=n_layers, d_model=64, n_heads=4, slstm_at=slstm_at,
                     context_steps=8)
    bb = XLSTMBackbone(cfg)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # zero-initialised gates / recurrent kernels must take part
        for p in bb.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return bb.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("form", FORMS)
def test_blocks_equal_the_package_blocks(form, dtype, small_chunks, monkeypatch):
    """One mLSTM and one sLSTM block, fused vs the package's, on outputs and every gradient."""
    monkeypatch.setattr(XT, "CELL_FORM", form)
    bb = _backbone((1,), dtype=dtype)
    bb._ensure_causal_mask(40, torch.device("cpu"))
    x = torch.randn(3, 40, 64, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(dtype)
    for block, fast in zip(bb.stack.blocks, (XT.mlstm_block, XT.slstm_block)):
        params = list(block.parameters())
        results = []
        for fn in (fast, lambda blk, y: blk(y)):
            xi = x.clone().requires_grad_(True)
            y = fn(block, xi)
            w = torch.randn(y.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(dtype)
            results.append((y.detach(), torch.autograd.grad((y * w).sum(), [xi] + params)))
        (y_fast, g_fast), (y_ref, g_ref) = results
        assert rel(y_fast, y_ref) <= RTOL[dtype]
        names = ["input"] + [n for n, _ in block.named_parameters()]
        for name, a, b in zip(names, g_fast, g_ref):
            assert rel(a, b) <= RTOL[dtype], (type(block.xlstm).__name__, name)


# ------------------------------------------------------------------------------- whole model
def _stream_batch(episodes, T=30, n_streams=3):
    """Windows of T steps over consecutive real episodes (crossing their boundaries); the last row
    is left-padded by 7 steps, as the sampler pads windows that start before an episode."""
    rows = {k: [] for k in ("states", "rtg", "rewards", "actions")}
    i = 0
    for _ in range(n_streams):
        parts = {k: [] for k in rows}
        while sum(len(p) for p in parts["rewards"]) < T:
            ep = episodes[i % len(episodes)]
            i += 1
            rew = ep["rewards"] / 10.0
            parts["states"].append(ep["states"])
            parts["rewards"].append(rew)
            parts["rtg"].append(np.cumsum(rew[::-1])[::-1])
            parts["actions"].append(ep["actions"])
        for k in rows:
            rows[k].append(np.concatenate(parts[k])[:T])
    batch = {k: torch.as_tensor(np.stack(v).astype(np.int64 if k == "actions" else np.float32))
             for k, v in rows.items()}
    mask = torch.ones(n_streams, T, dtype=torch.bool)
    mask[-1, :7] = False
    for k in rows:
        batch[k][-1, :7] = 0
    batch.update(mask=mask, n_actions=torch.full((n_streams,), 2), act_dim=torch.zeros(n_streams, dtype=torch.long),
                 task_index=torch.zeros(n_streams, dtype=torch.long), domain="classic")
    return batch


def _model(slstm_at, kernel, seed=0):
    torch.manual_seed(seed)
    model = build_model(LRAMConfig(backbone="xlstm", size="tiny", slstm_at=slstm_at, context_steps=30,
                                   xlstm_kernel=kernel))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.train()


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("slstm_at", ["7:1", "1:0"])
def test_model_loss_and_every_gradient_equal_the_reference(tiny_episodes, slstm_at, form, small_chunks, monkeypatch):
    monkeypatch.setattr(XT, "CELL_FORM", form)
    batch = _stream_batch(tiny_episodes["classic/cartpole"])
    fast, ref = _model(slstm_at, "fast"), _model(slstm_at, "reference")
    out = {}
    for name, model in (("fast", fast), ("ref", ref)):
        logits = model(batch)
        loss, _ = action_loss(logits, batch)
        loss.backward()
        out[name] = (logits.detach(), loss.detach(), {n: p.grad for n, p in model.named_parameters()})
    assert fast.backbone.forward_kernel == "fast" and ref.backbone.forward_kernel == "reference"
    assert rel(out["fast"][0], out["ref"][0]) <= 1e-5
    assert abs(out["fast"][1].item() - out["ref"][1].item()) <= 1e-5 * abs(out["ref"][1].item())
    bad = {n: rel(g, out["ref"][2][n]) for n, g in out["fast"][2].items()
           if out["ref"][2][n].abs().max() > 0 and rel(g, out["ref"][2][n]) > 1e-5}
    assert not bad, bad
    # hidden states (the embeddings the analysis notebooks read) agree as well
    with torch.no_grad():
        assert rel(fast.hidden_states(batch, layer=0), ref.hidden_states(batch, layer=0)) <= 1e-5


def test_checkpoints_move_between_paths(tmp_path, tiny_episodes):
    """Trained on one path, saved, loaded and run on the other: same logits, same step outputs."""
    batch = _stream_batch(tiny_episodes["classic/cartpole"], T=12, n_streams=2)
    for train_kernel, other in (("fast", "reference"), ("reference", "fast")):
        model = _model("7:1", train_kernel, seed=3)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for _ in range(2):
            opt.zero_grad()
            action_loss(model(batch), batch)[0].backward()
            opt.step()
        path = model.save(tmp_path / f"{train_kernel}.pt")
        payload = load_checkpoint_payload(path)
        moved = build_model(LRAMConfig.from_dict({**payload["config"], "xlstm_kernel": other}))
        moved.load_state_dict(payload["state_dict"])
        same = load_model(path)
        model.eval(), moved.eval(), same.eval()
        with torch.no_grad():
            a, b, c = model(batch), moved(batch), same(batch)
            assert moved.backbone.forward_kernel == other and same.backbone.forward_kernel == train_kernel
            assert rel(b, a) <= 1e-5 and torch.equal(c, a)
            state = moved.init_state(batch_size=2)
            for t in range(batch["states"].shape[1]):
                logits, state = moved.step(state, obs=batch["states"][:, t], rtg=batch["rtg"][:, t],
                                           prev_reward=batch["rewards"][:, t - 1] if t else None)
            assert (logits - a[:, -1]).abs().max().item() <= 1e-4


# ------------------------------------------------------------------------------- selection
def test_kernel_field_is_validated_and_the_path_recorded():
    with pytest.raises(ValueError, match="xlstm_kernel='fastest'"):
        LRAMConfig(backbone="xlstm", size="tiny", xlstm_kernel="fastest")
    assert LRAMConfig(backbone="xlstm", size="tiny").xlstm_kernel == "auto"
    x = torch.randn(2, 9, 64, generator=torch.Generator().manual_seed(0))
    auto = _backbone((1,), dtype=torch.float32)
    assert auto.forward_kernel is None
    auto(x)
    assert auto.forward_kernel == "fast"  # a CPU in fp32: the fused kernels
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast: "auto" falls back to the package's path
        auto(x)
    assert auto.forward_kernel == "reference"
    auto.cfg.xlstm_kernel = "fast"
    with pytest.raises(RuntimeError, match="xlstm_kernel='fast' cannot run here: CPU autocast"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto(x)
    with pytest.raises(RuntimeError, match="torch.bfloat16"):
        auto.to(torch.bfloat16)(x.to(torch.bfloat16))


def test_a_built_kernel_is_imported_without_rebuilding(monkeypatch):
    """Once the extension's .so exists (its name hashes source, flags, torch and CPU), a new process
    imports it directly: torch's ninja step (seen to recompile ~1 min in every process) is not run."""
    import torch.utils.cpp_extension as ce

    from lramlab.models.backbones import _xlstm_train as X

    try:
        X.load_kernels()                                   # built (or already loaded) here
    except RuntimeError as err:
        pytest.skip(f"no compiler here: {err}")
    monkeypatch.setattr(X, "_EXT", None)
    monkeypatch.setattr(ce, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("rebuilt")))
    mod = X.load_kernels()
    assert mod is not None and hasattr(mod, "__file__") and mod.__file__.endswith(".so")


def test_an_unreadable_built_kernel_falls_back_to_building(tmp_path):
    from lramlab.models.backbones import _xlstm_train as X

    bad = tmp_path / "lramlab_xlstm_cpu_bad.so"
    bad.write_bytes(b"not an ELF file")
    assert X._import_built("lramlab_xlstm_cpu_bad", bad) is None
    assert X._import_built("lramlab_xlstm_cpu_none", tmp_path / "absent.so") is None
