"""Fine-tuned vs frozen-trunk influence model on real probe labels (issue 5, docs/methods.md#data-influence-model, docs/methods.md#scoring-the-pool).

    .venv/bin/python experiments/influence_fit/probe_labels.py --n 640 --ref-size 256   # labels
    .venv/bin/python experiments/influence_fit/run.py [--finetune-seeds 1234] [--frozen-seeds 1234,1,2,3,4]

Both modes see the same labels, the same train/validation split per seed and the same encoder
input (MiniLM, one 256-token chunk: the tiny_cpu pool's 256-token LM sequences are ~230 WordPiece
tokens). finetune = MATES's recipe (MSE on z-scored labels, lr 5e-5, wd 0.01, 5 epochs, batch 32,
best validation Spearman kept, evaluated every 20 steps); frozen = cached mean-pooled embeddings +
ridge head (alpha by leave-one-out on the training split). Reference predictors on the same
validation split: the constant (training mean), the per-domain training mean, and the LM's own
loss on the sequence. Spread: validation Spearman over split seeds, and a bootstrap 95% interval
of each run's validation Spearman. Writes runs/models/<mode>_s<seed>/ (the influence models),
results.json, results.csv, fit_comparison.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from datamates.config.influence import EncoderConfig, FitConfig  # noqa: E402
from datamates.core.pool import Pool  # noqa: E402
from datamates.log import setup_logging  # noqa: E402
from datamates.selection.fit import fit, split_train_val  # noqa: E402

HERE = Path(__file__).resolve().parent
ENCODER = EncoderConfig(backbone="minilm", max_tokens=256, chunk_len=256)


def bootstrap_ci(pred: np.ndarray, true: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n):
        i = rng.integers(0, len(true), len(true))
        vals.append(spearmanr(pred[i], true[i]).statistic)
    return float(np.nanpercentile(vals, 2.5)), float(np.nanpercentile(vals, 97.5))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pool", default="runs/tiny_cpu/pool")
    ap.add_argument("--labels", default=str(HERE / "runs" / "probe"))
    ap.add_argument("--finetune-seeds", default="1234")
    ap.add_argument("--frozen-seeds", default="1234,1,2,3,4")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    setup_logging()
    pool = Pool(args.pool)
    labels = pq.read_table(Path(args.labels) / "labels.parquet").to_pandas()
    ids = labels["seq_id"].to_numpy()
    y = labels["ref_loss_delta"].to_numpy()
    cache = HERE / "runs" / "cache"
    rows = []
    runs = [("frozen", int(s)) for s in args.frozen_seeds.split(",") if s] + \
           [("finetune", int(s)) for s in args.finetune_seeds.split(",") if s]
    for mode, seed in runs:
        cfg = FitConfig(mode=mode, encoder=ENCODER, split_seed=seed, device="cpu")
        t0 = time.time()
        out = fit(cfg, [args.labels], pool, HERE / "runs" / "models" / f"{mode}_s{seed}", cache_dir=cache)
        m = json.loads((out / "metrics.json").read_text())
        val = pq.read_table(out / "val_predictions.parquet").to_pandas()
        lo, hi = bootstrap_ci(val["predicted"].to_numpy(), val["ref_loss_delta"].to_numpy())
        rows.append({"mode": mode, "split_seed": seed, "val_spearman": m["val_spearman"], "spearman_ci95": [lo, hi],
                     "val_pearson": m["val_pearson"], "val_mse_z": m["val_mse_z"],
                     "val_mse_z_constant": m["val_mse_z_constant"], "n_train": m["n_train"], "n_val": m["n_val"],
                     "fit_seconds": json.loads((out / "meta.json").read_text())["seconds"], "wall_seconds_this_call": round(time.time() - t0, 1),
                     **({"best_step": m["best_step"], "total_steps": m["total_steps"]} if mode == "finetune" else
                        {"ridge_alpha": m["ridge_alpha"]})})
        print(json.dumps(rows[-1]), flush=True)
    # reference predictors on the same validation splits
    refs = []
    dom = np.asarray(pool.domain_of(ids))
    own = labels["own_loss"].to_numpy()
    for seed in sorted({r["split_seed"] for r in rows}):
        tr, va = split_train_val(len(ids), 0.1, seed)
        dom_mean = {d: y[tr][dom[tr] == d].mean() if (dom[tr] == d).any() else y[tr].mean() for d in np.unique(dom)}
        pred_dom = np.array([dom_mean[d] for d in dom[va]])
        refs.append({"split_seed": seed,
                     "domain_mean_spearman": float(spearmanr(pred_dom, y[va]).statistic),
                     "own_lm_loss_spearman": float(spearmanr(own[va], y[va]).statistic)})
    summary = {}
    for mode in ("finetune", "frozen"):
        v = [r["val_spearman"] for r in rows if r["mode"] == mode]
        if v:
            summary[mode] = {"val_spearman_mean": float(np.mean(v)), "val_spearman_std": float(np.std(v)),
                             "n_runs": len(v), "val_pearson_mean": float(np.mean([r["val_pearson"] for r in rows
                                                                                   if r["mode"] == mode]))}
    paired = [(f["val_spearman"], z["val_spearman"]) for f in rows if f["mode"] == "finetune"
              for z in rows if z["mode"] == "frozen" and z["split_seed"] == f["split_seed"]]
    result = {"labels": str(args.labels), "n_labels": int(len(ids)), "encoder": ENCODER.__dict__,
              "label_mean": float(y.mean()), "label_std": float(y.std()), "runs": rows, "reference_predictors": refs,
              "summary": summary, "paired_same_split (finetune, frozen)": paired}
    (HERE / "results.json").write_text(json.dumps(result, indent=2))
    with open(HERE / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["mode", "split_seed", "val_spearman", "ci_lo", "ci_hi", "val_pearson",
                                           "val_mse_z", "val_mse_z_constant", "n_train", "n_val", "fit_seconds"])
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k) for k in w.fieldnames} | {"ci_lo": r["spearman_ci95"][0], "ci_hi": r["spearman_ci95"][1]})
    plot(rows, refs, HERE / "fit_comparison.png")
    print(json.dumps({"summary": summary, "reference_predictors": refs, "paired": paired}, indent=2))


def plot(rows: list[dict], refs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    ax = axes[0]
    modes = ["finetune", "frozen"]
    for j, mode in enumerate(modes):
        rs = [r for r in rows if r["mode"] == mode]
        for r in rs:
            ax.errorbar(j + 0.04 * (r["split_seed"] % 7), r["val_spearman"],
                        yerr=[[r["val_spearman"] - r["spearman_ci95"][0]], [r["spearman_ci95"][1] - r["val_spearman"]]],
                        fmt="o", capsize=3, label=f"split {r['split_seed']}" if j == 1 else None)
    for k, key in enumerate(("domain_mean_spearman", "own_lm_loss_spearman")):
        for r in refs:
            ax.plot(2 + k + 0.04 * (r["split_seed"] % 7), r[key], "s", color="gray")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(range(4), ["fine-tuned\n(MATES)", "frozen trunk\n+ ridge", "domain\nmean", "own LM\nloss"])
    ax.set_ylabel("validation Spearman (95% bootstrap)")
    ax.legend(fontsize=7)
    for ax, mode in zip(axes[1:], modes):
        r = next((r for r in rows if r["mode"] == mode), None)
        if r is None:
            continue
        d = HERE / "runs" / "models" / f"{mode}_s{r['split_seed']}"
        val = pq.read_table(d / "val_predictions.parquet").to_pandas()
        ax.scatter(val["ref_loss_delta"], val["predicted"], s=12, alpha=0.7)
        ax.set_xlabel("oracle ref_loss_delta (validation)")
        ax.set_ylabel("predicted")
        ax.set_title(f"{mode}, split {r['split_seed']}: Spearman {r['val_spearman']:.3f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
