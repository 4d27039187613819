"""lm-evaluation-harness task YAMLs: the shipped ten give the numbers of the former datamates specs.

`data/old_spec_reference.json` was written by the former renderer (the `{field}` mini-language,
removed in issue 16) on the bundle's eval files: per task, a digest of every rendered example
(line, contexts, continuations, acc_norm lengths, gold) plus 2-shot prefixes of the first ten, the
requests of the first six examples, and their per-example log-likelihoods on the session's tiny
checkpoint (0-shot, first six; 2-shot, first three).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from datamates.evaluate import (
    TASKS_DIR,
    available_tasks,
    encode_pairs,
    evaluate_task,
    load_docs,
    load_spec,
    score_groups,
)
from datamates.evaluate.spec import fewshot_prefixes

REF = json.loads((Path(__file__).parent / "data" / "old_spec_reference.json").read_text())


def _digest(docs, prefixes) -> str:
    h = hashlib.sha256()
    for d in docs:
        h.update(json.dumps([d.line, d.contexts, d.continuations, d.norm_len, d.gold]).encode())
    h.update(json.dumps(prefixes).encode())
    return h.hexdigest()


def test_the_reference_covers_every_shipped_task():
    assert sorted(REF) == available_tasks()


@pytest.mark.parametrize("name", sorted(REF))
def test_harness_yaml_renders_what_the_former_spec_rendered(data, name):
    """Every example of the bundle file, byte for byte; and the few-shot prefixes, except LAMBADA's:
    lm-eval writes a loglikelihood shot as text + target_delimiter + target, and LAMBADA's target
    carries its own space, so a shot reads "... word" with two spaces (the former spec wrote one)."""
    spec = load_spec(TASKS_DIR / f"{name}.yaml")
    docs = load_docs(spec)
    assert len(docs) == REF[name]["n"] and (spec.metric == REF[name]["metric"] or not spec.is_mc)
    pre = fewshot_prefixes(spec, docs, 10, 2, 1234)
    if name == "lambada_openai":  # the former shots: context + continuation, the same picks
        d = docs[0]
        assert d.shot == d.contexts[0] + " " + d.continuations[0] + "\n\n" and d.continuations[0].startswith(" ")
        picks = [np.random.default_rng([1234, i]).choice(len(docs) - 1, size=2, replace=False) for i in range(10)]
        pre = ["".join(docs[j].contexts[0] + docs[j].continuations[0] + "\n\n" for j in p + (p >= i))
               for i, p in enumerate(picks)]
    if name == "winogrande":  # acc_norm now divides by each choice's (context's) length, as lm-eval (issue 26);
        # the former spec divided by the shared continuation's: everything else is byte for byte the same
        assert all(d.norm_len == [len(c) for c in d.contexts] for d in docs)
        for d in docs:
            d.norm_len = [len(c) for c in d.continuations]
    assert _digest(docs, pre) == REF[name]["docs_sha256"]


@pytest.mark.parametrize("name", sorted(REF))
def test_harness_yaml_gives_the_former_log_likelihoods(tiny_model, tiny_tok, data, name):
    """Per-example log-likelihoods through the harness YAML = those of the former spec: the stored
    numbers (rtol 1e-4: the tiny checkpoint is retrained per session) and, exactly, the scores of the
    former spec's stored requests with the same model."""
    spec = load_spec(TASKS_DIR / f"{name}.yaml")
    key = "lls" if spec.is_mc else "ll"
    new = [s[key] for s in evaluate_task(tiny_model, tiny_tok, spec, limit=6, num_fewshot=0)["samples"]]
    np.testing.assert_allclose(np.array(new, dtype=np.float64), np.array(REF[name]["zero_shot"]), rtol=1e-4)
    cfg = tiny_model.config
    reqs = encode_pairs(tiny_tok, [tuple(p) for ex in REF[name]["pairs"] for p in ex], cfg.bos_token_id
                        if cfg.bos_token_id is not None else cfg.eos_token_id)
    spans, a = [], 0
    for ex in REF[name]["pairs"]:
        spans.append((a, a + len(ex)))
        a += len(ex)
    old = score_groups(tiny_model, [reqs[i:j] for i, j in spans], batch_size=32, max_tokens=16384,
                       greedy=not spec.is_mc)
    assert [s.ll.tolist() if spec.is_mc else float(s.ll[0]) for s in old] == new
    if name != "lambada_openai":
        two = [s[key] for s in evaluate_task(tiny_model, tiny_tok, spec, limit=3, num_fewshot=2)["samples"]]
        np.testing.assert_allclose(np.array(two, dtype=np.float64), np.array(REF[name]["two_shot"]), rtol=1e-4)


def _parity_module():
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "eval_parity.py"
    spec = importlib.util.spec_from_file_location("eval_parity", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_task_files_lm_eval_itself_ran_give_the_shipped_requests(data, tmp_path):
    """benchmarks/eval_parity.py writes lm-eval task YAMLs (lm-eval's own prompts, adapted to the
    bundle's fields) and runs them in lm-evaluation-harness; datamates reads those same files and
    builds the requests of the shipped task file (first 400 examples of every task)."""
    mod = _parity_module()
    mod.write_lm_eval_tasks(tmp_path, data)
    for name in mod.LM_EVAL_TASKS:
        theirs = load_docs(load_spec(tmp_path / f"dmparity_{name}.yaml"), limit=400)  # all: the digests above
        ours = load_docs(load_spec(TASKS_DIR / f"{name}.yaml"), limit=400)
        assert [(d.contexts, d.continuations, d.norm_len, d.gold, d.shot) for d in theirs] == \
               [(d.contexts, d.continuations, d.norm_len, d.gold, d.shot) for d in ours], name


def test_include_and_lm_eval_bookkeeping_keys(data, tmp_path):
    """lm-eval's `include` (a base file whose keys this one extends) and its documentation keys
    (tag, metadata, should_decontaminate, doc_to_decontamination_query) are accepted."""
    import yaml

    base = yaml.safe_load((TASKS_DIR / "arc_easy.yaml").read_text())
    (tmp_path / "_arc_base.yaml").write_text(yaml.safe_dump({**base, "tag": ["ai2_arc"], "should_decontaminate": True,
                                                             "doc_to_decontamination_query": "{{query}}"}))
    (tmp_path / "arc_challenge.yaml").write_text(
        "include: _arc_base.yaml\ntask: arc_challenge\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}/eval/arc_challenge.jsonl\n")
    got = load_docs(load_spec(tmp_path / "arc_challenge.yaml"))
    want = load_docs(load_spec(TASKS_DIR / "arc_challenge.yaml"))
    assert [(d.contexts, d.continuations, d.gold) for d in got] == [(d.contexts, d.continuations, d.gold) for d in want]
