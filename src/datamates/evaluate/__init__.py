"""Evaluation: reference loss, held-out perplexity / bits per byte, and zero-shot multiple-choice
tasks from YAML task specs, with lm-evaluation-harness semantics.

    from datamates.evaluate import evaluate
    result = evaluate(cfg.eval, "runs/x/stage_01/checkpoint", "runs/x/stage_01/eval")
    result["nine_task_mean"]["value"], result["reference"]["lambada_openai"]["loss"]

Modules: `spec` (task files, templates), `scoring` (batched, packed log-likelihoods), `stage`
(metrics, eval.json / eval.md).
"""

from datamates.evaluate.scoring import GroupScores, encode_pairs, score_groups
from datamates.evaluate.spec import (
    TASK_GROUPS,
    TASKS_DIR,
    TaskSpec,
    available_tasks,
    load_docs,
    load_spec,
    resolve_tasks,
)
from datamates.evaluate.stage import evaluate, evaluate_pool, evaluate_task, markdown

__all__ = [
    "TASK_GROUPS", "TASKS_DIR", "GroupScores", "TaskSpec", "available_tasks", "encode_pairs", "evaluate",
    "evaluate_pool", "evaluate_task", "load_docs", "load_spec", "markdown", "resolve_tasks", "score_groups",
]
