"""`datamates report RUN [RUN ...]`: one HTML page (and Markdown) comparing the selectors of the
given runs; runs that differ only in seed are averaged (mean ± standard deviation)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (runs/<name>)")
    p.add_argument("--out", "-o", metavar="DIR", help="output folder (default: <first run>/report)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from datamates.errors import ArtifactMissing
    from datamates.report import build_report, comparison_markdown, summarize_run
    from datamates.run_dir import RunDir

    for r in args.runs:
        if not any((Path(r) / d).exists() for d in ("pool", "warmup", "ablation", "metrics.json")):
            raise ArtifactMissing(f"{r}: not a run directory (no pool/, stages or ablation/); run `datamates run` "
                                  "or `datamates ablate` first")
    out = Path(args.out) if args.out else Path(args.runs[0]) / "report"
    path = build_report(args.runs, out)
    print(comparison_markdown([summarize_run(RunDir(r)) for r in args.runs]))
    print(f"\nreport: {path}")
    return 0
