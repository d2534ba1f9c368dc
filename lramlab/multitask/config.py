"""`MultiTaskConfig` (the parameters of `notebooks/06_multitask.ipynb`), backbone specs, and the
tasks a study finds under its data directory. See `lramlab.multitask` for what the study does."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

ON_FAILURE = ("raise", "nan", "skip")


def _tuple(v) -> tuple[str, ...]:
    if v is None:
        return ()
    if isinstance(v, str):
        v = (v,)
    return tuple(str(x) for x in v)


# ============================================================================ backbone specs
def parse_backbone(spec: str) -> dict[str, Any]:
    """`"dt"`, `"mamba"`, `"xlstm"` (the size's [7:1]) or `"xlstm:a:b"` (mLSTM:sLSTM ratio), each
    optionally with `@W` (its own width, e.g. `"xlstm:7:1@256"`, `"dt@256"`: the scaling variants)
    -> {"name", "backbone", "slstm_at", "width"}; the name ("xlstm-7-1", "dt-w256") names its runs."""
    text = str(spec).strip()
    width = None
    if "@" in text:
        text, w = text.split("@", 1)
        if not w.isdigit() or int(w) < 1:
            raise ValueError(f"backbone spec {spec!r}: the width after '@' must be an integer >= 1 (e.g. dt@256)")
        width = int(w)
    suffix = "" if width is None else f"-w{width}"
    parts = text.split(":")
    kind = parts[0]
    if kind in ("dt", "mamba") and len(parts) == 1:
        return {"name": kind + suffix, "backbone": kind, "slstm_at": None, "width": width}
    if kind == "xlstm" and len(parts) in (1, 3):
        if len(parts) == 1:
            return {"name": "xlstm" + suffix, "backbone": "xlstm", "slstm_at": None, "width": width}
        a, b = parts[1], parts[2]
        if a.isdigit() and b.isdigit() and int(a) + int(b) > 0:
            return {"name": f"xlstm-{int(a)}-{int(b)}{suffix}", "backbone": "xlstm", "slstm_at": f"{int(a)}:{int(b)}",
                    "width": width}
    raise ValueError(f"backbone spec {spec!r} is not one of: dt, mamba, xlstm, xlstm:<mLSTM>:<sLSTM> "
                     f"(e.g. xlstm:7:1, xlstm:1:0), each optionally @<width> (e.g. dt@256)")


# ============================================================================ config
@dataclass
class MultiTaskConfig:
    """The multi-task study. Defaults are small (a laptop CPU, minutes); comments give the paper's."""

    data_dir: str = "data/demo"            # dataset root (01_data_prep); tasks are found under it
    tasks: tuple[str, ...] = ()            # training tasks (empty: every manifest "train" task under data_dir)
    holdout_tasks: tuple[str, ...] = ()    # hold-out tasks (empty: every manifest "holdout" task under data_dir)
    backbones: tuple[str, ...] = ("xlstm:7:1", "dt")  # variants (paper: xlstm:7:1, xlstm:1:0, mamba, dt)
    size: str = "tiny"                     # model preset (paper: 16M)
    d_model: int = 0                       # width (0: the preset's)
    n_layers: int = 0                      # DT blocks (0: the preset's); xLSTM / Mamba get twice as many (paper)
    steps: int = 100                       # updates (paper: 200K)
    batch_size: int = 8                    # windows per domain micro-batch (paper: 128)
    context: int = 20                      # timesteps per window (paper: 50)
    lr: float = 0.001                      # peak learning rate (paper: 1e-4)
    warmup: int = -1                       # warm-up updates (-1: a tenth of the run, at most 4000)
    amp: bool = False                      # bf16 autocast (paper: on; fp32 is faster on most CPUs)
    finetune_steps: int = 50               # fine-tuning updates on the hold-out tasks (0: none; paper: 25K)
    top_fraction: float = 0.05             # fine-tuning data: each hold-out task's best trajectories (paper: 5 %)
    eval_episodes: int = 1                 # episodes per task (paper: 3 seeds)
    eval_max_steps: int = 0                # cap on steps per evaluation episode (0: whole episodes; a cap
                                           # leaves the capped tasks' normalised scores None, raw returns only)
    greedy: bool = True                    # argmax actions (False: sample from the head)
    on_failure: str = "nan"                # a task whose rollout raises: nan (kept, NaN means) | skip | raise
    embeddings: bool = True                # UMAP + silhouette of each trained agent's hidden states (App. F)
    embed_per_task: int = 8                # sub-trajectories per task (paper: 32)
    embed_context: int = 20                # timesteps per sub-trajectory (paper: 50; at most the context)
    workers: int = 2                       # jobs (training, evaluation, embedding) at once, one process each
    eval_workers: int = 1                  # processes inside one evaluation job (GPU machines: more)
    threads: int = 1                       # torch threads per process
    seed: int = 0                          # first evaluation env seed (and the training seed when seeds is empty)
    seeds: tuple[int, ...] = ()            # training seeds: one agent per (variant, seed), runs "<name>-s<seed>"
                                           # (empty: one agent per variant trained with `seed`; paper: 3)
    dt_match: bool = True                  # choose DT's blocks (width if needed) to match the recurrent
                                           # variants' parameters (lramlab.models.params; False: n_layers)
    param_tolerance: float = 0.10          # fail up front unless each width's variants are within this
                                           # fraction of each other in parameters (0: no check)
    device: str = "cpu"                    # cpu | cuda | cuda:N (training; evaluation steps on it too)
    out_dir: str = "runs/notebooks/06_multitask"  # runs, evaluations, figures and metrics.json
    save_png: bool = True                  # also write PNG figures (needs kaleido + Chromium)

    def __post_init__(self):
        self.tasks, self.holdout_tasks = _tuple(self.tasks), _tuple(self.holdout_tasks)
        self.backbones = _tuple(self.backbones)
        seeds = () if self.seeds is None else ((self.seeds,) if isinstance(self.seeds, int) else tuple(self.seeds))
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in seeds) or len(set(seeds)) != len(seeds):
            raise ValueError(f"MultiTaskConfig.seeds={list(seeds)!r}: expected distinct integers >= 0")
        self.seeds = seeds
        if not self.backbones:
            raise ValueError("MultiTaskConfig.backbones is empty: expected specs such as xlstm:7:1, mamba, dt")
        names = [parse_backbone(b)["name"] for b in self.backbones]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"MultiTaskConfig.backbones={list(self.backbones)}: {dup} given twice")
        for n in ("steps", "batch_size", "context", "eval_episodes", "embed_per_task", "embed_context", "workers",
                  "eval_workers", "threads"):
            v = getattr(self, n)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"MultiTaskConfig.{n}={v!r}: expected an integer >= 1")
        for n in ("d_model", "n_layers", "finetune_steps", "eval_max_steps", "seed"):
            v = getattr(self, n)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"MultiTaskConfig.{n}={v!r}: expected an integer >= 0")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < -1:
            raise ValueError(f"MultiTaskConfig.warmup={self.warmup!r}: expected an integer >= 0, or -1 (a tenth)")
        if (isinstance(self.param_tolerance, bool) or not isinstance(self.param_tolerance, (int, float))
                or not math.isfinite(self.param_tolerance) or not 0 <= self.param_tolerance < 1):
            raise ValueError(f"MultiTaskConfig.param_tolerance={self.param_tolerance!r}: expected 0 <= value < 1 "
                             f"(0: no check)")
        for n in ("lr", "top_fraction"):
            v = getattr(self, n)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"MultiTaskConfig.{n}={v!r}: expected a finite number > 0")
        if self.top_fraction > 1:
            raise ValueError(f"MultiTaskConfig.top_fraction={self.top_fraction}: expected 0 < value <= 1")
        if self.on_failure not in ON_FAILURE:
            raise ValueError(f"MultiTaskConfig.on_failure={self.on_failure!r}: expected one of {ON_FAILURE}")
        if not (self.device in ("cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"MultiTaskConfig.device={self.device!r}: expected cpu | cuda | cuda:N")
        from lramlab.models.config import SIZES

        if self.size not in SIZES:
            raise ValueError(f"MultiTaskConfig.size={self.size!r}: expected one of {', '.join(SIZES)}")
        if not self.data_dir:
            raise ValueError("MultiTaskConfig.data_dir='': expected the dataset root")
        from lramlab.train.loop import make_model_config

        self._shapes: dict[str, dict] = {}
        self._match: dict[str, dict] = {}
        for spec in self.specs():  # a model that cannot be built fails here, not in a job's log (DT: before matching)
            try:
                make_model_config(self.train_config(spec, (), Path(self.out_dir) / "runs" / spec["name"]))
            except ValueError as err:
                raise ValueError(f"MultiTaskConfig: backbone {spec['name']!r}: {err}") from None
        if self.dt_match:
            self._match_dts()
        from lramlab.models.params import check_param_match

        self.param_ratios = check_param_match(self.param_groups(), self.param_tolerance)

    def _match_dts(self) -> None:
        from lramlab.models.config import preset
        from lramlab.models.params import count_params, match_dt
        from lramlab.train.loop import make_model_config

        for spec in self.specs():
            if spec["backbone"] != "dt":
                continue
            width = self.width_of(spec)
            ref = [s for s in self.specs() if s["backbone"] != "dt" and self.width_of(s) == width]
            if not ref:  # no recurrent variant at this width: match xLSTM [7:1] at it (the paper's model)
                ref = [parse_backbone(f"xlstm:7:1@{width}")]
            targets = [count_params(make_model_config(self.train_config(s, (), Path(".")))) for s in ref]
            rec_layers = 2 * self.n_layers if self.n_layers else preset("xlstm", self.size)["n_layers"]
            m = match_dt(targets, width, rec_layers, {"size": self.size, "context_steps": self.context},
                         self.param_tolerance or 0.10)
            self._shapes[spec["name"]] = {"d_model": m["d_model"], "n_layers": m["n_layers"]}
            self._match[spec["name"]] = {**m, "matched_to": {s["name"]: n for s, n in zip(ref, targets)}}
            try:
                make_model_config(self.train_config(spec, (), Path(".")))
            except ValueError as err:
                raise ValueError(f"MultiTaskConfig: backbone {spec['name']!r}: {err}") from None

    # -------------------------------------------------------------------- widths and parameters
    def width_of(self, spec: Mapping[str, Any]) -> int:
        """A variant's nominal width: its `@W`, else d_model, else the size preset's."""
        from lramlab.models.config import preset

        return int(spec.get("width") or self.d_model or preset(spec["backbone"], self.size)["d_model"])

    def param_counts(self) -> dict[str, int]:
        """variant name -> parameters of the model it trains (counted on the meta device)."""
        from lramlab.models.params import count_params
        from lramlab.train.loop import make_model_config

        if not hasattr(self, "_counts"):
            self._counts = {s["name"]: count_params(make_model_config(self.train_config(s, (), Path("."))))
                            for s in self.specs()}
        return dict(self._counts)

    def param_groups(self) -> dict[str, dict[str, int]]:
        """{nominal width (str): {variant: parameters}}: the variants compared with each other."""
        counts = self.param_counts()
        out: dict[str, dict[str, int]] = {}
        for s in self.specs():
            out.setdefault(str(self.width_of(s)), {})[s["name"]] = counts[s["name"]]
        return out

    def param_match(self) -> dict[str, Any]:
        """What the parameter matching did: per width the counts and largest/smallest ratio, and per
        matched DT its chosen blocks / width and the counts it was matched to."""
        groups = self.param_groups()
        return {"tolerance": self.param_tolerance, "dt_match": self.dt_match,
                "groups": {g: {"params": c, "ratio": self.param_ratios[g]} for g, c in groups.items()},
                "dt": {n: dict(m) for n, m in self._match.items()}}

    def training_seeds(self) -> tuple[int, ...]:
        return self.seeds or (self.seed,)

    def agents(self) -> list[dict[str, Any]]:
        """One per (variant, training seed): {"name" (its runs), "variant", "seed", "spec"}."""
        return [{"name": f"{s['name']}-s{seed}" if self.seeds else s["name"], "variant": s["name"], "seed": seed,
                 "spec": s} for s in self.specs() for seed in self.training_seeds()]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["seeds"] = list(self.seeds)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MultiTaskConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown MultiTaskConfig field(s) {unknown}; valid: {sorted(names)}")
        return cls(**d)

    # -------------------------------------------------------------------- what it trains
    def specs(self) -> list[dict[str, Any]]:
        return [parse_backbone(b) for b in self.backbones]

    def train_config(self, spec: Mapping[str, Any], tasks: Sequence[str], run_dir: Path,
                     finetune_from: str | None = None, seed: int | None = None):
        """The TrainConfig of one variant: pretraining on `tasks`, or fine-tuning from a model file;
        `seed`: the training seed (None: `seed`)."""
        from lramlab.train import TrainConfig

        ft = finetune_from is not None
        steps = self.finetune_steps if ft else self.steps
        layers = None
        if self.n_layers:
            layers = self.n_layers * (1 if spec["backbone"] == "dt" else 2)
        width = spec.get("width") or self.d_model or None
        shape = getattr(self, "_shapes", {}).get(spec["name"])
        if shape:  # a parameter-matched DT
            width, layers = shape["d_model"], shape["n_layers"]
        return TrainConfig(
            data=(self.data_dir,), tasks=tuple(tasks), backbone=spec["backbone"], size=self.size,
            slstm_at=spec["slstm_at"], d_model=width, n_layers=layers, steps=steps,
            batch_size=self.batch_size, context=self.context, lr=self.lr,
            warmup=None if self.warmup < 0 else min(self.warmup, max(0, steps - 1)), amp=self.amp,
            top_fraction=self.top_fraction if ft else 1.0, finetune_from=finetune_from, out=str(run_dir),
            resume=True, seed=self.seed if seed is None else int(seed), device=self.device, num_threads=self.threads,
            log_every=max(1, steps // 50), val_every=0, val_batches=4, ckpt_every=max(1, steps // 5), eval_every=0,
            progress=False, tensorboard=False)


# ============================================================================ tasks under the data
def find_study_tasks(data_dir: str | Path, tasks: Sequence[str] = (), holdout: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """(training tasks, hold-out tasks): those given, else every task under `data_dir` of the
    manifests' "train" / "holdout" split. A given task without data is a ValueError naming it."""
    from lramlab.data.store import find_task_dirs
    from lramlab.manifests import get_task

    found = find_task_dirs([str(data_dir)])
    split = {}
    for t in found:
        try:
            split[t] = get_task(t).split
        except KeyError:  # a task outside the manifests: the study cannot score it
            continue
    out = []
    for given, want in ((tasks, "train"), (holdout, "holdout")):
        if given:
            ids = [get_task(t).id for t in given]
            missing = [t for t in ids if t not in found]
            if missing:
                raise ValueError(f"MultiTaskConfig: no data under {data_dir} for {missing}")
            out.append(ids)
        else:
            out.append(sorted(t for t, s in split.items() if s == want))
    if not out[0]:
        raise ValueError(f"MultiTaskConfig: no training task under {data_dir} (expected DIR/<domain>/<task>/ "
                         f"with episode files of manifest 'train' tasks; run 01_data_prep first)")
    return out[0], out[1]
