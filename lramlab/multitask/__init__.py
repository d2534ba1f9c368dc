"""The multi-task agent study (paper §4.1-4.2 Fig. 3, App. D.3 Fig. 15, App. F Fig. 5) as one call:
`run_multitask(MultiTaskConfig)`, the body of `notebooks/06_multitask.ipynb`.

For every backbone variant (`"xlstm:7:1"`, `"xlstm:1:0"`, `"mamba"`, `"dt"`, ...) on the same data
with the same budget (updates, batch, context, learning rate; parameters matched the paper's way:
the recurrent backbones get twice DT's blocks at the same width):

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

Outputs in `out_dir`: `runs/<name>` and `runs/<name>-ft` (training runs; name = "xlstm-7-1", ...),
`evals/<name>-<phase>.json` (`EvalResult.to_dict()` + the model file's sha256; phases "train",
"zeroshot", "finetuned"), `embeddings/<name>.npz` (+ `.meta.json`), `logs/<job>.log`, and
`results.json` (`MultiTaskResult.metrics()` + every evaluation + the config).
"""
from lramlab.multitask.config import MultiTaskConfig, find_study_tasks, parse_backbone
from lramlab.multitask.jobs import Job, load_embedding, run_jobs
from lramlab.multitask.study import (MultiTaskResult, collect_results, domain_table, per_task_rows, plan_jobs,
                                     run_multitask)

__all__ = ["MultiTaskConfig", "parse_backbone", "find_study_tasks", "Job", "run_jobs", "load_embedding",
           "plan_jobs", "collect_results", "domain_table", "per_task_rows", "MultiTaskResult", "run_multitask"]
