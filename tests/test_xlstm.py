"""xLSTM backbone: lramlab's fast step (token-by-token, chunkwise, long pieces) and the package's
reference step equal the package's parallel forward; sLSTM weights are stored backend-independently.

These are kernel-equivalence tests over the backbone alone (STYLE.md §11), so the inputs are
seeded Gaussian token embeddings, not observations.
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("xlstm")

from lramlab.models import LRAMConfig  # noqa: E402
from lramlab.models.backbones.xlstm import STEP_PIECE_TOKENS, XLSTMBackbone  # noqa: E402

ATOL = 1e-4  # fp32


def backbone(slstm_at=(1,), n_layers=2, d_model=64, n_heads=4, seed=0, kernel="fast"):
    torch.manual_seed(seed)
    cfg = LRAMConfig(backbone="xlstm", size="tiny", n_layers=n_layers, d_model=d_model, n_heads=n_heads,
                     slstm_at=slstm_at, context_steps=8, xlstm_step_kernel=kernel)
    bb = XLSTMBackbone(cfg)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # zero-initialised gates / recurrent kernels must take part
        for p in bb.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return bb.eval()


def tokens(B, L, D, seed=2):
    return torch.randn(B, L, D, generator=torch.Generator().manual_seed(seed))


def run_steps(bb, x, piece):
    state = bb.init_state(x.shape[0])
    ys = [bb.step(p, state)[0] for p in x.split(piece, dim=1)]
    return torch.cat(ys, dim=1)


@pytest.mark.parametrize("slstm_at", [(1,), (), (0, 2)], ids=["7:1", "1:0", "s-m-s"])
@pytest.mark.parametrize("piece", [1, 3, 5], ids=["token", "step", "piece5"])
def test_fast_step_equals_parallel_forward(slstm_at, piece):
    bb = backbone(slstm_at, n_layers=3)
    x = tokens(2, 30, 64)  # 30 tokens = 10 timesteps, > the 24-token context (mask grows)
    with torch.no_grad():
        ref = bb(x)
        got = run_steps(bb, x, piece)
    assert (got - ref).abs().max().item() <= ATOL


def test_long_input_is_cut_into_pieces():
    bb = backbone((1,))
    x = tokens(1, STEP_PIECE_TOKENS + 45, 64)
    with torch.no_grad():
        ref = bb(x)
        got = run_steps(bb, x, x.shape[1])  # one call: split internally, state carried
    assert (got - ref).abs().max().item() <= ATOL


def test_reference_kernel_equals_fast_and_parallel():
    fast = backbone((1,))
    ref = backbone((1,), kernel="reference")
    ref.load_state_dict(fast.state_dict())
    x = tokens(2, 12, 64)
    with torch.no_grad():
        y = fast(x)
        assert (run_steps(ref, x, 3) - y).abs().max().item() <= ATOL
        assert (run_steps(fast, x, 3) - y).abs().max().item() <= ATOL
    assert ref.step_kernel == "reference" and fast.step_kernel == "fast"


def test_more_heads_and_fresh_state_per_stream():
    bb = backbone((1,), n_heads=8)
    x = tokens(3, 9, 64)
    with torch.no_grad():
        ref = bb(x)
        assert (run_steps(bb, x, 3) - ref).abs().max().item() <= ATOL
        # one stream alone gives the same outputs as inside a batch
        assert (run_steps(bb, x[1:2], 3) - ref[1:2]).abs().max().item() <= ATOL


def test_hidden_states_are_block_outputs():
    bb = backbone((1,), n_layers=3)
    x = tokens(1, 6, 64)
    with torch.no_grad():
        y, hs = bb(x, output_hidden_states=True)
    assert len(hs) == 3 and all(h.shape == x.shape for h in hs)
    assert torch.allclose(bb.stack.post_blocks_norm(hs[-1]), y)


def test_fast_step_keeps_gradients_when_asked():
    bb = backbone((1,)).train()
    x = tokens(1, 6, 64)
    y, _ = bb.step(x, bb.init_state(1))
    y.sum().backward()
    assert bb.stack.blocks[0].xlstm.proj_up.weight.grad is not None
    assert bb.stack.blocks[1].xlstm.slstm_cell._recurrent_kernel_.grad is not None


def test_slstm_weights_saved_in_external_layout_and_converted_back():
    bb = backbone((1,))
    cell = bb.stack.blocks[1].xlstm.slstm_cell
    sd = bb.state_dict()
    key = "stack.blocks.1.xlstm.slstm_cell."
    NH, DH = cell.config.num_heads, cell.config.head_dim
    assert sd[key + "_recurrent_kernel_"].shape == (NH, DH, 4, DH)
    assert sd[key + "_bias_"].shape == (NH, 4, DH)
    assert torch.equal(sd[key + "_bias_"], cell.bias[:, :, :])  # the package's external view
    other = backbone((1,), seed=5)
    other.load_state_dict(sd)
    assert torch.equal(other.stack.blocks[1].xlstm.slstm_cell._recurrent_kernel_, cell._recurrent_kernel_)
    assert torch.equal(other.stack.blocks[1].xlstm.slstm_cell._bias_, cell._bias_)
    # the CUDA backend's internal layout differs (same bias shape!): the external form maps into it
    from xlstm.blocks.slstm.cell import sLSTMCell_cuda

    cuda_cell = sLSTMCell_cuda(cell.config, skip_backend_init=True)
    r_int = cuda_cell._recurrent_kernel_ext2int(sd[key + "_recurrent_kernel_"])
    b_int = cuda_cell._bias_ext2int(sd[key + "_bias_"])
    assert torch.equal(cuda_cell._recurrent_kernel_int2ext(r_int), cell._recurrent_kernel_int2ext(cell._recurrent_kernel_))
    assert torch.equal(cuda_cell._bias_int2ext(b_int), cell._bias_int2ext(cell._bias_))
    assert not torch.equal(b_int, cell._bias_)  # a raw copy would have scrambled the gates


@pytest.mark.parametrize("per_head", [False, True], ids=["all-heads", "head-by-head"])
@pytest.mark.parametrize("lazy", [True, False], ids=["lazy-scale", "rescale"])
@pytest.mark.parametrize("piece", [1, 3])
def test_inplace_chunk_matches_functional_chunk(lazy, piece, per_head, monkeypatch):
    """The in-place kernel (lazy state scale, folded back below exp(-30); state read and updated
    all at once or slice by slice) equals the functional one, also under strong forgetting, where
    the fold happens every few tokens."""
    from lramlab.models.backbones import xlstm as X
    from lramlab.models.backbones.xlstm import _mlstm_chunk, _mlstm_chunk_

    if per_head:  # the 16M preset's 256x257 heads are updated one by one; force that path here
        monkeypatch.setattr(X, "_L2_BYTES", 1)

    g = torch.Generator().manual_seed(7)
    B, NH, L, DH = 2, 3, 24, 8
    q, k, v = (torch.randn(B, NH, L, DH, generator=g) for _ in range(3))
    k = k / DH ** 0.5
    i = torch.randn(B, NH, L, generator=g) * 3
    f = torch.randn(B, NH, L, generator=g) * 3 - 6  # log f ~ -6 per token: a drops fast
    zeros = (torch.zeros(B, NH, DH, DH), torch.zeros(B, NH, DH), torch.zeros(B, NH))
    ref, (C_ref, n_ref, m_ref) = _mlstm_chunk(q, k, v, i, f, *zeros)
    Cx, m, a = torch.zeros(B * NH, DH, DH + 1), torch.zeros(B * NH), torch.zeros(B * NH)
    hs = []
    for t in range(0, L, piece):
        sl = slice(t, t + piece)
        flat = lambda z: z[:, :, sl].reshape(B * NH, -1, *z.shape[3:])  # noqa: E731
        hs.append(_mlstm_chunk_(flat(q), flat(k), flat(v), flat(i), flat(f), Cx, m, a, lazy=lazy))
    got = torch.cat(hs, dim=1).view(B, NH, L, DH)
    assert (got - ref).abs().max().item() <= ATOL
    scale = torch.exp(a).view(B, NH, 1, 1)
    assert torch.allclose(Cx.view(B, NH, DH, DH + 1)[..., :DH] * scale, C_ref, atol=1e-5, rtol=1e-4)
    assert torch.allclose(Cx.view(B, NH, DH, DH + 1)[..., DH] * scale[..., 0], n_ref, atol=1e-5, rtol=1e-4)
    assert torch.equal(m, m_ref.view(-1)) or torch.allclose(m, m_ref.view(-1), atol=1e-5)
    if lazy:
        assert a.min() > -31  # the scale was folded back in, never left to underflow


# ------------------------------------------------------------------ numba CPU kernels (_xlstm_step)
def _kernels():
    from lramlab.models.backbones import _xlstm_step

    k = _xlstm_step.kernels()
    if k is None:
        pytest.skip("numba is not installed: the fast step runs on torch ops only")
    return k


@pytest.mark.parametrize("impl", ["numba", "torch"])
@pytest.mark.parametrize("slstm_at", [(1,), ()], ids=["7:1", "1:0"])
def test_both_step_impls_equal_parallel_forward(impl, slstm_at):
    if impl == "numba":
        _kernels()
    bb = backbone(slstm_at, n_layers=3)
    bb.step_impl = impl
    assert bb.effective_step_impl() == impl
    x = tokens(2, 24, 64)
    with torch.no_grad():
        ref = bb(x)
        # a 21-token piece (torch ops: longer than the fused kernel takes), then 3-token steps
        state = bb.init_state(2)
        ys = [bb.step(x[:, :21], state)[0]] + [bb.step(p, state)[0] for p in x[:, 21:].split(3, dim=1)]
    assert (torch.cat(ys, dim=1) - ref).abs().max().item() <= ATOL


def test_numba_and_torch_impls_agree_on_the_16m_block_shapes():
    """One mLSTM block of the 16M preset's width (DH=256 heads, 1024 inner) from a non-zero state."""
    _kernels()
    bb = backbone((), n_layers=1, d_model=512, n_heads=4)
    x = tokens(1, 12, 512)
    outs = {}
    with torch.no_grad():
        for impl in ("torch", "numba"):
            bb.step_impl = impl
            state = bb.init_state(1)
            outs[impl] = torch.cat([bb.step(p, state)[0] for p in x.split(3, dim=1)], dim=1)
        ref = bb(x)
    assert (outs["numba"] - outs["torch"]).abs().max().item() <= ATOL
    assert (outs["numba"] - ref).abs().max().item() <= ATOL


@pytest.mark.parametrize("M", [1, 2, 3, 4, 5, 7, 9])
@pytest.mark.parametrize("bias", [False, True])
def test_numba_linear_rows_equals_linear(M, bias):
    k = _kernels()
    g = torch.Generator().manual_seed(M)
    x, W, b = torch.randn(M, 37, generator=g), torch.randn(23, 37, generator=g), torch.randn(23, generator=g)
    out = torch.full((M, 23), float("nan"))
    k.linear_rows(x.numpy(), W.numpy(), b.numpy(), bias, out.numpy())
    assert torch.allclose(out, torch.nn.functional.linear(x, W, b if bias else None), atol=1e-5, rtol=1e-5)


def test_cached_step_weights_follow_an_optimizer_step():
    """The fused/converted step weights are cached; an optimizer step (in-place update) must
    invalidate them, for both implementations."""
    bb = backbone((1,))
    x = tokens(1, 9, 64)
    with torch.no_grad():
        for impl in ("numba", "torch"):
            bb.step_impl = impl
            run_steps(bb, x, 3)  # builds and caches the step weights
    bb.train()
    opt = torch.optim.SGD(bb.parameters(), lr=0.5)
    bb(x).pow(2).mean().backward()
    opt.step()
    bb.eval()
    with torch.no_grad():
        ref = bb(x)
        for impl in ("numba", "torch"):
            bb.step_impl = impl
            assert (run_steps(bb, x, 3) - ref).abs().max().item() <= ATOL, impl
        # and after loading other weights
        other = backbone((1,), seed=9)
        bb.load_state_dict(other.state_dict())
        ref = other(x)
        for impl in ("numba", "torch"):
            bb.step_impl = impl
            assert (run_steps(bb, x, 3) - ref).abs().max().item() <= ATOL, impl


def test_latency_bench_times_step_kernels_side_by_side():
    from lramlab.bench.latency import agent_latency_over_contexts

    rows = agent_latency_over_contexts("xlstm", "tiny", [2, 5], 1, warmup=1, reps=2,
                                       xlstm_kernels=["fast", "fast-torch", "reference"])
    names = [(r["backbone"], r["context_steps"]) for r in rows]
    assert names == [("xlstm", 2), ("xlstm", 5), ("xlstm-torchstep", 2), ("xlstm-torchstep", 5),
                     ("xlstm-pkgstep", 2), ("xlstm-pkgstep", 5)]
    assert {r["step_impl"] for r in rows if r["backbone"] == "xlstm-torchstep"} == {"torch"}
    assert all(r["median_ms"] > 0 and r["state_mb"] > 0 for r in rows)
    with pytest.raises(ValueError, match="fastest"):
        agent_latency_over_contexts("xlstm", "tiny", [2], 1, reps=1, xlstm_kernels=["fastest"])
