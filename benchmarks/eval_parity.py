"""Parity and speed: datamates' evaluator vs lm-evaluation-harness on the same checkpoint and JSONL.

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 .venv/bin/python benchmarks/eval_parity.py [--limit 200]
    ... benchmarks/eval_parity.py --mode shipped --limit 100        # the harness's own task files

--mode shipped (issue 26): the task YAMLs *shipped inside the installed lm_eval package* (with their
`include`d files and `!function` Python files, copied unchanged) of the nine MATES tasks and five
more (copa, social_iqa, commonsense_qa, mmlu_anatomy, blimp_adjunct_island), run as shipped with
only the data source changed: `dataset_path: json` and `dataset_kwargs.data_files` (every split the
file names -> one local file) appended to the top file. The data are converted once into each
task's shipped schema (SHIPPED_DATA below): the nine from the bundle's $DATAMATES_DATA/eval files;
the five others have no data offline, so their records are *derived* from bundle files of other
tasks (labelled in the output: copa from PIQA, social_iqa from HellaSwag, commonsense_qa and mmlu
from ARC, blimp from WinoGrande) -- valid records of the shipped schema, not those benchmarks'
data, which is all a parity check of requests and log-likelihoods needs. datamates reads the same
files with --allow-task-code; lm_eval reads them with TaskManager(include_path=..., include_defaults=False).
Compared per example: every request (context, continuation), every log-likelihood, acc and acc_norm.

--mode schema: which of the installed lm_eval's multiple_choice / loglikelihood task files datamates
loads with only the data source changed (with and without --allow-task-code); no model, no data.

--mode adapted (the former benchmark):

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
import logging
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DATAMATES_PROGRESS", "0")
warnings.filterwarnings("ignore", category=DeprecationWarning)  # lm_eval's get_task_dict

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
    pool_dir = ROOT / "runs" / "tiny_cpu" / "pool"
    if not pool_dir.exists():  # the test suite's tiny pool (tests/conftest.py), built once here
        pool_dir = OUT / "pool"
        if not is_done(pool_dir):
            sys.path.insert(0, str(ROOT / "tests"))
            from datamates_testing import tiny_pool_config

            from datamates.config.base import data_dir
            from datamates.core.pool import build_pool

            files = ["pretrain/web/c4_100_domains_theguardian_10.jsonl.gz",
                     "pretrain/wiki/nq_open_oracle_wikipedia_passages.jsonl.gz",
                     "pretrain/science/arxiv_samples.jsonl.gz"]
            build_pool(tiny_pool_config([str(data_dir() / f) for f in files], seq_len=128, vocab=2048), pool_dir)
    pool = Pool(pool_dir)
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


# ----------------------------------------------------------------------------- --mode shipped

# task -> (file inside lm_eval/tasks, bundle file the records come from, provenance)
SHIPPED = {
    "sciq": ("sciq/sciq.yaml", "sciq", "SciQ (bundle)"),
    "arc_easy": ("arc/arc_easy.yaml", "arc_easy", "ARC-Easy (bundle)"),
    "arc_challenge": ("arc/arc_challenge.yaml", "arc_challenge", "ARC-Challenge (bundle)"),
    "logiqa": ("logiqa/logiqa.yaml", "logiqa", "LogiQA (bundle)"),
    "openbookqa": ("openbookqa/openbookqa.yaml", "openbookqa", "OpenBookQA (bundle)"),
    "boolq": ("super_glue/boolq/default.yaml", "boolq", "BoolQ (bundle)"),
    "hellaswag": ("hellaswag/hellaswag.yaml", "hellaswag", "HellaSwag (bundle)"),
    "piqa": ("piqa/piqa.yaml", "piqa", "PIQA (bundle)"),
    "winogrande": ("winogrande/default.yaml", "winogrande", "WinoGrande (bundle)"),
    "copa": ("super_glue/copa/default.yaml", "piqa", "derived: PIQA goals and solutions in COPA's schema"),
    "social_iqa": ("siqa/siqa.yaml", "hellaswag", "derived: HellaSwag contexts and 3 endings in Social IQa's schema"),
    "commonsense_qa": ("commonsense_qa/default.yaml", "arc_easy",
                       "derived: ARC-Easy questions + a 5th choice from the next record, in CommonsenseQA's schema"),
    "mmlu_anatomy": ("mmlu/default/mmlu_anatomy.yaml", "arc_challenge",
                     "derived: ARC-Challenge questions in MMLU's schema"),
    "blimp_adjunct_island": ("blimp/adjunct_island.yaml", "winogrande",
                             "derived: WinoGrande sentences (right option good, wrong bad) in BLiMP's schema"),
}
LETTERS = "ABCDEFGH"


def _convert(name: str, recs: list[dict]) -> list[dict]:
    """Bundle records -> the task's shipped (Hugging Face) schema, so that the shipped templates and
    Python hooks give the prompts the bundle's preprocessed fields hold."""
    out = []
    for i, r in enumerate(recs):
        if name == "sciq":
            out.append(r)
        elif name in ("arc_easy", "arc_challenge"):
            out.append({"id": str(i), "question": r["query"].removeprefix("Question: "),
                        "choices": {"text": r["choices"], "label": list(LETTERS[: len(r["choices"])])},
                        "answerKey": LETTERS[r["gold"]]})
        elif name == "openbookqa":
            out.append({"id": str(i), "question_stem": r["query"],
                        "choices": {"text": r["choices"], "label": list(LETTERS[: len(r["choices"])])},
                        "answerKey": LETTERS[r["gold"]]})
        elif name == "logiqa":
            out.append({"label": "abcd"[r["gold"]], "context": r["context"], "question": r["question"],
                        "options": r["options"]})
        elif name == "boolq":
            passage, _, question = r["query"].removeprefix("Passage: ").rpartition("\nQuestion: ")
            out.append({"passage": passage, "question": question.removesuffix("?"), "idx": i, "label": r["gold"]})
        elif name == "hellaswag":
            act = r["activity_label"]
            out.append({"ind": i, "activity_label": act, "ctx_a": r["query"][len(act) + 2:], "ctx_b": "",
                        "ctx": r["query"][len(act) + 2:], "endings": r["choices"], "source_id": str(i),
                        "split": "val", "split_type": "indomain", "label": str(r["gold"])})
        elif name == "piqa":
            out.append({"goal": r["query"].removeprefix("Question: ").removesuffix("\n"),
                        "sol1": r["choices"][0], "sol2": r["choices"][1], "label": r["gold"]})
        elif name == "winogrande":
            a, b = r["context_options"]
            k = 0
            while k < min(len(a), len(b)) and a[k] == b[k]:
                k += 1
            prefix = a[:k]
            if "_" in prefix:
                continue  # the shipped hook finds the first '_': such a record cannot be written
            out.append({"sentence": prefix + "_ " + r["continuation"], "option1": a[k:], "option2": b[k:],
                        "answer": str(r["gold"] + 1)})
        elif name == "copa":
            goal = r["query"].removeprefix("Question: ").strip()
            if len(goal) < 3 or min(len(c) for c in r["choices"]) < 1:
                continue
            out.append({"premise": goal + ".", "choice1": r["choices"][0], "choice2": r["choices"][1],
                        "question": ("cause", "effect")[i % 2], "idx": i, "label": r["gold"]})
        elif name == "social_iqa":
            ends, g = list(r["choices"][:3]), r["gold"]
            if g == 3:
                ends[i % 3], g = r["choices"][3], i % 3
            out.append({"context": r["query"], "question": "What happens next?", "answerA": ends[0],
                        "answerB": ends[1], "answerC": ends[2], "label": str(g + 1)})
        elif name == "commonsense_qa":
            extra = recs[(i + 1) % len(recs)]["choices"][0]
            text = list(r["choices"]) + [extra]
            out.append({"id": str(i), "question": r["query"].removeprefix("Question: "),
                        "question_concept": "", "choices": {"label": list(LETTERS[:5]), "text": text},
                        "answerKey": LETTERS[r["gold"]]})
        elif name == "mmlu_anatomy":
            out.append({"question": r["query"].removeprefix("Question: "), "subject": "anatomy",
                        "choices": r["choices"], "answer": r["gold"]})
        elif name == "blimp_adjunct_island":
            good = r["context_options"][r["gold"]] + " " + r["continuation"]
            bad = r["context_options"][1 - r["gold"]] + " " + r["continuation"]
            out.append({"sentence_good": good, "sentence_bad": bad, "field": "derived", "linguistics_term": "",
                        "UID": "adjunct_island", "simple_LM_method": True, "one_prefix_method": False,
                        "two_prefix_method": False, "lexically_identical": False, "pair_id": i})
    return out


def _drop_top_level(text: str, keys: tuple[str, ...]) -> str:
    """The YAML text without the top-level `key:` lines (and their indented blocks) of `keys`."""
    out, skipping = [], False
    for line in text.splitlines(keepends=True):
        top = line[:1] not in (" ", "\t", "-", "#", "\n", "")
        if top:
            key = line.split(":", 1)[0].strip().strip("\"'")
            skipping = key in keys
        if not skipping:
            out.append(line)
    return "".join(out)


def write_shipped(folder: Path, data: Path, names: list[str]) -> dict[str, dict]:
    """Copy each task's shipped folder (YAMLs, includes, Python hooks: unchanged) into folder/<task>/,
    convert its data once, and append the data source to the top task file. Returns, per task, the
    top file, the data file and the provenance."""
    import shutil

    import lm_eval

    from datamates.evaluate.spec import _read_yaml

    src_root = Path(lm_eval.__file__).parent / "tasks"
    info = {}
    for name in names:
        rel, bundle, prov = SHIPPED[name]
        src = src_root / rel
        dst_dir = folder / name
        if dst_dir.exists():
            shutil.rmtree(dst_dir)
        shutil.copytree(src.parent, dst_dir, ignore=shutil.ignore_patterns("__pycache__", "*.md"))
        recs = [json.loads(line) for line in (data / "eval" / f"{bundle}.jsonl").open()]
        conv = _convert(name, recs)
        dfile = dst_dir / f"_data_{name}.jsonl"
        dfile.write_text("".join(json.dumps(r) + "\n" for r in conv))
        # the other task files of the copied folder would be indexed by lm_eval too: keep the top one
        top = dst_dir / src.name
        raw, _ = _read_yaml(src)
        keep = {top}
        inc = yaml_includes(src)
        keep |= {dst_dir / i for i in inc}
        for f in dst_dir.rglob("*.yaml"):
            if f not in keep:
                f.unlink()
        for f in list(dst_dir.iterdir()):
            if f.is_file() and f.suffix not in (".yaml", ".py", ".jsonl") and f.name not in {i for i in inc}:
                f.unlink()
        splits = {raw.get(k) for k in ("training_split", "validation_split", "test_split", "fewshot_split")}
        splits |= {(raw.get("fewshot_config") or {}).get("split")}
        splits = sorted(s for s in splits if s)
        text = _drop_top_level(top.read_text(), ("dataset_path", "dataset_kwargs"))
        text = text.rstrip("\n") + "\ndataset_path: json\ndataset_kwargs:\n  data_files:\n" + "".join(
            f"    {s}: {dfile.resolve()}\n" for s in splits)  # lm_eval: relative to the working folder
        top.write_text(text)
        info[name] = {"file": top, "data": dfile, "records": len(conv), "provenance": prov, "shipped": rel,
                      "task": raw.get("task") or src.stem}
    return info


def yaml_includes(path: Path) -> list[str]:
    from datamates.evaluate.spec import _load_yaml_text

    raw = _load_yaml_text(path.read_text(), path)
    inc = raw.get("include") if isinstance(raw, dict) else None
    incs = [] if inc is None else inc if isinstance(inc, list) else [inc]
    out = list(incs)
    for i in incs:
        out += yaml_includes(path.parent / i)
    return out


def _requests(sample: dict) -> list[tuple[str, str]]:
    out = []
    for a in sample["arguments"]:
        if isinstance(a, dict):  # {"gen_args_0": {"arg_0": ctx, "arg_1": cont}}
            a = [a[k] for k in sorted(a)]
        out.append((str(a[0]), str(a[1])))
    return out


class _Totals:
    """Seconds and examples summed over tasks (both modes): the speed figures of the summary."""

    def __init__(self) -> None:
        self.t_ours = self.t_theirs = self.f_ours = self.f_theirs = 0.0
        self.n = 0

    def add(self, dt_ours: float, dt_theirs: float, row: dict, n: int) -> None:
        self.t_ours += dt_ours
        self.t_theirs += dt_theirs
        self.f_ours += row["forward_seconds_ours"]
        self.f_theirs += row["forward_seconds_lm_eval"]
        self.n += n

    def speed(self) -> dict:
        return {"examples_per_second_ours": round(self.n / self.t_ours, 2),
                "examples_per_second_lm_eval": round(self.n / self.t_theirs, 2),
                "speed_ratio_end_to_end": round(self.t_theirs / self.t_ours, 2),
                "speed_ratio_forward_only": round(self.f_theirs / self.f_ours, 2) if self.f_ours else None}


def run_shipped(args, lm, ours_model, ours_tok, timers) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager, get_task_dict

    from datamates.config.base import data_dir
    from datamates.evaluate import evaluate_task, load_docs, load_spec
    from datamates.evaluate.spec import fewshot_prefixes

    names = args.tasks or list(SHIPPED)
    folder = OUT / "shipped_tasks"
    info = write_shipped(folder, data_dir(), names)
    # one task index per task folder: an included task file (arc_challenge includes arc_easy.yaml)
    # would otherwise clash with the other folder's task of the same name
    tms = {name: TaskManager(include_path=str(folder / name), include_defaults=False) for name in names}
    sg_time, ll_time = timers
    for name in names:  # lm_eval's datasets cache (json -> arrow) before timing
        simple_evaluate(model=lm, tasks=[info[name]["task"]], task_manager=tms[name], limit=1, bootstrap_iters=0,
                        log_samples=False, verbosity="ERROR", num_fewshot=0)
    ll_time[0] = 0.0
    per_task = {}
    tot = _Totals()
    for name in names:
        spec = load_spec(info[name]["file"], allow_task_code=True)
        sg0 = sg_time[0]
        t = time.perf_counter()
        ours = evaluate_task(ours_model, ours_tok, spec, limit=args.limit, batch_size=args.batch_size,
                             precision="fp32", num_fewshot=0)
        dt_ours = time.perf_counter() - t
        ll0 = ll_time[0]
        t = time.perf_counter()
        res = simple_evaluate(model=lm, tasks=[info[name]["task"]], task_manager=tms[name], limit=args.limit,
                              bootstrap_iters=0, log_samples=True, verbosity="ERROR", num_fewshot=0)
        dt_theirs = time.perf_counter() - t
        key = info[name]["task"]
        task = get_task_dict([key], tms[name])[key]
        samples = sorted(res["samples"][key], key=lambda s: s["doc_id"])
        metrics = {k.split(",")[0]: v for k, v in res["results"][key].items()}
        docs = load_docs(spec, limit=args.limit)
        pre = fewshot_prefixes(spec, docs, len(docs), 0, 0)
        n = len(samples)
        assert n == ours["n"] == len(docs), (name, n, ours["n"], len(docs))
        same_req = 0
        diffs, rel = [], []
        same = {"acc": 0, "acc_norm": 0}
        for s, o, d, p in zip(samples, ours["samples"], docs, pre):
            mine_req = [(p + c, t) for c, t in zip(d.contexts, d.continuations)]
            same_req += int(_requests(s) == mine_req)
            theirs_ll = np.array([float(r[0]) for r in s["filtered_resps"]])
            mine = np.array(o["lls"])
            diffs.append(np.abs(theirs_ll - mine).max())
            rel.append((np.abs(theirs_ll - mine) / np.maximum(np.abs(theirs_ll), 1e-30)).max())
            # lm_eval logs the metrics its metric_list names; where acc_norm is not listed, its
            # definition (process_results) on lm_eval's own choices and log-likelihoods
            if "acc_norm" in s:
                their_norm = float(s["acc_norm"])
            else:
                lens = np.array([len(c) for c in task.doc_to_choice(s["doc"])], np.float64)
                gold = task.doc_to_text(s["doc"]) if task.multiple_input else task.doc_to_target(s["doc"])
                gold = task.doc_to_choice(s["doc"]).index(gold) if isinstance(gold, str) else gold
                their_norm = float(np.argmax(theirs_ll / lens) == gold)
            same["acc"] += int(float(s["acc"]) == o["acc"])
            same["acc_norm"] += int(their_norm == o["acc_norm"])
        row = {"shipped_file": f"lm_eval/tasks/{info[name]['shipped']}", "data": info[name]["provenance"],
               "task_code": bool(spec.code_files), "n": n, "requests_identical": same_req == n,
               "same_requests": same_req, "max_abs_ll_diff": float(np.max(diffs)),
               "max_rel_ll_diff": float(np.max(rel)), "same_acc_per_example": same["acc"],
               "same_acc_norm_per_example": same["acc_norm"],
               "acc_norm_listed": "acc_norm" in spec.metrics,
               "acc_norm_lm_eval_from": "its samples" if "acc_norm" in spec.metrics
               else "its process_results formula on its own choices and log-likelihoods",
               "ours": {k: ours[k] for k in ("acc", "acc_norm")},
               "lm_eval": {k: metrics[k] for k in ("acc", "acc_norm") if k in metrics},
               "seconds_ours": round(dt_ours, 3), "seconds_lm_eval": round(dt_theirs, 3),
               "forward_seconds_ours": round(sg_time[0] - sg0, 3),
               "forward_seconds_lm_eval": round(ll_time[0] - ll0, 3), "ignored_notes": spec.ignored}
        per_task[name] = row
        tot.add(dt_ours, dt_theirs, row, n)
        print(f"{name}: n={n} requests {same_req}/{n} max|dLL|={row['max_abs_ll_diff']:.2e} acc {same['acc']}/{n} "
              f"acc_norm {same['acc_norm']}/{n}  {dt_ours:.1f}s vs {dt_theirs:.1f}s", file=sys.stderr)
    return {"mode": "shipped", "examples": tot.n,
            "all_requests_identical": all(r["requests_identical"] for r in per_task.values()),
            "max_abs_ll_diff": max(r["max_abs_ll_diff"] for r in per_task.values()),
            "max_rel_ll_diff": max(r["max_rel_ll_diff"] for r in per_task.values()),
            "all_acc_identical_per_example": all(r["same_acc_per_example"] == r["n"] for r in per_task.values()),
            "all_acc_norm_identical_per_example": all(r["same_acc_norm_per_example"] == r["n"]
                                                      for r in per_task.values()),
            **tot.speed(),
            "tasks": per_task}


def survey_schema(allow_task_code: bool) -> dict:
    """--mode schema: every multiple_choice / loglikelihood task file of the installed lm_eval, loaded by
    datamates with only the data source changed (a wrapper YAML: `include:` the shipped file, then
    dataset_path: json and data_files); counts of what loads and of each refusal. No model."""
    import collections
    import re
    import tempfile

    import lm_eval

    from datamates.errors import ConfigError
    from datamates.evaluate import load_spec
    from datamates.evaluate.spec import _read_yaml

    logging.getLogger("datamates").setLevel(logging.ERROR)
    root = Path(lm_eval.__file__).parent / "tasks"
    tmp = Path(tempfile.mkdtemp())
    (tmp / "d.jsonl").write_text('{"x": 1}\n')
    cnt: collections.Counter = collections.Counter()
    example: dict[str, str] = {}
    n = 0
    for f in sorted(root.rglob("*.yaml")):
        try:
            raw, _ = _read_yaml(f)
        except Exception:  # group files, templates without a task
            continue
        if "task" not in raw or raw.get("output_type") not in ("multiple_choice", "loglikelihood"):
            continue
        n += 1
        splits = sorted({raw.get(k) for k in ("training_split", "validation_split", "test_split",
                                              "fewshot_split")} - {None} | {"test"})
        w = tmp / f"w{n}.yaml"
        w.write_text(f"include: {f}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                     + "".join(f"    {s}: d.jsonl\n" for s in splits))
        try:
            load_spec(w, allow_any_path=True, allow_task_code=allow_task_code)
            cnt["loads"] += 1
        except ConfigError as e:
            msg = str(e)
            m = re.search(r"key '([^']+)'", msg)
            why = ("!function: needs --allow-task-code" if "--allow-task-code" in msg
                   else f"{m.group(1)}: {msg.split(m.group(0))[-1].strip(': ')[:70]}" if m else msg[-70:])
            cnt[why] += 1
            example.setdefault(why, str(f.relative_to(root)))
    return {"mode": "schema", "lm_eval": lm_eval.__version__, "allow_task_code": allow_task_code, "task_files": n,
            "outcomes": [{"count": c, "outcome": k, "example": example.get(k, "")} for k, c in cnt.most_common()]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=200, help="first N examples of each task")
    ap.add_argument("--steps", type=int, default=150, help="training steps of the tiny checkpoint")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both")
    ap.add_argument("--mode", choices=("shipped", "adapted", "schema"), default="shipped",
                    help="shipped: lm_eval's own task files (issue 26); adapted: task files written here; "
                         "schema: which of lm_eval's task files load (no model)")
    ap.add_argument("--allow-task-code", action="store_true", help="--mode schema: with --allow-task-code")
    ap.add_argument("--tasks", nargs="*", default=None, help="default: every task of the mode")
    ap.add_argument("--checkpoint", help="use this datamates checkpoint instead of training one")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.mode == "schema":
        res = survey_schema(args.allow_task_code)
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / f"result_schema{'_code' if args.allow_task_code else ''}.json").write_text(json.dumps(res, indent=2) + "\n")
        print(json.dumps(res, indent=2))
        return

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

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    os.environ.setdefault("HF_DATASETS_CACHE", str(OUT / "hf_datasets_cache"))

    ckpt = Path(args.checkpoint) if args.checkpoint else train_checkpoint(args.steps)
    hf = export_hf(ckpt, OUT / "hf")
    if args.mode == "adapted":
        write_lm_eval_tasks(OUT / "lm_eval_tasks", data_dir())
    ours_model = load_model(ckpt)
    ours_tok = load_tokenizer(ckpt)
    lm = HFLM(pretrained=str(hf), dtype="float32", device="cpu", batch_size=args.batch_size)
    tm = TaskManager(include_path=str(OUT / "lm_eval_tasks")) if args.mode == "adapted" else None

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

    if args.mode == "shipped":
        summary = {"date": time.strftime("%Y-%m-%d"),
                   "machine": f"{os.cpu_count()}-core CPU, torch {torch.__version__}, {args.threads} thread(s)",
                   "lm_eval": __import__("lm_eval").__version__, "checkpoint": str(ckpt),
                   "n_params": sum(p.numel() for p in ours_model.parameters()), "limit": args.limit,
                   "batch_size": args.batch_size,
                   **run_shipped(args, lm, ours_model, ours_tok, (sg_time, ll_time))}
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "result_shipped.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        print(json.dumps(summary, indent=2, default=str))
        return
    args.tasks = args.tasks or list(LM_EVAL_TASKS)
    # build lm_eval's datasets cache (json -> arrow) before timing
    for name in args.tasks:
        simple_evaluate(model=lm, tasks=[f"dmparity_{name}"], task_manager=tm, limit=1, bootstrap_iters=0,
                        log_samples=False, verbosity="ERROR")
    ll_time[0] = 0.0

    per_task, max_diff_all = {}, 0.0
    tot = _Totals()
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
        tot.add(dt_ours, dt_theirs, row, n)
        print(f"{name}: n={n} max|dLL|={row['max_abs_ll_diff']:.2e} acc {row['ours']['acc']:.4f}/"
              f"{row['lm_eval']['acc']:.4f}  {dt_ours:.1f}s vs {dt_theirs:.1f}s", file=sys.stderr)
    summary = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()}-core CPU, torch {torch.__version__}, "
                                                     f"{args.threads} thread(s)",
        "checkpoint": str(ckpt), "n_params": sum(p.numel() for p in ours_model.parameters()),
        "limit": args.limit, "batch_size": args.batch_size, "examples": tot.n,
        "max_abs_ll_diff": max_diff_all, "ll_within_1e-4": max_diff_all <= 1e-4,
        "max_rel_ll_diff": max(r["max_rel_ll_diff"] for r in per_task.values()),
        "all_acc_identical": all(r["acc_identical"] for r in per_task.values()),
        "all_acc_norm_identical": all(r.get("acc_norm_identical", True) for r in per_task.values()),
        **tot.speed(),
        "tasks": per_task,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "result.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
