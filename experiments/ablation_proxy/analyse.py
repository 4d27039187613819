"""Summary of the issue-7 study's results.json (runs/ablation_proxy/ablation/, written by run.sh):
per evaluation set and proxy rule, Pearson (log PPL) over the multi-unit gold mixtures with a 95% bootstrap interval (resampling gold mixtures, 2,000 draws,
seed 0), and the mean / spread of each statistic across the evaluation sets. Writes summary.json
beside it and prints Markdown tables (used in README.md)."""

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
RES = HERE / "runs" / "ablation_proxy" / "ablation"
res = json.loads((RES / "results.json").read_text())
sets = res["eval_sets"]
proxy = {r["mixture"]: r for r in res["proxies"]}
gold = [g for g in res["gold"] if g["k"] > 1]
methods = res["proxy_methods"]
rng = np.random.default_rng(0)
B = 2000


def pearson(a, b):
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return np.nan
    return float(np.corrcoef(a, b)[0, 1])


summary = {"n_gold_multi": len(gold), "bootstrap_draws": B, "sets": {}}
for s in sets:
    g = np.array([r["eval"][s]["logppl"] for r in gold])
    summary["sets"][s] = {}
    for m in methods:
        p = np.array([proxy[r["mixture"]]["evals"][m][s]["logppl"] for r in gold])
        boots = []
        for _ in range(B):
            i = rng.integers(0, len(g), len(g))
            boots.append(pearson(p[i], g[i]))
        boots = np.array(boots)
        boots = boots[~np.isnan(boots)]
        c = res["correlations"][s]["by_proxy"][m]["multi"]
        summary["sets"][s][m] = {"pearson": c["pearson"], "ci95": [float(np.percentile(boots, 2.5)),
                                                                  float(np.percentile(boots, 97.5))],
                                 "spearman": c["spearman"], "pairwise": c["pairwise"],
                                 "pairwise_same_size": c["pairwise_same_size"],
                                 "pearson_within_size": c["pearson_within_size"]}
summary["across_sets"] = {}
for m in methods:
    agg = {}
    for key in ("pearson", "spearman", "pairwise", "pairwise_same_size", "pearson_within_size"):
        v = np.array([summary["sets"][s][m][key] for s in sets], dtype=float)
        agg[key] = {"mean": float(np.nanmean(v)), "sd": float(np.nanstd(v, ddof=1)), "min": float(np.nanmin(v)),
                    "max": float(np.nanmax(v)), "n_at_least_0.9": int(np.sum(v >= 0.9))}
    summary["across_sets"][m] = agg
(RES / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

print("| eval set | " + " | ".join(f"{m}: Pearson [95% CI]" for m in methods) + " |")
print("|---|" + "---|" * len(methods))
for s in sets:
    cells = [f"{summary['sets'][s][m]['pearson']:.2f} [{summary['sets'][s][m]['ci95'][0]:.2f}, "
             f"{summary['sets'][s][m]['ci95'][1]:.2f}]" for m in methods]
    print(f"| {s} | " + " | ".join(cells) + " |")
print()
print("| rule | statistic | mean | sd | min | max | sets >= 0.9 |")
print("|---|---|---:|---:|---:|---:|---:|")
for m in methods:
    for key, a in summary["across_sets"][m].items():
        print(f"| {m} | {key} | {a['mean']:.3f} | {a['sd']:.3f} | {a['min']:.3f} | {a['max']:.3f} | {a['n_at_least_0.9']}/7 |")
