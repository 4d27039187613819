"""`datamates config show`: the resolved config, every knob with its help."""

from __future__ import annotations

import argparse

from datamates.commands._common import add_config_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["show"], help="show: print the resolved config with documentation")
    add_config_args(p)


def run(args: argparse.Namespace) -> int:
    from datamates.config import RunConfig, describe, load_config
    from datamates.selectors import resolve_config, resolve_selectors

    cfg = resolve_config(load_config(args.config, args.sets))  # the scorers' own sections, defaults included
    resolve_selectors(cfg.mates.selectors)  # as `run` checks it: `show` never passes a config `run` refuses
    print(describe(RunConfig, obj=cfg))
    return 0
