"""Why does the influence model capture so little? Per stage of every MATES run, how well simple
predictors rank the exact probe labels, next to the fitted influence model:

- influence model: the fit's validation Spearman (its own 10% split; few labels, so noisy);
- domain mean: each label predicted by the mean label of its domain, 5-fold cross-validated;
- candidate loss: Spearman of the label with the current model's own training loss on the
  candidate (recorded by the probe; no fitting). Negative: high-loss data lowers L_ref more.

    python experiments/mates_vs_random/diagnose_labels.py [--tags mvr mvr640]   -> labels_diagnostics.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy.stats import spearmanr

from datamates.core.pool import Pool

HERE = Path(__file__).resolve().parent


def domain_mean_cv(y: np.ndarray, d: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    fold = np.random.default_rng(seed).permutation(len(y)) % folds
    pred = np.empty_like(y)
    for f in range(folds):
        tr, va = fold != f, fold == f
        means = {x: y[tr & (d == x)].mean() if (tr & (d == x)).any() else y[tr].mean() for x in np.unique(d)}
        pred[va] = [means[x] for x in d[va]]
    return float(spearmanr(pred, y).statistic)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tags", nargs="+", default=["mvr", "mvr640"])
    args = ap.parse_args()
    rows = []
    pools: dict[str, Pool] = {}
    for tag in args.tags:
        for run in sorted((HERE / "runs").glob(f"{tag}_s*")):
            pool_dir = yaml.safe_load((run / "config.yaml").read_text()).get("pool_dir") or run / "pool"
            pool_dir = str(HERE.parents[1] / pool_dir)  # relative to the repository root
            pool = pools.setdefault(pool_dir, Pool(pool_dir))
            for stage in sorted((run / "mates").glob("stage_*")):
                lab = pd.read_parquet(stage / "probe" / "labels.parquet")
                fit = json.loads((stage / "influence_model" / "metrics.json").read_text())
                y, ids = lab.ref_loss_delta.to_numpy(), lab.seq_id.to_numpy()
                d = np.asarray(pool.seq_domain[ids])
                rows.append({"run": run.name, "stage": int(stage.name[-2:]), "labels": len(y),
                             "influence model (val)": fit["val_spearman"], "val labels": fit["n_val"],
                             "domain mean (5-fold)": domain_mean_cv(y, d),
                             "candidate loss": float(spearmanr(y, lab["loss"]).statistic)})
    df = pd.DataFrame(rows)
    lines = ["| run | stage | labels | influence model, val Spearman (n val) | domain mean, 5-fold Spearman | "
             "Spearman(label, candidate loss) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['stage']} | {r['labels']} | {r['influence model (val)']:.2f} ({r['val labels']}) | "
                     f"{r['domain mean (5-fold)']:.2f} | {r['candidate loss']:.2f} |")
    lines.append("")
    for tag in args.tags:
        sub = df[df.run.str.startswith(tag + "_")]
        if len(sub):
            lines.append(f"{tag} ({len(sub)} stage fits), mean ± sd: influence model "
                         f"{sub['influence model (val)'].mean():.2f} ± {sub['influence model (val)'].std():.2f}, "
                         f"domain mean {sub['domain mean (5-fold)'].mean():.2f} ± {sub['domain mean (5-fold)'].std():.2f}, "
                         f"candidate loss {sub['candidate loss'].mean():.2f} ± {sub['candidate loss'].std():.2f}")
            lines.append("")
    out = HERE / "labels_diagnostics.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
