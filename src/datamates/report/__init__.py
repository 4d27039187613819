"""Reports from the files of one or more runs (never from in-memory state, so a resumed or
partial run reports what is on disk).

`summarize_run(rd)` writes `<run>/metrics.json` (per selector: final evaluation, reference-loss
curve, counted FLOPs and seconds per component and stage, see accounting.py) and returns it.
`build_report(runs, out)` writes one self-contained `report.html` (plots embedded) and `report.md`
comparing selectors: first, per group of runs that differ only in seed, every selector paired
with `random` of the same seed run (mean ± sd, the paired difference with its 95% t and bootstrap
intervals, seeds won, a verdict; a forest plot per metric; see report/stats.py); then
reference loss vs training tokens and vs total FLOPs, the influence model's fit, score
histograms, domain shares of the selected data, the highest- and lowest-scored sequences, the
final evaluation tables (continuous nine-task metrics included) and the FLOPs breakdown.

One module per concern, each importing only those above it in this list:

    gather.py   a run's artifacts (through RunDir) -> metrics.json; the scored examples
    stats.py    seed groups, paired differences against random, intervals, seeds won, verdicts
    tables.py   Markdown tables (and the paired section's HTML)
    plots.py    the PNG figures (forest plots, curves, domain shares, score histograms)
    page.py     build_report: report.md, report.html, the PNGs, runs.json (+ the ablation section)
"""

from datamates.report.gather import BASELINE, summarize_run
from datamates.report.page import build_report
from datamates.report.plots import plot_curves, plot_domains, plot_forest, plot_score_hist
from datamates.report.stats import (
    BOOTSTRAP_SAMPLES,
    SEED_KEYS,
    TARGET_METRICS,
    group_runs,
    paired_stats,
    paired_table,
    run_metrics,
)
from datamates.report.tables import (
    comparison_markdown,
    comparison_rows,
    effective_table,
    fit_table,
    flops_table,
    heldout_table,
    junk_table,
    paired_markdown,
    paired_summary,
    task_table,
)

__all__ = [
    "BASELINE", "BOOTSTRAP_SAMPLES", "SEED_KEYS", "TARGET_METRICS", "build_report", "comparison_markdown",
    "comparison_rows", "effective_table", "fit_table", "flops_table", "group_runs", "heldout_table", "junk_table",
    "paired_markdown", "paired_stats", "paired_summary", "paired_table", "plot_curves", "plot_domains", "plot_forest",
    "plot_score_hist", "run_metrics", "summarize_run", "task_table",
]
