"""Probe fidelity (issue 4): how well first-order labels track exact labels, how noisy the exact
label itself is, and how much the labels move between an early and a late checkpoint.

    .venv/bin/python experiments/probe_fidelity/run.py            # train (once), probe, analyse, plot

Steps (each skipped when its output exists, so a killed run resumes):
  1. train the tiny model on stage-1 ids (early checkpoint, 100 steps), continue on disjoint stage-2
     ids (late checkpoint, global step 400); both at the constant peak lr, like MATES's boundaries;
  2. at each checkpoint probe the same 1000 held-out sequences: exact (with the labels on two
     disjoint halves of the reference set), first_order with both anchors, and exact again on a
     subset with another reference batch order;
  3. correlations with bootstrap intervals -> results/results.json, results/labels.csv,
     results/fidelity.png.
Checkpoints and probe folders go to experiments/probe_fidelity/runs/ (gitignored).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DATAMATES_PROGRESS", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from scipy.stats import pearsonr, spearmanr  # noqa: E402

from datamates.config.base import from_dict  # noqa: E402
from datamates.config.core import ModelConfig, TrainConfig  # noqa: E402
from datamates.config.executor import ExecutorConfig  # noqa: E402
from datamates.config.probe import ProbeConfig  # noqa: E402
from datamates.core.pool import Pool  # noqa: E402
from datamates.core.reference import load_reference  # noqa: E402
from datamates.core.train_loop import train  # noqa: E402
from datamates.log import setup_logging  # noqa: E402
from datamates.selection.probe import probe, read_labels_table, read_meta, sample_probe_set  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RUNS = HERE / "runs"
RESULTS = HERE / "results"


def timed(label: str, times: dict, fn, *a, **kw):
    t0, c0 = time.time(), time.process_time()
    out = fn(*a, **kw)
    times[label] = {"wall_s": round(time.time() - t0, 1), "cpu_s": round(time.process_time() - c0, 1)}
    print(f"{label}: {times[label]}", file=sys.stderr, flush=True)
    return out


def boot(x: np.ndarray, y: np.ndarray, n: int, seed: int = 0) -> dict:
    """Spearman and Pearson with 95% bootstrap intervals (resampling probes)."""
    rng = np.random.default_rng(seed)
    s, p = [], []
    for _ in range(n):
        i = rng.integers(0, len(x), len(x))
        s.append(spearmanr(x[i], y[i])[0])
        p.append(pearsonr(x[i], y[i])[0])
    return {"spearman": round(float(spearmanr(x, y)[0]), 4),
            "spearman_ci95": [round(float(np.percentile(s, 2.5)), 4), round(float(np.percentile(s, 97.5)), 4)],
            "pearson": round(float(pearsonr(x, y)[0]), 4),
            "pearson_ci95": [round(float(np.percentile(p, 2.5)), 4), round(float(np.percentile(p, 97.5)), 4)],
            "n": int(len(x))}


def main() -> None:
    setup_logging(None)
    torch.set_num_threads(1)
    conf = yaml.safe_load((HERE / "config.yaml").read_text())
    pool = Pool(ROOT / conf["pool"])
    pc = conf["probe"]
    times: dict = {}

    # ---- probe set and disjoint training blocks (MATES: probes come from held-out shards)
    probes = sample_probe_set(pool, pc["n_probes"], seed=pc["probe_seed"])
    rest = np.setdiff1d(np.arange(len(pool)), probes)
    rest = rest[np.random.default_rng(0).permutation(len(rest))]
    stage1, stage2 = np.sort(rest[: len(rest) // 2]), np.sort(rest[len(rest) // 2 :])

    # ---- checkpoints
    tc = conf["train"]
    mcfg = from_dict(ModelConfig, conf["model"])
    base = dict(micro_batch_size=tc["micro_batch_size"], lr=tc["lr"], warmup_steps=tc["warmup_steps"],
                schedule=tc["schedule"], seed=tc["seed"], device="cpu", checkpoint_every=100, log_every=50)
    early, late = RUNS / "early", RUNS / "late"
    timed("train_early", times, train, TrainConfig(steps=tc["early_steps"], **base), mcfg, pool, stage1, early)
    timed("train_late", times, train, TrainConfig(steps=tc["late_steps"], **base), mcfg, pool, stage2, late,
          init=early)

    ref = load_reference(pc["reference"], pool.tokenizer(), size=pc["reference_size"], seed=pc["reference_seed"])
    cols: dict[str, np.ndarray] = {"seq_id": probes}
    metas: dict = {}
    for name, ckpt in (("early", early), ("late", late)):
        runs = RUNS / f"probe_{name}"
        kw = dict(device="cpu", reference_size=pc["reference_size"], reference_seed=pc["reference_seed"],
                  chunk_size=50, executor=ExecutorConfig(threads=1))
        out = timed(f"exact_{name}", times, probe, ProbeConfig(mode="exact", reference_halves=True, **kw),
                    ckpt, pool, probes, runs / "exact", reference=ref)
        t = read_labels_table(out)
        assert np.array_equal(t.column("seq_id").to_numpy(), probes)
        for c in ("ref_loss_delta", "ref_loss_delta_a", "ref_loss_delta_b", "loss", "grad_norm"):
            cols[f"{name}_exact{c.removeprefix('ref_loss_delta')}" if c.startswith("ref") else f"{name}_{c}"] = \
                t.column(c).to_numpy()
        metas[f"exact_{name}"] = read_meta(out)
        for anchor in pc["first_order_anchors"]:
            out = timed(f"first_order_{anchor}_{name}", times, probe,
                        ProbeConfig(mode="first_order", anchor=anchor, **kw), ckpt, pool, probes,
                        runs / f"first_order_{anchor}", reference=ref)
            cols[f"{name}_fo_{anchor}"] = read_labels_table(out).column("ref_loss_delta").to_numpy()
            metas[f"first_order_{anchor}_{name}"] = read_meta(out)
        sub = probes[: pc["batch_order_subset"]]
        out = timed(f"exact_reordered_{name}", times, probe,
                    ProbeConfig(mode="exact", batch_size=7, max_batch_tokens=None, **kw), ckpt, pool, sub,
                    runs / "exact_reordered", reference=ref)
        cols[f"{name}_exact_reordered"] = np.full(len(probes), np.nan)
        cols[f"{name}_exact_reordered"][: len(sub)] = read_labels_table(out).column("ref_loss_delta").to_numpy()

    # ---- analysis
    B = conf["bootstrap"]
    res: dict = {"config": conf, "n_probes": int(len(probes)), "reference": ref.describe(), "times": times}
    for name in ("early", "late"):
        ex = cols[f"{name}_exact"]
        a, b = cols[f"{name}_exact_a"], cols[f"{name}_exact_b"]
        halves = boot(a, b, B)
        r = halves["spearman"]
        k = len(pc["first_order_anchors"])
        sub = np.isfinite(cols[f"{name}_exact_reordered"])
        reo = cols[f"{name}_exact_reordered"][sub]
        m = metas[f"exact_{name}"]
        res[name] = {
            "global_step": m["global_step"], "lr": m["lr"], "ref_loss_before": m["ref_loss_before"],
            "exact_label": {"mean": float(ex.mean()), "std": float(ex.std()), "min": float(ex.min()),
                            "max": float(ex.max()), "fraction_negative": float((ex < 0).mean())},
            **{f"first_order_{anc}_vs_exact": {
                **boot(cols[f"{name}_fo_{anc}"], ex, B),
                "mean_abs_error": float(np.abs(cols[f"{name}_fo_{anc}"] - ex).mean()),
                "mean_error": float((cols[f"{name}_fo_{anc}"] - ex).mean()),
                "residual_std_over_label_std": float(np.std(cols[f"{name}_fo_{anc}"] - ex) / ex.std()),
            } for anc in pc["first_order_anchors"][:k]},
            "noise_floor_halves": {**halves, "spearman_brown_full_set": round(2 * r / (1 + r), 4),
                                   "half_size": int(len(ref) // 2)},
            "noise_floor_batch_order": {"n": int(sub.sum()),
                                        "max_abs_diff": float(np.abs(reo - ex[sub]).max()),
                                        "max_abs_diff_over_label_std": float(np.abs(reo - ex[sub]).max() / ex.std()),
                                        "spearman": float(spearmanr(reo, ex[sub])[0])},
            "probes_per_s": {k_: round(v["probes_per_s"], 3) for k_, v in metas.items() if k_.endswith(name)},
            "correlation_label_vs_candidate_loss": round(float(spearmanr(ex, cols[f"{name}_loss"])[0]), 4),
            "correlation_label_vs_grad_norm": round(float(spearmanr(ex, cols[f"{name}_grad_norm"])[0]), 4),
        }
    res["stage_to_stage_exact"] = boot(cols["early_exact"], cols["late_exact"], B)
    res["stage_to_stage_first_order_momentum"] = boot(cols["early_fo_momentum"], cols["late_fo_momentum"], B)
    res["mates_reference_stage_to_stage_spearman"] = 0.32
    cpu = sum(v["cpu_s"] for v in times.values())
    res["total_cpu_s"] = round(cpu, 1)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    header = list(cols)
    with open(RESULTS / "labels.csv", "w") as fh:
        fh.write(",".join(header) + "\n")
        for i in range(len(probes)):
            fh.write(",".join(str(int(cols[h][i])) if h == "seq_id" else f"{cols[h][i]:.9g}" for h in header) + "\n")
    plot(cols, res)
    print(json.dumps({k: res[k] for k in ("early", "late", "stage_to_stage_exact", "total_cpu_s")}, indent=2))


def plot(cols: dict, res: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 4, figsize=(18, 8.5))
    for r, name in enumerate(("early", "late")):
        ex = cols[f"{name}_exact"]
        for c, anc in enumerate(("momentum", "checkpoint")):
            fo = cols[f"{name}_fo_{anc}"]
            st = res[name][f"first_order_{anc}_vs_exact"]
            a = ax[r, c]
            a.scatter(ex, fo, s=4, alpha=0.5)
            lo, hi = min(ex.min(), fo.min()), max(ex.max(), fo.max())
            a.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            a.set_title(f"{name} (step {res[name]['global_step']}): first-order [{anc} anchor]\n"
                        f"Spearman {st['spearman']:.3f}, Pearson {st['pearson']:.3f}", fontsize=9)
            a.set_xlabel("exact ref_loss_delta")
            a.set_ylabel("first-order estimate")
        a = ax[r, 2]
        h = res[name]["noise_floor_halves"]
        a.scatter(cols[f"{name}_exact_a"], cols[f"{name}_exact_b"], s=4, alpha=0.5, color="C2")
        a.set_title(f"{name}: exact label on two disjoint halves ({h['half_size']} ex. each)\n"
                    f"Spearman {h['spearman']:.3f} (full set, Spearman-Brown {h['spearman_brown_full_set']:.3f})",
                    fontsize=9)
        a.set_xlabel("half A")
        a.set_ylabel("half B")
    a = ax[0, 3]
    s = res["stage_to_stage_exact"]
    a.scatter(cols["early_exact"], cols["late_exact"], s=4, alpha=0.5, color="C3")
    a.set_title(f"exact label, early vs late checkpoint\nSpearman {s['spearman']:.3f} (MATES: 0.32 at 10k vs 40k)",
                fontsize=9)
    a.set_xlabel(f"step {res['early']['global_step']}")
    a.set_ylabel(f"step {res['late']['global_step']}")
    a = ax[1, 3]
    a.scatter(cols["late_grad_norm"], cols["late_exact"], s=4, alpha=0.5, color="C4")
    a.set_xscale("log")
    a.set_title("late: exact label vs the candidate's gradient norm\n(clip threshold 1.0)", fontsize=9)
    a.set_xlabel("||grad lm_loss(x)||")
    a.set_ylabel("exact ref_loss_delta")
    fig.tight_layout()
    fig.savefig(RESULTS / "fidelity.png", dpi=110)


if __name__ == "__main__":
    main()
