"""The report page: `build_report(runs, out)` writes one self-contained `report.html` (plots
embedded), `report.md`, the PNGs and `runs.json` (report/__init__.py says what the page holds),
with the run's data-ablation study (<run>/ablation/, written by `datamates ablate`) when there is one.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from datamates.ablation.ablate import headline
from datamates.html import markdown, md_table, page_head
from datamates.report.gather import read_pool_meta, run_stages, scored_examples, selector_names, summarize_run
from datamates.report.plots import plot_curves, plot_domains, plot_forest, plot_score_hist
from datamates.report.stats import group_runs
from datamates.report.tables import (
    comparison_markdown,
    effective_table,
    fit_table,
    flops_table,
    heldout_table,
    junk_table,
    paired_html,
    paired_markdown,
    task_table,
)
from datamates.run_dir import RunDir, atomic_write_json, atomic_write_text, is_done, read_json


def build_report(run_dirs: list[str | Path], out: str | Path) -> Path:
    """report.html (self-contained) + report.md + PNGs in `out`, comparing selectors over runs."""
    rds = [RunDir(p) for p in run_dirs]
    runs = [summarize_run(rd) for rd in rds]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pool_meta = read_pool_meta(rds[0])
    domains = pool_meta.get("domains", [])
    figs: list[tuple[str, str, bytes]] = []  # (title, filename, png)
    if selector_names(runs):
        figs.append(("Reference loss vs training tokens", "curve_tokens.png", plot_curves(runs, "tokens")))
        figs.append(("Reference loss vs total FLOPs", "curve_flops.png", plot_curves(runs, "flops")))
    dom = plot_domains(runs, domains)
    if dom:
        figs.append(("Share of each domain in the selected data, per stage", "domains.png", dom))
    for sel in selector_names(runs):
        stages = run_stages(rds[0], sel)
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
    examples = scored_examples(rds[0])
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


def _html(runs, figs, examples, pool_meta, ablation_md: str = "") -> str:
    names = ", ".join(html.escape(r["name"]) for r in runs)
    parts = [page_head(f"datamates report: {', '.join(r['name'] for r in runs)}"), f"<h1>datamates report: {names}</h1>",
             f"<p>{len(runs)} run(s); pool of {pool_meta.get('n_sequences', 0):,} sequences x "
             f"{pool_meta.get('seq_len', '?')} tokens. Mean ± standard deviation over runs. "
             "ref_loss_delta = L_ref(after) - L_ref(before): lower is better.</p>",
             "<h2>Paired against random (same seed, same plan, same warmup)</h2>",
             "<p>Δ = selector − random per seed run; 95% intervals of the mean Δ (Student t over seeds; percentile "
             "bootstrap beside it); the verdict uses the t interval. Forest plots of every metric are below.</p>",
             paired_html(runs),
             "<h2>Final evaluation</h2>", md_table(comparison_markdown(runs)),
             *[md_table(task_table(runs, k)) for k in (None, "gold_logprob", "gold_prob") if task_table(runs, k)],
             md_table(heldout_table(runs)) if heldout_table(runs) else "",
             "<h2>Effective temperature of the selections</h2>",
             md_table(effective_table(runs)) if effective_table(runs) else "<p>-</p>",
             "<h2>Influence-model fit</h2>", md_table(fit_table(runs)) if fit_table(runs) else "<p>-</p>",
             "<h2>FLOPs and time</h2>", md_table(flops_table(runs)),
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
