"""Markdown (and the paired section's HTML) tables of a report: the paired rows against random with
their summary, planted junk kept, the final evaluation, per-task metrics, held-out perplexity,
effective temperatures, influence-model fits and the FLOPs breakdown. Numbers are formatted here.
"""

from __future__ import annotations

import html
import math
from typing import Any

import numpy as np

from datamates.html import md_table
from datamates.report.gather import BASELINE, selector_names
from datamates.report.stats import group_runs, mean_sd, paired_stats, paired_table


def _g(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.3g}" if abs(x) >= 1e4 or (x != 0 and abs(x) < 1e-3) else f"{x:.4f}"


def _ci(ci: tuple[float, float]) -> str:
    return "-" if any(math.isnan(c) for c in ci) else f"[{_g(ci[0])}, {_g(ci[1])}]"


def _fmt(v: Any) -> str:
    if isinstance(v, tuple):
        m, s = v
        if math.isnan(m):
            return "-"
        if m == 0 and not s:
            return "0"
        big = abs(m) >= 1e5
        return (f"{m:.3g} ± {s:.2g}" if big else f"{m:.4f} ± {s:.4f}") if s else (f"{m:.3g}" if big else f"{m:.4f}")
    return str(v)


def paired_summary(rows: list[dict[str, Any]]) -> str:
    """One line per selector: Δ to random [95% t interval] and the verdict of the headline metrics
    (every metric but the per-domain perplexities, which the full table below holds)."""
    metrics = [m for m in dict.fromkeys(r["metric"] for r in rows) if not (m.startswith("held-out ppl (")
                                                                           and m != "held-out ppl (all)")]
    sels = list(dict.fromkeys(r["selector"] for r in rows))
    mark = {"better than random at 95%": "**better**", "worse than random at 95%": "**worse**"}
    by = {(r["metric"], r["selector"]): r for r in rows}
    lines = ["| selector | " + " | ".join(f"{m} {'↓' if by[(m, next(s for s in sels if (m, s) in by))]['lower_is_better'] else '↑'}"
                                         for m in metrics) + " |", "|---|" + "---|" * len(metrics)]
    for s in sels:
        cells = []
        for m in metrics:
            r = by.get((m, s))
            cells.append("-" if r is None else
                         f"{_g(r['mean'])} {_ci(r['t_ci'])} {mark.get(r['verdict'], 'n.d.')} ({r['wins']}/{r['n']})")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_markdown(runs: list[dict[str, Any]]) -> str:
    """Per group of seed runs: every selector against random of the same seed, every metric."""
    parts = []
    for gi, group in enumerate(group_runs(runs), start=1):
        names = ", ".join(r["name"] for r in group)
        head = f"### Group {gi}: {len(group)} seed run(s) ({names})"
        if not any(BASELINE in r["selectors"] for r in group):
            parts += [head, "", f"(no `{BASELINE}` branch in these runs: nothing to pair with)", ""]
            continue
        rows = paired_table(group)
        if not rows:
            parts += [head, "", "(no finished evaluation to compare yet)", ""]
            continue
        lines = [head, "", "Summary: Δ = selector − random, [95% t interval], verdict (better / worse than random "
                 "at 95%, n.d. = not distinguishable), (seeds won / seeds).", "", paired_summary(rows), "",
                 "All metrics:", "",
                 "| metric | selector | selector mean ± sd | random mean ± sd | Δ = selector − random | 95% CI (t) "
                 "| 95% CI (bootstrap) | p (t) | seeds won | verdict |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            arrow = "↓" if r["lower_is_better"] else "↑"
            lines.append(f"| {r['metric']} ({arrow} better) | {r['selector']} | {_fmt(r['selector_mean_sd'])} | "
                         f"{_fmt(r['random_mean_sd'])} | {_g(r['mean'])} | {_ci(r['t_ci'])} | {_ci(r['boot_ci'])} | "
                         f"{_g(r['p'])} | {r['wins']}/{r['n']} | {r['verdict']} |")
        parts += lines + [""]
        for r in rows:
            if r["metric"] not in ("noise share kept", "junk share kept"):
                continue
            more = sum(bool((run["selectors"].get(r["selector"], {}).get("noise") or {}).get("more_than_random"))
                       for run in group)
            if r["mean"] > 0 or more:
                parts += [f"**Flagged:** `{r['selector']}` keeps more planted noise than random (Δ {_g(r['mean'])} "
                          f"of the kept set, {r['verdict']}; more than random in {more} of {len(group)} seed runs).",
                          ""]
    return "\n".join(parts).rstrip() + "\n"


def junk_table(runs: list[dict[str, Any]]) -> str:
    """Junk kept per selector and kind (<run>/noise.json of runs on a pool with planted junk,
    datamates.junk): mean ± sd over the runs, and the paired difference to random of the same run
    with its 95% t interval. Empty when no run has planted junk."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        for s, v in r["selectors"].items():
            n = v.get("noise") or {}
            if n.get("domain") == "junk" and "per_kind" in n:
                rows.setdefault(s, []).append({**n, "run": r["name"]})
    if not rows:
        return ""
    kinds = sorted({k for vs in rows.values() for v in vs for k in v["per_kind"]})

    def ms(xs: list[float]) -> str:
        return f"{np.mean(xs):.1%} ± {np.std(xs, ddof=1):.1%}" if len(xs) > 1 else f"{np.mean(xs):.1%}"

    lines = ["| selector | junk kept | " + " | ".join(kinds) + " | Δ vs random [95% t] | runs above random |",
             "|---|---|" + "---|" * len(kinds) + "---|---|"]
    rnd = {v["run"]: v["kept"] for v in rows.get(BASELINE, [])}
    for s, vs in rows.items():
        d = [v["kept"] - rnd[v["run"]] for v in vs if v["run"] in rnd]
        st = paired_stats(d, lower_is_better=True) if s != BASELINE and d else None
        delta = f"{st['mean']:+.1%} {_ci(st['t_ci'])}" if st else ""
        above = f"{sum(x > 0 for x in d)}/{len(d)}" if st else ""
        lines.append(f"| {s} | {ms([v['kept'] for v in vs])} | "
                     + " | ".join(ms([v["per_kind"].get(k, 0.0) for v in vs]) for k in kinds) + f" | {delta} | {above} |")
    return "\n".join(lines)


def comparison_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per selector: mean and spread (over runs) of the final metrics and the FLOPs."""
    rows = []
    for sel in selector_names(runs):
        finals = [r["selectors"][sel]["final_eval"] for r in runs if r["selectors"].get(sel, {}).get("final_eval")]
        accs = [r["selectors"][sel]["accounting"] for r in runs if sel in r["selectors"]]
        row: dict[str, Any] = {"selector": sel, "n_runs": len(finals)}
        for ref in sorted({k for f in finals for k in f.get("reference", {})}):
            row[f"{ref} loss"] = mean_sd([f["reference"][ref]["loss"] for f in finals if ref in f["reference"]])
            row[f"{ref} acc"] = mean_sd([f["reference"][ref]["acc"] for f in finals if ref in f["reference"]])
        row["nine-task mean"] = mean_sd([f["nine_task_mean"]["value"] for f in finals if f.get("nine_task_mean")])
        row["nine-task gold logprob/byte"] = mean_sd([f["nine_task_gold_logprob"]["value"] for f in finals
                                                        if f.get("nine_task_gold_logprob")])
        row["nine-task gold prob"] = mean_sd([f["nine_task_gold_prob"]["value"] for f in finals
                                                if f.get("nine_task_gold_prob")])
        row["held-out ppl"] = mean_sd([f["perplexity"]["heldout"]["all"]["ppl"] for f in finals
                                         if "heldout" in f.get("perplexity", {})])
        counted_all = all(np.isfinite(a["flops"]["selection"]) for a in accs)
        row["selection FLOPs"] = mean_sd([a["flops"]["selection"] for a in accs]) if counted_all else "not counted"
        row["selection / training"] = mean_sd([a["selection_overhead"] for a in accs]) if counted_all else "-"
        rows.append(row)
    return rows


def comparison_markdown(runs: list[dict[str, Any]]) -> str:
    rows = comparison_rows(runs)
    if not rows:
        return "(no selector has finished a stage yet)"
    keys = list(rows[0].keys())
    for r in rows[1:]:
        keys += [k for k in r if k not in keys]
    keys = [k for k in keys if any(_fmt(r.get(k, "-")) != "-" for r in rows)]  # a metric nobody has: no column
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(k, "-")) for k in keys) + " |")
    return "\n".join(lines)


def task_table(runs: list[dict[str, Any]], metric_key: str | None = None) -> str:
    """Per task, each selector's mean ± sd over runs of the task's own metric (acc or acc_norm, as
    the nine-task mean takes it), or of `metric_key` (e.g. gold_prob, gold_logprob)."""
    sels = selector_names(runs)
    tasks: list[str] = []
    for r in runs:
        for s in sels:
            f = r["selectors"].get(s, {}).get("final_eval") or {}
            tasks += [t for t in f.get("tasks", {}) if t not in tasks]
    if not tasks:
        return ""
    lines = ["| task (metric) | " + " | ".join(sels) + " |", "|" + "---|" * (len(sels) + 1)]
    for t in tasks:
        cells, metric = [], None
        for s in sels:
            vals = []
            for r in runs:
                res = (r["selectors"].get(s, {}).get("final_eval") or {}).get("tasks", {}).get(t)
                if res and (metric_key is None or metric_key in res):
                    metric = metric_key or res.get("metric", "acc")
                    vals.append(res[metric])
            cells.append(_fmt(mean_sd(vals)) if vals else "-")
        lines.append(f"| {t} ({metric}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fit_table(runs: list[dict[str, Any]]) -> str:
    """Validation Spearman / Pearson of each stage's influence model (mean ± sd over runs)."""
    rows = []
    for sel in selector_names(runs):
        stages = sorted({f["stage"] for r in runs for f in r["selectors"].get(sel, {}).get("fit", [])})
        for st in stages:
            fs = [f for r in runs for f in r["selectors"].get(sel, {}).get("fit", []) if f["stage"] == st]
            rows.append(f"| {sel} | {st} | {fs[0].get('n_labels')} | {_fmt(mean_sd([f['val_spearman'] for f in fs]))} "
                        f"| {_fmt(mean_sd([f['val_pearson'] for f in fs]))} |")
    if not rows:
        return ""
    return "\n".join(["| selector | stage | labels | validation Spearman | validation Pearson |", "|---|---|---|---|---|",
                      *rows])


def effective_table(runs: list[dict[str, Any]]) -> str:
    """The selection's effective temperature per selector and stage (mean ± sd over runs): sd of the
    standardised scores, tau / sd, and the share of the kept set exact top-k keeps too (random: k/N)."""
    rows = []
    for sel in selector_names(runs):
        stages = sorted({e["stage"] for r in runs for e in r["selectors"].get(sel, {}).get("effective", [])})
        for st in stages:
            es = [e for r in runs for e in r["selectors"].get(sel, {}).get("effective", []) if e["stage"] == st]
            cells = [_fmt(mean_sd([e.get(k) for e in es])) for k in ("z_sd", "tau_effective", "topk_overlap",
                                                                       "random_overlap")]
            rows.append(f"| {sel} | {st} | " + " | ".join(cells) + " |")
    if not rows:
        return ""
    return "\n".join(["| selector | stage | sd of standardised scores | tau / sd | share kept by exact top-k too "
                      "| same for random (k/N) |", "|---|---|---|---|---|---|", *rows])


def heldout_table(runs: list[dict[str, Any]]) -> str:
    """Held-out perplexity per domain of each selector's final model."""
    sels = selector_names(runs)
    domains: list[str] = []
    for r in runs:
        for s in sels:
            f = r["selectors"].get(s, {}).get("final_eval") or {}
            for d in f.get("perplexity", {}).get("heldout", {}).get("domains", {}):
                if d not in domains:
                    domains.append(d)
    if not domains:
        return ""
    lines = ["| held-out perplexity | " + " | ".join(sels) + " |", "|" + "---|" * (len(sels) + 1)]
    for d in domains + ["all"]:
        cells = []
        for s in sels:
            vals = []
            for r in runs:
                h = ((r["selectors"].get(s, {}).get("final_eval") or {}).get("perplexity", {}).get("heldout", {}))
                v = h.get("all") if d == "all" else h.get("domains", {}).get(d)
                if v:
                    vals.append(v["ppl"])
            cells.append(_fmt(mean_sd(vals)) if vals else "-")
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def flops_table(runs: list[dict[str, Any]]) -> str:
    """Counted FLOPs per component (accounting.py) and wall seconds; an artifact without token
    counts is named instead of a number."""
    comps = ["train", "probe", "fit", "score", "selection", "total", "eval"]
    lines = ["| selector | " + " | ".join(f"{c} FLOPs" for c in comps) +
             " | seconds (train / probe / fit / score / select) |", "|" + "---|" * (len(comps) + 2)]
    errors = []
    for s in selector_names(runs):
        all_accs = [r["selectors"][s]["accounting"] for r in runs if s in r["selectors"]]
        errors += [f"- {s}: FLOPs not counted: {e}" for a in all_accs for e in a.get("errors", [])]
        accs = all_accs
        fl = [_fmt(mean_sd([a["flops"][c] for a in accs])) if all(np.isfinite(a["flops"][c]) for a in accs)
              else "not counted" for c in comps]
        secs = " / ".join(f"{np.mean([a['seconds'].get(c, 0) for a in accs]):.0f}"
                          for c in ("train", "probe", "fit", "score", "select"))
        lines.append(f"| {s} | " + " | ".join(fl) + f" | {secs} |")
    return "\n".join(lines + ([""] + errors if errors else []))


def paired_html(runs: list[dict[str, Any]]) -> str:
    out = []
    for block in paired_markdown(runs).split("### ")[1:]:
        title, _, rest = block.partition("\n")
        out.append(f"<h3>{html.escape(title)}</h3>")
        for para in rest.strip().split("\n\n"):
            if para.startswith("|"):
                out.append(md_table(para.replace("**", "")))
            elif para.strip():
                out.append(f"<p>{html.escape(para.replace('**', ''))}</p>")
    return "\n".join(out)
