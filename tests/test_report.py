"""`lramlab report`: docs/results.md is what the committed JSON gives (the check CI runs), a changed
number in a JSON fails the check naming the page's line, and the sections other studies fill render
from their JSON or say "not run yet" with the command."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lramlab.analysis import report as R

ROOT = Path(__file__).resolve().parents[1]


def test_the_committed_page_is_what_the_json_gives(capsys):
    from lramlab.cli import main

    rc = main(["report", "--check", "--root", str(ROOT)])  # `lramlab report --check`
    assert rc == 0, capsys.readouterr().err


@pytest.fixture
def copy_root(tmp_path):
    """The template, the page and every committed JSON under docs/results/, in a scratch root."""
    for rel in (R.TEMPLATE, R.PAGE):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    for p in (ROOT / R.RESULTS).rglob("*.json"):
        dst = tmp_path / p.relative_to(ROOT)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dst)
    return tmp_path


def test_a_changed_json_number_fails_the_check_naming_the_line(copy_root, capsys):
    p = copy_root / R.RESULTS / "icl" / "results.json"
    d = json.loads(p.read_text())
    row = next(r for r in d["metrics"]["table"] if r["variant"] == "Mamba" and r["goals"].startswith("holdout"))
    row["first"] = 12.3456
    p.write_text(json.dumps(d))
    assert R.main(["--check", "--root", str(copy_root)]) == 2
    err = capsys.readouterr().err
    page = (copy_root / R.PAGE).read_text().splitlines()
    want = next(i for i, ln in enumerate(page, 1) if ln.startswith("| Mamba | 443,314 |"))
    assert f"line {want}:" in err and "| Mamba | 443,314 | 12.3 |" in err and "| Mamba | 443,314 | 28.5 |" in err
    # re-rendering makes the page agree again
    assert R.main(["--root", str(copy_root)]) == 0
    assert R.main(["--check", "--root", str(copy_root)]) == 0
    assert "| Mamba | 443,314 | 12.3 |" in (copy_root / R.PAGE).read_text()


def test_one_rounding_rule():
    assert R.num(0.2849, 2) == "0.28" and R.num(1.0548, 2) == "1.05" and R.num(None) == "-"
    assert R.num(float("nan"), 2) == "-" and R.count(1308506) == "1,308,506" and R.minutes(2212.6) == "36.9 min"


def test_an_unknown_placeholder_names_the_template_line(copy_root):
    tpl = copy_root / R.TEMPLATE
    lines = tpl.read_text().splitlines(keepends=True)
    lines.insert(3, "the {{icl.no_such_number}} here\n")
    with pytest.raises(ValueError, match=r"results.template.md:4: unknown placeholder \{\{icl.no_such_number\}\}"):
        R.render(copy_root, "".join(lines))


def test_studies_not_run_yet_say_so_with_their_command(copy_root):
    for rel in ("six-domain-cpu/summary.json", "data6-cpu/quality.json"):
        (copy_root / R.RESULTS / rel).unlink(missing_ok=True)
    v = R.values(copy_root)
    assert v["six.section"].startswith("*Not run yet*") and "studies/six-domain-cpu.yaml" in v["six.section"]
    assert "docs/results/data6-cpu/quality.json" in v["quality.section"] and "Not run yet" in v["quality.section"]


def test_six_domain_and_quality_sections_render_from_their_schema(copy_root):
    six = {"domains": {"metaworld": {"random": 0.0, "data": 0.98, "backbones": {
        "dt": {"params": 1452978, "seeds": [0.4, 0.5]}, "xlstm": {"params": 1308506, "seeds": [0.6]}}},
        "darkroom": {"random": 0.02, "data": 0.7, "backbones": {"dt": {"params": 1452978, "seeds": [0.1, 0.3]}}}}}
    (copy_root / R.RESULTS / "six-domain-cpu").mkdir(parents=True, exist_ok=True)
    (copy_root / R.RESULTS / "six-domain-cpu" / "summary.json").write_text(json.dumps(six))
    q = [{"task": "atari/pong", "domain": "atari", "policy": "dqn", "episodes": 20, "transitions": 41234,
          "data_return": 15.25, "random_return": -20.5, "data_score": 1.01, "random_score": 0.0}]
    (copy_root / R.RESULTS / "data6-cpu").mkdir(parents=True, exist_ok=True)
    (copy_root / R.RESULTS / "data6-cpu" / "quality.json").write_text(json.dumps(q))
    v = R.values(copy_root)
    sec = v["six.section"].splitlines()
    assert "| domain | random | data | dt (1,452,978 params) | xlstm (1,308,506 params) |" in sec
    assert "| metaworld | 0.00 | 0.98 | 0.45 ± 0.05 | 0.60 |" in sec and "| darkroom | 0.02 | 0.70 | 0.20 ± 0.10 | - |" in sec
    assert "| atari/pong | atari | dqn | 20 | 41,234 | 15.2 | -20.5 | 1.01 | 0.00 |" in v["quality.section"]
    page = R.render(copy_root)
    assert "0.45 ± 0.05" in page and "41,234" in page


def test_a_missing_committed_study_is_named(copy_root, capsys):
    (copy_root / R.RESULTS / "throughput-cpu" / "results.json").unlink()
    assert R.main(["--check", "--root", str(copy_root)]) == 2
    assert "throughput-cpu/results.json" in capsys.readouterr().err


def test_six_domain_targets_say_met_or_not_per_domain(copy_root):
    six = {"domains": {"metaworld": {"random": 0.0, "data": 0.98, "backbones": {
        "dt": {"params": 10, "seeds": [0.4, 0.5]}, "xlstm": {"params": 10, "seeds": [0.6, None]}}},
        "darkroom": {"random": 0.02, "data": 0.7, "backbones": {"dt": {"params": 10, "seeds": [0.1, 0.3]}}}}}
    t = R._six_targets(six).splitlines()
    assert "| metaworld | xlstm 0.60 | 0.49 | 0.61 | **met** |" in t      # 0.0 + 0.5 x 0.98; (0.6 - 0) / 0.98
    assert "| darkroom | dt 0.20 | 0.36 | 0.26 | not met |" in t


def _fake_study_run(root: Path, png: bool = True, name: str = "run") -> Path:
    """A pipeline --out directory as 06 leaves it: pipeline.json, metrics.json with absolute paths."""
    nb = root / name / "06_multitask"
    nb.mkdir(parents=True)
    fig = nb / "scores.png"
    if png:
        fig.write_bytes(b"\x89PNG fake figure bytes")
    metrics = {"out_dir": str(nb), "train_tasks": ["metaworld/reach-v2"], "holdout_tasks": ["metaworld/door-lock-v2"],
               "figures": {"scores": {"html": str(nb / "scores.html"), "png": str(fig)}},
               "backbones": {"dt": {"params": 10, "embedding_file": str(nb / "embeddings" / "dt-s0.npz"),
                                    "silhouette": 0.25, "silhouette_2d": 0.5, "embedding_agent": "dt-s0",
                                    "scores": {"zeroshot": {"metaworld": {"mean": 0.1, "std": 0.05, "n": 2}}}}},
               "verdicts": {"metaworld": {"xlstm >= dt": {"verdict": "inside seed spread", "diff": 0.05,
                                                          "spread": 0.1, "n_a": 2, "n_b": 2}}},
               "score": float("nan")}
    (nb / "metrics.json").write_text(json.dumps(metrics))
    (nb / "summary.json").write_text(json.dumps({"domains": {}}))
    (root / name / "pipeline.json").write_text(json.dumps(
        {"runs": [{"name": "06_multitask", "status": "ran", "seconds": 600.0}]}))
    return root / name


def test_publish_copies_a_run_into_docs_results_relative_and_keeps_wall_segments(tmp_path, copy_root, capsys):
    from lramlab.analysis import publish as P

    run = _fake_study_run(tmp_path)
    dest = copy_root / R.RESULTS / "six-domain-cpu"
    (dest / "results.json").unlink(missing_ok=True)            # the committed run's (its wall segments)
    assert P.main([str(run), "06_multitask", str(dest), "--preset", str(ROOT / "studies/six-domain-cpu.yaml"),
                   "--note", "first segment"]) == 0
    d = json.loads((dest / "results.json").read_text())
    m = d["metrics"]
    assert m["out_dir"] == "" and m["backbones"]["dt"]["embedding_file"] == "embeddings/dt-s0.npz"
    assert m["figures"]["scores"] == {"png": "scores.png"} and (dest / "scores.png").read_bytes().startswith(b"\x89PNG")
    assert m["score"] is None                                  # strict JSON: NaN -> null
    assert d["config"]["seeds"] == [0, 1] and d["wall"] == [{"seconds": 600.0, "finished": None, "note": "first segment"}]
    # a resumed run (another segment) keeps the first segment's wall time
    pipe = json.loads((run / "pipeline.json").read_text())
    pipe["runs"][0]["seconds"] = 300.0
    (run / "pipeline.json").write_text(json.dumps(pipe))
    assert P.main([str(run), "06_multitask", str(dest), "--note", "resumed"]) == 0
    d = json.loads((dest / "results.json").read_text())
    assert [w["seconds"] for w in d["wall"]] == [600.0, 300.0]
    sec = R.values(copy_root)["six.section"]
    assert "wall 15.0 min over 2 segments: 10.0 min (first segment); 5.0 min (resumed)" in sec
    assert "![Fig. 3 analogue" in sec and "(results/six-domain-cpu/scores.png)" in sec
    assert "| metaworld | `xlstm >= dt` | 0.05 | 0.10 | 2 / 2 | inside seed spread |" in sec
    assert "| dt | metaworld | 0.10 ± 0.05 | - |" in sec and "| dt | 0.250 | 0.500 | dt-s0 |" in sec
    assert d["preset"].endswith("six-domain-cpu.yaml") and d["command"].endswith("--out runs/run")  # kept from segment 1
    # another run of the study (a fresh --out directory) replaces the segments: its wall time is its own
    fresh = _fake_study_run(tmp_path, name="fresh")
    assert P.main([str(fresh), "06_multitask", str(dest), "--preset", str(ROOT / "studies/six-domain-cpu.yaml"),
                   "--note", "from scratch"]) == 0
    d = json.loads((dest / "results.json").read_text())
    assert d["wall"] == [{"seconds": 600.0, "finished": None, "note": "from scratch"}] and d["run_out"] == "fresh"
    assert not (dest / "quality.json").exists()  # a study without a data quality table writes none


def test_publish_writes_the_data_quality_table(tmp_path):
    from lramlab.analysis import publish as P

    nb = tmp_path / "run" / "01_data_prep"
    nb.mkdir(parents=True)
    rows = [{"task": "dmcontrol/a", "domain": "dmcontrol", "data_score": float("nan"), "random_score": 0.1}]
    (nb / "metrics.json").write_text(json.dumps({"quality": rows, "n_tasks": 1}))
    (nb.parent / "pipeline.json").write_text(json.dumps({"runs": [{"name": "01_data_prep", "status": "ran", "seconds": 60.0}]}))
    assert P.main([str(nb.parent), "01_data_prep", str(tmp_path / "dest")]) == 0
    assert json.loads((tmp_path / "dest" / "quality.json").read_text()) == [{**rows[0], "data_score": None}]


def test_publish_names_what_is_missing(tmp_path, capsys):
    from lramlab.analysis import publish as P

    assert P.main([str(tmp_path), "06_multitask", str(tmp_path / "d")]) == 2
    assert "pipeline.json: not found" in capsys.readouterr().err
    run = _fake_study_run(tmp_path, png=False)
    assert P.main([str(run), "03_icl", str(tmp_path / "d")]) == 2
    assert "notebook '03_icl' did not run there (runs: 06_multitask)" in capsys.readouterr().err
    assert P.main([str(run), "06_multitask", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "scores.png" in err and "figure 'scores'" in err and not (tmp_path / "d" / "results.json").exists()
    (run / "06_multitask" / "metrics.json").write_text("{not json")
    assert P.main([str(run), "06_multitask", str(tmp_path / "d")]) == 2
    assert "metrics.json: not valid JSON" in capsys.readouterr().err


def test_quality_targets_name_misses_and_targets_a_random_policy_meets_too():
    rows = [{"task": "dmcontrol/a", "domain": "dmcontrol", "data_score": 0.8, "random_score": 0.0},
            {"task": "dmcontrol/fish", "domain": "dmcontrol", "data_score": 1.17, "random_score": 1.04},
            {"task": "dmcontrol/b", "domain": "dmcontrol", "data_score": 0.3, "random_score": 0.1},
            {"task": "procgen/x", "domain": "procgen", "data_score": 0.9, "random_score": 0.8}]
    lines = R._quality_targets(rows).splitlines()
    assert lines[0] == ("- dmcontrol: 2 of 3 tasks meet data-normalised >= 0.5; mean data score 0.76; missed: b 0.300; "
                        "met by a random policy too: fish (random 1.04)")
    assert lines[1].startswith("- procgen: 0 of 1 tasks meet") and "random policy too" not in lines[1]


def test_icl_token_layout_section_renders_claims_with_spreads(copy_root):
    d = {"command": "lramlab pipeline --params studies/icl-tokens-cpu.yaml --only 01 03 --out runs/icl-tokens-cpu",
         "wall": [{"seconds": 1800.0, "finished": None, "note": "first"}], "code": "abc1234def",
         "versions": {"machine": "x86_64, 2 CPUs"},
         "metrics": {"config": {"seeds": [0, 1, 2], "steps": 800, "batch_size": 32, "trials": 40},
                     "params": {"tolerance": 0.1, "layouts": {"srr": {"params": {"xlstm:7:1": 1000, "dt": 1050},
                                                                      "ratio": 1.05}}},
                     "table": [{"variant": "DT", "tokens": "srr", "goals": "holdout (20)", "seeds": 3,
                                "first": 1.5, "last": 7.25, "params": 1050}],
                     "claims": [{"claim": "xLSTM [7:1] >= DT", "goals": "holdout", "compared": "a vs b",
                                 "means": "7.0 vs 6.0", "gap": 1.0, "std over seeds": 2.0,
                                 "verdict": "inside the seed spread"}],
                     "figures": {"icl_srr": {"png": "icl_srr.png"}}}}
    (copy_root / R.RESULTS / "icl-tokens-cpu").mkdir(parents=True, exist_ok=True)
    (copy_root / R.RESULTS / "icl-tokens-cpu" / "results.json").write_text(json.dumps(d))
    sec = R.values(copy_root)["icltok.section"].splitlines()
    assert sec[0].startswith("Run: `lramlab pipeline --params studies/icl-tokens-cpu.yaml") and "wall 30.0 min (first)" in sec[0]
    assert "3 seeds, 800 updates of batch 32, 40 trials per goal." in sec[0] and "(code abc1234," in sec[0]
    assert "| srr | xlstm:7:1 1,000, dt 1,050 | 1.050 |" in sec
    assert "| DT | srr | holdout (20) | 3 | 1.5 | 7.25 | 1,050 |" in sec
    assert "| xLSTM [7:1] >= DT | holdout | a vs b | 7.0 vs 6.0 | 1.0 | 2.0 | inside the seed spread |" in sec
    assert "![icl_srr](results/icl-tokens-cpu/icl_srr.png)" in sec
