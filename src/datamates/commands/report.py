"""`datamates report RUN [RUN ...]`: one HTML page (and Markdown) comparing the selectors of the
given runs. Runs that differ only in seed form a group; in each, every selector is paired with
`random` of the same run (same plan, same warmup): mean ± sd, the paired difference with 95% t and
bootstrap intervals, seeds won and a verdict per metric, and a forest plot per metric."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (runs/<name>)")
    p.add_argument("--out", "-o", metavar="DIR", help="output folder (default: <first run>/report)")


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from datamates.errors import ArtifactMissing
    from datamates.report import build_report, comparison_markdown, paired_markdown
    from datamates.run_dir import read_json

    for r in args.runs:
        if not any((Path(r) / d).exists() for d in ("pool", "warmup", "ablation", "metrics.json")):
            raise ArtifactMissing(f"{r}: not a run directory (no pool/, stages or ablation/); run `datamates run` "
                                  "or `datamates ablate` first")
    out = Path(args.out) if args.out else Path(args.runs[0]) / "report"
    path = build_report(args.runs, out)
    runs = read_json(out / "runs.json")
    print(paired_markdown(runs))
    print(comparison_markdown(runs))
    for r in runs:
        for sel, v in r["selectors"].items():
            for e in v.get("accounting", {}).get("errors", []):
                print(f"warning: {r['name']}/{sel}: FLOPs not counted: {e}", file=sys.stderr)
    print(f"\nreport: {path} (and report.md)")
    return 0
