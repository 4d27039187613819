"""The ablation study's outputs (Na et al. 2024; docs/ablation.md): results.json, proxies.csv,
gold.csv, correlations.csv, claim.csv, scatter.png, ranking.png, report.md and report.html (rendered
by the shared `datamates.html`, like the MATES run report). Formats a results dict; computes nothing."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from datamates.html import page
from datamates.run_dir import atomic_write_json, atomic_write_text

BASELINE = "mean_unit_logppl"


def headline(results: dict[str, Any]) -> str:
    lines = [f"{'eval set':<28} {'n':>3} {'pearson':>8} {'spearman':>9} {'pairwise':>9}   (multi-unit gold mixtures)"]
    for s, e in results["correlations"].items():
        c = e["multi"]
        lines.append(f"{s:<28} {c['n']:>3} {c['pearson']:>8.3f} {c['spearman']:>9.3f} {c['pairwise']:>9.3f}")
    return "\n".join(lines)



def _short(mixture: str, units: list[str]) -> str:
    """'books+web' -> 'B+W' style labels: shortest unique prefixes of unit names."""
    pre = {}
    for u in units:
        n = 1
        while any(v != u and v[:n].lower() == u[:n].lower() for v in units) and n < len(u):
            n += 1
        pre[u] = u[:n]
    return "+".join(pre.get(p, p) for p in mixture.split("+"))


def write_outputs(results: dict[str, Any], out: Path, plots: bool = True) -> None:
    atomic_write_json(out / "results.json", results)
    sets = results["eval_sets"]
    for name, rows in (("proxies", results["proxies"]), ("gold", results["gold"])):
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["mixture", "k", "eval_set", "ppl", "logppl", "bpb", "acc"])
        for r in rows:
            for s in sets:
                e = r["eval"][s]
                w.writerow([r["mixture"], r["k"], s, f"{e['ppl']:.6g}", f"{e['logppl']:.6g}",
                            f"{e['bpb']:.6g}" if "bpb" in e else "", f"{e['acc']:.6g}" if "acc" in e else ""])
        atomic_write_text(out / f"{name}.csv", buf.getvalue())
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["eval_set", "scope", "proxy", "n", "pearson_log", "spearman", "kendall", "pairwise", "mean_abs_log_err",
                "pairwise_same_size", "pearson_within_size", "n_within_size"])
    for s, e in results["correlations"].items():
        for name, scopes in e["by_proxy"].items():
            for scope, c in scopes.items():
                w.writerow([s, scope, name, c["n"], f"{c['pearson']:.4f}", f"{c['spearman']:.4f}",
                            f"{c['kendall']:.4f}", f"{c['pairwise']:.4f}", f"{c['mean_abs_log_err']:.4f}",
                            f"{c.get('pairwise_same_size', float('nan')):.4f}",
                            f"{c.get('pearson_within_size', float('nan')):.4f}", c.get("n_within_size", "")])
    atomic_write_text(out / "correlations.csv", buf.getvalue())
    if results.get("claim"):
        atomic_write_text(out / "claim.csv", claim_csv(results["claim"]))
    if plots:
        for i, name in enumerate(results["proxy_methods"]):
            plot_scatter(results, out / ("scatter.png" if i == 0 else f"scatter_{_slug(name)}.png"), name)
        plot_ranking(results, out / "ranking.png")
    atomic_write_text(out / "report.md", report_markdown(results, plots))
    atomic_write_text(out / "report.html", report_html(results, plots))


CLAIM_STATS = ("pearson", "spearman", "pearson_within_size", "spearman_within_size", "pairwise",
               "pairwise_same_size", "mean_abs_log_err")


def claim_csv(claim: dict[str, dict[str, Any]]) -> str:
    """One row per (eval set, predictor, statistic): value and 95% bootstrap interval."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["eval_set", "predictor", "stat", "n", "value", "ci_lo", "ci_hi"])
    for s, t in claim.items():
        for pred, st in t.items():
            if not isinstance(st, dict):
                continue
            for name in CLAIM_STATS:
                v = st[name]
                w.writerow([s, pred, name, st["n"], f"{v['value']:.4f}", f"{v['ci'][0]:.4f}", f"{v['ci'][1]:.4f}"])
            for k, bs in st.get("by_size", {}).items():
                w.writerow([s, pred, f"pearson_size_{k}", bs["n"], f"{bs['pearson']:.4f}", "", ""])
                w.writerow([s, pred, f"spearman_size_{k}", bs["n"], f"{bs['spearman']:.4f}", "", ""])
    return buf.getvalue()


def _ci_cell(v: dict[str, Any]) -> str:
    return f"{_fmt(v['value'], '.2f')} [{_fmt(v['ci'][0], '.2f')}, {_fmt(v['ci'][1], '.2f')}]"


def claim_markdown(claim: dict[str, dict[str, Any]]) -> str:
    """The claim table: per evaluation set, pooled and within-size Pearson / Spearman and pairwise
    accuracy of the proxy with 95% bootstrap intervals, next to both free baselines."""
    L = ["| eval set | n | Pearson pooled | Pearson within size | Spearman pooled | Spearman within size | "
         "pairwise | pairwise same size | baseline mean-unit: Pearson pooled / within / pairwise | "
         "baseline seed: mean abs log err (proxy's) |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s, t in claim.items():
        p, b, sd = t["proxy"], t[BASELINE], t["seed"]
        L.append(f"| {s} | {p['n']} | {_ci_cell(p['pearson'])} | {_ci_cell(p['pearson_within_size'])} | "
                 f"{_ci_cell(p['spearman'])} | {_ci_cell(p['spearman_within_size'])} | {_ci_cell(p['pairwise'])} | "
                 f"{_ci_cell(p['pairwise_same_size'])} | {_fmt(b['pearson']['value'], '.2f')} / "
                 f"{_fmt(b['pearson_within_size']['value'], '.2f')} / {_fmt(b['pairwise']['value'], '.2f')} | "
                 f"{_fmt(sd['mean_abs_log_err']['value'], '.3f')} ({_fmt(p['mean_abs_log_err']['value'], '.3f')}) |")
    return "\n".join(L)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def plot_scatter(results: dict[str, Any], path: Path, method: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = results["eval_sets"]
    units = [u["name"] for u in results["units"]]
    method = method or results["method"]
    proxy = {r["mixture"]: {"eval": r["evals"][method]} for r in results["proxies"]}
    ncol = min(3, len(sets))
    nrow = math.ceil(len(sets) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.3 * ncol, 4.0 * nrow), squeeze=False)
    K = len(units)
    cmap = plt.get_cmap("viridis")
    for ax, s in zip(axes.flat, sets):
        xs, ys = [], []
        for r in results["gold"]:
            x, y = proxy[r["mixture"]]["eval"][s]["ppl"], r["eval"][s]["ppl"]
            xs.append(x)
            ys.append(y)
            ax.scatter([x], [y], color=cmap((r["k"] - 1) / max(K - 1, 1)), s=36,
                       marker="o" if r["k"] > 1 else "s", edgecolor="k", linewidth=0.4, zorder=3)
            ax.annotate(_short(r["mixture"], units), (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
        lo, hi = min(xs + ys), max(xs + ys)
        ax.plot([lo, hi], [lo, hi], color="0.7", lw=0.8, ls="--", zorder=1)
        pad = 0.04 * (hi - lo)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        ax.ticklabel_format(style="plain", useOffset=False)
        c = results["correlations"][s]["by_proxy"][method]["multi"]
        ca = results["correlations"][s]["by_proxy"][method]["all"]
        ax.set_title(f"{s}\nmulti-unit: r={c['pearson']:.2f} rho={c['spearman']:.2f} | all: r={ca['pearson']:.2f}",
                     fontsize=8)
        ax.set_xlabel("proxy perplexity (merged)", fontsize=8)
        ax.set_ylabel("gold perplexity (trained on union)", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(sets):]:
        ax.axis("off")
    fig.suptitle(f"perplexity: proxy ({method}) vs gold (Pearson on log PPL), colour = units in the mixture, "
                 "squares = single units (proxy = gold)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_ranking(results: dict[str, Any], path: Path) -> None:
    """Heat map: every mixture's proxy rank per evaluation set (1 = lowest perplexity); rows
    sorted by mean rank; gold mixtures marked with their gold rank among the gold mixtures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = results["eval_sets"]
    units = [u["name"] for u in results["units"]]
    rows = results["proxies"]
    P = np.array([[r["eval"][s]["logppl"] for s in sets] for r in rows])  # [M, S]
    ranks = P.argsort(0).argsort(0) + 1
    order = np.argsort(ranks.mean(1), kind="stable")
    gold = {r["mixture"]: r for r in results["gold"]}
    G = {s: sorted(gold, key=lambda m: gold[m]["eval"][s]["logppl"]) for s in sets}
    fig, ax = plt.subplots(figsize=(1.1 * len(sets) + 3, 0.22 * len(rows) + 1.6))
    im = ax.imshow(ranks[order], cmap="RdYlGn_r", aspect="auto")
    ax.set_xticks(range(len(sets)))
    ax.set_xticklabels([s.replace("heldout/", "") for s in sets], rotation=35, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([("* " if rows[i]["mixture"] in gold else "") + _short(rows[i]["mixture"], units) for i in order],
                       fontsize=6)
    for yi, i in enumerate(order):
        m = rows[i]["mixture"]
        for j, s in enumerate(sets):
            txt = str(ranks[i, j])
            if m in gold:
                txt += f"|{G[s].index(m) + 1}"
            ax.text(j, yi, txt, ha="center", va="center", fontsize=5)
    fig.colorbar(im, ax=ax, fraction=0.03, label="proxy rank (1 = best)")
    ax.set_title("mixtures ranked by proxy perplexity; * gold mixtures: 'proxy rank|gold rank among gold'", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _fmt(x: float | None, spec: str = ".3f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return format(x, spec)


def report_markdown(results: dict[str, Any], plots: bool = True) -> str:
    sets = results["eval_sets"]
    units = results["units"]
    cfg = results["config"]
    costs = results["costs"]
    L = []
    L.append("# Data ablation by merging: proxy vs gold\n")
    L.append(f"{len(units)} units, {len(results['proxies'])} mixture proxies ({results['method']} merge"
             + (f", lambda {results['lam']}" if results["method"] == "task_arithmetic" else "") + f"), "
             f"{sum(1 for g in results['gold'] if g['k'] > 1)} multi-unit gold models"
             + (f" + {sum(1 for g in results['gold'] if g['k'] == 1)} single-unit gold (= the unit models)"
                if any(g["k"] == 1 for g in results["gold"]) else "") + ".\n")
    L.append("| unit | sequences | tokens | documents |\n|---|---:|---:|---:|")
    for u in units:
        L.append(f"| {u['name']} | {u['sequences']:,} | {u['tokens']:,} | {u['documents']:,} |")
    L.append("")
    L.append(f"Unit models: {cfg['branch']['steps']} steps from the seed; gold model of k units: k x "
             f"{cfg['branch']['steps']} steps on the union (balance: {cfg['gold_balance']}).\n")
    L.append("## Proxy vs gold\n")
    L.append("Pearson on log perplexity, Spearman, Kendall, and pairwise agreement (share of mixture pairs ordered "
             "alike), over the multi-unit gold mixtures (`multi`) and over all gold mixtures including single units "
             "(`all`; a single unit's proxy is its gold model). *Same size*: pairs of mixtures with equally many "
             "units; *within size*: Pearson after removing each size's mean (a gold model of k units trains k times "
             "longer, which averaging cannot reproduce). Baseline: the mean of the unit models' log PPL.\n")
    L.append("| eval set | seed PPL | n | Pearson | Spearman | Kendall | pairwise | pairwise (same size) | "
             "Pearson (within size) | n (all) | Pearson (all) | Spearman (all) | pairwise (all) | baseline Pearson | "
             "baseline pairwise |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in sets:
        e = results["correlations"][s]
        c, a = e["multi"], e["all"]
        b = e["by_proxy"].get(BASELINE, {}).get("multi", {})
        L.append(f"| {s} | {results['seed']['eval'][s]['ppl']:.2f} | {c['n']} | {_fmt(c['pearson'])} | "
                 f"{_fmt(c['spearman'])} | {_fmt(c['kendall'])} | {_fmt(c['pairwise'])} | "
                 f"{_fmt(c.get('pairwise_same_size'))} | {_fmt(c.get('pearson_within_size'))} | {a['n']} | "
                 f"{_fmt(a['pearson'])} | {_fmt(a['spearman'])} | {_fmt(a['pairwise'])} | "
                 f"{_fmt(b.get('pearson'))} | {_fmt(b.get('pairwise'))} |")
    names = list(results["correlations"][sets[0]]["by_proxy"]) if sets else []
    if len(names) > 1:
        L.append("\nEvery proxy rule, multi-unit gold mixtures: Pearson (log PPL) / Spearman / pairwise agreement / "
                 "pairwise agreement within a size.\n")
        L.append("| eval set | " + " | ".join(names) + " |")
        L.append("|---|" + "---:|" * len(names))
        for s in sets:
            by = results["correlations"][s]["by_proxy"]
            L.append(f"| {s} | " + " | ".join(
                f"{_fmt(by[n]['multi']['pearson'], '.2f')} / {_fmt(by[n]['multi']['spearman'], '.2f')} / "
                f"{_fmt(by[n]['multi']['pairwise'], '.2f')} / {_fmt(by[n]['multi'].get('pairwise_same_size'), '.2f')}"
                for n in names) + " |")
    if results.get("claim"):
        L.append("\n### The claim, with 95% bootstrap intervals (ablation/stats.py)\n")
        L.append(claim_markdown(results["claim"]))
    for name, claim in (results.get("pairings") or {}).items():
        if claim:
            rule, bal = name.split("~")
            L.append(f"\n### Uneven units: {rule} merge against {bal} gold mixtures\n")
            L.append(claim_markdown(claim))
    L.append("\n![proxy vs gold](scatter.png)\n" if plots else "")
    if plots:
        for name in results["proxy_methods"][1:]:
            L.append(f"![proxy vs gold, {name}](scatter_{_slug(name)}.png)\n")
    L.append("## Gold mixtures: perplexity (proxy / gold)\n")
    L.append("| mixture | k | " + " | ".join(s.replace("heldout/", "") for s in sets) + " |")
    L.append("|---|---:|" + "---:|" * len(sets))
    proxy = {r["mixture"]: r for r in results["proxies"]}
    for g in results["gold"]:
        cells = [f"{proxy[g['mixture']]['eval'][s]['ppl']:.2f} / {g['eval'][s]['ppl']:.2f}" for s in sets]
        L.append(f"| {g['mixture']} | {g['k']} | " + " | ".join(cells) + " |")
    L.append("\n## Best mixtures by proxy\n")
    L.append("| eval set | top 3 by proxy perplexity |\n|---|---|")
    for s in sets:
        top = sorted(results["proxies"], key=lambda r: r["eval"][s]["logppl"])[:3]
        L.append(f"| {s} | " + ", ".join(f"{r['mixture']} ({r['eval'][s]['ppl']:.2f})" for r in top) + " |")
    L.append("\n![mixture ranking](ranking.png)\n" if plots else "")
    L.append("## Cost\n")
    n_gold = sum(1 for g in results["gold"] if g["k"] > 1)
    rows = [("seed training", costs.get("seed_train_s"), ""),
            (f"unit training ({len(units)} models)", costs.get("unit_train_s"), f"{len(units)} unit-trainings"),
            (f"gold training ({n_gold} models)", costs.get("gold_train_s"),
             f"{costs.get('gold_unit_trainings')} unit-trainings"),
            ("proxy merges (Gray-code running sums)", costs.get("proxy_merge_s"), ""),
            ("proxy evaluations", costs.get("proxy_eval_s"), f"{costs.get('proxy_evaluations')} evaluations"),
            ("gold evaluations", costs.get("gold_eval_s"), ""),
            ("seed evaluation", costs.get("seed_eval_s"), "")]
    L.append("| item | seconds | |\n|---|---:|---|")
    for name, sec, note in rows:
        L.append(f"| {name} | {_fmt(sec, ',.1f')} | {note} |")
    L.append(f"\nTraining a gold model for every one of the {len(results['proxies'])} mixtures would take "
             f"{costs['every_gold_unit_trainings']} unit-trainings (~{_fmt(costs['every_gold_train_s_estimate'], ',.0f')} s "
             f"at the measured unit training time) instead of {len(units)} for the proxies; evaluation costs the "
             "same per mixture either way.\n")
    return "\n".join(L)


def report_html(results: dict[str, Any], plots: bool = True) -> str:
    """The Markdown report rendered by the shared renderer (`datamates.html`)."""
    return page("datamates ablation", report_markdown(results, plots))
