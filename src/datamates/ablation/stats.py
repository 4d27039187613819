"""Statistics of the merging claim: does a proxy's perplexity predict the gold model's? (Na et al.
2024, §4-5; decision accuracy as in DataDecide, Magnusson et al. 2025; docs/ablation.md).

Inputs are, per evaluation set, one value per gold mixture S: the proxy's log PPL p_S, the gold
model's log PPL g_S, and the mixture size k_S = |S|. Reported:

    Pearson r(p, g) on log PPL and Spearman rho, pooled over all sizes and within each size k
    (sizes with at least 3 mixtures), plus "within size" Pearson after removing each size's mean
    (p_S - mean_{|T|=k} p_T against the same for g): how well the proxy orders mixtures of equally
    many units, which is what a composition study compares;
    pairwise decision accuracy = share of pairs (S, T) with g_S != g_T that the proxy orders like
    gold, sign(p_S - p_T) = sign(g_S - g_T) (proxy ties count 1/2), over all pairs and over pairs
    of equal size;
    95% percentile bootstrap intervals: mixtures resampled with replacement (within `strata`, e.g.
    the study seed, when given), B resamples, statistics that are undefined on a resample skipped.

Two free baselines, which a proxy has to beat to be worth its merges and evaluations:

    mean_unit_logppl   b_S = mean_{i in S} log PPL(unit model i): needs no merge at all
    seed               b_S = log PPL(seed): the same for every mixture, so its correlations are
                       undefined (reported as n/a) and its pairwise accuracy is 1/2 by construction;
                       its mean |log error| says how much the units moved the models at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

BASELINE = "mean_unit_logppl"
SEED_BASELINE = "seed"


def ratio_se(nll: np.ndarray, tokens: np.ndarray) -> float:
    """Standard error of log PPL = sum(nll_i) / sum(t_i) over n sequences (the ratio estimator's
    delta-method SE: sqrt(sum (nll_i - r t_i)^2 / (n (n - 1))) / mean(t)); nan for n < 2. Applied
    to the per-sequence differences of two models on the same sequences, the paired SE of the
    difference of their log PPLs."""
    nll, tokens = np.asarray(nll, dtype=float), np.asarray(tokens, dtype=float)
    n = len(nll)
    if n < 2:
        return float("nan")
    r = nll.sum() / tokens.sum()
    return float(math.sqrt(((nll - r * tokens) ** 2).sum() / (n * (n - 1))) / tokens.mean())


def pairwise_agreement(proxy: np.ndarray, gold: np.ndarray, groups: np.ndarray | None = None) -> float:
    """Fraction of pairs (i < j, gold_i != gold_j) that proxy orders like gold (proxy ties: 1/2);
    with `groups`, only pairs in the same group (e.g. mixtures of the same size)."""
    proxy, gold = np.asarray(proxy, dtype=float), np.asarray(gold, dtype=float)
    i, j = np.triu_indices(len(gold), 1)
    keep = gold[i] != gold[j]
    if groups is not None:
        groups = np.asarray(groups)
        keep &= groups[i] == groups[j]
    if not keep.any():
        return float("nan")
    g = np.sign(gold[i] - gold[j])[keep]
    p = np.sign(proxy[i] - proxy[j])[keep]
    return float(np.mean(np.where(p == g, 1.0, np.where(p == 0, 0.5, 0.0))))


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x)


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    return _pearson(_ranks(x), _ranks(y)) if len(x) >= 3 else float("nan")


def _demean(x: np.ndarray, groups: np.ndarray) -> np.ndarray:
    out = x.astype(float).copy()
    for k in np.unique(groups):
        m = groups == k
        out[m] -= out[m].mean()
    return out


def within_size_pearson(proxy: np.ndarray, gold: np.ndarray, sizes: np.ndarray) -> float:
    """Pearson after removing each size's mean (sizes with a single mixture left out)."""
    sizes = np.asarray(sizes)
    keep = np.array([np.sum(sizes == k) >= 2 for k in sizes], dtype=bool)
    if keep.sum() < 3:
        return float("nan")
    return _pearson(_demean(proxy[keep], sizes[keep]), _demean(gold[keep], sizes[keep]))


def correlations(proxy_log: np.ndarray, gold_log: np.ndarray, sizes: np.ndarray | None = None) -> dict[str, float]:
    """Pearson on log PPL, Spearman, Kendall, pairwise agreement, mean |log error|; with `sizes`
    (units per mixture) also the within-size versions: pairwise agreement over pairs of equal size
    and Pearson after subtracting each size's mean (sizes with one mixture left out)."""
    from scipy import stats

    proxy_log, gold_log = np.asarray(proxy_log, dtype=float), np.asarray(gold_log, dtype=float)
    n = len(gold_log)
    out = {"n": n, "pearson": float("nan"), "spearman": float("nan"), "kendall": float("nan"),
           "pairwise": pairwise_agreement(proxy_log, gold_log) if n >= 2 else float("nan"),
           "mean_abs_log_err": float(np.mean(np.abs(proxy_log - gold_log))) if n else float("nan")}
    if n >= 3 and np.ptp(proxy_log) > 0 and np.ptp(gold_log) > 0:
        out["pearson"] = float(stats.pearsonr(proxy_log, gold_log)[0])
        out["spearman"] = float(stats.spearmanr(proxy_log, gold_log)[0])
        out["kendall"] = float(stats.kendalltau(proxy_log, gold_log)[0])
    if sizes is not None:
        sizes = np.asarray(sizes)
        out["pairwise_same_size"] = pairwise_agreement(proxy_log, gold_log, sizes)
        keep = np.array([np.sum(sizes == k) >= 2 for k in sizes], dtype=bool)
        out["n_within_size"] = int(keep.sum())
        out["pearson_within_size"] = within_size_pearson(proxy_log, gold_log, sizes)
    return out


def bootstrap_ci(stat: Callable[[np.ndarray], float], n: int, *, strata: np.ndarray | None = None, B: int = 1000,
                 seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of `stat(idx)` over B resamples of the indices 0..n-1 (with replacement,
    within each stratum when `strata` is given); resamples where stat is nan are skipped."""
    rng = np.random.default_rng([seed, 7919])
    groups = [np.arange(n)] if strata is None else [np.flatnonzero(np.asarray(strata) == s) for s in np.unique(strata)]
    vals = []
    for _ in range(B):
        idx = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])
        v = stat(idx)
        if not math.isnan(v):
            vals.append(v)
    if len(vals) < B // 10:
        return (float("nan"), float("nan"))
    a = (1 - level) / 2
    return (float(np.quantile(vals, a)), float(np.quantile(vals, 1 - a)))


def claim_stats(proxy: np.ndarray, gold: np.ndarray, sizes: np.ndarray, *, strata: np.ndarray | None = None,
                B: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Every statistic of the module docstring for one predictor (a proxy or a baseline) on one
    evaluation set, each with a bootstrap interval: {name: {"value", "ci"}} plus per-size entries
    under "by_size" ({k: {pearson, spearman, n}}). `strata` (e.g. the study seed) keeps pairs and
    size groups within a stratum and resamples within it."""
    proxy, gold, sizes = np.asarray(proxy, float), np.asarray(gold, float), np.asarray(sizes)
    strata = np.zeros(len(gold), dtype=int) if strata is None else np.asarray(strata)
    group = np.array([f"{s}|{k}" for s, k in zip(strata, sizes)])  # size groups never span strata
    single = len(np.unique(strata)) == 1  # one stratum: plain pooled statistics

    def pw(idx, same=False):
        # pairs inside a stratum only (studies with different gold draws are not compared)
        key = group[idx] if same else strata[idx]
        return pairwise_agreement(proxy[idx], gold[idx], key)

    fns: dict[str, Callable[[np.ndarray], float]] = {
        # pooled over sizes, but within a stratum: with several seed models, each model's own level
        # (its seed's perplexity) is removed first, or the spread between seed models would count
        "pearson": lambda idx: (_pearson(proxy[idx], gold[idx]) if single else
                                _pearson(_demean(proxy[idx], strata[idx]), _demean(gold[idx], strata[idx]))),
        "spearman": lambda idx: (_spearman(proxy[idx], gold[idx]) if single else
                                 _spearman_within(proxy[idx], gold[idx], strata[idx].astype(str))),
        "pearson_within_size": lambda idx: within_size_pearson(proxy[idx], gold[idx], group[idx]),
        "spearman_within_size": lambda idx: _spearman_within(proxy[idx], gold[idx], group[idx]),
        "pairwise": lambda idx: pw(idx),
        "pairwise_same_size": lambda idx: pw(idx, same=True),
        "mean_abs_log_err": lambda idx: float(np.mean(np.abs(proxy[idx] - gold[idx]))),
    }
    n = len(gold)
    allidx = np.arange(n)
    out: dict[str, Any] = {"n": n}
    for name, fn in fns.items():
        out[name] = {"value": fn(allidx), "ci": bootstrap_ci(fn, n, strata=strata, B=B, seed=seed)}
    out["by_size"] = {}
    for k in sorted(np.unique(sizes)):
        m = sizes == k
        if m.sum() >= 3:
            out["by_size"][int(k)] = {"n": int(m.sum()), "pearson": _pearson(proxy[m], gold[m]),
                                      "spearman": _spearman(proxy[m], gold[m])}
    return out


def _spearman_within(proxy: np.ndarray, gold: np.ndarray, groups: np.ndarray) -> float:
    """Spearman after removing each group's mean rank (the rank analogue of within_size_pearson)."""
    keep = np.array([np.sum(groups == k) >= 2 for k in groups], dtype=bool)
    if keep.sum() < 3:
        return float("nan")
    p, g, gr = proxy[keep], gold[keep], groups[keep]
    rp, rg = np.zeros(len(p)), np.zeros(len(g))
    for k in np.unique(gr):
        m = gr == k
        rp[m] = _ranks(p[m]) - _ranks(p[m]).mean()
        rg[m] = _ranks(g[m]) - _ranks(g[m]).mean()
    return _pearson(rp, rg)


def claim_rows(results: list[dict[str, Any]], s: str, method: str | None = None) -> dict[str, np.ndarray]:
    """Per multi-unit gold mixture of every study, on evaluation set `s`: the gold model's log PPL,
    the proxy's (`method`, default each study's main merge rule), both baselines', the size k, the
    study index and the mixture's name."""
    rows: dict[str, list] = {"proxy": [], BASELINE: [], SEED_BASELINE: [], "gold": [], "k": [], "study": [],
                             "mixture": []}
    for si, res in enumerate(results):
        m = method or res["method"]
        proxy = {r["mixture"]: r["evals"][m] for r in res["proxies"]}
        units = {r["mixture"]: r["eval"] for r in res["proxies"] if r["k"] == 1}
        for g in res["gold"]:
            if g["k"] < 2:
                continue
            rows["gold"].append(g["eval"][s]["logppl"])
            rows["proxy"].append(proxy[g["mixture"]][s]["logppl"])
            rows[BASELINE].append(float(np.mean([units[u][s]["logppl"] for u in g["mixture"].split("+")])))
            rows[SEED_BASELINE].append(res["seed"]["eval"][s]["logppl"])
            rows["k"].append(g["k"])
            rows["study"].append(si)
            rows["mixture"].append(g["mixture"])
    return {k: np.asarray(v) for k, v in rows.items()}


def claim_table(results: list[dict[str, Any]], *, B: int = 1000, seed: int = 0,
                method: str | None = None) -> dict[str, dict[str, Any]]:
    """The claim's statistics per evaluation set over the multi-unit gold mixtures of one or more
    studies (`results` of `ablate`, e.g. one per seed; mixtures are stratified by study): for the
    proxy (`method`, default each study's main merge rule) and both baselines."""
    sets = results[0]["eval_sets"]
    table: dict[str, dict[str, Any]] = {}
    for s in sets:
        a = claim_rows(results, s, method)
        table[s] = {name: claim_stats(a[name], a["gold"], a["k"], strata=a["study"], B=B, seed=seed)
                    for name in ("proxy", BASELINE, SEED_BASELINE)}
        # the seed baseline is one constant: no order, so pairwise accuracy is 1/2 (all ties), not undefined
        for key in ("pairwise", "pairwise_same_size"):
            table[s][SEED_BASELINE][key] = {"value": 0.5, "ci": (0.5, 0.5)}
        gold_se = []
        for res in results:
            gold_se += [g["eval"][s].get("se", float("nan")) for g in res["gold"] if g["k"] > 1]
        table[s]["gold_se_mean"] = float(np.nanmean(gold_se)) if gold_se and not np.all(np.isnan(gold_se)) else float("nan")
    return table


def beats(table: dict[str, dict[str, Any]], stat: str = "pearson_within_size") -> dict[str, bool]:
    """Per set: the proxy's `stat` is above both baselines' (nan counts as not above; the seed's
    correlations are undefined, so for correlations the proxy beats it when it is positive)."""
    out = {}
    for s, t in table.items():
        p = t["proxy"][stat]["value"]
        b = t[BASELINE][stat]["value"]
        sd = t[SEED_BASELINE][stat]["value"]
        sd = 0.0 if (isinstance(sd, float) and math.isnan(sd)) else sd
        out[s] = bool(not math.isnan(p) and (math.isnan(b) or p > b) and p > sd)
    return out


# ----------------------------------------------------------------------------- which mixture is best


def pick_regret(pred: np.ndarray, gold: np.ndarray) -> float:
    """Regret of choosing the mixture that `pred` ranks best (lowest log PPL): gold[pick] - min(gold),
    in nats of log PPL. Mixtures tied at the top of `pred` share the pick (the mean of their
    regrets: a constant predictor, like the seed baseline, scores a uniformly random pick)."""
    pred, gold = np.asarray(pred, dtype=float), np.asarray(gold, dtype=float)
    if len(gold) == 0:
        return float("nan")
    top = pred == pred.min()
    return float(gold[top].mean() - gold.min())


def decision_stats(pred: np.ndarray, gold: np.ndarray, sizes: np.ndarray) -> dict[str, float]:
    """One study's answer to "which mixture is best" and "which of two mixtures is better" for one
    predictor on one evaluation set: regret of its pick, whether it picks the gold best, pairwise
    decision accuracy (all pairs, pairs of equal size), the regret of the pick within each size (mean
    over sizes: mixtures of one size train equally long), Pearson pooled, within size (demeaned) and per
    size, Spearman, mean |log error|."""
    pred, gold, sizes = np.asarray(pred, dtype=float), np.asarray(gold, dtype=float), np.asarray(sizes)
    ks = np.unique(sizes)
    out = {"n": len(gold), "regret": pick_regret(pred, gold),
           # "which mixture of k units is best", at equal training steps: the pick within each size, averaged
           "regret_same_size": float(np.mean([pick_regret(pred[sizes == k], gold[sizes == k]) for k in ks]))
           if len(gold) else float("nan"),
           "picks_best": float(np.mean(gold[pred == pred.min()] == gold.min())) if len(gold) else float("nan"),
           "pairwise": pairwise_agreement(pred, gold) if len(gold) >= 2 else float("nan"),
           "pairwise_same_size": pairwise_agreement(pred, gold, sizes) if len(gold) >= 2 else float("nan"),
           "pearson": _pearson(pred, gold), "spearman": _spearman(pred, gold),
           "pearson_within_size": within_size_pearson(pred, gold, sizes),
           "mean_abs_log_err": float(np.mean(np.abs(pred - gold))) if len(gold) else float("nan")}
    for k in sorted(np.unique(sizes)):
        m = sizes == k
        out[f"pearson_k{int(k)}"] = _pearson(pred[m], gold[m]) if m.sum() >= 3 else float("nan")
    return out


def mean_ci(values: list[float] | np.ndarray, level: float = 0.95, fisher: bool = False,
            bounds: tuple[float, float] | None = None) -> dict[str, Any]:
    """Mean and t-interval over independent replicates (e.g. seed models); nan values are left out.
    With `fisher` (correlations), the mean and interval are taken on atanh(r) and transformed back,
    so they stay inside [-1, 1]; `bounds` clips the interval of a bounded statistic (a share)."""
    from scipy import stats

    v = np.asarray([x for x in values if not (isinstance(x, float) and math.isnan(x))], dtype=float)
    raw = [float(x) for x in values]
    if len(v) == 0:
        return {"mean": float("nan"), "ci": (float("nan"), float("nan")), "n": 0, "values": raw}
    if fisher:
        v = np.arctanh(np.clip(v, -0.999999, 0.999999))
    back = np.tanh if fisher else (lambda x: x)
    m = float(v.mean())
    if len(v) < 2:
        return {"mean": float(back(m)), "ci": (float("nan"), float("nan")), "n": 1, "values": raw}
    h = float(stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    lo, hi = float(back(m - h)), float(back(m + h))
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return {"mean": float(back(m)), "ci": (lo, hi), "n": int(len(v)), "values": raw}


def seed_model_table(results: list[dict[str, Any]], method: str | None = None) -> dict[str, dict[str, Any]]:
    """Per evaluation set and predictor (proxy, mean-unit baseline, seed baseline): `decision_stats`
    within each study (one study = one seed model with its own units and gold models), then the
    mean and 95% t-interval over the studies (`mean_ci`; correlations through Fisher's z)."""
    out: dict[str, dict[str, Any]] = {}
    for s in results[0]["eval_sets"]:
        a = claim_rows(results, s, method)
        out[s] = {}
        for pred in ("proxy", BASELINE, SEED_BASELINE):
            per = []
            for si in range(len(results)):
                m = a["study"] == si
                per.append(decision_stats(a[pred][m], a["gold"][m], a["k"][m]))
            keys = list(dict.fromkeys(k for d in per for k in d))
            out[s][pred] = {k: mean_ci([d.get(k, float("nan")) for d in per],
                                       fisher=k.startswith(("pearson", "spearman")),
                                       bounds=(0.0, 1.0) if k.startswith(("pairwise", "picks_best")) else None)
                            for k in keys}
        for key in ("pairwise", "pairwise_same_size"):  # a constant has no order: 1/2, not undefined
            out[s][SEED_BASELINE][key] = mean_ci([0.5] * len(results))
    return out


def eval_precision(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Is the evaluation budget large enough? Per evaluation set, over the multi-unit gold models of
    every study: the mean standard error of one log PPL (`se`, sequences resampled), the median
    standard error of the difference between two gold models on the same sequences (paired; needs
    the per-sequence losses `seq_nll`), against the spread of the gold log PPLs (sd over all
    mixtures, and the pooled sd within a size: what a ranking has to resolve)."""
    out: dict[str, dict[str, float]] = {}
    for s in results[0]["eval_sets"]:
        se, paired, sd, sd_within = [], [], [], []
        for res in results:
            gold = [g for g in res["gold"] if g["k"] > 1]
            e = [g["eval"][s] for g in gold]
            se += [x.get("se", float("nan")) for x in e]
            lg = np.array([x["logppl"] for x in e])
            k = np.array([g["k"] for g in gold])
            sd.append(float(lg.std(ddof=1)) if len(lg) > 1 else float("nan"))
            dm = _demean(lg, k)
            dof = len(lg) - len(np.unique(k))
            sd_within.append(float(math.sqrt((dm**2).sum() / dof)) if dof > 0 else float("nan"))
            if all("seq_nll" in x for x in e) and len(e) > 1:
                nll = [np.asarray(x["seq_nll"], dtype=float) for x in e]
                toks = (np.asarray(e[0]["seq_tokens"], dtype=float) if "seq_tokens" in e[0]
                        else np.full(len(nll[0]), e[0]["tokens"] / len(nll[0])))
                i, j = np.triu_indices(len(nll), 1)
                paired.append(float(np.median([ratio_se(nll[a] - nll[b], toks) for a, b in zip(i, j)])))
        out[s] = {"se_mean": float(np.nanmean(se)) if se else float("nan"),
                  "paired_se_median": float(np.mean(paired)) if paired else float("nan"),
                  "gold_sd": float(np.nanmean(sd)), "gold_sd_within_size": float(np.nanmean(sd_within)),
                  "n_gold": sum(len([g for g in r["gold"] if g["k"] > 1]) for r in results)}
    return out
