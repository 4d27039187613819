"""The evaluation stage: reference sets, zero-shot tasks, held-out perplexity -> eval.json + eval.md.

Multiple-choice tasks follow lm-evaluation-harness (`output_type: multiple_choice`, lm_eval/api/task.py):

    LL_k     = sum of the log-probabilities of choice k's continuation tokens
    acc      = [argmax_k LL_k == gold]
    acc_norm = [argmax_k LL_k / len(choice_k in characters) == gold]   (multiple inputs: the choices
                                                             are the contexts, as lm-eval)
    acc_bytes, exact_match, brier_score, f1, mcc: lm-eval's, when metric_list names them (_mc_metrics)
    stderr   = sample std (n - 1) / sqrt(n)          (lm-eval's `mean_stderr`)

Continuous metrics (DataDecide, Magnusson et al. 2025, §3: at small scale the probability the
model gives the correct answer ranks models far better than accuracy, which sits at chance):

    gold_logprob = LL_gold / bytes(continuation_gold)      nats per UTF-8 byte of the gold
                                                            continuation (delimiter included)
    gold_prob    = exp(LL_gold) / sum_k exp(LL_k)           probability mass on the gold choice
                                                            among the choices

Per byte, not per token: the figure does not depend on the tokenizer (bits-per-byte style, as the
held-out pools), so runs with different tokenizers stay comparable; it is higher-is-better (a
log-probability, <= 0). gold_prob uses the summed (unnormalised) likelihoods, as the mass the
model puts on each whole choice: for a small model a short choice takes most of it (tiny test
model, 4 ARC-Easy examples: mean 0.003 where chance is 0.25), so it is a paired, not an absolute,
figure; gold_logprob is the length-normalised one. Both are means over examples with the sample
stderr, as acc.

argmax takes the first maximum (numpy), as lm-eval does. Reference sets (`output_type:
loglikelihood`, LAMBADA): `loss` = summed target NLL / target tokens (MATES's reference loss, §3),
`acc` = every target token is the greedy argmax (lm-eval's lambada acc), `ppl` = exp(mean per-example
NLL) (lm-eval's lambada perplexity). Held-out pools: `loss` = NLL / predicted tokens, `ppl` = exp(loss),
`bpb` = NLL / ln 2 / bytes, with a sequence's bytes (Pool.seq_bytes) scaled by (T - 1) / T because its
first token is not predicted.

The nine-task mean (MATES Table 1) averages one metric per task: the spec's `metric` (acc_norm where
lm-eval reports it, i.e. SciQ, ARC-E, ARC-C, LogiQA, OBQA, HellaSwag, PIQA; acc for BoolQ and
WinoGrande, which lm-eval scores by acc only); its stderr is sqrt(sum stderr_i^2) / 9 (independent tasks).
`nine_task_gold_logprob` and `nine_task_gold_prob` average the continuous metrics the same way.

Counted tokens (for accounting.py): every task records `n_input_tokens`, the tokens its packs fed
through the model; every held-out pool `n_input_tokens` = sequences x seq_len; eval.json's
`n_input_tokens` is their sum (one LM forward each).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datamates.artifacts import Output, finished, produce
from datamates.config.base import config_hash, to_dict
from datamates.config.evaluate import EvalConfig
from datamates.core.checkpoint import check_checkpoint, load_model, trainer_state
from datamates.core.lm import flops_per_token, n_params, resolve_device
from datamates.core.loss import perplexity_and_bpb, sequence_nll
from datamates.core.pool import Pool
from datamates.core.tokenizer import load_tokenizer
from datamates.errors import ConfigError, IncompatibleArtifacts, InputError
from datamates.evaluate.scoring import encode_pairs, score_groups
from datamates.evaluate.spec import (
    NO_GOLD,
    TASK_GROUPS,
    Doc,
    TaskSpec,
    count_examples,
    fewshot_prefixes,
    load_docs,
    load_spec,
    resolve_tasks,
)
from datamates.log import get_logger, progress_bar
from datamates.run_dir import (
    atomic_write_json,
    atomic_write_text,
    meta_record,
    read_json,
)

log = get_logger(__name__)
SCHEMA = 2  # 2: continuous metrics and counted tokens (an older eval.json is re-evaluated)
NINE = TASK_GROUPS["nine"]


def _stderr(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")


# ----------------------------------------------------------------------------- one task

def evaluate_task(
    model: torch.nn.Module,
    tokenizer,
    spec: TaskSpec | str | Path,
    *,
    limit: int | None = None,
    num_fewshot: int | None = None,
    fewshot_seed: int = 1234,
    batch_size: int = 32,
    max_tokens: int = 16384,
    precision: str = "auto",
    share_context: bool = True,
    docs: list[Doc] | None = None,
    allow_task_code: bool = False,
    allow_any_path: bool = False,
) -> dict[str, Any]:
    """Score one task. Returns its metrics plus `samples` (per example: line, gold, lls, ...).
    `allow_task_code`: a task file given as a path may run its `!function` code (docs/evaluation.md)."""
    if not isinstance(spec, TaskSpec):
        spec = load_spec(spec, allow_task_code=allow_task_code, allow_any_path=allow_any_path)
    t0 = time.perf_counter()
    num_fewshot = spec.num_fewshot if num_fewshot is None else num_fewshot  # the task file's, unless set
    own_shots = num_fewshot and spec.fewshot_data is None
    if docs is None:  # all examples when shots are drawn from them, else only those evaluated
        docs = load_docs(spec, limit=limit if not own_shots else None)
    n = min(limit, len(docs)) if limit else len(docs)
    n_total = len(docs) if n < len(docs) or not limit else count_examples(spec)
    shots = load_docs(spec, fewshot=True) if num_fewshot and spec.fewshot_data is not None else None
    prefixes = fewshot_prefixes(spec, docs, n, num_fewshot, fewshot_seed, shots)
    pairs, spans = [], []
    for d, pre in zip(docs[:n], prefixes):
        spans.append((len(pairs), len(pairs) + len(d.contexts)))
        pairs += [(pre + c, t) for c, t in zip(d.contexts, d.continuations)]
    cfg = model.config
    prefix_id = cfg.bos_token_id if cfg.bos_token_id is not None else cfg.eos_token_id
    reqs = encode_pairs(tokenizer, pairs, prefix_id)
    scores = score_groups(model, [reqs[a:b] for a, b in spans], batch_size=batch_size, max_tokens=max_tokens,
                          precision=precision, share_context=share_context,
                          greedy=not spec.is_mc or "exact_match" in spec.metrics,
                          desc=spec.name)
    res: dict[str, Any] = {"task": spec.name, "output_type": spec.output_type, "split": spec.split,
                           "n": n, "n_total": n_total, "num_fewshot": num_fewshot,
                           "harness_task": spec.harness_task, "spec": str(spec.path)}
    samples = []
    if spec.is_mc:
        res.update(_mc_metrics(spec, docs[:n], scores, samples))
    else:
        nll = np.array([-s.ll[0] for s in scores])
        ntok = np.array([s.n_tokens[0] for s in scores])
        hit = np.array([float(s.greedy[0]) for s in scores])
        for d, s in zip(docs[:n], scores):
            samples.append({"line": d.line, "ll": float(s.ll[0]), "n_tokens": int(s.n_tokens[0]),
                            "greedy": bool(s.greedy[0])})
        res.update(loss=float(nll.sum() / ntok.sum()), acc=float(hit.mean()), acc_stderr=_stderr(hit),
                   ppl=float(math.exp(nll.mean())), n_tokens=int(ntok.sum()))
        items = {"perplexity": (-nll).tolist(), "acc": [int(h) for h in hit]}  # lm-eval's items
        for metric, fn in spec.aggregations.items():  # a task's own aggregation (!function)
            try:
                res[metric] = float(fn(items[metric]))
            except Exception as e:  # the task's own code failed
                raise InputError(f"{spec.where.get('metric_list', spec.path)}: key 'metric_list': the aggregation "
                                 f"of {metric} raised {type(e).__name__}: {e}") from None
    res["n_input_tokens"] = int(sum(s.n_input_tokens for s in scores))  # counted FLOPs (accounting.py)
    res["seconds"] = round(time.perf_counter() - t0, 3)
    res["samples"] = samples
    return res


def _mc_metrics(spec: TaskSpec, docs: list[Doc], scores: list, samples: list[dict]) -> dict[str, Any]:
    """lm-eval's multiple-choice metrics (lm_eval/api/task.py `process_results`, module docstring),
    per example into `samples` and aggregated; a gold outside the choices (NO_GOLD) scores 0."""
    n = len(docs)
    acc, acc_norm, acc_bytes = np.zeros(n), np.zeros(n), np.zeros(n)
    gold_lp, gold_p = np.full(n, np.nan), np.full(n, np.nan)
    brier, exact = np.zeros(n), np.zeros(n)
    golds, preds, probs = [], [], []
    for i, (d, s) in enumerate(zip(docs, scores)):
        ll = np.asarray(s.ll, np.float64)
        pred = int(np.argmax(ll))
        acc[i] = float(pred == d.gold)
        acc_norm[i] = float(np.argmax(ll / np.asarray(d.norm_len, np.float64)) == d.gold)
        acc_bytes[i] = float(np.argmax(ll / np.asarray(d.norm_bytes, np.float64)) == d.gold)
        prob = np.exp(ll - ll.max())
        prob /= prob.sum()
        onehot = np.zeros(len(ll))
        if d.gold != NO_GOLD:
            onehot[d.gold] = 1.0
            gold_lp[i], gold_p[i] = gold_continuous(ll, d.continuations, d.gold)
            exact[i] = float(bool(s.greedy[d.gold]))
        brier[i] = float(np.sum((prob - onehot) ** 2))
        probs.append(prob)
        golds.append(d.gold)
        preds.append(pred)
        sample = {"line": d.line, "gold": d.gold, "lls": s.ll.tolist(), "acc": acc[i], "acc_norm": acc_norm[i],
                  "acc_bytes": acc_bytes[i], "gold_logprob": gold_lp[i], "gold_prob": gold_p[i]}
        if "exact_match" in spec.metrics:
            sample["exact_match"] = exact[i]
        samples.append(sample)
    ok = ~np.isnan(gold_lp)
    out: dict[str, Any] = {
        "acc": float(acc.mean()), "acc_stderr": _stderr(acc), "acc_norm": float(acc_norm.mean()),
        "acc_norm_stderr": _stderr(acc_norm), "acc_bytes": float(acc_bytes.mean()),
        "acc_bytes_stderr": _stderr(acc_bytes),
        "gold_logprob": float(gold_lp[ok].mean()), "gold_logprob_stderr": _stderr(gold_lp[ok]),
        "gold_prob": float(gold_p[ok].mean()), "gold_prob_stderr": _stderr(gold_p[ok]),
        "metric": spec.metric, "metrics": list(spec.metrics), "n_gold_outside_choices": int((~ok).sum())}
    if "exact_match" in spec.metrics:
        out.update(exact_match=float(exact.mean()), exact_match_stderr=_stderr(exact))
    if "brier_score" in spec.metrics:
        out.update(brier_score=float(brier.mean()), brier_score_stderr=_stderr(brier))
    if "f1" in spec.metrics:
        out["f1"] = f1_binary(golds, preds)
    if "mcc" in spec.metrics:
        out["mcc"] = matthews(golds, preds)
    # a task's own aggregation (!function, allow_task_code) over lm-eval's per-example items
    items = {"acc": acc.tolist(), "acc_norm": acc_norm.tolist(), "acc_bytes": acc_bytes.tolist(),
             "exact_match": [int(x) for x in exact], "f1": list(zip(golds, preds)), "mcc": list(zip(golds, preds)),
             "brier_score": [(g, p) for g, p in zip(golds, probs)]}
    for metric, fn in spec.aggregations.items():
        try:
            out[metric] = float(fn(items[metric]))
        except Exception as e:  # the task's own code failed
            raise InputError(f"{spec.where.get('metric_list', spec.path)}: key 'metric_list': the aggregation of "
                             f"{metric} raised {type(e).__name__}: {e}") from None
        out[f"{metric}_stderr"] = float("nan")  # lm-eval bootstraps it; not here
    return out


def f1_binary(golds: Sequence[int], preds: Sequence[int]) -> float:
    """lm-eval's f1 aggregation: sklearn's f1_score(golds, preds) (binary, positive label 1; 0 when
    undefined)."""
    g, p = np.asarray(golds), np.asarray(preds)
    tp, fp, fn = int(((p == 1) & (g == 1)).sum()), int(((p == 1) & (g != 1)).sum()), int(((p != 1) & (g == 1)).sum())
    return float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else 0.0


def matthews(golds: Sequence[int], preds: Sequence[int]) -> float:
    """lm-eval's mcc aggregation: sklearn's matthews_corrcoef (the multiclass form; 0 when undefined)."""
    labels = sorted(set(golds) | set(preds))
    idx = {v: i for i, v in enumerate(labels)}
    c = np.zeros((len(labels), len(labels)))
    for g, p in zip(golds, preds):
        c[idx[g], idx[p]] += 1
    t, pk, s, correct = c.sum(axis=1), c.sum(axis=0), c.sum(), np.trace(c)
    den = math.sqrt((s * s - pk @ pk) * (s * s - t @ t))
    return float((correct * s - t @ pk) / den) if den else 0.0


def gold_continuous(lls: np.ndarray, continuations: Sequence[str], gold: int) -> tuple[float, float]:
    """(gold_logprob, gold_prob) of one multiple-choice example (module docstring):
    LL_gold / UTF-8 bytes of the gold continuation, and exp(LL_gold) / sum_k exp(LL_k)."""
    lls = np.asarray(lls, np.float64)
    nbytes = max(1, len(continuations[gold].encode("utf-8")))
    mass = math.exp(lls[gold] - (lls.max() + math.log(np.exp(lls - lls.max()).sum())))
    return float(lls[gold] / nbytes), float(mass)


# ----------------------------------------------------------------------------- held-out pools

def evaluate_pool(
    model: torch.nn.Module,
    pool,
    ids: Sequence[int] | np.ndarray | None = None,
    *,
    batch_size: int = 16,
    precision: str = "auto",
    name: str = "",
    per_sequence: bool = False,
) -> dict[str, Any]:
    """Perplexity and bits per byte of a pool's sequences (all, or `ids`), overall and per domain;
    `per_sequence`: also `seq_nll`, each sequence's summed next-token NLL in the order of `ids`
    (the ablation study's standard errors and early stop read it)."""
    pool = pool if isinstance(pool, Pool) else Pool(pool)
    ids = np.arange(len(pool)) if ids is None else np.asarray(ids, dtype=np.int64).reshape(-1)
    if len(ids) == 0:
        raise InputError(f"{pool.path}: no sequence ids to evaluate")
    vocab = model.get_input_embeddings().weight.shape[0]
    if pool.vocab_size > vocab:
        raise IncompatibleArtifacts(f"{pool.path}: the pool's tokenizer has {pool.vocab_size} tokens, the model "
                                    f"only {vocab} embeddings; evaluate on a pool built with the model's tokenizer")
    T = pool.seq_len
    nll = np.zeros(len(ids))
    chunk = max(batch_size * 8, 1)
    bar = progress_bar(f"perplexity {name or pool.path.name}", total=len(ids), unit="seq")
    for a in range(0, len(ids), chunk):
        part = ids[a : a + chunk]
        nll[a : a + len(part)] = sequence_nll(model, pool.tokens(part), batch_size=batch_size, precision=precision)
        bar.update(len(part))
    bar.close()
    nbytes = np.asarray(pool.seq_bytes, dtype=np.float64)[ids] * (T - 1) / T
    dom = np.asarray(pool.seq_domain)[ids]

    def agg(m: np.ndarray) -> dict[str, Any]:
        ntok = int(m.sum()) * (T - 1)
        ppl, bpb = perplexity_and_bpb(float(nll[m].sum()), ntok, float(nbytes[m].sum()))
        return {"loss": float(nll[m].sum() / ntok), "ppl": ppl, "bpb": bpb, "n_sequences": int(m.sum()),
                "n_tokens": ntok, "n_bytes": float(nbytes[m].sum())}

    out = {"pool": str(pool.path), "pool_id": pool.pool_id, "all": agg(np.ones(len(ids), bool)), "domains": {},
           "n_input_tokens": int(len(ids)) * T}
    for d, dname in enumerate(pool.domains):
        m = dom == d
        if m.any():
            out["domains"][dname] = agg(m)
    if per_sequence:
        out["seq_nll"] = nll.tolist()
    return out


# ----------------------------------------------------------------------------- the stage

def _checkpoint_identity(path: Path) -> dict[str, Any]:
    st = (path / "model.safetensors").stat()
    ts = trainer_state(path)
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "global_step": ts.get("global_step"), "tokenizer_hash": ts.get("tokenizer_hash")}


def _pool_name(path: Path, taken: set[str]) -> str:
    name = f"{path.parent.name}/{path.name}" if path.name == "pool" and path.parent.name else path.name
    base, k = name, 2
    while name in taken:
        name, k = f"{base}#{k}", k + 1
    return name


def _normalise_pools(cfg: EvalConfig, heldout_pools: Any) -> dict[str, tuple[Any, np.ndarray | None]]:
    """cfg.heldout_pools (paths) plus the `heldout_pools` argument: a mapping name -> pool | path |
    (pool | path, ids), or a list of pools / paths / (pool | path, ids)."""
    items: list[tuple[str | None, Any, Any]] = [(None, p, None) for p in cfg.heldout_pools]
    if isinstance(heldout_pools, Mapping):
        for k, v in heldout_pools.items():
            items.append((k, *(v if isinstance(v, tuple) else (v, None))))
    elif heldout_pools is not None:
        for v in heldout_pools:
            items.append((None, *(v if isinstance(v, tuple) else (v, None))))
    out: dict[str, tuple[Any, np.ndarray | None]] = {}
    for name, pool, ids in items:
        path = Path(getattr(pool, "path", pool))
        name = name or _pool_name(path, set(out))
        ids = None if ids is None else np.asarray(ids, dtype=np.int64)
        if ids is None and cfg.heldout_max_sequences:
            pool = pool if isinstance(pool, Pool) else Pool(pool)
            if len(pool) > cfg.heldout_max_sequences:
                rng = np.random.default_rng(cfg.heldout_seed)
                ids = np.sort(rng.permutation(len(pool))[: cfg.heldout_max_sequences])
        out[name] = (pool, ids)
    return out


def _mean(tasks: dict[str, dict], names: list[str], average_metric: str) -> dict[str, Any] | None:
    names = [n for n in names if n in tasks]
    if not names:
        return None
    metrics = {n: tasks[n]["metric"] if average_metric == "spec" else average_metric for n in names}
    vals = [tasks[n][metrics[n]] for n in names]
    ses = [tasks[n][f"{metrics[n]}_stderr"] for n in names]
    return {"value": float(np.mean(vals)), "stderr": float(math.sqrt(sum(s * s for s in ses)) / len(names)),
            "n_tasks": len(names), "metrics": metrics}


def _tasks(cfg: EvalConfig, examples: Mapping[str, Sequence[int]] | None
           ) -> tuple[list[TaskSpec], dict[str, list[Any]]]:
    """The task specs and their documents (only `examples` of a task when given), or a one-line
    error: checked before any model is loaded, so bad input fails in a second."""
    specs = [load_spec(p, allow_task_code=cfg.allow_task_code, allow_any_path=cfg.allow_any_task_path)
             for p in resolve_tasks(list(cfg.tasks) + list(cfg.reference))]
    names = [s.name for s in specs]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise InputError(f"two task specs are named '{sorted(dup)[0]}'; give one a different `task:` name")

    def shots_from_file(s: TaskSpec) -> bool:  # shots drawn from the evaluated file itself: load all of it
        return bool(s.num_fewshot if cfg.num_fewshot is None else cfg.num_fewshot) and s.fewshot_data is None

    for s in specs:  # a few-shot setting the task file cannot honour: before the model loads
        k = s.num_fewshot if cfg.num_fewshot is None else cfg.num_fewshot
        if k and s.fewshot_unsupported:
            raise ConfigError(f"{s.fewshot_unsupported[0]} cannot be honoured with num_fewshot = {k}; "
                              f"evaluate 0-shot or remove it")
    all_docs = {s.name: load_docs(s, limit=cfg.limit if not shots_from_file(s) else None) for s in specs}
    for name, pos in (examples or {}).items():  # only these examples (the plan's evaluation part)
        if name in all_docs:
            docs = load_docs(next(s for s in specs if s.name == name))
            all_docs[name] = [docs[int(i)] for i in pos]
    return specs, all_docs


def _task_result(model: Any, tokenizer: Any, spec: TaskSpec, cfg: EvalConfig, docs: list[Any], work: Path | None,
                 key: str) -> dict[str, Any]:
    """One task's result; with `work` (the evaluation's partial folder) a finished task of the same
    request is read back from `work/tasks/` and a new one is kept there (the resume)."""
    cache = work / "tasks" / f"{spec.name}.json" if work is not None else None
    res = None
    if cache is not None and cache.exists():
        stored = read_json(cache)
        if stored.get("key") == key:
            res = stored["result"]
            log.info("%s: reusing the result of an interrupted run", spec.name)
        else:  # left by a different request
            cache.unlink()
            (work / "samples" / f"{spec.name}.jsonl").unlink(missing_ok=True)
    if res is None:
        res = evaluate_task(model, tokenizer, spec, limit=cfg.limit, num_fewshot=cfg.num_fewshot,
                            fewshot_seed=cfg.fewshot_seed, batch_size=cfg.batch_size,
                            max_tokens=cfg.max_tokens, precision=cfg.precision,
                            share_context=cfg.share_context, docs=docs)
        if work is not None:
            if cfg.log_samples:
                _write_samples(work / "samples" / f"{spec.name}.jsonl", res["samples"])
            atomic_write_json(cache, {"key": key, "result": {k: v for k, v in res.items() if k != "samples"}})
    return res


def _check_pool_tokenizers(pools: dict[str, Any], tok_hash: str | None) -> None:
    """Refuse (one line) a held-out pool built with another tokenizer than the checkpoint's."""
    for pool, _ in pools.values():
        pool_hash = (pool if isinstance(pool, Pool) else Pool(pool)).tokenizer_hash
        if tok_hash and pool_hash != tok_hash:
            raise IncompatibleArtifacts(f"held-out pool {getattr(pool, 'path', pool)}: tokenizer {pool_hash} differs "
                                        f"from the checkpoint's {tok_hash}; build the pool with the model's tokenizer")


def _request_key(ident: dict[str, Any], settings: dict[str, Any], specs: list[TaskSpec],
                 examples: Mapping[str, Sequence[int]] | None, pools: dict[str, Any]) -> str:
    """The evaluation's identity: checkpoint, settings, each task's fingerprint, the examples, the pools."""
    request = {"schema": SCHEMA, "checkpoint": ident, "settings": settings,
               "tasks": {s.name: s.fingerprint() for s in specs},
               **({"examples": {k: config_hash([int(i) for i in v]) for k, v in examples.items()}} if examples else {}),
               "pools": {k: [str(getattr(p, "path", p)), None if i is None else config_hash(i.tolist())]
                         for k, (p, i) in pools.items()}}
    return config_hash(request)


def _add_means(result: dict[str, Any], metric: str) -> None:
    """task_mean over every task, and the nine-task means when all nine of the paper were evaluated."""
    if len([n for n in NINE if n in result["tasks"]]) == len(NINE):
        result["nine_task_mean"] = _mean(result["tasks"], NINE, metric)
        result["nine_task_gold_logprob"] = _mean(result["tasks"], NINE, "gold_logprob")
        result["nine_task_gold_prob"] = _mean(result["tasks"], NINE, "gold_prob")
    result["task_mean"] = _mean(result["tasks"], list(result["tasks"]), metric)


def evaluate(
    cfg: EvalConfig,
    checkpoint: str | Path | torch.nn.Module,
    out_dir: str | Path | None,
    *,
    heldout_pools: Any = None,
    tokenizer: Any = None,
    examples: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint (or an in-memory model with `tokenizer`) and write `eval.json` and
    `eval.md` atomically into `out_dir` (None: write nothing, just return the result).

    `heldout_pools` adds pools to cfg.heldout_pools: {name: pool_or_path | (pool_or_path, ids)} or a
    list of the same. `examples` restricts tasks to some of their examples: {task name: positions
    (0-based, in file order)}, e.g. the plan's evaluation part of a reference set (plan.py); cfg.limit
    then takes the first of those. A finished `out_dir` with the same request is returned as it is; a killed run
    resumes, reusing the tasks it had finished (kept in `<out_dir>.partial/tasks/`).
    """
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    specs, all_docs = _tasks(cfg, examples)  # every spec and data file is checked before the model loads
    names = [s.name for s in specs]
    if isinstance(checkpoint, torch.nn.Module):
        if tokenizer is None:
            raise InputError("evaluate(model, ...): pass tokenizer= with an in-memory model")
        ckpt, ident = None, {"path": None, "in_memory": True}
    else:
        ckpt = check_checkpoint(checkpoint)
        ident = _checkpoint_identity(ckpt)
    pools = _normalise_pools(cfg, heldout_pools)
    _check_pool_tokenizers(pools, ident.get("tokenizer_hash"))
    # the two permissions decide whether a task file loads, not its numbers (its code files' bytes
    # are in the task's fingerprint): a finished evaluation stays valid when they change
    settings = {k: v for k, v in to_dict(cfg).items()
                if k not in ("tasks", "reference", "heldout_pools", "device", "allow_task_code", "allow_any_task_path")}
    key = _request_key(ident, settings, specs, examples, pools)
    out_dir = Path(out_dir) if out_dir is not None else None
    output = None if out_dir is None else Output(out_dir, "eval", {"request": key}, inputs=(ckpt,) if ckpt else ())
    if output is not None and ckpt is not None and finished(output) and (out_dir / "eval.json").exists():
        log.info("evaluation already done: %s", out_dir)
        return read_json(out_dir / "eval.json")
    if ckpt is None:
        model = checkpoint.to(device)  # type: ignore[union-attr]
    else:
        model = load_model(ckpt, device=device)
        tokenizer = tokenizer or load_tokenizer(ckpt)
    if isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(tokenizer)
    torch_threads = torch.get_num_threads()
    log.info("evaluating %s on %s: %d task(s), %d held-out pool(s)", ident.get("path") or "model", device,
             len(specs), len(pools))

    def run(work: Path | None) -> dict[str, Any]:
        result: dict[str, Any] = {"schema": SCHEMA, "checkpoint": {**ident, "n_params": n_params(model)},
                                  "settings": {**settings, "device": str(device)}, "tasks": {}, "reference": {},
                                  "nine_task_mean": None, "task_mean": None, "perplexity": {}}
        n_examples = 0
        for spec in specs:
            res = _task_result(model, tokenizer, spec, cfg, all_docs[spec.name], work, key)
            res = {k: v for k, v in res.items() if k != "samples"}
            n_examples += res["n"]
            (result["tasks"] if spec.is_mc else result["reference"])[spec.name] = res
            log.info("%s", _one_line(res))
        _add_means(result, cfg.average_metric)
        for name, (pool, ids) in pools.items():
            result["perplexity"][name] = evaluate_pool(model, pool, ids, batch_size=max(1, cfg.batch_size // 2),
                                                       precision=cfg.precision, name=name)
        result["n_input_tokens"] = int(sum(r["n_input_tokens"] for part in ("tasks", "reference")
                                           for r in result[part].values())
                                       + sum(p["n_input_tokens"] for p in result["perplexity"].values()))
        result["flops_per_token"] = {"lm_forward": flops_per_token(model, model.config.max_position_embeddings) / 3}
        secs = time.perf_counter() - t0
        result["timing"] = {"seconds": round(secs, 3), "examples": n_examples,
                            "examples_per_second": round(n_examples / secs, 3) if secs > 0 else None,
                            "torch_threads": torch_threads}
        return result

    if out_dir is None:
        return run(None)
    meta = meta_record("evaluate", request_hash=key, checkpoint=ident.get("path"), tasks=names,
                       pools=list(pools), config=to_dict(cfg))
    made: dict[str, Any] = {}

    def build(work: Path) -> dict[str, Any]:
        result = made["result"] = run(work)
        meta.update(tokens={"lm_forward": result["n_input_tokens"]}, flops_per_token=result["flops_per_token"])
        atomic_write_json(work / "eval.json", result)
        atomic_write_text(work / "eval.md", markdown(result))
        return meta

    produce(output, build, resume=True)
    return made.get("result") or read_json(out_dir / "eval.json")


def _write_samples(path: Path, samples: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(s) + "\n" for s in samples))


def _one_line(r: dict[str, Any]) -> str:
    if r["output_type"] == "multiple_choice":
        return (f"{r['task']}: acc {r['acc']:.4f} ± {r['acc_stderr']:.4f}, acc_norm {r['acc_norm']:.4f} ± "
                f"{r['acc_norm_stderr']:.4f} (n={r['n']}, {r['seconds']:.1f}s)")
    return f"{r['task']}: loss {r['loss']:.4f}, acc {r['acc']:.4f}, ppl {r['ppl']:.2f} (n={r['n']}, {r['seconds']:.1f}s)"


# ----------------------------------------------------------------------------- the table

def _pm(v: float, se: float) -> str:
    return f"{v:.4f} ± {se:.4f}" if not math.isnan(se) else f"{v:.4f}"


def markdown(result: dict[str, Any]) -> str:
    """eval.md: the tables a person reads (also printed by `datamates evaluate`)."""
    ck = result["checkpoint"]
    lines = [f"# Evaluation of {ck.get('path') or 'an in-memory model'}", ""]
    step = ck.get("global_step")
    lines.append(f"step {step if step is not None else '?'}, {ck.get('n_params', 0):,} parameters, "
                 f"device {result['settings'].get('device')}, precision {result['settings'].get('precision')}")
    lines.append("")
    tasks = result["tasks"]
    if tasks:
        shots = {t["num_fewshot"] for t in tasks.values()}
        lines += [f"## Multiple-choice tasks ({', '.join(map(str, sorted(shots)))}-shot)", "",
                  "| task | split | n | acc | acc_norm | gold logprob / byte | gold prob | in mean |",
                  "|---|---|---:|---|---|---|---|---|"]
        mean = result.get("nine_task_mean") or result.get("task_mean") or {"metrics": {}}
        for name, t in tasks.items():
            n = f"{t['n']}" + (f"/{t['n_total']}" if t["n"] != t["n_total"] else "")
            cont = " | ".join(_pm(t[k], t[f"{k}_stderr"]) if k in t else "-" for k in ("gold_logprob", "gold_prob"))
            lines.append(f"| {name} | {t['split']} | {n} | {_pm(t['acc'], t['acc_stderr'])} | "
                         f"{_pm(t['acc_norm'], t['acc_norm_stderr'])} | {cont} | {mean['metrics'].get(name, '')} |")
        for label, key in (("nine-task mean", "nine_task_mean"), ("mean of these tasks", "task_mean")):
            m = result.get(key)
            if m and not (key == "task_mean" and result.get("nine_task_mean") and m["n_tasks"] == 9):
                cont = ["", ""]
                if key == "nine_task_mean":
                    cont = [_pm(c["value"], c["stderr"]) if c else "" for c in
                            (result.get("nine_task_gold_logprob"), result.get("nine_task_gold_prob"))]
                lines.append(f"| **{label}** | | {m['n_tasks']} tasks | | | {cont[0]} | {cont[1]} | "
                             f"**{_pm(m['value'], m['stderr'])}** |")
        lines.append("")
        lines.append("acc: argmax of the summed continuation log-likelihood; acc_norm: the same divided by the "
                     "choice's length in characters (lm-evaluation-harness); gold logprob / byte: the gold "
                     "continuation's log-likelihood per UTF-8 byte (nats); gold prob: exp(LL_gold) / sum_k "
                     "exp(LL_k) (DataDecide, Magnusson et al. 2025). `in mean` is the metric each task "
                     "contributes to the mean; ± is the standard error.")
        lines.append("")
    if result["reference"]:
        lines += ["## Reference sets", "", "| set | split | n | loss (nats/token) | acc | ppl |",
                  "|---|---|---:|---|---|---|"]
        for name, r in result["reference"].items():
            lines.append(f"| {name} | {r['split']} | {r['n']} | {r['loss']:.4f} | {_pm(r['acc'], r['acc_stderr'])} "
                         f"| {r['ppl']:.2f} |")
        lines += ["", "loss: mean NLL per target token; acc: the whole target is the greedy continuation; "
                  "ppl: exp(mean per-example NLL) (lm-evaluation-harness).", ""]
    if result["perplexity"]:
        lines += ["## Held-out perplexity", "", "| pool | domain | sequences | tokens | loss | ppl | bits/byte |",
                  "|---|---|---:|---:|---|---|---|"]
        for name, p in result["perplexity"].items():
            for dom, r in [("all", p["all"]), *p["domains"].items()]:
                lines.append(f"| {name} | {dom} | {r['n_sequences']:,} | {r['n_tokens']:,} | {r['loss']:.4f} | "
                             f"{r['ppl']:.2f} | {r['bpb']:.4f} |")
        lines.append("")
    tm = result.get("timing")
    if tm:
        lines.append(f"{tm['examples']:,} examples in {tm['seconds']:.1f}s "
                     f"({tm['examples_per_second']:.1f} examples/s)")
    return "\n".join(lines) + "\n"


