"""Reports from the files of one or more runs (never from in-memory state, so a resumed or
partial run reports what is on disk).

`summarize_run(rd)` writes `<run>/metrics.json` (per selector: final evaluation, reference-loss
curve, counted FLOPs and seconds per component and stage, see accounting.py) and returns it.
`build_report(runs, out)` writes one self-contained `report.html` (plots embedded) and `report.md`
comparing selectors: first, per group of runs that differ only in seed, every selector paired
with `random` of the same seed run (mean ± sd, the paired difference with its 95% t and bootstrap
intervals, seeds won, a verdict; a forest plot per metric; see "paired statistics" below); then
reference loss vs training tokens and vs total FLOPs, the influence model's fit, score
histograms, domain shares of the selected data, the highest- and lowest-scored sequences, the
final evaluation tables (continuous nine-task metrics included) and the FLOPs breakdown.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from datamates.ablation.ablate import headline
from datamates.accounting import summarize_branch
from datamates.core.pool import Pool
from datamates.html import markdown, md_table, page_head
from datamates.run_dir import (
    WARMUP,
    RunDir,
    StagePaths,
    atomic_write_json,
    atomic_write_text,
    is_done,
    read_json,
    train_summary,
)
from datamates.selection.scores_io import read_scores

# ----------------------------------------------------------------------------- gathering


def _stages(rd: RunDir, branch: str) -> list[tuple[int, StagePaths]]:
    """(stage number, its artifacts) of a selector's history: the shared warmup stages, then its own."""
    return [(st.number, st) for b in (WARMUP, branch) for st in rd.branch(b).stages()]


def _ref_curve(stages: list[tuple[int, StagePaths]], cum_flops: list[float]) -> list[dict[str, Any]]:
    pts = []
    tokens = 0
    for (s, d), fl in zip(stages, cum_flops):
        ts = train_summary(d.checkpoint)
        ev = d.eval / "eval.json"
        if not ts.exists():
            break
        tokens += json.loads(ts.read_text())["tokens"]
        if ev.exists():
            ref = read_json(ev)["reference"]
            for name, r in ref.items():
                pts.append({"stage": s, "tokens": tokens, "flops": fl, "reference": name, "loss": r["loss"],
                            "acc": r.get("acc")})
    return pts


def _run_config(rd: RunDir) -> dict[str, Any]:
    f = rd.config
    if f.exists():
        import yaml

        return yaml.safe_load(f.read_text())
    return {}


def summarize_run(rd: RunDir) -> dict[str, Any]:
    """Aggregate one run's artifacts into metrics.json; returns the dict. A selector whose FLOPs
    cannot be fully counted (an artifact without token counts) gets NaN for that component and
    `accounting.errors` naming the artifact; the report shows them instead of a number."""
    cfg = _run_config(rd)
    branches = rd.branches()
    pool_meta = _pool_meta(rd)
    out: dict[str, Any] = {"run": str(rd.root), "name": cfg.get("name", rd.root.name), "config": cfg,
                           "selectors": {}}
    for b in branches:
        stages = _stages(rd, b)
        br = rd.branch(b)
        acc = summarize_branch([d.folder for _, d in stages], final=br.final, final_eval=br.final_eval,
                               branch_dir=br.base)
        cum, run_total = [], 0.0
        for row in acc["stages"]:
            run_total += sum(v for k, v in row["flops"].items() if k != "eval")
            cum.append(run_total)
        final = read_json(br.final_eval / "eval.json") if is_done(br.final_eval) else None
        out["selectors"][b] = {
            "curve": _ref_curve(stages, cum),
            "accounting": acc,
            "final_eval": final,
            "decay_seconds": read_json(br.base / "timings.json").get("decay") if (br.base / "timings.json").exists() else None,
            "fit": _fits(stages),
            "selected_domains": _domain_shares(rd, stages, pool_meta),
            "effective": _effective(stages),
            "noise": _noise(rd, b),
            "targets": read_json(br.base / "targets.json") if (br.base / "targets.json").exists() else None,
        }
    atomic_write_json(rd.metrics, out)
    return out


def _pool_meta(rd: RunDir) -> dict[str, Any]:
    if (rd.pool / "meta.json").exists():
        return read_json(rd.pool / "meta.json")
    shared = _run_config(rd).get("pool_dir")
    if shared and (Path(shared) / "meta.json").exists():
        return read_json(Path(shared) / "meta.json")
    return {}


def _fits(stages: list[tuple[int, StagePaths]]) -> list[dict[str, Any]]:
    out = []
    for s, d in stages:
        m = d.influence_model / "meta.json"
        if m.exists():
            met = read_json(m).get("metrics", {})
            out.append({"stage": s, "val_spearman": met.get("val_spearman"), "val_pearson": met.get("val_pearson"),
                        "n_labels": met.get("n_labels"), "scatter": str(d.influence_model / "scatter.png")})
    return out


def _effective(stages: list[tuple[int, StagePaths]]) -> list[dict[str, Any]]:
    """Per stage: the selection's effective temperature (selection/select.py meta.json `effective`)."""
    out = []
    for s, d in stages:
        m = d.selected / "meta.json"
        if m.exists():
            eff = read_json(m).get("effective")
            if eff:
                out.append({"stage": s, **eff})
    return out


def _domain_shares(rd: RunDir, stages: list[tuple[int, StagePaths]], pool_meta: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for s, d in stages:
        m = d.selected / "meta.json"
        if m.exists():
            meta = read_json(m)
            counts = meta.get("kept_per_domain") or meta.get("per_domain") or {}
            out.append({"stage": s, "counts": counts})
    return out


def _noise(rd: RunDir, branch: str) -> dict[str, Any] | None:
    """This selector's share of planted noise in its kept set, from `<run>/noise.json`
    (experiments/selection_arena/noise.py: {"domain", "random": share, "selectors": {name: {"kept",
    "candidates", "per_stage", "ratio_to_random", "more_than_random"}}}); None without that file."""
    f = rd.root / "noise.json"
    if not f.exists():
        return None
    data = read_json(f)
    entry = dict((data.get("selectors") or {}).get(branch) or {})
    if branch == BASELINE and "kept" not in entry and isinstance(data.get("random"), (int, float)):
        entry["kept"] = data["random"]
    if "kept" not in entry:
        return None
    return {"domain": data.get("domain", "noise"), "random": data.get("random"), **entry}


# ----------------------------------------------------------------------------- paired statistics
#
# Runs that differ only in seed form a group; inside one run every selector shares the plan and the
# warmup with `random`, so each run gives one paired difference d_i = metric(selector) - metric(random)
# per metric. Over the n runs of a group:
#
#     mean +- t_{0.975, n-1} * sd(d) / sqrt(n)            Student t interval (the verdict)
#     [q_2.5, q_97.5] of the mean of n seeds drawn with replacement, 10,000 times (percentile
#     bootstrap; shown beside the t interval, it under-covers with few seeds)
#     wins = seeds where the selector is on the better side of random
#
# The verdict: "better than random at 95%" when the whole t interval lies on the better side of 0,
# "worse than random at 95%" on the other side, otherwise "not distinguishable". t quantiles come
# from scipy (a dependency of datamates).

SEED_KEYS = ("name", "runs_root", "config_hash")
BOOTSTRAP_SAMPLES = 10_000
BASELINE = "random"


def _strip_seeds(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_seeds(v) for k, v in sorted(node.items()) if "seed" not in k.lower() and k not in SEED_KEYS}
    if isinstance(node, list):
        return [_strip_seeds(v) for v in node]
    return node


def group_runs(runs: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Runs whose configs are equal once every `*seed*` key (and name, runs_root, config_hash) and
    `mates.selectors` are removed, in input order (a selector is paired over the seeds that ran it)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        cfg = _strip_seeds(r.get("config") or {})
        if isinstance(cfg.get("mates"), dict):  # which branches ran is not a setting: a selector added to
            cfg["mates"] = {k: v for k, v in cfg["mates"].items() if k != "selectors"}  # some seeds pairs on those
        key = json.dumps(cfg, sort_keys=True, default=str)
        groups.setdefault(key, []).append(r)
    return list(groups.values())


def paired_stats(diffs: list[float] | np.ndarray, *, lower_is_better: bool, seed: int = 0,
                 n_boot: int = BOOTSTRAP_SAMPLES) -> dict[str, Any]:
    """Mean paired difference (selector - baseline) with its 95% t and bootstrap intervals, the
    t-test p-value, the seeds won and the verdict (see above)."""
    from scipy import stats

    d = np.asarray([x for x in diffs if x is not None and np.isfinite(x)], dtype=np.float64)
    n = len(d)
    out: dict[str, Any] = {"n": n, "mean": float(d.mean()) if n else float("nan"),
                           "sd": float(d.std(ddof=1)) if n > 1 else float("nan"),
                           "t_ci": (float("nan"), float("nan")), "boot_ci": (float("nan"), float("nan")),
                           "p": float("nan"), "wins": int(((d < 0) if lower_is_better else (d > 0)).sum()),
                           "lower_is_better": lower_is_better}
    if n < 2:
        out["verdict"] = f"not distinguishable ({n} seed{'s' if n != 1 else ''})"
        return out
    se = out["sd"] / math.sqrt(n)
    h = float(stats.t.ppf(0.975, n - 1)) * se
    out["t_ci"] = (out["mean"] - h, out["mean"] + h)
    if se > 0:
        out["p"] = float(2 * stats.t.sf(abs(out["mean"]) / se, n - 1))
    else:
        out["p"] = 0.0 if out["mean"] != 0 else 1.0
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    out["boot_ci"] = (float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975)))
    lo, hi = out["t_ci"]
    better = hi < 0 if lower_is_better else lo > 0
    worse = lo > 0 if lower_is_better else hi < 0
    out["verdict"] = ("better than random at 95%" if better else "worse than random at 95%" if worse
                      else "not distinguishable")
    return out


def run_metrics(sel: dict[str, Any]) -> dict[str, tuple[float | None, bool]]:
    """metric name -> (value, lower_is_better) of one selector of one run."""
    out: dict[str, tuple[float | None, bool]] = {}
    f = sel.get("final_eval") or {}
    for ref, r in sorted(f.get("reference", {}).items()):
        out[f"{ref} loss"] = (r.get("loss"), True)
    h = f.get("perplexity", {}).get("heldout")
    if h:
        out["held-out ppl (all)"] = (h["all"]["ppl"], True)
        for d, v in h.get("domains", {}).items():
            out[f"held-out ppl ({d})"] = (v["ppl"], True)
    nine = "nine_task" if f.get("nine_task_mean") else None
    if nine:
        out["nine-task acc"] = (f["nine_task_mean"]["value"], False)
        for key, label in (("nine_task_gold_logprob", "nine-task gold logprob/byte"),
                           ("nine_task_gold_prob", "nine-task gold prob")):
            if f.get(key):
                out[label] = (f[key]["value"], False)
    elif f.get("task_mean"):
        out["task-mean acc"] = (f["task_mean"]["value"], False)
        tasks = [t for t in f.get("tasks", {}).values() if "gold_prob" in t]
        if tasks:
            out["task-mean gold logprob/byte"] = (float(np.mean([t["gold_logprob"] for t in tasks])), False)
            out["task-mean gold prob"] = (float(np.mean([t["gold_prob"] for t in tasks])), False)
    acc = sel.get("accounting") or {}
    if "flops" in acc:
        out["selection FLOPs"] = (acc["flops"]["selection"], True)
    if "seconds" in acc:
        out["selection seconds"] = (acc["seconds"].get("selection"), True)
    noise = sel.get("noise") or {}
    if isinstance(noise.get("kept"), (int, float)):
        out["junk share kept" if noise.get("domain") == "junk" else "noise share kept"] = (noise["kept"], True)
    for m in TARGET_METRICS:  # experiments/selection_arena/targets.py: <branch>/targets.json
        v = (sel.get("targets") or {}).get(m)
        if isinstance(v, (int, float)):
            out[m] = (float(v), True)
    return out


# the targets a selector cannot game by keeping junk (issue 30), when the run measured them (targets.json)
TARGET_METRICS = ("held-out clean loss", "LAMBADA eval ic", "LAMBADA eval nic")


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


def paired_table(group: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (metric, selector other than random) of a group of seed runs."""
    rows = []
    sels = [s for s in _selectors(group) if s != BASELINE]
    metrics: list[str] = []
    lower: dict[str, bool] = {}
    for r in group:
        for s in _selectors([r]):
            for m, (_, lb) in run_metrics(r["selectors"][s]).items():
                if m not in metrics:
                    metrics.append(m)
                    lower[m] = lb
    for m in metrics:
        for s in sels:
            a, b, d = [], [], []
            for r in group:
                if s not in r["selectors"] or BASELINE not in r["selectors"]:
                    continue
                x = run_metrics(r["selectors"][s]).get(m, (None, True))[0]
                y = run_metrics(r["selectors"][BASELINE]).get(m, (None, True))[0]
                if x is None or y is None:
                    continue
                a.append(x)
                b.append(y)
                d.append(x - y)
            if not d:
                continue
            rows.append({"metric": m, "selector": s, "selector_mean_sd": _mean_sd(a), "random_mean_sd": _mean_sd(b),
                         **paired_stats(d, lower_is_better=lower[m])})
    return rows


def _g(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.3g}" if abs(x) >= 1e4 or (x != 0 and abs(x) < 1e-3) else f"{x:.4f}"


def _ci(ci: tuple[float, float]) -> str:
    return "-" if any(math.isnan(c) for c in ci) else f"[{_g(ci[0])}, {_g(ci[1])}]"


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


# ----------------------------------------------------------------------------- plots


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


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return float("nan"), float("nan")
    return float(np.mean(xs)), float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0


def plot_curves(runs: list[dict[str, Any]], x_key: str) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for sel in _selectors(runs):
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
    sels = _selectors(runs)
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


def _selectors(runs: list[dict[str, Any]]) -> list[str]:
    seen: list[str] = []
    for r in runs:
        for s in r["selectors"]:
            if s not in seen:
                seen.append(s)
    return seen


# ----------------------------------------------------------------------------- tables


def comparison_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per selector: mean and spread (over runs) of the final metrics and the FLOPs."""
    rows = []
    for sel in _selectors(runs):
        finals = [r["selectors"][sel]["final_eval"] for r in runs if r["selectors"].get(sel, {}).get("final_eval")]
        accs = [r["selectors"][sel]["accounting"] for r in runs if sel in r["selectors"]]
        row: dict[str, Any] = {"selector": sel, "n_runs": len(finals)}
        for ref in sorted({k for f in finals for k in f.get("reference", {})}):
            row[f"{ref} loss"] = _mean_sd([f["reference"][ref]["loss"] for f in finals if ref in f["reference"]])
            row[f"{ref} acc"] = _mean_sd([f["reference"][ref]["acc"] for f in finals if ref in f["reference"]])
        row["nine-task mean"] = _mean_sd([f["nine_task_mean"]["value"] for f in finals if f.get("nine_task_mean")])
        row["nine-task gold logprob/byte"] = _mean_sd([f["nine_task_gold_logprob"]["value"] for f in finals
                                                        if f.get("nine_task_gold_logprob")])
        row["nine-task gold prob"] = _mean_sd([f["nine_task_gold_prob"]["value"] for f in finals
                                                if f.get("nine_task_gold_prob")])
        row["held-out ppl"] = _mean_sd([f["perplexity"]["heldout"]["all"]["ppl"] for f in finals
                                         if "heldout" in f.get("perplexity", {})])
        counted_all = all(np.isfinite(a["flops"]["selection"]) for a in accs)
        row["selection FLOPs"] = _mean_sd([a["flops"]["selection"] for a in accs]) if counted_all else "not counted"
        row["selection / training"] = _mean_sd([a["selection_overhead"] for a in accs]) if counted_all else "-"
        rows.append(row)
    return rows


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
    sels = _selectors(runs)
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
            cells.append(_fmt(_mean_sd(vals)) if vals else "-")
        lines.append(f"| {t} ({metric}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fit_table(runs: list[dict[str, Any]]) -> str:
    """Validation Spearman / Pearson of each stage's influence model (mean ± sd over runs)."""
    rows = []
    for sel in _selectors(runs):
        stages = sorted({f["stage"] for r in runs for f in r["selectors"].get(sel, {}).get("fit", [])})
        for st in stages:
            fs = [f for r in runs for f in r["selectors"].get(sel, {}).get("fit", []) if f["stage"] == st]
            rows.append(f"| {sel} | {st} | {fs[0].get('n_labels')} | {_fmt(_mean_sd([f['val_spearman'] for f in fs]))} "
                        f"| {_fmt(_mean_sd([f['val_pearson'] for f in fs]))} |")
    if not rows:
        return ""
    return "\n".join(["| selector | stage | labels | validation Spearman | validation Pearson |", "|---|---|---|---|---|",
                      *rows])


def effective_table(runs: list[dict[str, Any]]) -> str:
    """The selection's effective temperature per selector and stage (mean ± sd over runs): sd of the
    standardised scores, tau / sd, and the share of the kept set exact top-k keeps too (random: k/N)."""
    rows = []
    for sel in _selectors(runs):
        stages = sorted({e["stage"] for r in runs for e in r["selectors"].get(sel, {}).get("effective", [])})
        for st in stages:
            es = [e for r in runs for e in r["selectors"].get(sel, {}).get("effective", []) if e["stage"] == st]
            cells = [_fmt(_mean_sd([e.get(k) for e in es])) for k in ("z_sd", "tau_effective", "topk_overlap",
                                                                       "random_overlap")]
            rows.append(f"| {sel} | {st} | " + " | ".join(cells) + " |")
    if not rows:
        return ""
    return "\n".join(["| selector | stage | sd of standardised scores | tau / sd | share kept by exact top-k too "
                      "| same for random (k/N) |", "|---|---|---|---|---|---|", *rows])


def heldout_table(runs: list[dict[str, Any]]) -> str:
    """Held-out perplexity per domain of each selector's final model."""
    sels = _selectors(runs)
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
            cells.append(_fmt(_mean_sd(vals)) if vals else "-")
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def flops_table(runs: list[dict[str, Any]]) -> str:
    """Counted FLOPs per component (accounting.py) and wall seconds; an artifact without token
    counts is named instead of a number."""
    comps = ["train", "probe", "fit", "score", "selection", "total", "eval"]
    lines = ["| selector | " + " | ".join(f"{c} FLOPs" for c in comps) +
             " | seconds (train / probe / fit / score / select) |", "|" + "---|" * (len(comps) + 2)]
    errors = []
    for s in _selectors(runs):
        all_accs = [r["selectors"][s]["accounting"] for r in runs if s in r["selectors"]]
        errors += [f"- {s}: FLOPs not counted: {e}" for a in all_accs for e in a.get("errors", [])]
        accs = all_accs
        fl = [_fmt(_mean_sd([a["flops"][c] for a in accs])) if all(np.isfinite(a["flops"][c]) for a in accs)
              else "not counted" for c in comps]
        secs = " / ".join(f"{np.mean([a['seconds'].get(c, 0) for a in accs]):.0f}"
                          for c in ("train", "probe", "fit", "score", "select"))
        lines.append(f"| {s} | " + " | ".join(fl) + f" | {secs} |")
    return "\n".join(lines + ([""] + errors if errors else []))


# ----------------------------------------------------------------------------- the page


def build_report(run_dirs: list[str | Path], out: str | Path) -> Path:
    """report.html (self-contained) + report.md + PNGs in `out`, comparing selectors over runs."""
    rds = [RunDir(p) for p in run_dirs]
    runs = [summarize_run(rd) for rd in rds]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pool_meta = _pool_meta(rds[0])
    domains = pool_meta.get("domains", [])
    figs: list[tuple[str, str, bytes]] = []  # (title, filename, png)
    if _selectors(runs):
        figs.append(("Reference loss vs training tokens", "curve_tokens.png", plot_curves(runs, "tokens")))
        figs.append(("Reference loss vs total FLOPs", "curve_flops.png", plot_curves(runs, "flops")))
    dom = plot_domains(runs, domains)
    if dom:
        figs.append(("Share of each domain in the selected data, per stage", "domains.png", dom))
    for sel in _selectors(runs):
        stages = _stages(rds[0], sel)
        for s, d in stages:
            if (d.influence_model / "scatter.png").exists():
                figs.append((f"{sel}, stage {s}: influence model, predicted vs oracle (validation)",
                             f"fit_{sel}_{s:02d}.png", (d.influence_model / "scatter.png").read_bytes()))
            h = plot_score_hist(d.scores, d.selected)
            if h:
                figs.append((f"{sel}, stage {s}: predicted scores of the candidates", f"scores_{sel}_{s:02d}.png", h))
    paired_figs: list[tuple[str, str, bytes]] = []
    groups = group_runs(runs)
    for gi, group in enumerate(groups, start=1):
        for title, name, png in plot_forest(group):
            if len(groups) > 1:
                title, name = f"Group {gi}: {title}", f"g{gi}_{name}"
            paired_figs.append((title, name, png))
    figs = paired_figs + figs
    examples = _examples(rds[0])
    ablation = _ablation_section(rds[0])
    figs += ablation["figs"]
    md = _markdown(runs, figs, examples, pool_meta, ablation["markdown"])
    for _, name, png in figs:
        (out / name).write_bytes(png)
    atomic_write_text(out / "report.md", md)
    atomic_write_text(out / "report.html", _html(runs, figs, examples, pool_meta, ablation["markdown"]))
    atomic_write_json(out / "runs.json", runs)
    return out / "report.html"


def _ablation_section(rd: RunDir) -> dict[str, Any]:
    """The data-ablation study of this run (<run>/ablation/, written by `datamates ablate`)."""
    d = rd.ablation
    if not is_done(d) or not (d / "results.json").exists():
        return {"figs": [], "markdown": ""}

    res = read_json(d / "results.json")
    text = ("Proxy (parameter average of the unit models) vs gold (trained on the union), log-perplexity "
            "correlation per evaluation set over the multi-unit gold mixtures:\n\n```\n" + headline(res) +
            f"\n```\n\nFull study: {d / 'report.html'}")
    figs = [(f"Data ablation: {p.stem.replace('_', ' ')}", f"ablation_{p.name}", p.read_bytes())
            for p in sorted(d.glob("*.png"))]
    return {"figs": figs, "markdown": text}


def _examples(rd: RunDir, n: int = 3, chars: int = 400) -> dict[str, list[tuple[float, str]]]:
    """Highest- and lowest-scored candidates of the last scored stage of the first MATES branch."""

    done = [st.scores for b in reversed(rd.branches()) for st in reversed(rd.branch(b).stages())
            if is_done(st.scores)]
    if not done:
        return {}
    ids, sc = read_scores(done[0])
    pool = Pool(rd.pool)
    tok = pool.tokenizer()
    order = np.argsort(sc)

    def txt(i: int) -> tuple[float, str]:
        return float(sc[i]), tok.decode(pool.tokens([int(ids[i])])[0].tolist())[:chars]

    return {"stage": [str(done[0].parent.relative_to(rd.root))],  # type: ignore[dict-item]
            "lowest (kept first)": [txt(i) for i in order[:n]],
            "highest": [txt(i) for i in order[::-1][:n]]}


def _markdown(runs, figs, examples, pool_meta, ablation_md: str = "") -> str:
    names = ", ".join(r["name"] for r in runs)
    lines = [f"# datamates report: {names}", "",
             f"{len(runs)} run(s); pool: {pool_meta.get('n_sequences', 0):,} sequences x {pool_meta.get('seq_len', '?')} "
             f"tokens, domains {', '.join(pool_meta.get('domains', [])) or '?'}.",
             "Values are mean ± standard deviation over runs. Sign convention: ref_loss_delta = "
             "L_ref(after) - L_ref(before), lower is better.", "",
             "## Paired against random (same seed, same plan, same warmup)", "",
             "Δ = selector − random per seed run; 95% intervals of the mean Δ (Student t over seeds; percentile "
             "bootstrap beside it); the verdict uses the t interval. gold logprob/byte: the gold choice's "
             "log-likelihood per byte; gold prob: its probability mass among the choices (DataDecide).", "",
             paired_markdown(runs),
             *(["## Junk kept (planted junk, datamates.junk)", "", "Share of the kept sequences over the selection "
                "stages that is planted junk, per kind; mean ± sd over the runs; Δ paired against random.", "",
                jt, ""] if (jt := junk_table(runs)) else []),
             "## Final evaluation", "", comparison_markdown(runs), "", task_table(runs), "",
             task_table(runs, "gold_logprob"), "", task_table(runs, "gold_prob"), "", heldout_table(runs), "",
             "## Effective temperature of the selections", "",
             effective_table(runs) or "(no Gumbel-top-k selection in these runs)", "",
             "## Influence-model fit", "", fit_table(runs) or "(no influence model in these runs)", "",
             "## FLOPs and time", "", flops_table(runs), ""]
    if ablation_md:
        lines += ["## Data ablation by merging", "", ablation_md, ""]
    for title, name, _ in figs:
        lines += [f"## {title}", "", f"![{title}]({name})", ""]
    if examples:
        lines += [f"## Examples ({examples['stage'][0]})", ""]
        for k, v in examples.items():
            if k == "stage":
                continue
            lines.append(f"### {k}")
            for s, t in v:
                lines.append(f"- score {s:+.4g}: `{t[:200].replace('`', ' ').replace(chr(10), ' ')}`")
            lines.append("")
    return "\n".join(lines)


def _md_table_to_html(md: str) -> str:
    return md_table(md)  # the shared renderer (datamates.html), also used by the ablation report


def _paired_html(runs: list[dict[str, Any]]) -> str:
    out = []
    for block in paired_markdown(runs).split("### ")[1:]:
        title, _, rest = block.partition("\n")
        out.append(f"<h3>{html.escape(title)}</h3>")
        for para in rest.strip().split("\n\n"):
            if para.startswith("|"):
                out.append(_md_table_to_html(para.replace("**", "")))
            elif para.strip():
                out.append(f"<p>{html.escape(para.replace('**', ''))}</p>")
    return "\n".join(out)


def _html(runs, figs, examples, pool_meta, ablation_md: str = "") -> str:
    names = ", ".join(html.escape(r["name"]) for r in runs)
    parts = [page_head(f"datamates report: {', '.join(r['name'] for r in runs)}"), f"<h1>datamates report: {names}</h1>",
             f"<p>{len(runs)} run(s); pool of {pool_meta.get('n_sequences', 0):,} sequences x "
             f"{pool_meta.get('seq_len', '?')} tokens. Mean ± standard deviation over runs. "
             "ref_loss_delta = L_ref(after) - L_ref(before): lower is better.</p>",
             "<h2>Paired against random (same seed, same plan, same warmup)</h2>",
             "<p>Δ = selector − random per seed run; 95% intervals of the mean Δ (Student t over seeds; percentile "
             "bootstrap beside it); the verdict uses the t interval. Forest plots of every metric are below.</p>",
             _paired_html(runs),
             "<h2>Final evaluation</h2>", _md_table_to_html(comparison_markdown(runs)),
             *[_md_table_to_html(task_table(runs, k)) for k in (None, "gold_logprob", "gold_prob") if task_table(runs, k)],
             _md_table_to_html(heldout_table(runs)) if heldout_table(runs) else "",
             "<h2>Effective temperature of the selections</h2>",
             _md_table_to_html(effective_table(runs)) if effective_table(runs) else "<p>-</p>",
             "<h2>Influence-model fit</h2>", _md_table_to_html(fit_table(runs)) if fit_table(runs) else "<p>-</p>",
             "<h2>FLOPs and time</h2>", _md_table_to_html(flops_table(runs)),
             *[f"<p>{html.escape(r)}</p>" for r in flops_table(runs).splitlines() if r.startswith("- ")]]
    if ablation_md:
        parts.append(f"<h2>Data ablation by merging</h2>{markdown(ablation_md)}")
    for title, name, png in figs:  # each links to its PNG file beside report.html
        parts.append(f"<h2>{html.escape(title)}</h2><a href='{html.escape(name)}'>"
                     f"<img src='data:image/png;base64,{base64.b64encode(png).decode()}'></a>")
    if examples:
        parts.append(f"<h2>Examples ({html.escape(examples['stage'][0])})</h2>")
        for k, v in examples.items():
            if k == "stage":
                continue
            parts.append(f"<h3>{html.escape(k)}</h3>")
            for s, t in v:
                parts.append(f"<p>score {s:+.4g}</p><pre>{html.escape(t)}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)
