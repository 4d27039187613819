"""The regime study's table (issue 17): the claim's statistics per evaluation set over both study
seeds (mixtures stratified by seed; ablation/stats.py), per seed, and the seed's plateau.

    .venv/bin/python experiments/ablation_proxy/analyse_regime.py [ROOT]     (ROOT: experiments/ablation_proxy/runs/regime)

Writes experiments/ablation_proxy/results_regime/: summary.json, claim.md (the table), claim.csv,
and each study's report.md / results.json / claim.csv. Plateau: least-squares slope of the seed's
per-step training loss over its last 10% of steps, with its standard error; the seed counts as on
its plateau when the slope is below PLATEAU_SLOPE nats per step (0.02 nats over 100 steps).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np

from datamates.ablation.report import claim_csv, claim_markdown
from datamates.ablation.stats import BASELINE, SEED_BASELINE, claim_table

PLATEAU_SLOPE = 2e-4  # nats per step
HERE = Path(__file__).resolve().parent


def plateau(train_log: Path) -> dict:
    recs = [json.loads(line) for line in train_log.read_text().splitlines() if line.strip()]
    loss = np.array([r["loss"] for r in recs])
    n = len(loss)
    w = max(3, n // 10)
    x = np.arange(n - w, n, dtype=float)
    y = loss[-w:]
    b, a = np.polyfit(x, y, 1)
    resid = y - (a + b * x)
    se = float(np.sqrt(resid.var(ddof=2) / ((x - x.mean()) ** 2).sum()))
    first = loss[: max(3, n // 10)].mean()
    mid = loss[n // 2 - w // 2 : n // 2 + w // 2].mean()
    return {"steps": n, "window": w, "slope_per_step": float(b), "slope_se": se, "threshold": PLATEAU_SLOPE,
            "on_plateau": bool(b < PLATEAU_SLOPE), "mean_loss_last_10pct": float(y.mean()),
            "mean_loss_first_10pct": float(first), "mean_loss_middle": float(mid), "final_lr": recs[-1]["lr"]}


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "runs" / "regime"
    out = HERE / "results_regime"
    out.mkdir(exist_ok=True)
    studies = sorted(p for p in root.iterdir() if (p / "ablation" / "results.json").exists())
    results = [json.loads((p / "ablation" / "results.json").read_text()) for p in studies]
    both = claim_table(results, B=2000)
    per = {p.name: claim_table([r], B=2000) for p, r in zip(studies, results)}
    for p in studies:
        d = out / p.name
        d.mkdir(exist_ok=True)
        for f in ("report.md", "results.json", "claim.csv", "proxies.csv", "gold.csv", "correlations.csv"):
            if (p / "ablation" / f).exists():
                shutil.copy2(p / "ablation" / f, d / f)
    seed_log = root / "s1" / "seed" / "train_log.jsonl"
    summ = {"studies": [p.name for p in studies], "plateau": plateau(seed_log) if seed_log.exists() else None,
            "claim_both_seeds": both, "claim_per_seed": per,
            "goal": {}, "seed_eval": results[0]["seed"]["eval"] if results else None}
    sets = list(both)
    ws = [both[s]["proxy"]["pearson_within_size"]["value"] for s in sets]
    pooled = [both[s]["proxy"]["pearson"]["value"] for s in sets]
    beat = {s: {k: bool(both[s]["proxy"][k]["value"] > both[s][BASELINE][k]["value"])
                for k in ("pearson", "pearson_within_size", "pairwise", "pairwise_same_size")} for s in sets}
    summ["goal"] = {"within_size_ge_0.9": sum(v >= 0.9 for v in ws), "pooled_ge_0.8": sum(v >= 0.8 for v in pooled),
                    "sets": len(sets), "beats_mean_unit_baseline": beat,
                    "seed_baseline_err_vs_proxy_err": {s: (both[s][SEED_BASELINE]["mean_abs_log_err"]["value"],
                                                           both[s]["proxy"]["mean_abs_log_err"]["value"]) for s in sets}}
    (out / "summary.json").write_text(json.dumps(summ, indent=1, default=lambda o: None if isinstance(o, float) and
                                                 math.isnan(o) else o))
    md = ["# Regime study: both seeds (mixtures stratified by study seed, 2,000 bootstrap resamples)\n",
          claim_markdown(both), ""]
    for name, t in per.items():
        md += [f"\n## {name}\n", claim_markdown(t), ""]
    by_size = []
    for s in sets:
        bs = both[s]["proxy"]["by_size"]
        by_size.append(f"| {s} | " + " | ".join(f"k={k}: r {v['pearson']:.2f}, rho {v['spearman']:.2f} (n={v['n']})"
                                                 for k, v in bs.items()) + " |")
    md += ["\n## Within each size (both seeds pooled; sizes with >= 3 mixtures)\n", "| eval set | by size |",
           "|---|---|", *by_size]
    (out / "claim.md").write_text("\n".join(md) + "\n")
    (out / "claim.csv").write_text(claim_csv(both))
    print("\n".join(md))
    print(json.dumps({"plateau": summ["plateau"], "goal": {k: v for k, v in summ["goal"].items()
                                                           if k != "seed_baseline_err_vs_proxy_err"}}, indent=1))


if __name__ == "__main__":
    main()
