"""Parity and speed: datamates' evaluator vs lm-evaluation-harness on the same checkpoint and JSONL.

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 .venv/bin/python benchmarks/eval_parity.py [--limit 200]

1. A tiny GPT-NeoX (preset `tiny`, configs/tiny_cpu.yaml) is trained on the tiny_cpu pool
   (runs/tiny_cpu/pool, read-only; `--steps`) unless benchmarks/out/eval_parity/checkpoint exists,
   and exported with `datamates.core.checkpoint.export_hf` for lm_eval's `HFLM`.
2. For every task (the nine + LAMBADA), lm_eval runs a task YAML written here (`dataset_path: json`,
   `data_files` = the same JSONL, prompts as lm-eval's own task configs adapted to the file's
   fields), and datamates runs its shipped spec, on the first `--limit` examples, fp32, CPU, same
   batch size and threads, one after the other in this process.
3. Compared: every per-choice log-likelihood (max |diff|), per-example predictions, per-task
   acc / acc_norm; speed = examples per second, end to end (tokenization, requests, forward passes,
   metrics; lm_eval's task index and its datasets cache are built before timing, in its favour) and
   forward-pass-only (lm_eval: `HFLM.loglikelihood`; datamates: `score_groups`).

Prints one JSON object (also written to benchmarks/out/eval_parity/result.json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DATAMATES_PROGRESS", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out" / "eval_parity"

# lm-eval task configs, adapted to the fields of the JSONL files in $DATAMATES_DATA/eval
# (the harness's own prompts: lm_eval/tasks/{sciq,arc,logiqa,openbookqa,super_glue/boolq,hellaswag,
# piqa,winogrande,lambada}); written independently of datamates' specs on purpose.
LM_EVAL_TASKS = {
    "sciq": {"doc_to_text": "{{support.lstrip()}}\nQuestion: {{question}}\nAnswer:", "doc_to_target": 3,
             "doc_to_choice": "{{[distractor1, distractor2, distractor3, correct_answer]}}"},
    "arc_easy": {"doc_to_text": "{{query}}\nAnswer:", "doc_to_target": "gold", "doc_to_choice": "{{choices}}"},
    "arc_challenge": {"doc_to_text": "{{query}}\nAnswer:", "doc_to_target": "gold", "doc_to_choice": "{{choices}}"},
    "logiqa": {"doc_to_text": "Passage: {{context}}\nQuestion: {{question}}\nChoices:\nA. {{options[0]}}\n"
                              "B. {{options[1]}}\nC. {{options[2]}}\nD. {{options[3]}}\nAnswer:",
               "doc_to_target": "gold", "doc_to_choice": "{{options}}"},
    "openbookqa": {"doc_to_text": "query", "doc_to_target": "gold", "doc_to_choice": "{{choices}}"},
    "boolq": {"doc_to_text": "{{query[9:]}}\nAnswer:", "doc_to_target": "gold", "doc_to_choice": ["no", "yes"]},
    "hellaswag": {"doc_to_text": "{{query}}", "doc_to_target": "gold", "doc_to_choice": "choices"},
    "piqa": {"doc_to_text": "{{query}}Answer:", "doc_to_target": "gold", "doc_to_choice": "{{choices}}"},
    # multiple inputs: doc_to_text gives the gold index, the choices are the contexts
    "winogrande": {"doc_to_text": "gold", "doc_to_target": "continuation", "doc_to_choice": "{{context_options}}",
                   "metrics": ["acc"]},
    "lambada_openai": {"output_type": "loglikelihood", "doc_to_text": "{{context}}",
                       "doc_to_target": "{{' ' + continuation}}", "metrics": ["perplexity", "acc"]},
}


def train_checkpoint(steps: int) -> Path:
    from datamates.config import load_config
    from datamates.core.pool import Pool
    from datamates.core.train_loop import train
    from datamates.run_dir import is_done

    ckpt = OUT / "checkpoint"
    if is_done(ckpt):
        return ckpt
    cfg = load_config(str(ROOT / "configs" / "tiny_cpu.yaml"), [f"train.steps={steps}", "train.checkpoint_every=1000",
                                                              f"train.warmup_steps={max(1, steps // 10)}"])
    pool = Pool(ROOT / "runs" / "tiny_cpu" / "pool")
    print(f"training the tiny model for {steps} steps on {pool.path} ...", file=sys.stderr)
    return train(cfg.train, cfg.model, pool, np.arange(len(pool)), ckpt)


def write_lm_eval_tasks(folder: Path, data: Path) -> None:
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    for name, t in LM_EVAL_TASKS.items():
        cfg = {"task": f"dmparity_{name}", "dataset_path": "json",
               "dataset_kwargs": {"data_files": {"test": str(data / "eval" / f"{name}.jsonl")}},
               "test_split": "test", "output_type": t.get("output_type", "multiple_choice"),
               "doc_to_text": t["doc_to_text"], "doc_to_target": t["doc_to_target"]}
        if "doc_to_choice" in t:
            cfg["doc_to_choice"] = t["doc_to_choice"]
        cfg["metric_list"] = [{"metric": m} for m in t.get("metrics", ["acc", "acc_norm"])]
        (folder / f"dmparity_{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=200, help="first N examples of each task")
    ap.add_argument("--steps", type=int, default=150, help="training steps of the tiny checkpoint")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both")
    ap.add_argument("--tasks", nargs="*", default=list(LM_EVAL_TASKS))
    ap.add_argument("--checkpoint", help="use this datamates checkpoint instead of training one")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    import datamates.evaluate.stage as stage
    from datamates.config.base import data_dir
    from datamates.core.checkpoint import export_hf, load_model
    from datamates.core.tokenizer import load_tokenizer
    from datamates.evaluate import TASKS_DIR, evaluate_task, load_spec
    from datamates.log import setup_logging

    setup_logging()
    import logging

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    os.environ.setdefault("HF_DATASETS_CACHE", str(OUT / "hf_datasets_cache"))

    ckpt = Path(args.checkpoint) if args.checkpoint else train_checkpoint(args.steps)
    hf = export_hf(ckpt, OUT / "hf")
    write_lm_eval_tasks(OUT / "lm_eval_tasks", data_dir())
    ours_model = load_model(ckpt)
    ours_tok = load_tokenizer(ckpt)
    lm = HFLM(pretrained=str(hf), dtype="float32", device="cpu", batch_size=args.batch_size)
    tm = TaskManager(include_path=str(OUT / "lm_eval_tasks"))

    # lm_eval forward-pass time: wrap HFLM.loglikelihood
    ll_time = [0.0]
    orig_ll = lm.loglikelihood

    def timed_ll(requests, *a, **k):
        t = time.perf_counter()
        out = orig_ll(requests, *a, **k)
        ll_time[0] += time.perf_counter() - t
        return out

    lm.loglikelihood = timed_ll
    # datamates forward-pass time: wrap score_groups
    sg_time = [0.0]
    orig_sg = stage.score_groups

    def timed_sg(*a, **k):
        t = time.perf_counter()
        out = orig_sg(*a, **k)
        sg_time[0] += time.perf_counter() - t
        return out

    stage.score_groups = timed_sg

    # build lm_eval's datasets cache (json -> arrow) before timing
    for name in args.tasks:
        simple_evaluate(model=lm, tasks=[f"dmparity_{name}"], task_manager=tm, limit=1, bootstrap_iters=0,
                        log_samples=False, verbosity="ERROR")
    ll_time[0] = 0.0

    per_task, max_diff_all = {}, 0.0
    t_ours = t_theirs = 0.0
    ll_ours = ll_theirs = 0.0
    n_all = 0
    for name in args.tasks:
        spec = load_spec(TASKS_DIR / f"{name}.yaml")
        sg0 = sg_time[0]
        t = time.perf_counter()
        ours = evaluate_task(ours_model, ours_tok, spec, limit=args.limit, batch_size=args.batch_size,
                             precision="fp32")
        dt_ours = time.perf_counter() - t
        ll0 = ll_time[0]
        t = time.perf_counter()
        res = simple_evaluate(model=lm, tasks=[f"dmparity_{name}"], task_manager=tm, limit=args.limit,
                              bootstrap_iters=0, log_samples=True, verbosity="ERROR", num_fewshot=0)
        dt_theirs = time.perf_counter() - t
        key = f"dmparity_{name}"
        samples = sorted(res["samples"][key], key=lambda s: s["doc_id"])
        metrics = res["results"][key]
        n = len(samples)
        assert n == ours["n"], (name, n, ours["n"])
        diffs, rel, same_pred, same_pred_norm = [], [], 0, 0
        for s, o in zip(samples, ours["samples"]):
            theirs_ll = np.array([float(r[0]) for r in s["filtered_resps"]])
            mine = np.array(o["lls"] if "lls" in o else [o["ll"]])
            diffs.append(np.abs(theirs_ll - mine).max())
            rel.append((np.abs(theirs_ll - mine) / np.maximum(np.abs(theirs_ll), 1e-30)).max())
            if spec.is_mc:
                same_pred += int(float(s["acc"]) == o["acc"])
                if "acc_norm" in s:
                    same_pred_norm += int(float(s["acc_norm"]) == o["acc_norm"])
            else:
                same_pred += int(bool(s["filtered_resps"][0][1]) == o["greedy"])
        row = {"n": n, "max_abs_ll_diff": float(np.max(diffs)), "max_rel_ll_diff": float(np.max(rel)),
               "min_ll": float(min(min(o["lls"]) if "lls" in o else o["ll"] for o in ours["samples"])),
               "ours": {k: ours[k] for k in ("acc", "acc_norm", "loss", "ppl") if k in ours},
               "lm_eval": {k.split(",")[0]: v for k, v in metrics.items() if k.split(",")[0] in
                           ("acc", "acc_norm", "perplexity")},
               "same_acc_per_example": same_pred / n,
               "seconds_ours": round(dt_ours, 3), "seconds_lm_eval": round(dt_theirs, 3),
               "forward_seconds_ours": round(sg_time[0] - sg0, 3),
               "forward_seconds_lm_eval": round(ll_time[0] - ll0, 3)}
        if spec.is_mc and "acc_norm" in row["lm_eval"]:
            row["same_acc_norm_per_example"] = same_pred_norm / n
        row["acc_identical"] = row["ours"]["acc"] == row["lm_eval"]["acc"]
        if "acc_norm" in row["lm_eval"]:
            row["acc_norm_identical"] = row["ours"]["acc_norm"] == row["lm_eval"]["acc_norm"]
        per_task[name] = row
        max_diff_all = max(max_diff_all, row["max_abs_ll_diff"])
        t_ours += dt_ours
        t_theirs += dt_theirs
        ll_ours += row["forward_seconds_ours"]
        ll_theirs += row["forward_seconds_lm_eval"]
        n_all += n
        print(f"{name}: n={n} max|dLL|={row['max_abs_ll_diff']:.2e} acc {row['ours']['acc']:.4f}/"
              f"{row['lm_eval']['acc']:.4f}  {dt_ours:.1f}s vs {dt_theirs:.1f}s", file=sys.stderr)
    summary = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()}-core CPU, torch {torch.__version__}, "
                                                     f"{args.threads} thread(s)",
        "checkpoint": str(ckpt), "n_params": sum(p.numel() for p in ours_model.parameters()),
        "limit": args.limit, "batch_size": args.batch_size, "examples": n_all,
        "max_abs_ll_diff": max_diff_all, "ll_within_1e-4": max_diff_all <= 1e-4,
        "max_rel_ll_diff": max(r["max_rel_ll_diff"] for r in per_task.values()),
        "all_acc_identical": all(r["acc_identical"] for r in per_task.values()),
        "all_acc_norm_identical": all(r.get("acc_norm_identical", True) for r in per_task.values()),
        "examples_per_second_ours": round(n_all / t_ours, 2),
        "examples_per_second_lm_eval": round(n_all / t_theirs, 2),
        "speed_ratio_end_to_end": round(t_theirs / t_ours, 2),
        "speed_ratio_forward_only": round(ll_theirs / ll_ours, 2) if ll_ours else None,
        "tasks": per_task,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "result.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
