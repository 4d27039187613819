"""`datamates evaluate`: reference loss, held-out perplexity and zero-shot tasks of a checkpoint.

    datamates evaluate --checkpoint runs/tiny_cpu/checkpoint                # nine tasks + LAMBADA
    datamates evaluate --checkpoint CKPT --tasks sciq my_task.yaml --limit 200 --num-fewshot 5
    datamates evaluate --checkpoint CKPT --tasks path/to/lm_eval_task.yaml    # an lm-eval task file

A task is an lm-evaluation-harness task YAML (multiple_choice or loglikelihood, `dataset_path: json`
with `data_files`), every key read with lm-eval's meaning and rendered with Jinja2 as lm-eval renders
it (datamates.evaluate.spec, docs/evaluation.md). `!function` hooks (Python beside the YAML) run only
with --allow-task-code; includes and data files outside the task's folder and the data bundle need
--allow-any-task-path.
    datamates evaluate --checkpoint CKPT --tasks --heldout runs/tiny_cpu/pool:heldout_ids.npy

Writes eval.json and eval.md into --out (default: `eval/` beside a stage's `checkpoint/`, else
`<checkpoint>_eval/`) and prints the Markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from datamates.commands._common import add_config_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", metavar="DIR", help="checkpoint (or any Hugging Face GPT-NeoX folder with a tokenizer.json)")
    p.add_argument("--tasks", nargs="*", metavar="TASK",
                   help="task names, lm-eval task files (.yaml) or 'nine' (default: eval.tasks = nine); the bare flag: no tasks")
    p.add_argument("--reference", nargs="*", metavar="SET",
                   help="reference sets (default: eval.reference = lambada_openai); the bare flag: none")
    p.add_argument("--heldout", action="append", default=[], metavar="POOL[:IDS]",
                   help="a pool folder (optionally :FILE of sequence ids) for perplexity / bits per byte (repeatable)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N examples of each task")
    p.add_argument("--num-fewshot", type=int, metavar="K", help="in-context examples per question (default: each task file's num_fewshot, else 0)")
    p.add_argument("--batch-size", type=int, metavar="B", help="sequences per forward pass (eval.batch_size)")
    p.add_argument("--device", metavar="DEV", help="auto, cpu, cuda, cuda:N (eval.device)")
    p.add_argument("--log-samples", action="store_true", default=None,
                   help="write per-example log-likelihoods to samples/")
    p.add_argument("--allow-task-code", action="store_true", default=None,
                   help="let task files run their `!function` Python code (the .py files beside them, as "
                        "lm-evaluation-harness does); only for task folders you trust (eval.allow_task_code)")
    p.add_argument("--allow-any-task-path", action="store_true", default=None,
                   help="let task files read includes and data files outside their folder and the data bundle "
                        "(eval.allow_any_task_path)")
    p.add_argument("--list-tasks", action="store_true", help="list the shipped task files and exit")
    p.add_argument("--out", "-o", metavar="DIR", help="output folder")
    add_config_args(p)


def default_out(checkpoint: Path) -> Path:
    checkpoint = Path(checkpoint)
    if checkpoint.name == "checkpoint":
        return checkpoint.parent / "eval"
    return checkpoint.with_name(checkpoint.name + "_eval")


def _heldout(spec: str):
    from datamates.commands._common import read_ids
    from datamates.errors import InputError

    path, _, ids = spec.rpartition(":") if ":" in spec else (spec, "", "")
    if ids and not Path(path).exists():
        path, ids = spec, ""
    if not Path(path).exists():
        raise InputError(f"--heldout {spec}: no pool folder {path}")
    return (path, read_ids(ids, flag="--heldout")) if ids else path


def run(args: argparse.Namespace) -> int:
    if args.list_tasks:
        from datamates.evaluate.spec import TASK_GROUPS, available_tasks, load_spec, resolve_tasks

        for p in resolve_tasks(available_tasks()):
            s = load_spec(p)
            print(f"{s.name:16s} {s.output_type:16s} {s.split:11s} {s.data}")
        for g, names in TASK_GROUPS.items():
            print(f"group {g}: {' '.join(names)}")
        return 0
    if not args.checkpoint:
        from datamates.errors import ConfigError

        raise ConfigError("--checkpoint DIR is required (or --list-tasks)")
    from datamates.commands._common import flag_sets, setup

    flag_sets(args, {"limit": "limit", "num_fewshot": "num_fewshot", "batch_size": "batch_size", "device": "device",
                     "log_samples": "log_samples", "allow_task_code": "allow_task_code",
                     "allow_any_task_path": "allow_any_task_path", "tasks": "tasks", "reference": "reference"}, "eval.")

    out = Path(args.out) if args.out else default_out(Path(args.checkpoint))
    if args.run_dir is None:
        args.run_dir = str(out.parent)  # logs go to <out parent>/logs/evaluate.log
    cfg, _ = setup(args, "evaluate")  # --tasks / --reference went through the config's checks
    from datamates.evaluate import evaluate, markdown

    pools = [_heldout(h) for h in args.heldout]
    result = evaluate(cfg.eval, args.checkpoint, out, heldout_pools=pools or None)
    print(markdown(result), end="")
    print(f"written: {out}/eval.json, {out}/eval.md")
    return 0
