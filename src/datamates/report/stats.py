"""Paired statistics: runs that differ only in seed are grouped, and every selector is paired with
`random` of the same seed run (the mean paired difference, its 95% t and bootstrap intervals, the
t-test p-value, seeds won and a verdict).

The t interval is `ablation.stats.mean_ci`, the one t interval of datamates (also the ablation
study's interval over seed models); the bootstrap here resamples seeds of a mean (vectorised, seeded
`default_rng(seed)`), which `ablation.stats.bootstrap_ci` (a statistic of resampled, stratified
indices) is not built for.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from datamates.ablation.stats import mean_ci
from datamates.report.gather import BASELINE, selector_names

#
# Runs that differ only in seed form a group; inside one run every selector shares the plan and the
# warmup with `random`, so each run gives one paired difference d_i = metric(selector) - metric(random)
# per metric. Over the n runs of a group:
#
#     mean +- t_{0.975, n-1} * sd(d) / sqrt(n)            Student t interval (the verdict)
#     [q_2.5, q_97.5] of the mean of n seeds drawn with replacement, 10,000 times (percentile
#     bootstrap; shown beside the t interval, it under-covers with few seeds)
#     wins = seeds where the selector is on the better side of random
#
# The verdict: "better than random at 95%" when the whole t interval lies on the better side of 0,
# "worse than random at 95%" on the other side, otherwise "not distinguishable". t quantiles come
# from scipy (a dependency of datamates).

SEED_KEYS = ("name", "runs_root", "config_hash")


BOOTSTRAP_SAMPLES = 10_000


def _strip_seeds(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_seeds(v) for k, v in sorted(node.items()) if "seed" not in k.lower() and k not in SEED_KEYS}
    if isinstance(node, list):
        return [_strip_seeds(v) for v in node]
    return node


def group_runs(runs: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Runs whose configs are equal once every `*seed*` key (and name, runs_root, config_hash) and
    `mates.selectors` are removed, in input order (a selector is paired over the seeds that ran it)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        cfg = _strip_seeds(r.get("config") or {})
        if isinstance(cfg.get("mates"), dict):  # which branches ran is not a setting: a selector added to
            cfg["mates"] = {k: v for k, v in cfg["mates"].items() if k != "selectors"}  # some seeds pairs on those
        key = json.dumps(cfg, sort_keys=True, default=str)
        groups.setdefault(key, []).append(r)
    return list(groups.values())


def paired_stats(diffs: list[float] | np.ndarray, *, lower_is_better: bool, seed: int = 0,
                 n_boot: int = BOOTSTRAP_SAMPLES) -> dict[str, Any]:
    """Mean paired difference (selector - baseline) with its 95% t and bootstrap intervals, the
    t-test p-value, the seeds won and the verdict (see above)."""
    from scipy import stats

    d = np.asarray([x for x in diffs if x is not None and np.isfinite(x)], dtype=np.float64)
    n = len(d)
    out: dict[str, Any] = {"n": n, "mean": float(d.mean()) if n else float("nan"),
                           "sd": float(d.std(ddof=1)) if n > 1 else float("nan"),
                           "t_ci": (float("nan"), float("nan")), "boot_ci": (float("nan"), float("nan")),
                           "p": float("nan"), "wins": int(((d < 0) if lower_is_better else (d > 0)).sum()),
                           "lower_is_better": lower_is_better}
    if n < 2:
        out["verdict"] = f"not distinguishable ({n} seed{'s' if n != 1 else ''})"
        return out
    se = out["sd"] / math.sqrt(n)
    out["t_ci"] = mean_ci(d)["ci"]
    if se > 0:
        out["p"] = float(2 * stats.t.sf(abs(out["mean"]) / se, n - 1))
    else:
        out["p"] = 0.0 if out["mean"] != 0 else 1.0
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    out["boot_ci"] = (float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975)))
    lo, hi = out["t_ci"]
    better = hi < 0 if lower_is_better else lo > 0
    worse = lo > 0 if lower_is_better else hi < 0
    out["verdict"] = ("better than random at 95%" if better else "worse than random at 95%" if worse
                      else "not distinguishable")
    return out


def run_metrics(sel: dict[str, Any]) -> dict[str, tuple[float | None, bool]]:
    """metric name -> (value, lower_is_better) of one selector of one run."""
    out: dict[str, tuple[float | None, bool]] = {}
    f = sel.get("final_eval") or {}
    for ref, r in sorted(f.get("reference", {}).items()):
        out[f"{ref} loss"] = (r.get("loss"), True)
    h = f.get("perplexity", {}).get("heldout")
    if h:
        out["held-out ppl (all)"] = (h["all"]["ppl"], True)
        for d, v in h.get("domains", {}).items():
            out[f"held-out ppl ({d})"] = (v["ppl"], True)
    nine = "nine_task" if f.get("nine_task_mean") else None
    if nine:
        out["nine-task acc"] = (f["nine_task_mean"]["value"], False)
        for key, label in (("nine_task_gold_logprob", "nine-task gold logprob/byte"),
                           ("nine_task_gold_prob", "nine-task gold prob")):
            if f.get(key):
                out[label] = (f[key]["value"], False)
    elif f.get("task_mean"):
        out["task-mean acc"] = (f["task_mean"]["value"], False)
        tasks = [t for t in f.get("tasks", {}).values() if "gold_prob" in t]
        if tasks:
            out["task-mean gold logprob/byte"] = (float(np.mean([t["gold_logprob"] for t in tasks])), False)
            out["task-mean gold prob"] = (float(np.mean([t["gold_prob"] for t in tasks])), False)
    acc = sel.get("accounting") or {}
    if "flops" in acc:
        out["selection FLOPs"] = (acc["flops"]["selection"], True)
    if "seconds" in acc:
        out["selection seconds"] = (acc["seconds"].get("selection"), True)
    noise = sel.get("noise") or {}
    if isinstance(noise.get("kept"), (int, float)):
        out["junk share kept" if noise.get("domain") == "junk" else "noise share kept"] = (noise["kept"], True)
    for m in TARGET_METRICS:  # experiments/selection_arena/targets.py: <branch>/targets.json
        v = (sel.get("targets") or {}).get(m)
        if isinstance(v, (int, float)):
            out[m] = (float(v), True)
    return out


# the targets a selector cannot game by keeping junk (issue 30), when the run measured them (targets.json)
TARGET_METRICS = ("held-out clean loss", "LAMBADA eval ic", "LAMBADA eval nic")


def paired_table(group: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (metric, selector other than random) of a group of seed runs."""
    rows = []
    sels = [s for s in selector_names(group) if s != BASELINE]
    metrics: list[str] = []
    lower: dict[str, bool] = {}
    for r in group:
        for s in selector_names([r]):
            for m, (_, lb) in run_metrics(r["selectors"][s]).items():
                if m not in metrics:
                    metrics.append(m)
                    lower[m] = lb
    for m in metrics:
        for s in sels:
            a, b, d = [], [], []
            for r in group:
                if s not in r["selectors"] or BASELINE not in r["selectors"]:
                    continue
                x = run_metrics(r["selectors"][s]).get(m, (None, True))[0]
                y = run_metrics(r["selectors"][BASELINE]).get(m, (None, True))[0]
                if x is None or y is None:
                    continue
                a.append(x)
                b.append(y)
                d.append(x - y)
            if not d:
                continue
            rows.append({"metric": m, "selector": s, "selector_mean_sd": mean_sd(a), "random_mean_sd": mean_sd(b),
                         **paired_stats(d, lower_is_better=lower[m])})
    return rows


def mean_sd(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return float("nan"), float("nan")
    return float(np.mean(xs)), float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0
