"""ablation/stats.py against hand computations and naive loops (issue 17)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from datamates.ablation.stats import (
    BASELINE,
    SEED_BASELINE,
    beats,
    bootstrap_ci,
    claim_stats,
    claim_table,
    pairwise_agreement,
    ratio_se,
    within_size_pearson,
)


def _naive_pairwise(p, g, groups=None):
    agree = n = 0
    for i in range(len(g)):
        for j in range(i + 1, len(g)):
            if (groups is not None and groups[i] != groups[j]) or g[i] == g[j]:
                continue
            n += 1
            agree += 1.0 if np.sign(p[i] - p[j]) == np.sign(g[i] - g[j]) else (0.5 if p[i] == p[j] else 0.0)
    return agree / n


def test_pairwise_agreement_matches_the_naive_loop_with_ties():
    rng = np.random.default_rng(0)
    g = rng.integers(0, 6, 30).astype(float)  # gold ties are skipped
    p = g + rng.integers(-2, 3, 30)  # proxy ties count 1/2
    sizes = rng.integers(2, 5, 30)
    assert pairwise_agreement(p, g) == pytest.approx(_naive_pairwise(p, g))
    assert pairwise_agreement(p, g, sizes) == pytest.approx(_naive_pairwise(p, g, sizes))
    assert pairwise_agreement(-g, g) == 0.0 and pairwise_agreement(2 * g, g) == 1.0


def test_within_size_pearson_is_pearson_of_size_demeaned_values():
    p = np.array([1.0, 2.0, 4.0, 10.0, 11.0, 15.0, 30.0])
    g = np.array([2.0, 2.5, 3.0, 5.0, 7.0, 6.0, 9.0])
    k = np.array([2, 2, 2, 3, 3, 3, 5])  # size 5 has one mixture: left out
    pd = np.r_[p[:3] - p[:3].mean(), p[3:6] - p[3:6].mean()]
    gd = np.r_[g[:3] - g[:3].mean(), g[3:6] - g[3:6].mean()]
    assert within_size_pearson(p, g, k) == pytest.approx(sps.pearsonr(pd, gd)[0])


def test_bootstrap_interval_covers_the_estimate_and_respects_strata():
    rng = np.random.default_rng(1)
    x = rng.normal(size=40)
    y = x + 0.5 * rng.normal(size=40)
    r = np.corrcoef(x, y)[0, 1]
    lo, hi = bootstrap_ci(lambda i: float(np.corrcoef(x[i], y[i])[0, 1]), 40, B=300)
    assert lo < r < hi and hi - lo < 0.5
    strata = np.r_[np.zeros(10, int), np.ones(30, int)]
    seen = []
    bootstrap_ci(lambda i: seen.append(np.bincount(strata[i], minlength=2).tolist()) or 0.0, 40, strata=strata, B=20)
    assert all(s == [10, 30] for s in seen)  # every resample keeps each stratum's size
    assert bootstrap_ci(lambda i: 1.0, 5, B=50, seed=3) == bootstrap_ci(lambda i: 1.0, 5, B=50, seed=3)


def test_ratio_se_is_the_standard_error_of_the_mean_for_equal_lengths():
    nll = np.array([10.0, 12.0, 9.0, 15.0])
    t = np.full(4, 5.0)
    assert ratio_se(nll, t) == pytest.approx(np.std(nll / 5, ddof=1) / 2)
    assert math.isnan(ratio_se(nll[:1], t[:1]))


def _results(proxy, gold, k, units, seed_logppl=5.0):
    mix = [f"m{i}" for i in range(len(gold))]
    names = sorted({u for us in units for u in us})
    ev = lambda v: {"s": {"logppl": float(v)}}  # noqa: E731
    proxies = [{"mixture": "+".join(us), "k": len(us), "evals": {"uniform": ev(p)}, "eval": ev(p)}
               for us, p in zip(units, proxy)]
    unit_vals = {u: 4.0 + 0.1 * j for j, u in enumerate(names)}
    proxies += [{"mixture": u, "k": 1, "evals": {"uniform": ev(v)}, "eval": ev(v)} for u, v in unit_vals.items()]
    gold_rows = [{"mixture": "+".join(us), "k": kk, "eval": ev(g)} for us, g, kk in zip(units, gold, k)]
    del mix
    return {"eval_sets": ["s"], "method": "uniform", "proxies": proxies, "gold": gold_rows,
            "seed": {"eval": ev(seed_logppl)}}, unit_vals


def test_claim_table_proxy_and_both_baselines_by_hand():
    units = [["a", "b"], ["a", "c"], ["b", "c"], ["a", "b", "c"], ["b", "c", "d"], ["a", "c", "d"]]
    gold = np.array([3.0, 3.2, 3.1, 2.8, 2.9, 2.7])
    proxy = gold + np.array([0.01, -0.02, 0.0, 0.03, -0.01, 0.02])
    k = [len(u) for u in units]
    res, unit_vals = _results(proxy, gold, k, units)
    t = claim_table([res], B=200)["s"]
    assert t["proxy"]["n"] == 6
    assert t["proxy"]["pearson"]["value"] == pytest.approx(sps.pearsonr(proxy, gold)[0])
    assert t["proxy"]["spearman"]["value"] == pytest.approx(sps.spearmanr(proxy, gold)[0])
    assert t["proxy"]["pairwise"]["value"] == pytest.approx(_naive_pairwise(proxy, gold))
    assert t["proxy"]["pairwise_same_size"]["value"] == pytest.approx(_naive_pairwise(proxy, gold, k))
    base = np.array([np.mean([unit_vals[u] for u in us]) for us in units])
    assert t[BASELINE]["pearson"]["value"] == pytest.approx(sps.pearsonr(base, gold)[0])
    assert math.isnan(t[SEED_BASELINE]["pearson"]["value"])  # a constant has no correlation
    assert t[SEED_BASELINE]["pairwise"]["value"] == 0.5
    assert t[SEED_BASELINE]["mean_abs_log_err"]["value"] == pytest.approx(np.mean(np.abs(5.0 - gold)))
    lo, hi = t["proxy"]["pearson"]["ci"]
    assert lo <= t["proxy"]["pearson"]["value"] <= hi
    assert beats({"s": t}, "pairwise")["s"] == (t["proxy"]["pairwise"]["value"] > t[BASELINE]["pairwise"]["value"])


def test_claim_stats_never_pairs_mixtures_of_different_studies():
    gold = np.array([1.0, 2.0, 3.0, 1.0, 2.0, 3.0])
    proxy = np.array([1.0, 2.0, 3.0, 3.0, 2.0, 1.0])  # study 1 reversed
    st = claim_stats(proxy, gold, np.full(6, 2), strata=np.array([0, 0, 0, 1, 1, 1]), B=50)
    assert st["pairwise"]["value"] == pytest.approx(0.5)  # 3 right pairs in study 0, 3 wrong in study 1
