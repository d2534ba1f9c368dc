"""The study notebooks: parameters mirror their config dataclasses, and every notebook runs through
`lramlab pipeline` (papermill, this interpreter's kernel) with tiny parameters and writes real numbers;
resuming, forcing, bad parameters and a failing cell."""
from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("papermill")
nbformat = pytest.importorskip("nbformat")

from lramlab import pipeline as P  # noqa: E402
from lramlab.multitask import MultiTaskConfig  # noqa: E402
from lramlab.studies import NOTEBOOK_EXTRAS, DataPrepConfig, EmbeddingConfig, LatencyStudyConfig  # noqa: E402

NB_DIR = P.NOTEBOOK_DIR


def _config_class(name: str):
    if name == "02_training":
        from lramlab.train import TrainConfig

        return TrainConfig
    if name == "03_icl":
        from lramlab.icl.study import ICLStudyConfig

        return ICLStudyConfig
    return {"01_data_prep": DataPrepConfig, "04_embeddings_umap": EmbeddingConfig,
            "05_latency": LatencyStudyConfig, "06_multitask": MultiTaskConfig}[name]


def _cells(name):
    return nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4).cells


@pytest.mark.parametrize("name", P.NOTEBOOKS)
def test_parameters_cell_mirrors_the_config_dataclass(name):
    cells = _cells(name)
    tagged = [i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name}: expected exactly one cell tagged 'parameters', found {len(tagged)}"
    src_lines = [ln for ln in cells[tagged[0]].source.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    params = P.notebook_parameters(NB_DIR / f"{name}.ipynb")
    # every line parsed by papermill (a bracketed type or '=' in a comment silently drops a name)
    assert len(params) == len(src_lines), f"{name}: papermill parsed {sorted(params)} from {len(src_lines)} lines"
    for pname, info in params.items():
        assert info["help"], f"{name}: parameter {pname} has no trailing comment"
        assert info["inferred_type_name"] != "None", f"{name}: parameter {pname} has no type annotation"
    fields = {f.name for f in dataclasses.fields(_config_class(name))}
    if name in ("01_data_prep", "03_icl", "04_embeddings_umap", "05_latency", "06_multitask"):
        assert set(params) == fields
    else:  # a subset of TrainConfig plus the notebook's own outputs
        assert set(params) - set(NOTEBOOK_EXTRAS) <= fields, set(params) - set(NOTEBOOK_EXTRAS) - fields
        assert "out_dir" in params
    # the next cell builds the config (and nothing before it reads the globals)
    nxt = cells[tagged[0] + 1].source
    assert f"{_config_class(name).__name__}(" in nxt
    # the defaults build a valid config: run imports + parameters + config cells
    ns: dict = {}
    for c in cells[: tagged[0] + 2]:
        if c.cell_type == "code":
            exec(compile(c.source, f"{name}.ipynb", "exec"), ns)


@pytest.mark.parametrize("name", P.NOTEBOOKS)
def test_notebooks_are_thin_and_end_with_metrics(name):
    code = [c for c in _cells(name) if c.cell_type == "code"]
    for c in code:
        assert "def " not in c.source and "class " not in c.source, f"{name}: logic belongs in lramlab"
        if "parameters" not in c.metadata.get("tags", []):  # the parameters cell mirrors the config, field by field
            assert len(c.source.splitlines()) <= 24
    assert "write_metrics(" in code[-1].source


# ----------------------------------------------------------------------------- a tiny pipeline run
TINY = {
    "01_data_prep": {"darkroom_goals": 2, "darkroom_episodes": 4, "metaworld_episodes": 1, "atari_episodes": 1,
                     "atari_max_steps": 30, "quality_episodes": 1},
    "02_training": {"backbone": "dt", "steps": 10, "batch_size": 2, "context": 10, "lr": 0.003, "warmup": 2,
                    "log_every": 1, "val_batches": 1, "device": "cpu", "video_steps": 6},
    "03_icl": {"backbones": ["dt", "xlstm"], "steps": 2, "batch_size": 1, "warmup": 1, "context_episodes": 1,
               "trials": 2, "eval_max_goals": 2, "workers": 1, "device": "cpu"},
    "04_embeddings_umap": {"n_per_task": 4, "context": 10},
    "05_latency": {"backbones": ["xlstm", "dt"], "contexts": [5, 10], "throughput_batches": [1, 2],
                   "throughput_context": 5, "reps": 2, "warmup": 1, "device": "cpu"},
    # the whole study is tests/test_multitask.py's; here one backbone, briefly, in the chain
    "06_multitask": {"backbones": ["dt"], "steps": 2, "batch_size": 2, "context": 5, "finetune_steps": 0,
                     "eval_episodes": 1, "eval_max_steps": 5, "embeddings": False, "workers": 1},
}
for _p in TINY.values():
    _p["save_png"] = False  # PNG export is tested in test_analysis


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline")
    res = P.run_pipeline(out, TINY, progress=False)
    return out, res


def _metrics(out: Path, name: str) -> dict:
    return json.loads((out / name / "metrics.json").read_text())


def test_pipeline_runs_every_notebook(pipeline_run):
    out, res = pipeline_run
    assert res.ok and [r.name for r in res.runs] == list(P.NOTEBOOKS)
    assert all(r.status == "ran" for r in res.runs)
    for nb in P.NOTEBOOKS:
        executed = nbformat.read(out / nb / f"{nb}.ipynb", as_version=4)
        assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
    summary = json.loads((out / "pipeline.json").read_text())
    assert [r["status"] for r in summary["runs"]] == ["ran"] * len(P.NOTEBOOKS)
    spec_argv0 = __import__("jupyter_client.kernelspec", fromlist=["x"]).KernelSpecManager().get_kernel_spec(
        res.kernel).argv[0]
    assert spec_argv0 in ("python", "python3", f"python3.{sys.version_info[1]}") or \
        Path(spec_argv0).resolve() == Path(sys.executable).resolve()


def test_pipeline_outputs_are_real(pipeline_run):
    out, res = pipeline_run
    m1 = _metrics(out, "01_data_prep")
    assert m1["data_dir"] == str(out / "data") and m1["n_tasks"] == 4
    assert set(m1["domains"]) == {"darkroom", "metaworld", "atari"} and m1["n_transitions"] > 800
    q = {r["task"]: r for r in m1["quality"]}  # lramlab data quality's rows, random baselines measured
    assert len(q) == 4 and all(r["random_episodes"] == 1 and r["random_return"] is not None for r in q.values())
    assert q["metaworld/reach-v2"]["policy"] == "expert" and q["metaworld/reach-v2"]["score_kind"] == "success"
    m2 = _metrics(out, "02_training")
    assert m2["step"] == 10 and m2["loss_decreased"] is True and m2["loss_last"] < m2["loss_first"]
    assert Path(m2["checkpoint"]).is_file() and m2["val/perplexity_domain_mean"] > 1
    assert (out / "02_training" / "loss.html").exists()
    video = m2["video"]  # the trained agent in the simulator, as a GIF the notebook shows
    assert video["task"] == "metaworld/reach-v2" and video["steps"] == 6
    import imageio.v3 as iio

    frames = iio.imread(video["video"], index=None)
    assert frames.shape[0] == 6 and frames.std() > 10
    m3 = _metrics(out, "03_icl")["variants"]
    assert set(m3) == {"dt", "xlstm:7:1"}
    for v, b in m3.items():
        for g in ("holdout", "train"):
            assert b[g]["trials"] == 2 and b[g]["goals"] == 2 and all(0 <= r <= 100 for r in b[g]["curve_mean"])
            run = json.loads((out / "03_icl" / f"{v.replace(':', '-')}-s0" / f"icl-{g}.json").read_text())
            assert b[g]["curve_mean"] == run["mean_curve"]  # the run's own numbers (one seed)
    m4 = _metrics(out, "04_embeddings_umap")
    assert m4["checkpoint"] == m2["checkpoint"]  # chained from the training notebook
    assert m4["coords_finite"] is True and m4["n_points"] == 16 and m4["backbone"] == "dt"
    assert -1 <= m4["silhouette"] <= 1 and -1 <= m4["silhouette_2d"] <= 1
    m5 = _metrics(out, "05_latency")
    assert m5["all_latency_positive"] is True and m5["min_latency_ms"] > 0
    assert len(m5["rows"]) == 2 * 2 * (2 + 2)  # backbones x modes x (contexts + throughput batches)
    m6 = _metrics(out, "06_multitask")  # chained from 01: trained on its tasks, evaluated in their simulators
    run6 = Path(m6["agents"]["dt"]["train"]["run_dir"])
    assert sorted(json.loads((run6 / "config.json").read_text())["tasks"]) == m6["train_tasks"]
    assert set(m6["train_tasks"]) == {"darkroom/goal-2-0", "darkroom/goal-0-2", "metaworld/reach-v2", "atari/freeway"}
    ev6 = json.loads((out / "06_multitask" / "evals" / "dt-train.json").read_text())
    assert m6["agents"]["dt"]["scores"]["train"]["metaworld"]["success_rate"] == ev6["tasks"][
        [t["task"] for t in ev6["tasks"]].index("metaworld/reach-v2")]["success_rate"]
    assert all(t["episode_cap"] == 5 for t in ev6["tasks"]) and m6["holdout_tasks"] == []
    for nb, names in (("01_data_prep", ["dataset", "returns", "quality"]), ("03_icl", ["icl_holdout", "icl_train"]), ("04_embeddings_umap", ["umap"]),
                      ("05_latency", ["latency_B1", "throughput", "memory"])):
        for n in names:
            assert (out / nb / f"{n}.html").stat().st_size > 1000


_CDN_SCRIPT = re.compile(r"<script[^>]+src=[\"']?https?://", re.I)  # a script the page must download
_FROZEN_BAR = re.compile(r"(?<![\d.])0%\||\|\s*0/\d+\s*\[")  # tqdm at its first state: " 0%|" or "| 0/30 ["


def test_executed_notebooks_stand_on_their_own_as_html(pipeline_run):
    """Exported to HTML (nbconvert, no kernel, no widget state): every plotly figure carries a PNG,
    every widget a static snapshot with its figures as PNGs, and no progress bar is saved at 0 %."""
    from nbconvert import HTMLExporter

    out, _ = pipeline_run
    exporter = HTMLExporter()
    for nb in P.NOTEBOOKS:
        executed = nbformat.read(out / nb / f"{nb}.ipynb", as_version=4)
        n_figures = n_widgets = 0
        for i, cell in enumerate(executed.cells):
            for o in cell.get("outputs", []):
                data = o.get("data", {})
                if "application/vnd.plotly.v1+json" in data:
                    n_figures += 1
                    assert data.get("image/png"), f"{nb} cell {i}: a plotly figure without a static PNG"
                if "Static snapshot of an interactive widget" in "".join(data.get("text/html", "")):
                    n_widgets += 1
                    assert "application/vnd.jupyter.widget-view+json" not in data  # no state: the snapshot shows
                assert not "".join(data.get("text/plain", "")).startswith(("VBox(", "HBox(")), f"{nb} cell {i}"
                if o.get("output_type") == "stream":
                    assert not _FROZEN_BAR.search(o["text"]), f"{nb} cell {i}: frozen bar {o['text'][:200]!r}"
        assert n_figures >= 1, f"{nb}: no figure shown"
        html, _ = exporter.from_notebook_node(executed)
        text = re.sub(r"<[^>]+>", " ", html)
        assert not _FROZEN_BAR.search(text), f"{nb}: a progress bar frozen at its first state in the HTML export"
        assert not re.search(r"<script[^>]+src=[^>]*plotly", html)  # the PNGs need no plotly.js (nbconvert's
        # own template still loads require.js and MathJax from a CDN)
        imgs = re.findall(r"<img[^>]+src=.data:image/png;base64,([A-Za-z0-9+/=]{200,})", html)
        assert len(imgs) >= n_figures + n_widgets, f"{nb}: {len(imgs)} PNGs for {n_figures} figures, {n_widgets} widgets"
        if nb in ("01_data_prep", "02_training", "04_embeddings_umap", "05_latency"):
            assert n_widgets == 1, f"{nb}: expected its widget's static snapshot"
    for nb, name in (("01_data_prep", "returns"), ("05_latency", "memory")):  # saved figures open offline
        page = (out / nb / f"{name}.html").read_text()
        assert not _CDN_SCRIPT.search(page) and "plotly.js v" in page  # plotly.js inside the file


def test_pipeline_resumes_and_forces(pipeline_run):
    out, _ = pipeline_run
    again = P.run_pipeline(out, TINY, progress=False)
    assert [r.status for r in again.runs] == ["skipped"] * len(P.NOTEBOOKS)
    before = _metrics(out, "05_latency")["rows"]
    forced = P.run_pipeline(out, {"05_latency": {**TINY["05_latency"], "backbones": ["dt"], "modes": ["model"]}},
                            only=["05"], force=True, progress=False)
    assert [(r.name, r.status) for r in forced.runs] == [("05_latency", "ran")]
    after = _metrics(out, "05_latency")["rows"]
    assert len(after) == 1 * 1 * (2 + 2) and len(before) == 2 * 2 * (2 + 2)
    # an --only run keeps the other notebooks' records in pipeline.json
    summary = json.loads((out / "pipeline.json").read_text())
    assert [r["name"] for r in summary["runs"]] == list(P.NOTEBOOKS) and summary["this_run"] == ["05_latency"]
    assert {r["name"]: r["status"] for r in summary["runs"]}["05_latency"] == "ran"


def test_bad_parameters_fail_before_running(tmp_path):
    with pytest.raises(ValueError, match=r"unknown name\(s\) \['stpes'\]"):
        P.run_pipeline(tmp_path, {"02_training": {"stpes": 3}}, progress=False)
    with pytest.raises(ValueError, match="unknown notebook '07_rl'"):
        P.run_pipeline(tmp_path, {"07_rl": {}}, progress=False)
    bad = tmp_path / "p.yaml"
    bad.write_text("02_training: [1, 2]\n")
    assert P.main(["--params", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o" / "02_training").exists()


def test_failing_cell_stops_the_pipeline_naming_notebook_cell_and_error(tmp_path, capfd):
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"05": {"backbones": ["dt"], "modes": ["env"], "contexts": [5],
                                         "throughput_batches": [], "env_task": "atari/not-a-game", "reps": 1,
                                         "warmup": 0, "save_png": False}}))
    rc = P.main(["--params", str(params), "--out", str(tmp_path / "run"), "--only", "05_latency", "--no-progress"])
    assert rc == 1
    err = capfd.readouterr().err  # fd-level: the kernel process's stderr too
    assert "notebook 05_latency failed in cell" in err and "UnknownTaskError" in err and "not-a-game" in err
    assert "without encryption" not in err  # the kernel's TCP warning is not printed per notebook
    summary = json.loads((tmp_path / "run" / "pipeline.json").read_text())
    assert summary["runs"][-1]["status"] == "failed" and "cell" in summary["runs"][-1]["error"]
    assert not (tmp_path / "run" / "05_latency" / "metrics.json").exists()
    # the error carries the cell: the one that called run_latency_study
    with pytest.raises(P.PipelineError) as info:
        P.run_pipeline(tmp_path / "run", json.loads(params.read_text()), only=["05"], progress=False)
    e = info.value
    assert e.notebook == "05_latency" and e.ename == "UnknownTaskError"
    assert "run_latency_study" in _cells("05_latency")[e.cell_index].source  # the index in notebooks/05_latency.ipynb
    assert f"failed in cell {e.cell_index} of " in str(e) and Path(e.output).exists()


def test_finalize_outputs_keeps_each_bar_in_its_final_state_and_the_widget_snapshot(tmp_path):
    """The kernel sends each bar refresh as its own stream message (no carriage return left): the
    executed notebook keeps the last state of each bar, other stderr lines, and a widget's static
    snapshot instead of a live view that has no saved state."""
    from nbformat.v4 import new_code_cell, new_notebook, new_output

    bar = "train dt/tiny: {:>3}%|{}| {}/30 [00:01<00:02, 9.9it/s]"
    outs = [new_output("stream", name="stderr", text=bar.format(0, " " * 10, 0)),
            new_output("stream", name="stderr", text="a warning line\n"),
            new_output("stream", name="stderr", text=bar.format(40, "####" + " " * 6, 12)),
            new_output("stream", name="stderr", text="\r" + bar.format(100, "#" * 10, 30)),
            new_output("stream", name="stderr", text="\n"),
            new_output("display_data", data={"application/vnd.jupyter.widget-view+json": {"model_id": "x"},
                                             "text/html": "<div>snapshot</div>", "text/plain": "w"})]
    path = tmp_path / "nb.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell("run()", outputs=outs)]), str(path))
    assert P.finalize_outputs(path) == 1
    cell = nbformat.read(path, as_version=4).cells[0]
    stream, widget = cell.outputs
    assert stream.text == "a warning line\n" + bar.format(100, "#" * 10, 30) + "\n"
    assert set(widget.data) == {"text/html", "text/plain"}
    assert P.finalize_outputs(path) == 0  # nothing left to change


def test_progress_watcher_reports_the_kernels_latest_bar(tmp_path):
    log = tmp_path / "stderr.log"
    log.write_text("starting\ntrain dt/tiny:  10%|#         | 3/30 [00:01<00:09, 2.9it/s, loss=3.1]")
    seen = []
    w = P._ProgressWatcher(log, seen.append)
    w.poll()
    with log.open("a") as f:
        f.write("train dt/tiny:  50%|#####     | 15/30 [00:05<00:05, 3.0it/s, loss=2.7]")
    w.poll()
    w.poll()  # no new line: no new report
    assert seen == ["train dt/tiny 10% 3/30 [00:01<00:09]", "train dt/tiny 50% 15/30 [00:05<00:05]"]
