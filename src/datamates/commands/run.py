"""`datamates run -c CONFIG`: the MATES loop end to end, every selector of the config compared,
then the report. Re-running the same command after a crash resumes where it stopped."""

from __future__ import annotations

import argparse

from datamates.commands._common import add_config_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_args(p)
    p.add_argument("--no-report", action="store_true", help="skip the HTML / Markdown report")


def run(args: argparse.Namespace) -> int:
    from datamates.commands._common import setup, write_run_config

    cfg, rd = setup(args, "run")
    from datamates.log import is_main
    from datamates.selectors import resolve_selectors

    resolve_selectors(cfg.mates.selectors)  # an unknown selector: one line, before config.yaml is written
    if is_main():
        write_run_config(cfg, rd)
    from datamates import run_progress
    from datamates.pipelines import run_mates
    from datamates.report import build_report, comparison_markdown, task_table

    run_progress.start(cfg.name, cfg.mates, resolve_selectors(cfg.mates.selectors))
    metrics = run_mates(cfg, rd)
    seconds = run_progress.finish()
    if not is_main():  # under torchrun, rank 0 reports
        return 0
    print(comparison_markdown([metrics]))
    print()
    print(task_table([metrics]))
    path = None
    if not args.no_report:
        path = build_report([rd.root], rd.report)
        print(f"\nreport: {path}")
    print("\n" + run_progress.summary(rd.root, path, seconds))
    return 0
