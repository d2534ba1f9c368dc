"""Interactive widgets (ipywidgets + plotly FigureWidget; plotly's FigureWidget needs `anywidget`).

- `RolloutViewer(sources)`: pick a source (a checkpoint's recorded rollouts, or a dataset),
  a task and an episode, then play/scrub it frame by frame; action, reward and RTG beside the frame.
- `EmbeddingExplorer(checkpoints, data_dir)`: backbone, layer and tasks (picked by domain or one by
  one) -> UMAP scatter.
- `LatencyExplorer(table)`: backbones, sizes, batch size, mode -> latency and throughput curves
  (a "measure" button measures any batch size B at any contexts C with `lramlab.analysis.latency`;
  a point measured again is merged with the earlier measurement).
- `TrainingMonitor(run_dir)`: live learning curves from a run's metrics.jsonl (button / timer).

Widgets only display: every number comes from a package function (`lramlab.data.store`,
`lramlab.analysis.*`), and each callback is a plain method (`show_step`, `update`, `refresh`)
that tests call without a browser. Display a widget with `display(w)` or as a cell's last value.

Shape letters: T timesteps of an episode, H x W a frame.
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from lramlab._optional import require


def _w():
    require("anywidget", "plotly FigureWidget in ipywidgets")
    return require("ipywidgets", "interactive widgets")


def _go():
    return require("plotly.graph_objects", "interactive widgets")


def replace_figure(fw, fig) -> None:
    """Show `fig` (a go.Figure) in the FigureWidget `fw`: new traces and layout, same widget."""
    fw.data = ()
    fw.add_traces(list(fig.data))
    fw.layout = fig.layout


def static_html(widget, pngs: dict | None = None) -> str:
    """A static picture of a widget tree as HTML: boxes as rows / columns, every plotly figure as a
    PNG (kaleido), HTML widgets as themselves, controls as "description: value". What an executed
    notebook keeps of a widget once no kernel runs it (nbconvert, viewers, a re-opened notebook)."""
    import base64

    w = _w()
    go = _go()
    from lramlab.analysis.display import figure_pngs

    figs = []

    def walk(x) -> str:
        if isinstance(x, go.FigureWidget):
            figs.append(go.Figure(x.to_dict()))  # a copy: the live widget keeps its traces
            return f"<!--fig{len(figs) - 1}-->"
        if getattr(getattr(x, "layout", None), "display", None) == "none":
            return ""
        if isinstance(x, w.Image):
            if not x.value:
                return ""
            return f"<img alt='frame' src='data:image/{x.format};base64,{base64.b64encode(x.value).decode()}'/>"
        if isinstance(x, w.Box):
            direction = "row" if isinstance(x, w.HBox) else "column"
            inner = "".join(walk(c) for c in x.children)
            return f"<div style='display:flex;flex-direction:{direction};gap:8px;align-items:flex-start'>{inner}</div>"
        if isinstance(x, w.HTML):
            return f"<div>{x.value}</div>"
        if isinstance(x, w.Button):
            return ""
        if hasattr(x, "value") and hasattr(x, "description"):
            v = x.value
            if hasattr(x, "options") and isinstance(v, tuple) and len(v) > 6:
                v = f"{len(v)} of {len(x.options)} selected"
            elif hasattr(x, "options") and not isinstance(v, tuple):
                # a Dropdown of (label, value) pairs shows the label
                v = next((o[0] for o in x.options if isinstance(o, tuple) and o[1] == v), v)
            return f"<div><b>{html.escape(str(x.description))}</b>: {html.escape(str(v))}</div>"
        return ""

    body = walk(widget)
    images, why = figure_pngs(figs)

    for i, (fig, png) in enumerate(zip(figs, images)):
        title = html.escape(fig.layout.title.text or "figure")
        tag = (f"<img alt='{title}' src='data:image/png;base64,{base64.b64encode(png).decode()}'/>" if png else
               f"<i>[{title}: no static image: {html.escape(str(why))}]</i>")
        body = body.replace(f"<!--fig{i}-->", tag)
    note = ("<div style='color:#777;font-size:small'>Static snapshot of an interactive widget (run the "
            "cell in a live kernel to use it).</div>")
    return f"<div class='lram-widget-snapshot'>{note}{body}</div>"


class _Displayable:
    widget: Any

    def _repr_mimebundle_(self, include=None, exclude=None):
        """The live widget; executed headless (`lramlab pipeline`: LRAMLAB_HEADLESS=1, no front end),
        also a static snapshot (HTML with PNGs) that the exported or re-opened notebook shows instead
        (the pipeline drops the live view, whose state is not saved)."""
        import os

        bundle = dict(self.widget._repr_mimebundle_() or {})
        if os.environ.get("LRAMLAB_HEADLESS") == "1":
            bundle["text/html"] = static_html(self.widget)
            bundle["text/plain"] = f"<{type(self).__name__}: interactive widget; static snapshot in text/html>"
        return bundle


# ============================================================================ rollouts
def load_episode(path: str | Path) -> dict[str, np.ndarray]:
    """A recorded episode: the store's datasets plus the sidecar `.extra.npz` (R̂ condition, frames)."""
    from lramlab.data.store import read_episode

    path = Path(path)
    ep = read_episode(path)
    extra = path.with_name(path.name.split(".")[0] + ".extra.npz")
    if extra.exists():
        with np.load(extra) as z:
            for k in z.files:
                ep[k] = z[k]
    return ep


def list_sources(root: str | Path) -> dict[str, list[Path]]:
    """{task id: episode files} of a store root (a dataset or a directory of recorded rollouts)."""
    from lramlab.data.store import TaskData, find_tasks

    out = {}
    for d in find_tasks(root):
        td = TaskData(d, require_complete=False)
        out[td.task] = list(td.episode_paths)
    return out


def step_info(ep: Mapping[str, np.ndarray], t: int) -> dict[str, Any]:
    """Action, reward, return-to-go (and the agent's R̂ condition, when recorded) at step t."""
    T = len(ep["rewards"])
    if not 0 <= t < T:
        raise ValueError(f"step {t} is outside the episode (0..{T - 1})")
    a = ep["actions"][t]
    info = {"t": int(t), "T": int(T), "reward": float(ep["rewards"][t]), "rtg": float(ep["returns_to_go"][t]),
            "return_so_far": float(np.sum(ep["rewards"][: t + 1])),
            "action": int(a) if np.ndim(a) == 0 else [round(float(v), 3) for v in np.ravel(a)]}
    if "rtg_condition" in ep:
        info["rtg_condition"] = float(ep["rtg_condition"][t])
    if "success" in ep:
        info["success"] = bool(ep["success"][t])
    return info


def step_html(info: Mapping[str, Any], action_names: Sequence[str] | None = None) -> str:
    a = info["action"]
    a_txt = f"{a} ({action_names[a]})" if action_names and isinstance(a, int) and a < len(action_names) else str(a)
    rows = [("step", f"{info['t']} / {info['T'] - 1}"), ("action", a_txt), ("reward", f"{info['reward']:.3f}"),
            ("return-to-go", f"{info['rtg']:.3f}"), ("return so far", f"{info['return_so_far']:.3f}")]
    if "rtg_condition" in info:
        rows.append(("R̂ condition", f"{info['rtg_condition']:.3f}"))
    if "success" in info:
        rows.append(("success", str(info["success"])))
    body = "".join(f"<tr><td><b>{html.escape(k)}</b></td><td class='lram-{k.replace(' ', '-')}'>{html.escape(v)}</td></tr>"
                   for k, v in rows)
    return f"<table class='lram-step-info'>{body}</table>"


def _frame_kind(task: str, ep: Mapping[str, np.ndarray]) -> str:
    if "frames" in ep and len(ep["frames"]) == len(ep["rewards"]):
        return "frames"
    if ep["states"].ndim == 4:
        return "image"
    if task.startswith("darkroom/") and ep["states"].shape[-1] == 2:
        return "darkroom"
    return "state"


def frame_figure(task: str, ep: Mapping[str, np.ndarray], t: int):
    """The figure for step t: the rendered frame, the 64x64 observation, the Dark-Room grid with
    the agent's path so far, or the state vector as bars."""
    go = _go()
    kind = _frame_kind(task, ep)
    title = f"{task}: step {t}"
    fig = go.Figure()
    if kind == "frames":
        fig.add_trace(go.Image(z=ep["frames"][t]))
    elif kind == "image":
        fig.add_trace(go.Heatmap(z=ep["states"][t, 0], colorscale="gray", showscale=False, zmin=0, zmax=255))
        fig.update_yaxes(autorange="reversed", scaleanchor="x")
    elif kind == "darkroom":
        from lramlab.envs import darkroom

        pos = ep["states"][: t + 1]
        try:
            gx, gy = darkroom.parse_goal(task)
            fig.add_trace(go.Scatter(x=[gx], y=[gy], mode="markers", name="goal (hidden from the agent)",
                                     marker={"symbol": "star", "size": 18, "color": "#2ca02c"}))
        except ValueError:
            pass
        fig.add_trace(go.Scatter(x=pos[:, 0], y=pos[:, 1], mode="lines", name="path",
                                 line={"color": "#bbbbbb"}))
        fig.add_trace(go.Scatter(x=[pos[-1, 0]], y=[pos[-1, 1]], mode="markers", name="agent",
                                 marker={"size": 16, "color": "#ff7f0e"}))
        n = darkroom.SIZE
        fig.update_xaxes(range=[-0.5, n - 0.5], dtick=1, constrain="domain")
        fig.update_yaxes(range=[n - 0.5, -0.5], dtick=1, scaleanchor="x", constrain="domain")
        fig.update_layout(legend={"orientation": "h", "y": -0.08})
    else:
        s = ep["states"][t]
        fig.add_trace(go.Bar(x=np.arange(len(s)), y=s, name="state", marker_color="#1f77b4"))
        lo, hi = float(np.min(ep["states"])), float(np.max(ep["states"]))
        fig.update_yaxes(range=[lo - 0.05 * abs(lo) - 1e-3, hi + 0.05 * abs(hi) + 1e-3])
        fig.update_xaxes(title="state dim")
    fig.update_layout(title=title, template="plotly_white", width=420, height=420,
                      margin={"l": 30, "r": 10, "t": 40, "b": 30}, meta={"kind": kind, "t": int(t)})
    return fig


def timeline_figure(ep: Mapping[str, np.ndarray], t: int):
    """Reward and return-to-go over the episode, a vertical line at step t."""
    go = _go()
    T = np.arange(len(ep["rewards"]))
    fig = go.Figure([go.Scatter(x=T, y=ep["rewards"], mode="lines", name="reward"),
                     go.Scatter(x=T, y=ep["returns_to_go"], mode="lines", name="return-to-go", yaxis="y2")])
    if "rtg_condition" in ep:
        fig.add_trace(go.Scatter(x=T, y=ep["rtg_condition"], mode="lines", name="R̂ condition", yaxis="y2",
                                 line={"dash": "dot"}))
    fig.add_vline(x=int(t), line_color="#d62728")
    fig.update_layout(template="plotly_white", height=220, width=520, margin={"l": 40, "r": 40, "t": 10, "b": 30},
                      yaxis={"title": "reward"}, yaxis2={"title": "RTG", "overlaying": "y", "side": "right"},
                      legend={"orientation": "h", "y": -0.25})
    return fig


def png_bytes(frame: np.ndarray, max_side: int = 400) -> bytes:
    """A frame (H, W, 3) uint8 as PNG bytes, downscaled (by striding) to at most `max_side` pixels."""
    iio = require("imageio.v3", "showing rendered frames")
    frame = np.asarray(frame, dtype=np.uint8)
    step = max(1, int(np.ceil(max(frame.shape[:2]) / max_side)))
    return iio.imwrite("<bytes>", frame[::step, ::step, :3], extension=".png")


class RolloutViewer(_Displayable):
    """Play or scrub a recorded episode frame by frame.

    `sources`: a store root, or a mapping label -> root (e.g. {"step 5000": run/rollouts/5000,
    "data": data_dir}); each root holds DIR/<domain>/<name>/episode_*.hdf5 (`rollout.run_task(...,
    record_dir=...)` writes these, with `.extra.npz` frames when recorded with frames=True).

    The scene: recorded frames when the episode has them; otherwise, for a state-based task (Meta-World,
    DMControl, robosuite, ...), frames re-rendered by replaying the stored actions from the episode's
    seeds (`rollout.replay_frames`, every k-th step so that at most `max_frames` are rendered; the
    replay is checked against the stored states and a divergence is said under the frame). Dark-Room
    is drawn as its grid, image observations as themselves; a state task without a known seed (or
    `render=False`) shows its state vector.
    """

    def __init__(self, sources: str | Path | Mapping[str, str | Path], task: str | None = None,
                 episode: int = 0, interval_ms: int = 150, render: bool = True, max_frames: int = 60):
        w = _w()
        go = _go()
        if isinstance(sources, (str, Path)):
            sources = {Path(sources).name or str(sources): sources}
        self.sources = {str(k): Path(v) for k, v in sources.items()}
        if not self.sources:
            raise ValueError("RolloutViewer: no sources given")
        self.render, self.max_frames = bool(render), int(max_frames)
        self._tasks_cache: dict[str, dict[str, list[Path]]] = {}
        self._replays: dict[Path, Any] = {}
        self.ep: dict[str, np.ndarray] | None = None
        self.replay = None  # rollout.Replay of the episode shown, when its scene was re-rendered
        self.source = w.Dropdown(options=list(self.sources), description="source",
                                 tooltip="where the episodes come from: a dataset or an agent's recorded rollouts")
        self.task = w.Dropdown(options=[], description="task")
        self.episode = w.Dropdown(options=[], description="episode")
        self.step = w.IntSlider(value=0, min=0, max=0, description="step", continuous_update=True,
                                layout={"width": "420px"})
        self.play = w.Play(value=0, min=0, max=0, interval=interval_ms, description="play")
        w.jslink((self.play, "value"), (self.step, "value"))
        self.header = w.HTML()
        self.scene = w.Image(format="png", layout={"width": "400px", "display": "none"})
        self.scene_note = w.HTML()
        self.info = w.HTML()
        self.figure = go.FigureWidget()
        self.timeline = go.FigureWidget()
        self.figure_box = w.Box([self.figure])
        self.widget = w.VBox([w.HBox([self.source, self.task, self.episode]), w.HBox([self.play, self.step]),
                              w.HBox([w.VBox([self.header, self.scene, self.figure_box, self.scene_note]),
                                      w.VBox([self.info, self.timeline])])])
        self._quiet = False  # True while this object sets widget values itself
        self.source.observe(lambda _: self._unless_quiet(self._on_source), "value")
        self.task.observe(lambda _: self._unless_quiet(self._on_task), "value")
        self.episode.observe(lambda _: self._unless_quiet(self.load), "value")
        self.step.observe(lambda ch: self._unless_quiet(self.show_step, ch["new"]), "value")
        self._on_source(task, episode)

    def _unless_quiet(self, fn, *args):
        if not self._quiet:
            fn(*args)

    def _set(self, **values):
        """Set widget traits without triggering this viewer's callbacks."""
        self._quiet = True
        try:
            for path, v in values.items():
                obj, trait = path.split("__")
                setattr(getattr(self, obj), trait, v)
        finally:
            self._quiet = False

    # -- data
    def tasks_of(self, source: str) -> dict[str, list[Path]]:
        if source not in self._tasks_cache:
            self._tasks_cache[source] = list_sources(self.sources[source])
        return self._tasks_cache[source]

    def _on_source(self, task: str | None = None, episode: int = 0):
        tasks = self.tasks_of(self.source.value)
        if not tasks:
            raise ValueError(f"RolloutViewer: no episodes under {self.sources[self.source.value]}")
        if task is not None and task not in tasks:
            raise ValueError(f"RolloutViewer: task {task!r} not in {self.sources[self.source.value]}; "
                             f"found {sorted(tasks)}")
        keep = task or (self.task.value if self.task.value in tasks else sorted(tasks)[0])
        self._set(task__options=sorted(tasks), task__value=keep)
        self._on_task(episode)

    def _on_task(self, episode: int = 0):
        paths = self.tasks_of(self.source.value)[self.task.value]
        self._set(episode__options=[(p.stem, i) for i, p in enumerate(paths)],
                  episode__value=min(episode, len(paths) - 1))
        self.load()

    def _replay(self, path: Path):
        """The episode's scene re-rendered from its seeds (cached), or None with the reason."""
        from lramlab.rollout import episode_seed_of, replay_frames

        if path in self._replays:
            return self._replays[path]
        seeds = episode_seed_of(path)
        if seeds is None:
            out = (None, "no seed recorded for this episode: its state vector is shown")
        else:
            T = len(self.ep["actions"])
            every = max(1, int(np.ceil(T / self.max_frames)))
            try:
                rep = replay_frames(self.task.value, self.ep, seeds, every=every)
                out = (rep, rep.note)
            except Exception as err:  # noqa: BLE001 - a simulator that cannot render here: say so, show states
                out = (None, f"could not re-render the scene ({type(err).__name__}: {err}): its state vector is shown")
        self._replays[path] = out
        return out

    def load(self):
        """Read the selected episode (re-render its scene when needed) and show its first step."""
        path = self.tasks_of(self.source.value)[self.task.value][self.episode.value]
        self.ep = load_episode(path)
        self.replay, note = None, ""
        kind = _frame_kind(self.task.value, self.ep)
        if kind == "frames":
            note = "frames recorded with the episode"
        elif kind == "state" and self.render:
            self.replay, note = self._replay(path)
        elif kind == "state":
            note = "state vector (scene rendering off)"
        T = len(self.ep["rewards"])
        self._set(step__value=0, step__max=T - 1, play__value=0, play__max=T - 1)
        as_image = kind == "frames" or self.replay is not None
        self.scene.layout.display = None if as_image else "none"
        self.figure_box.layout.display = "none" if as_image else None
        if not as_image:
            fig = frame_figure(self.task.value, self.ep, 0)
            fig.update_layout(title=None, margin={"t": 10})
            replace_figure(self.figure, fig)
        self.scene_note.value = f"<span style='color:#666;font-size:small'>{html.escape(note)}</span>" if note else ""
        replace_figure(self.timeline, timeline_figure(self.ep, 0))
        self.show_step(0)

    def frame(self, t: int) -> np.ndarray | None:
        """The scene at step t (recorded or re-rendered), None when the figure draws the step."""
        if self.replay is not None:
            return self.replay.frame_at(t)
        if _frame_kind(self.task.value, self.ep) == "frames":
            return self.ep["frames"][t]
        return None

    # -- callback
    def show_step(self, t: int):
        """Update the frame, the info table and the timeline marker to step t (the slider's callback)."""
        ep = self.ep
        t = int(t)
        names = None
        if self.task.value.startswith("darkroom/"):
            from lramlab.envs.darkroom import ACTION_NAMES as names
        fr = self.frame(t)
        if fr is not None:
            self.scene.value = png_bytes(fr)
        else:
            new = frame_figure(self.task.value, ep, t)
            with self.figure.batch_update():
                for old, fresh in zip(self.figure.data, new.data):
                    for prop in ("x", "y", "z"):
                        if prop in fresh and fresh[prop] is not None:
                            old[prop] = fresh[prop]
                self.figure.layout.meta = new.layout.meta
        # the title is an HTML widget set in the same callback as the slider's value (a plotly title
        # changed in a batch update was drawn one step late while playing)
        self.header.value = (f"<div class='lram-frame-title'><b>{html.escape(self.task.value)}</b>: "
                             f"step {t}</div>")
        with self.timeline.batch_update():
            self.timeline.layout.shapes[0].x0 = t
            self.timeline.layout.shapes[0].x1 = t
        self.info.value = step_html(step_info(ep, t), names)


# ============================================================================ embeddings
class EmbeddingExplorer(_Displayable):
    """Backbone, layer and tasks -> UMAP scatter of pooled hidden states (see analysis.embeddings).

    `checkpoints`: label -> checkpoint path (or an already built model). Pooled hidden states are
    computed once per (label, layer) for all tasks and cached; choosing tasks re-runs UMAP only.
    """

    def __init__(self, checkpoints: Mapping[str, Any], data_dir: str | Path | Sequence[str | Path],
                 tasks: Sequence[str] = (), n_per_task: int = 32, context: int = 50, seed: int = 0,
                 task_specs: Any = None, device: str = "cpu", initial=None):
        w = _w()
        go = _go()
        from lramlab.analysis import embeddings as E

        if not checkpoints:
            raise ValueError("EmbeddingExplorer: no checkpoints given")
        self.E = E
        self.checkpoints = dict(checkpoints)
        self.dataset = E.make_dataset(data_dir, context, tasks, task_specs)
        self.items = E.sample_windows(self.dataset, n_per_task, seed)
        self.seed, self.device, self.n_per_task = seed, device, n_per_task
        self._models: dict[str, Any] = {}
        self._hidden: dict[tuple[str, int], np.ndarray] = {}
        self.result = None
        self.backbone = w.Dropdown(options=list(self.checkpoints), description="backbone")
        self.layer = w.IntSlider(description="layer", min=0, max=0, value=0, continuous_update=False)
        self.tasks = w.SelectMultiple(options=list(self.dataset.tasks), value=tuple(self.dataset.tasks),
                                      description="tasks", rows=min(8, len(self.dataset.tasks)))
        # the task picker by domain (80 Dark-Room goals are tedious to pick one by one)
        doms = list(dict.fromkeys(t.split("/")[0] for t in self.dataset.tasks))
        self.domains = w.SelectMultiple(options=doms, value=tuple(doms), description="domains",
                                        rows=min(6, max(2, len(doms))))
        self.status = w.HTML()
        self.figure = go.FigureWidget()
        self.widget = w.VBox([w.HBox([self.backbone, self.layer]), w.HBox([self.domains, self.tasks]), self.status,
                              self.figure])
        self.domains.observe(lambda ch: self.select_domains(ch["new"]), "value")
        self._quiet = False
        self._set_layer_range()
        self.backbone.observe(lambda _: (self._set_layer_range(), self.update()), "value")
        self.layer.observe(lambda _: None if self._quiet else self.update(), "value")
        self.tasks.observe(lambda _: self.update(), "value")
        if initial is not None and len(initial) == len(self.items):
            # an EmbeddingResult of the first backbone over the same windows: show it, no recompute
            label = self.backbone.value
            idx = int(initial.layer) % self.n_layers(label)
            self._hidden[(label, idx)] = np.asarray(initial.hidden)
            self._quiet = True
            self.layer.value = idx
            self._quiet = False
        self.update()

    def select_domains(self, domains: Sequence[str]) -> None:
        """Select every task of these domains (and only those); the scatter redraws."""
        chosen = tuple(t for t in self.dataset.tasks if t.split("/")[0] in set(domains))
        if chosen != tuple(self.tasks.value):
            self.tasks.value = chosen

    @classmethod
    def from_result(cls, result, cfg) -> "EmbeddingExplorer":
        """The explorer of an `EmbeddingConfig` study, starting from its result (no recompute of
        the hidden states; the model is the config's checkpoint or the same untrained model)."""
        from lramlab.analysis.embeddings import embedding_model

        label = result.info.get("backbone") or cfg.backbone
        if not cfg.checkpoint:
            label = f"{label} (untrained)"
        return cls({label: embedding_model(cfg)}, cfg.data_dir, cfg.tasks, cfg.n_per_task, cfg.context, cfg.seed,
                   device=cfg.device, initial=result)

    def model(self, label: str):
        if label not in self._models:
            m = self.checkpoints[label]
            self._models[label] = self.E.load_for_embeddings(m, self.device) if isinstance(m, (str, Path)) else m.eval()
        return self._models[label]

    def n_layers(self, label: str) -> int:
        """Number of selectable layers: the block outputs plus the final (normed) output."""
        m = self.model(label)
        return int(m.cfg.n_layers) + 1

    def _set_layer_range(self):
        n = self.n_layers(self.backbone.value)
        self._quiet = True
        try:
            self.layer.max = n - 1
            self.layer.value = n - 1  # the paper's choice: the last layer
        finally:
            self._quiet = False

    def hidden(self, label: str, layer: int) -> np.ndarray:
        key = (label, layer)
        if key not in self._hidden:
            self._hidden[key] = self.E.pooled_hidden_states(self.model(label), self.dataset, self.items, layer,
                                                            device=self.device)
        return self._hidden[key]

    def update(self):
        """Recompute (cached hidden states) and redraw for the current backbone, layer and tasks."""
        from lramlab.analysis.plots import umap_scatter

        chosen = set(self.tasks.value)
        rows = [i for i, (ti, _, _) in enumerate(self.items) if self.dataset.tasks[ti] in chosen]
        if len(rows) < 3:
            self.status.value = "<i>choose tasks with at least 3 windows in total</i>"
            return None
        label, layer = self.backbone.value, int(self.layer.value)
        h = self.hidden(label, layer)[rows]
        res = self.E.embed_tasks(self.model(label), self.dataset, self.n_per_task, layer, self.seed,
                                 hidden=h, items=[self.items[i] for i in rows])
        self.result = res
        replace_figure(self.figure, umap_scatter(res, title=f"{label}, layer {layer}"))
        fmt = lambda x: "n/a" if not np.isfinite(x) else f"{x:.3f}"  # noqa: E731
        self.status.value = (f"{len(rows)} windows of {len(chosen)} tasks; silhouette by domain: "
                             f"hidden {fmt(res.silhouette)}, 2-D {fmt(res.silhouette_2d)}")
        return res


# ============================================================================ latency
class LatencyExplorer(_Displayable):
    """Backbones, sizes, batch size and mode -> latency vs context and throughput vs batch curves.

    `table`: a `LatencyTable` (from `analysis.latency.run_latency_study`) or its rows. With
    `config` (a LatencyStudyConfig) the "measure" button measures the selected backbones and
    sizes at the chosen batch size over the config's contexts and adds the rows.
    """

    def __init__(self, table=None, config=None):
        w = _w()
        go = _go()
        from lramlab.analysis.latency import LatencyTable

        self.table = table if isinstance(table, LatencyTable) else LatencyTable(list(table or []))
        self.config = config
        rows = self.table.rows()
        backbones = sorted({r["backbone"] for r in rows} | set(getattr(config, "backbones", ())))
        sizes = sorted({r["size"] for r in rows} | (set(config.sizes) if config is not None else set()))
        batches = sorted({r["batch_size"] for r in rows if r["kind"] == "latency"} |
                         set(getattr(config, "batch_sizes", ()))) or [1]
        modes = sorted({r["mode"] for r in rows} | set(getattr(config, "modes", ()))) or ["model"]
        self.backbones = w.SelectMultiple(options=backbones, value=tuple(backbones), description="backbones",
                                          rows=max(2, len(backbones)))
        self.sizes = w.SelectMultiple(options=sizes, value=tuple(sizes), description="sizes", rows=max(2, len(sizes)))
        self.batch = w.Dropdown(options=batches, value=batches[0], description="batch")
        self.mode = w.ToggleButtons(options=modes, value=modes[0], description="mode")
        contexts = sorted({r["context"] for r in rows if r["kind"] == "latency"} | set(getattr(config, "contexts", ())))
        # what *measure* measures: any batch size and contexts, not only the grid's
        self.measure_batch = w.BoundedIntText(value=batches[0], min=1, max=1 << 16, description="measure B",
                                              layout={"width": "170px"})
        self.measure_contexts = w.Text(value=", ".join(map(str, contexts or [50])), description="at C",
                                       placeholder="e.g. 50, 400, 1600", layout={"width": "260px"})
        self.measure = w.Button(description="measure", disabled=config is None,
                                tooltip="measure the selected backbones and sizes at B and these C (analysis.latency)")
        self.status = w.HTML()
        self.latency = go.FigureWidget()
        self.throughput = go.FigureWidget()
        self.widget = w.VBox([w.HBox([self.backbones, self.sizes, w.VBox([self.batch, self.mode]),
                                      w.VBox([self.measure_batch, self.measure_contexts, self.measure])]),
                              self.status, w.HBox([self.latency, self.throughput])])
        for c in (self.backbones, self.sizes, self.batch, self.mode):
            c.observe(lambda _: self.update(), "value")
        self.measure.on_click(lambda _: self.measure_selection())
        self.update()

    def selected(self):
        """The selected backbones' and sizes' records, a point measured more than once merged into one
        (`analysis.latency.merge_repeats`)."""
        from lramlab.analysis.latency import LatencyTable, merge_repeats

        keep = [r for r in self.table.records if r.backbone in self.backbones.value and r.size in self.sizes.value]
        return LatencyTable(merge_repeats(keep))

    def parse_contexts(self) -> tuple[int, ...]:
        """The contexts typed in "at C" (comma-separated positive integers); ValueError naming a bad one."""
        out = []
        for tok in self.measure_contexts.value.replace(";", ",").split(","):
            tok = tok.strip()
            if not tok:
                continue
            if not tok.isdigit() or int(tok) < 1:
                raise ValueError(f"LatencyExplorer: context {tok!r} is not a positive integer (e.g. 50, 400, 1600)")
            out.append(int(tok))
        if not out:
            raise ValueError("LatencyExplorer: no context given (e.g. 50, 400, 1600)")
        return tuple(sorted(set(out)))

    def update(self):
        """Redraw both figures for the current selection."""
        from lramlab.analysis.plots import latency_curves, throughput_curves

        sel = self.selected()
        lat = latency_curves(sel, batch_size=self.batch.value, mode=self.mode.value)
        thr = throughput_curves(sel, mode=self.mode.value)
        lat.update_layout(width=520, height=380)
        thr.update_layout(width=520, height=380)
        replace_figure(self.latency, lat)
        replace_figure(self.throughput, thr)
        merged = sum(r.note.startswith("merged") for r in sel.records)
        self.status.value = (f"{len(sel.records)} grid points selected"
                             + (f" ({merged} measured more than once, merged)" if merged else ""))

    def measure_selection(self):
        """Measure the selected backbones/sizes at the chosen batch size and mode, then redraw."""
        from dataclasses import replace

        from lramlab.analysis.latency import run_latency_study

        if self.config is None:
            raise ValueError("LatencyExplorer: measuring needs a LatencyStudyConfig (config=...)")
        try:
            contexts = self.parse_contexts()
        except ValueError as err:
            self.status.value = f"<b style='color:#d62728'>{html.escape(str(err))}</b>"
            return
        B = int(self.measure_batch.value)
        self.status.value = f"measuring B={B} at C={', '.join(map(str, contexts))} ..."
        for size in self.sizes.value:
            cfg = replace(self.config, backbones=tuple(self.backbones.value), size=size, contexts=contexts,
                          batch_sizes=(B,), modes=(self.mode.value,), throughput_batches=())
            self.table.extend(run_latency_study(cfg, progress=False).records)
        if B not in self.batch.options:
            self.batch.options = sorted({*self.batch.options, B})
        if self.batch.value == B:
            self.update()
        else:
            self.batch.value = B  # redraws


# ============================================================================ training
class TrainingMonitor(_Displayable):
    """Live learning curves (loss, validation perplexity) from `run_dir/metrics.jsonl`.

    "refresh" re-reads the file; "auto" re-reads it every `interval_s` seconds while the
    notebook is open (a Play widget is the timer, so no thread runs in the kernel).
    """

    def __init__(self, run_dir: str | Path, keys: Sequence[str] | None = None, interval_s: float = 5.0):
        w = _w()
        go = _go()
        self.run_dir = Path(run_dir)
        self.keys = keys
        self.button = w.Button(description="refresh", icon="refresh")
        self.auto = w.Play(value=0, min=0, max=10**9, step=1, interval=int(interval_s * 1000),
                           description="auto", show_repeat=False)
        self.status = w.HTML()
        self.loss = go.FigureWidget()
        self.perplexity = go.FigureWidget()
        self.widget = w.VBox([w.HBox([self.button, self.auto, self.status]), w.HBox([self.loss, self.perplexity])])
        self.button.on_click(lambda _: self.refresh())
        self.auto.observe(lambda _: self.refresh(), "value")
        self.n_rows = 0
        self.refresh()

    def refresh(self) -> int:
        """Re-read metrics.jsonl and redraw; returns the number of logged lines."""
        from lramlab.analysis.plots import learning_curves, perplexity_curves, read_metrics

        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            self.status.value = f"<i>waiting for {html.escape(str(path))}</i>"
            return 0
        rows = read_metrics(path)
        self.n_rows = len(rows)
        for fw, make in ((self.loss, learning_curves), (self.perplexity, perplexity_curves)):
            try:
                fig = make(rows, self.keys if make is learning_curves else None)
            except ValueError:  # nothing of that kind logged yet
                continue
            fig.update_layout(width=520, height=360)
            replace_figure(fw, fig)
        last = rows[-1] if rows else {}
        shown = {k: v for k, v in last.items() if "loss" in k or "perplexity" in k}
        self.status.value = (f"{len(rows)} lines, last step {last.get('step', '-')}: "
                             + html.escape(json.dumps({k: round(v, 4) for k, v in shown.items()})))
        return len(rows)
