"""The report's figures as PNG bytes (matplotlib, Agg, imported when a figure is drawn): forest plots
of the paired differences, reference loss vs tokens and vs FLOPs, domain shares of the selected data
and score histograms.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from datamates.report.gather import selector_names
from datamates.report.stats import paired_table
from datamates.run_dir import is_done
from datamates.selection.scores_io import read_scores


def _fig_to_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_forest(group: list[dict[str, Any]]) -> list[tuple[str, str, bytes]]:
    """One forest plot per metric: each selector's paired difference to random, 95% t interval
    (thick) and bootstrap interval (thin), 0 marked."""
    rows = paired_table(group)
    figs = []
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    for m in metrics:
        rs = [r for r in rows if r["metric"] == m and r["n"] >= 1]
        if not rs:
            continue
        plt = _plt()
        fig, ax = plt.subplots(figsize=(6, 0.6 + 0.5 * len(rs)))
        for y, r in enumerate(rs):
            lo, hi = r["t_ci"]
            if not math.isnan(lo):
                ax.plot([lo, hi], [y, y], lw=3, color="C0", solid_capstyle="butt")
            blo, bhi = r["boot_ci"]
            if not math.isnan(blo):
                ax.plot([blo, bhi], [y + 0.18, y + 0.18], lw=1, color="C1")
            ax.plot([r["mean"]], [y], "o", color="k")
        ax.axvline(0, color="grey", lw=1, ls="--")
        ax.set_yticks(range(len(rs)), [f"{r['selector']} ({r['wins']}/{r['n']})" for r in rs])
        better = "← better" if rs[0]["lower_is_better"] else "better →"
        ax.set_xlabel(f"{m}: selector − random ({better}); thick: 95% t, thin: bootstrap")
        ax.set_ylim(-0.6, len(rs) - 0.4)
        ax.grid(alpha=0.3, axis="x")
        safe = "".join(c if c.isalnum() else "_" for c in m).strip("_")
        figs.append((f"Paired difference to random: {m}", f"forest_{safe}.png", _fig_to_png(fig)))
    return figs


def plot_curves(runs: list[dict[str, Any]], x_key: str) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for sel in selector_names(runs):
        by_stage: dict[int, list[tuple[float, float]]] = {}
        for r in runs:
            for p in r["selectors"].get(sel, {}).get("curve", []):
                by_stage.setdefault(p["stage"], []).append((p[x_key], p["loss"]))
        if not by_stage:
            continue
        st = sorted(by_stage)
        xs = [np.mean([a for a, _ in by_stage[s]]) for s in st]
        ms = [np.mean([b for _, b in by_stage[s]]) for s in st]
        sd = [np.std([b for _, b in by_stage[s]]) for s in st]
        ax.errorbar(xs, ms, yerr=sd, marker="o", capsize=3, label=sel)
    ax.set_xlabel("training tokens" if x_key == "tokens" else "total FLOPs (training + selection)")
    ax.set_ylabel("reference loss (nats / target token)")
    if x_key == "flops":
        ax.set_xscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    return _fig_to_png(fig)


def plot_domains(runs: list[dict[str, Any]], domains: list[str]) -> bytes | None:
    sels = selector_names(runs)
    if not sels:
        return None
    plt = _plt()
    r0 = runs[0]
    fig, axes = plt.subplots(1, len(sels), figsize=(3.2 * len(sels), 3.6), sharey=True, squeeze=False)
    drawn = False
    for ax, sel in zip(axes[0], sels):
        rows = r0["selectors"][sel].get("selected_domains", [])
        if not rows:
            continue
        stages = [row["stage"] for row in rows]
        bottom = np.zeros(len(rows))
        for d in domains:
            vals = np.array([row["counts"].get(d, 0) for row in rows], dtype=float)
            tot = np.array([max(1, sum(row["counts"].values())) for row in rows], dtype=float)
            ax.bar([str(s) for s in stages], vals / tot, bottom=bottom, label=d)
            bottom += vals / tot
        ax.set_title(sel)
        ax.set_xlabel("stage")
        drawn = True
    axes[0][0].set_ylabel("share of selected sequences")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
    return _fig_to_png(fig) if drawn else None


def plot_score_hist(scores_dir: Path, selected_dir: Path) -> bytes | None:

    if not is_done(scores_dir):
        return None
    ids, sc = read_scores(scores_dir)
    if not len(sc) or not np.isfinite(sc).all() or float(sc.min()) == float(sc.max()):
        return None  # nothing to draw a histogram of
    kept = set(np.load(selected_dir / "ids.npy").tolist()) if is_done(selected_dir) else set()
    m = np.array([i in kept for i in ids.tolist()])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3))
    bins = np.linspace(float(sc.min()), float(sc.max()), 40)
    ax.hist(sc[~m], bins=bins, alpha=0.6, label="not selected")
    ax.hist(sc[m], bins=bins, alpha=0.6, label="selected")
    ax.set_xlabel("predicted ref_loss_delta (lower is better)")
    ax.legend()
    return _fig_to_png(fig)
