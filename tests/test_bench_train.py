"""`lramlab bench train`: its Dark-Room batches, the side-by-side rows, and the CLI's JSON output.

Timings are not asserted (noisy on a shared machine); what is checked is what the rows claim:
which training path ran, the token count, the ratio to DT, and that `--json -` leaves stdout pure
JSON. The batches come from real Dark-Room Q-learning histories.
"""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("xlstm")

from lramlab.bench import train as BT  # noqa: E402
from lramlab.models import action_loss, build_model  # noqa: E402


def test_darkroom_batch_has_contract_shapes_padding_and_episode_boundaries():
    B, C = 6, 150
    batch = BT.darkroom_batch(B, C, seed=3)
    assert batch["states"].shape == (B, C, 2) and batch["actions"].dtype == torch.int64
    assert batch["domain"] == "darkroom" and batch["n_actions"].tolist() == [5] * B
    mask = batch["mask"]
    for b in range(B):  # right-padded as the sampler's: True then False, zeros under the padding
        n = int(mask[b].sum())
        assert mask[b, :n].all() and not mask[b, n:].any()
        assert batch["states"][b, n:].abs().sum() == 0 and batch["rtg"][b, n:].abs().sum() == 0
    assert (~mask).any() and mask.all(dim=1).any()  # some windows padded, some full
    assert ((batch["actions"] >= 0) & (batch["actions"] < 5)).all()
    # Dark-Room episodes are 100 steps: windows with more real steps cross an episode boundary
    from lramlab.envs.darkroom import EPISODE_LENGTH

    assert int(mask.sum(dim=1).max()) > EPISODE_LENGTH
    again = BT.darkroom_batch(B, C, seed=3)
    assert all(torch.equal(batch[k], again[k]) for k in ("states", "rtg", "rewards", "actions", "mask"))
    assert not torch.equal(BT.darkroom_batch(B, C, seed=4)["states"], batch["states"])
    with pytest.raises(ValueError, match="context_steps=0"):
        BT.darkroom_batch(2, 0)


def test_group_rows_record_paths_tokens_and_ratios():
    rows = BT.bench_group("tiny", 8, 2, [("dt", "auto"), ("xlstm[7:1]", "auto"), ("xlstm[7:1]", "reference"),
                                         ("mamba", "auto"), ("mamba", "reference")],
                          reps=1, warmup=0, reference_reps=1)
    names = [r["backbone"] for r in rows]
    assert names == ["dt", "xlstm[7:1]", "xlstm[7:1]-reference", "mamba", "mamba-reference"]
    by = {r["backbone"]: r for r in rows}
    assert by["xlstm[7:1]"]["path"] == "fast" and by["xlstm[7:1]-reference"]["path"] == "reference"
    assert by["mamba"]["path"] == "numba" and by["mamba-reference"]["path"] == "torch-sequential"
    assert by["dt"]["vs_dt"] == 1.0 and by["dt"]["vs_dt_cpu"] == 1.0
    for r in rows:
        assert r["tokens_per_update"] == 2 * 3 * 8 and r["wall_ms"] > 0 and r["cpu_ms"] > 0
        assert r["tokens_per_s"] == pytest.approx(48 / (r["wall_ms"] / 1e3), rel=1e-2)
        assert r["vs_dt"] == pytest.approx(r["tokens_per_s"] / by["dt"]["tokens_per_s"], abs=2e-3)
    with pytest.raises(ValueError, match="row kind 'lstm'"):
        BT.row_config("lstm", "tiny", 8)


def test_rows_are_trainable_models_on_the_shared_batch():
    batch = BT.darkroom_batch(2, 8, seed=0)
    for kind in BT.ROW_KINDS:
        model = build_model(BT.row_config(kind, "tiny", 8))
        loss, metrics = action_loss(model(batch), batch)
        assert torch.isfinite(loss) and metrics["n_targets"] == int(batch["mask"].sum())


def test_cli_json_dash_prints_only_json_on_stdout(capsys):
    rc = BT.main(["--sizes", "tiny", "--contexts", "6", "--batch-size", "2", "--rows", "dt,xlstm[1:0]",
                  "--reps", "1", "--warmup", "0", "--json", "-"])
    assert rc == 0
    out, err = capsys.readouterr()
    data = json.loads(out)  # nothing but JSON on stdout
    assert [r["backbone"] for r in data["rows"]] == ["dt", "xlstm[1:0]", "xlstm[1:0]-reference"]
    assert data["threads"] == 1 and "xlstm[1:0]-reference" in err  # the table went to stderr
    assert data["argv"][-1] == "-"


@pytest.mark.parametrize("argv, needle", [
    (["--sizes", "17M"], "'17M'"),
    (["--rows", "lstm"], "'lstm'"),
    (["--xlstm-kernels", "cuda"], "'cuda'"),
    (["--reps", "0"], "--reps=0"),
    (["--contexts", "0"], "positive"),
])
def test_cli_rejects_bad_arguments_naming_them(argv, needle, capsys):
    with pytest.raises(SystemExit):
        BT.parse_args(argv)
    assert needle in capsys.readouterr().err


def test_latency_rows_report_the_weight_streaming_floor():
    """`lramlab bench latency` times one fp32 mat-vec over the weights a step reads, round-robin
    with the steps, and reports each row as a multiple of it."""
    from lramlab.bench.latency import agent_latency_over_contexts, build_model_for_context, weights_read_per_step

    model = build_model_for_context("xlstm", "tiny", 4, "cpu")
    n = weights_read_per_step(model, "state")
    used = (model.backbone, model.head, model.state_encoder, model.rtg_encoder, model.reward_encoder)
    assert n == sum(p.numel() for m in used for p in m.parameters())
    assert n < model.num_parameters()  # the image encoder is not read for state observations
    rows = agent_latency_over_contexts("xlstm", "tiny", [2, 4], 1, warmup=1, reps=3, model=model, floor=True)
    for r in rows:
        assert r["floor_weights"] == n and r["floor_ms"] > 0
        assert r["x_floor"] == pytest.approx(r["median_ms"] / r["floor_ms"], rel=0.05)
        assert r["x_floor_cpu"] == pytest.approx(r["cpu_median_ms"] / r["floor_cpu_ms"], rel=0.05)
    assert "x_floor" not in agent_latency_over_contexts("xlstm", "tiny", [2], 1, warmup=0, reps=1, model=model)[0]


def test_a_row_that_kills_its_worker_is_skipped_and_the_group_rerun(monkeypatch):
    """Each group runs in a worker; a row during which it dies (as an out-of-memory kill would) is
    reported as skipped, the others are timed in a rerun without it."""
    monkeypatch.setenv("LRAMLAB_BENCH_TRAIN_KILL_ROW", "xlstm[1:0]")
    rows = BT.bench_group_isolated("tiny", 6, 2, [("dt", "auto"), ("xlstm[1:0]", "auto"), ("xlstm[7:1]", "auto")],
                                   reps=1, warmup=1)
    by = {r["backbone"]: r for r in rows}
    assert set(by) == {"dt", "xlstm[1:0]", "xlstm[7:1]"}
    assert "killed" in by["xlstm[1:0]"]["skipped"] and "cpu_ms" not in by["xlstm[1:0]"]
    assert by["xlstm[7:1]"]["path"] == "fast" and by["dt"]["vs_dt"] == 1.0 and by["xlstm[7:1]"]["reps"] == 1
    assert "skipped: killed" in BT.format_table(rows)


def test_a_row_past_the_memory_cap_is_skipped_not_fatal():
    """The worker's data segment is capped: a group whose model cannot fit reports its rows as
    skipped for memory instead of running into the kernel's out-of-memory killer."""
    rows = BT.bench_group_isolated("16M", 200, 16, [("dt", "auto")], reps=1, warmup=1, max_memory_bytes=500 * 2**20)
    assert len(rows) == 1 and "out of memory (cap 0.5 GB)" in rows[0]["skipped"]


def test_a_group_whose_models_do_not_fit_skips_every_row():
    rows = BT.bench_group_isolated("16M", 4, 1, [("dt", "auto"), ("xlstm[7:1]", "auto")], reps=1, warmup=0,
                                   max_memory_bytes=150 * 2**20)
    assert [r["backbone"] for r in rows] == ["dt", "xlstm[7:1]"] and all("skipped" in r for r in rows)
