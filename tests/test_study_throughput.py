"""The throughput study (paper §4.4, Fig. 7): the crossover batch size on hand-made tables (crossing,
never crossing, DT OOM, ties, flipping back, layer-matched sizes, the context axis), state tiling
(B copies of a real prefilled context step exactly like B = 1), the config's backbone labels and
sizes, a real tiny measured grid, and the committed CPU preset run tiny through papermill."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lramlab.analysis import latency as L
from lramlab.analysis.crossover import crossover, crossover_markdown, crossover_summary
from lramlab.studies import LatencyStudyConfig, write_metrics

REPO = Path(__file__).resolve().parents[1]


def _rows(series: dict, kind: str = "throughput", fixed: int = 1600, axis: str = "batch_size", mode: str = "model",
          size: str = "16M", cpu: dict | None = None) -> list[dict]:
    """Rows {backbone: {x: steps/s or "oom"}} in the table's format; the latency follows from B / throughput."""
    out = []
    for name, pts in series.items():
        bname, _, bsize = name.partition("@")
        for x, v in pts.items():
            B, C = (x, fixed) if axis == "batch_size" else (fixed, x)
            r = {"kind": kind, "backbone": bname, "size": bsize or size, "mode": mode, "batch_size": B, "context": C,
                 "oom": v == "oom", "throughput": math.nan if v == "oom" else float(v),
                 "latency_ms": math.nan if v == "oom" else B * 1000.0 / v, "cpu_ms": math.nan}
            if cpu and not r["oom"]:
                r["cpu_ms"] = B * 1000.0 / cpu[name][x]
            out.append(r)
    return out


def _one(results, backbone):
    (c,) = [c for c in results if c["backbone"] == backbone]
    return c


# ----------------------------------------------------------------------------- crossover, hand-made
def test_crossover_between_grid_points_and_its_interpolation():
    rows = _rows({"dt": {1: 100, 2: 180, 4: 300, 8: 400}, "xlstm": {1: 50, 2: 120, 4: 360, 8: 700}})
    c = _one(crossover(rows), "xlstm")
    assert [p["status"] for p in c["points"]] == ["slower", "slower", "faster", "faster"]
    assert c["crossover"] == 4 and c["crossover_by"] == "faster" and c["beats_from"] == 4 and not c["never"]
    assert c["reference_oom_from"] is None and c["context"] == 1600 and c["reference_size"] == "16M"
    np.testing.assert_allclose([p["ratio"] for p in c["points"]], [0.5, 120 / 180, 1.2, 1.75])
    # between B=2 (ratio 2/3) and B=4 (ratio 1.2), log-log: 2 * 2^(ln 1.5 / ln 1.8)
    assert c["interpolated"] == pytest.approx(2 * 2 ** (math.log(1.5) / math.log(1.8)))
    assert 2 < c["interpolated"] < 4


def test_crossover_never():
    rows = _rows({"dt": {1: 100, 2: 200, 4: 400}, "mamba": {1: 90, 2: 150, 4: 399}})
    c = _one(crossover(rows), "mamba")
    assert c["never"] and c["crossover"] is None and c["crossover_by"] is None
    assert c["beats_from"] is None and c["interpolated"] is None
    assert "never" in crossover_markdown([c])


def test_crossover_when_dt_runs_out_of_memory():
    rows = _rows({"dt": {1: 100, 2: 180, 4: "oom", 8: "oom"}, "mamba": {1: 50, 2: 90, 4: 200, 8: 300}})
    c = _one(crossover(rows), "mamba")
    assert [p["status"] for p in c["points"]] == ["slower", "slower", "reference_oom", "reference_oom"]
    assert c["crossover"] == 4 and c["crossover_by"] == "reference_oom" and c["reference_oom_from"] == 4
    assert c["beats_from"] == 4 and c["interpolated"] is None  # no ratio where DT is missing
    assert [p["ratio"] for p in c["points"]][2:] == [None, None]


def test_crossover_ties_do_not_beat_and_rtol_widens_them():
    rows = _rows({"dt": {1: 100, 2: 200, 4: 400}, "xlstm": {1: 100, 2: 201, 4: 400}})
    c = _one(crossover(rows), "xlstm")
    assert [p["status"] for p in c["points"]] == ["tie", "faster", "tie"]
    assert c["crossover"] == 2 and c["beats_from"] is None  # it falls back to a tie at B=4
    assert c["interpolated"] == pytest.approx(1.0)  # the ratio is 1 at B=1 already
    strict = _one(crossover(rows, rtol=0.01), "xlstm")  # 201/200 is within 1 %
    assert strict["never"] and [p["status"] for p in strict["points"]] == ["tie", "slower", "tie"]


def test_crossover_first_point_flip_back_own_oom_and_missing_reference():
    rows = _rows({"dt": {1: 100, 2: 100, 4: 100, 16: 100}, "xlstm": {1: 120, 2: 90, 4: 110, 8: 130, 16: "oom"}})
    c = _one(crossover(rows), "xlstm")
    assert [p["status"] for p in c["points"]] == ["faster", "slower", "faster", "no_reference", "oom"]
    assert c["crossover"] == 1 and c["interpolated"] is None  # at or below the smallest measured B
    assert c["beats_from"] is None  # its own OOM at B=16 ends the lead
    rows = _rows({"dt": {1: 100, 2: 100, 4: 100}, "xlstm": {1: 120, 2: 90, 4: 110}})
    assert _one(crossover(rows), "xlstm")["beats_from"] == 4


def test_crossover_pairs_half_sizes_with_dt_and_series_by_mode_and_context():
    rows = _rows({"dt@16M": {1: 100, 2: 200}, "xlstm@16M-half": {1: 150, 2: 100}, "xlstm@16M": {1: 50, 2: 300}})
    rows += _rows({"dt": {1: 100, 2: 200}, "xlstm": {1: 10, 2: 10}}, mode="env")
    rows += _rows({"dt": {1: 100}, "xlstm": {1: 200}}, fixed=800)
    res = crossover(rows)
    by = {(c["size"], c["mode"], c["context"]): c for c in res}
    assert set(by) == {("16M-half", "model", 1600), ("16M", "model", 1600), ("16M", "env", 1600),
                       ("16M", "model", 800)}
    assert by["16M-half", "model", 1600]["reference_size"] == "16M" and by["16M-half", "model", 1600]["crossover"] == 1
    assert by["16M", "model", 1600]["crossover"] == 2
    assert by["16M", "env", 1600]["never"] and by["16M", "model", 800]["crossover"] == 1


def test_crossover_along_the_context_and_on_cpu_time():
    lat = _rows({"dt": {50: 400, 1600: 60, 6400: "oom"}, "mamba": {50: 100, 1600: 100, 6400: 100}},
                kind="latency", fixed=1, axis="context")
    c = _one(crossover(lat, axis="context"), "mamba")
    assert c["batch_size"] == 1 and c["crossover"] == 1600 and c["crossover_by"] == "faster"
    assert c["reference_oom_from"] == 6400
    assert crossover(lat) == []  # no throughput rows
    rows = _rows({"dt": {1: 100, 2: 100}, "xlstm": {1: 50, 2: 50}},
                 cpu={"dt": {1: 100, 2: 100}, "xlstm": {1: 90, 2: 150}})
    assert _one(crossover(rows), "xlstm")["never"]
    assert _one(crossover(rows, metric="cpu"), "xlstm")["crossover"] == 2


def test_crossover_rejects_bad_arguments_and_summary_is_json():
    rows = _rows({"dt": {1: 100}, "xlstm": {1: 120}})
    with pytest.raises(ValueError, match="axis='batch'"):
        crossover(rows, axis="batch")
    with pytest.raises(ValueError, match="metric='gpu'"):
        crossover(rows, metric="gpu")
    with pytest.raises(ValueError, match="rtol=-0.1"):
        crossover(rows, rtol=-0.1)
    s = crossover_summary(rows)
    assert s["batch"][0]["crossover"] == 1 and "no interpolation" in s["method"]
    assert "nothing to compare" in crossover_summary(_rows({"xlstm": {1: 1}}))["note"]


# ----------------------------------------------------------------------------- tiling a prefilled state
@pytest.mark.parametrize("backbone", ["xlstm", "mamba", "dt"])
def test_tiled_state_steps_like_the_single_row(backbone):
    """A real context of 7 timesteps at B = 1, tiled to 3 rows: each row's next-step logits equal
    the B = 1 logits, and the rows stay independent states (they advance like B = 1)."""
    from lramlab.models import LRAMConfig, build_model

    torch.manual_seed(0)
    model = build_model(LRAMConfig(backbone=backbone, size="tiny", context_steps=10)).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        st = model.init_state(batch_size=1)
        for _ in range(7):
            model.step(st, obs=torch.randn(1, 204, generator=g), rtg=torch.ones(1), prev_reward=torch.full((1,), 0.1))
        tiled = L.tile_state(model, st, 3)
        assert tiled.batch_size == 3 and tiled.steps == 7
        obs = torch.randn(1, 204, generator=g)
        for _ in range(2):
            ref, st = model.step(st, obs=obs, rtg=torch.ones(1), prev_reward=torch.full((1,), 0.1))
            out, tiled = model.step(tiled, obs=obs.expand(3, -1), rtg=torch.ones(3), prev_reward=torch.full((3,), 0.1))
            torch.testing.assert_close(out, ref.expand(3, -1), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="3 rows, expected 1"):
        L.tile_state(model, tiled, 2)


# ----------------------------------------------------------------------------- config
def test_config_backbone_labels_sizes_and_memory_cap():
    cfg = LatencyStudyConfig(backbones=["xlstm-4h", "xlstm-16h", "mamba", "dt"], size="16M-half, 16M", max_state_gb=6)
    assert cfg.sizes == ("16M-half", "16M") and L.parse_backbone("xlstm-16h") == ("xlstm", 16)
    # DT's "-half" is its base model: measured once, under the first size listed
    assert L.study_members(cfg) == [("xlstm-4h", "16M-half"), ("xlstm-4h", "16M"), ("xlstm-16h", "16M-half"),
                                    ("xlstm-16h", "16M"), ("mamba", "16M-half"), ("mamba", "16M"), ("dt", "16M-half")]
    for bad, msg in ((dict(backbones=["mamba-4h"]), "'mamba-4h' is unknown"), (dict(backbones=["xlstm-0h"]), "xlstm-0h"),
                     (dict(backbones=["dt", "dt"]), "listed twice"), (dict(size="16M,17M"), "'17M' is unknown"),
                     (dict(size=" , "), "expected a preset"), (dict(max_state_gb=-1.0), "max_state_gb=-1.0"),
                     (dict(max_state_gb=float("nan")), "max_state_gb=nan")):
        with pytest.raises(ValueError, match=msg):
            LatencyStudyConfig(**bad)


# ----------------------------------------------------------------------------- a real tiny grid
@pytest.fixture(scope="module")
def measured():
    from lramlab.bench.latency import estimate_state_bytes

    # a memory cap between DT's KV cache at B=2 and at B=4 (C=12): DT goes "OOM" at B=4
    cap = (estimate_state_bytes("dt", "tiny", 2, 12) + estimate_state_bytes("dt", "tiny", 4, 12)) / 2 / 2**30
    cfg = LatencyStudyConfig(backbones=("xlstm", "xlstm-8h", "mamba", "dt"), contexts=(4, 12), batch_sizes=(1,),
                             throughput_batches=(1, 2, 4), throughput_context=12, modes=("model",), warmup=1, reps=3,
                             device="cpu", max_state_gb=cap)
    return cfg, L.run_latency_study(cfg, progress=False)


def test_measured_table_and_its_crossover(measured, tmp_path):
    cfg, table = measured
    recs = table.records
    assert [(r.kind, r.backbone, r.size, r.mode, r.batch_size, r.context) for r in recs] == L.grid_points(cfg)
    dt4 = table.select(kind="throughput", backbone="dt", batch_size=4)[0]
    assert dt4.oom and "max_state_gb" in dt4.note and math.isnan(dt4.latency_ms)
    for r in recs:
        if r is not dt4:
            assert not r.oom and math.isfinite(r.latency_ms) and r.latency_ms > 0 and r.cpu_ms > 0
            assert r.throughput == pytest.approx(r.batch_size * 1000.0 / r.latency_ms)
    # tiled recurrent states: B rows of the B = 1 state, whatever the context; DT's cache grows with C
    x1 = table.select(kind="throughput", backbone="xlstm", batch_size=1)[0].state_mb
    assert table.select(kind="throughput", backbone="xlstm", batch_size=4)[0].state_mb == pytest.approx(4 * x1, abs=2e-3)
    assert table.select(kind="latency", backbone="xlstm-8h", context=4)[0].state_mb == \
        table.select(kind="latency", backbone="xlstm-8h", context=12)[0].state_mb < x1  # 8 heads: smaller head dim
    assert table.select(kind="latency", backbone="dt", context=12)[0].state_mb > \
        table.select(kind="latency", backbone="dt", context=4)[0].state_mb
    s = table.summary()
    assert s["all_finite"] and s["n_oom"] == 1
    batch = {c["backbone"]: c for c in s["crossover"]["batch"]}
    assert set(batch) == {"xlstm", "xlstm-8h", "mamba"}
    for name, c in batch.items():
        thr = {r.batch_size: r.throughput for r in table.select(kind="throughput", backbone=name)}
        dt = {r.batch_size: r.throughput for r in table.select(kind="throughput", backbone="dt") if not r.oom}
        assert [p["ratio"] for p in c["points"][:2]] == pytest.approx([thr[1] / dt[1], thr[2] / dt[2]])
        assert c["points"][2]["status"] == "reference_oom" and c["reference_oom_from"] == 4
        assert c["crossover"] in (1, 2, 4) and c["beats_from"] is not None and c["beats_from"] <= 4
    metrics = json.loads(write_metrics(tmp_path, s).read_text())
    assert metrics["crossover"]["batch"][0]["points"][2]["ratio"] is None


def test_crossover_figure_marks_the_measured_crossover(measured):
    from lramlab.analysis import plots

    _, table = measured
    figs = plots.latency_figures(table)
    assert {"latency_B1", "throughput", "crossover", "memory"} <= set(figs)
    res = {c["backbone"]: c for c in crossover(table)}
    stars = [t for t in figs["crossover"].data if t.meta["role"] == "crossover"]
    assert {t.meta["backbone"]: t.x[0] for t in stars} == {b: c["crossover"] for b, c in res.items()}
    cpu = {t.meta["backbone"]: t.x[0] for t in figs["crossover_cpu"].data if t.meta["role"] == "crossover"}
    assert cpu == {c["backbone"]: c["crossover"] for c in crossover(table, metric="cpu")}
    crosses = [t for t in figs["crossover"].data if t.meta["role"] == "reference_oom"]
    assert len(crosses) == 3 and all(tuple(t.x) == (4,) for t in crosses)
    for t in figs["crossover"].data:
        if t.meta["role"] == "series":
            recs = table.select(kind="throughput", backbone=t.meta["backbone"])
            np.testing.assert_allclose(t.y, [r.throughput for r in recs])


# ----------------------------------------------------------------------------- the preset, tiny, through papermill
def tiny_version(params: dict, cap_gb: float) -> dict:
    """The preset's 05 parameters with its structure (backbones, sizes' count, modes, env) kept and its
    scale cut: tiny models, short contexts, B up to 4, a memory cap that puts DT at B=4 out of memory."""
    n_sizes = len([s for s in params["size"].split(",") if s.strip()])
    assert n_sizes >= 1
    return {**params, "size": "tiny", "contexts": [4, 12], "batch_sizes": [1, 2], "throughput_batches": [1, 2, 4],
            "throughput_context": 12, "max_state_gb": cap_gb, "warmup": 1, "reps": 2, "save_png": False}


@pytest.mark.slow
def test_cpu_preset_runs_tiny_through_papermill(tmp_path):
    pytest.importorskip("papermill")
    from lramlab import pipeline as P
    from lramlab.bench.latency import estimate_state_bytes

    preset = P.load_params(REPO / "studies" / "throughput-cpu.yaml")
    full = LatencyStudyConfig(**preset["05_latency"])  # the preset itself is a valid config
    assert full.throughput_context == 1600 and full.throughput_batches == (1, 2, 4, 8, 16, 32, 64, 128)
    assert {"xlstm-4h", "xlstm-16h", "mamba", "dt"} <= set(full.backbones)
    cap = (estimate_state_bytes("dt", "tiny", 2, 12) + estimate_state_bytes("dt", "tiny", 4, 12)) / 2 / 2**30
    params = tiny_version(preset["05_latency"], cap)
    res = P.run_pipeline(tmp_path, {"05_latency": params}, only=["05"], progress=False)
    assert res.ok
    m = json.loads((tmp_path / "05_latency" / "metrics.json").read_text())
    cfg = LatencyStudyConfig(**{k: v for k, v in params.items() if k != "save_png"})
    rows = m["rows"]
    assert [(r["kind"], r["backbone"], r["size"], r["mode"], r["batch_size"], r["context"]) for r in rows] == \
        [tuple(p) for p in L.grid_points(cfg)]
    for r in rows:
        if r["oom"]:
            assert r["backbone"] == "dt" and r["batch_size"] == 4 and "max_state_gb" in r["note"]
        else:  # real numbers from this run: finite, positive, consistent
            assert all(isinstance(r[k], float) and math.isfinite(r[k]) and r[k] > 0
                       for k in ("latency_ms", "throughput", "cpu_ms"))
            assert r["latency_p10_ms"] <= r["latency_ms"] <= r["latency_p90_ms"] and r["reps"] == 2
    assert m["all_finite"] is True and m["n_oom"] == len(cfg.modes)  # DT at B=4, C=12 per mode
    recurrent = [b for b in cfg.backbones if b != "dt"]
    batch = m["crossover"]["batch"]
    assert sorted((c["backbone"], c["mode"]) for c in batch) == sorted((b, md) for b in recurrent for md in cfg.modes)
    for c in batch:
        thr = {r["batch_size"]: r["throughput"] for r in rows if r["kind"] == "throughput"
               and r["backbone"] == c["backbone"] and r["mode"] == c["mode"]}
        dt = {r["batch_size"]: r["throughput"] for r in rows if r["kind"] == "throughput" and r["backbone"] == "dt"
              and r["mode"] == c["mode"] and not r["oom"]}
        assert c["points"][0]["ratio"] == pytest.approx(thr[1] / dt[1])
        assert c["reference_oom_from"] == 4 and c["crossover"] is not None and c["crossover"] <= 4
    assert (tmp_path / "05_latency" / "crossover.html").stat().st_size > 1000
