"""The multi-task agent study (paper §4.1-4.2 Fig. 3, App. D.3 Fig. 15, App. F Fig. 5) as one call:
`run_multitask(MultiTaskConfig)`, the body of `notebooks/06_multitask.ipynb`.

For every backbone variant (`"xlstm:7:1"`, `"xlstm:1:0"`, `"mamba"`, `"dt"`, and `"...@W"` for a
variant at its own width, e.g. `"xlstm:7:1@256"`, `"dt@256"`: the scaling comparison) and every
training seed (`seeds`: one agent per (variant, seed), runs `<name>-s<seed>`), on the same data with
the same budget (updates, batch, context, learning-rate schedule) and matched parameters (the
recurrent backbones get twice the given blocks at their width; `dt_match` chooses DT's blocks, and
its width where blocks cannot, to match them: `models.params`; the config fails up front when
the variants of one width are not within `param_tolerance`, 10 %, of each other):

1. train one agent on the training tasks under `data_dir` (`lramlab.train.run`, its own run dir);
2. evaluate it in the simulators on those tasks (`evaluate_model`, docs/protocol.md: target = the
   best return in the task's data, greedy decoding, env seeds seed..seed+episodes-1);
3. evaluate it zero-shot on the hold-out tasks, fine-tune it on the top `top_fraction` of each
   hold-out task's trajectories (App. D.3) and evaluate the fine-tuned agent;
4. embed the training tasks' sub-trajectories (`analysis.embeddings`: last-layer hidden states,
   mean-pooled, UMAP, silhouette by domain).

Each step is a job in its own spawned process (`multitask.jobs`: `threads` torch threads each,
logs in `OUT/logs/`), at most `workers` at once, each starting as soon as the job it needs has
finished. Resumable: a finished training run is skipped and an unfinished one resumes from its
checkpoint; an evaluation / embedding whose file records the sha256 of the current model file and
the same settings is skipped. A failed job stops only the jobs that need it; `run_multitask` then
raises naming each failed job and its log.

The random policy (a zero-head model sampled: uniform over each task's actions) is evaluated on the
training tasks by the same evaluator (env seeds, whole episodes, normalisation): the "random"
reference; the data's own score comes from its episodes (`study.data_reference`).

Per domain and variant the scores over the seeds (mean, std, min, max) and verdicts
(`multitask.compare.verdict`): "<recurrent> >= <dt>" at each width, and "<wider> >= <narrower>"
for a kind at two widths -- holds / does not / inside seed spread, where "inside" means the
difference of the means is at most the larger of the two seed ranges.

Outputs in `out_dir`: `runs/<agent>` and `runs/<agent>-ft` (training runs; agent = "xlstm-7-1" or,
with `seeds`, "xlstm-7-1-s0"), `evals/<agent>-<phase>.json` (`EvalResult.to_dict()` + the model
file's sha256; phases "train", "zeroshot", "finetuned"; `evals/random-train.json`),
`embeddings/<agent>.npz` (+ `.meta.json`; the first seed's agent of each variant), `logs/<job>.log`,
`results.json` (`MultiTaskResult.metrics()` + every evaluation + the config) and `summary.json`
({"domains": {domain: {"random", "data", "backbones": {variant: {"params", "seeds": [score per
seed]}}}}}, the scores in the paper's normalisation per domain: Atari human-normalised, Procgen
min-max, DMControl data-normalised, success rates; Dark-Room return / best return).
"""
from lramlab.multitask.config import MultiTaskConfig, find_study_tasks, parse_backbone
from lramlab.multitask.jobs import Job, load_embedding, run_jobs
from lramlab.multitask.study import (MultiTaskResult, collect_results, domain_table, per_task_rows, plan_jobs,
                                     run_multitask)

__all__ = ["MultiTaskConfig", "parse_backbone", "find_study_tasks", "Job", "run_jobs", "load_embedding",
           "plan_jobs", "collect_results", "domain_table", "per_task_rows", "MultiTaskResult", "run_multitask"]
