"""The study's analysis: how well the proxies predict the gold models, per evaluation set, and
what the study cost (docs/methods.md#proxy-evaluation-and-statistics).

For every evaluation set, across the gold mixtures: Pearson r of log PPL(proxy) vs log PPL(gold),
Spearman rho, Kendall tau, pairwise agreement (stats.correlations), over all gold mixtures and
over the multi-unit ones only (singletons' proxies *are* their gold models); beside each merge
rule, the free baseline proxy: the mean of the unit models' log PPL.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from datamates.ablation.ablate.sets import EvalSets
from datamates.ablation.partition import Manifest
from datamates.ablation.stats import BASELINE, correlations
from datamates.config.ablation import AblationConfig
from datamates.config.base import to_dict
from datamates.run_dir import RunDir


def _costs(rd: RunDir, seed: Path, units: list[str], gold_rows: list[dict], timings: dict[str, float]) -> dict[str, Any]:
    def summ(p: Path) -> dict[str, Any]:
        f = p / "train_summary.json"
        return json.loads(f.read_text()) if f.exists() else {}

    unit_s = [summ(rd.unit(u)) for u in units]
    gold_s = [summ(Path(r["path"])) for r in gold_rows if r["k"] > 1]
    unit_seconds = [s.get("seconds_this_process", 0.0) for s in unit_s]
    K = len(units)
    mean_unit = float(np.mean(unit_seconds)) if unit_seconds else float("nan")
    all_gold_units = sum(math.comb(K, k) * k for k in range(1, K + 1))  # K 2^(K-1) unit trainings
    return {
        "seed_train_s": summ(seed).get("seconds_this_process"),
        "seed_flops": summ(seed).get("flops"),
        "unit_train_s": float(sum(unit_seconds)),
        "unit_train_s_each": unit_seconds,
        "unit_flops": float(sum(s.get("flops", 0.0) for s in unit_s)),
        "gold_train_s": float(sum(s.get("seconds_this_process", 0.0) for s in gold_s)),
        "gold_flops": float(sum(s.get("flops", 0.0) for s in gold_s)),
        "gold_unit_trainings": int(sum(r["k"] for r in gold_rows if r["k"] > 1)),
        "proxy_merge_s": timings.get("merge_s", 0.0),
        "proxy_eval_s": timings.get("proxy_eval_s", 0.0),
        "gold_eval_s": timings.get("gold_eval_s", 0.0),
        "seed_eval_s": timings.get("seed_eval_s", 0.0),
        "proxy_evaluations": timings.get("proxy_evaluations"),
        "unit_passes_last_walk": timings.get("unit_reads"),
        "every_gold_unit_trainings": all_gold_units,
        "every_gold_train_s_estimate": all_gold_units * mean_unit,
    }


def analyse(cfg: AblationConfig, manifest: Manifest, units: list[str], evs: EvalSets, seed_eval: dict[str, Any],
            proxy_rows: list[dict[str, Any]], gold_rows: list[dict[str, Any]], timings: dict[str, float],
            rd: RunDir, seed: Path) -> dict[str, Any]:
    """results.json's body: the units, the seed's, proxies' and gold models' evaluations, the
    proxy-vs-gold correlations per evaluation set and merge rule (and the baseline), the costs."""
    sets = evs.names
    methods = list(proxy_rows[0]["evals"]) if proxy_rows else []
    unit_logppl = {r["mixture"]: {s: r["eval"][s]["logppl"] for s in sets} for r in proxy_rows if r["k"] == 1}
    proxy = {r["mixture"]: r for r in proxy_rows}
    corr: dict[str, dict[str, Any]] = {}
    for s in sets:
        by: dict[str, dict[str, Any]] = {}
        for scope, rows in (("all", gold_rows), ("multi", [r for r in gold_rows if r["k"] > 1])):
            g = np.array([r["eval"][s]["logppl"] for r in rows])
            k = np.array([r["k"] for r in rows])
            for mth in methods:
                p = np.array([proxy[r["mixture"]]["evals"][mth][s]["logppl"] for r in rows])
                by.setdefault(mth, {})[scope] = correlations(p, g, k)
            if unit_logppl and all(u in unit_logppl for r in rows for u in r["mixture"].split("+")):
                base = np.array([np.mean([unit_logppl[u][s] for u in r["mixture"].split("+")]) for r in rows])
                by.setdefault(BASELINE, {})[scope] = correlations(base, g, k)
        corr[s] = {"all": by[methods[0]]["all"], "multi": by[methods[0]]["multi"], "by_proxy": by}
    return {
        "units": [{k: v for k, v in manifest.unit(u).items() if k != "ids"} for u in units],
        "eval_sets": sets,
        "method": methods[0] if methods else cfg.merge.name,
        "proxy_methods": methods,
        "lam": cfg.merge.lam,
        "config": to_dict(cfg),
        "seed": {"path": str(seed), "eval": seed_eval},
        "proxies": proxy_rows,
        "gold": [{"mixture": r["mixture"], "k": r["k"], "eval": r["eval"], "path": r["path"],
                  "is_unit_model": r["k"] == 1} for r in gold_rows],
        "correlations": corr,
        "costs": _costs(rd, seed, units, gold_rows, timings),
    }

