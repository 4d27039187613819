"""`datamates pool build|info`."""

from __future__ import annotations

import argparse

from datamates.commands._common import add_config_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["build", "info"], help="build: tokenize inputs into a pool; info: summary")
    p.add_argument("--input", "-i", action="append", metavar="PATH",
                   help="input file, folder or glob (repeatable; overrides pool.inputs)")
    p.add_argument("--out", "-o", metavar="DIR", help="pool folder (default: <run>/pool); for info: the pool")
    p.add_argument("--tokenizer", metavar="PATH|NAME", help="tokenizer.json / folder / hub name (pool.tokenizer.name_or_path)")
    p.add_argument("--seq-len", type=int, metavar="N", help="tokens per sequence (pool.seq_len)")
    add_config_args(p)


def run(args: argparse.Namespace) -> int:
    from datamates.commands._common import flag_sets, setup

    # `--seq-len 0` is a value (refused by the range check), not "unset"
    flag_sets(args, {"input": "inputs", "tokenizer": "tokenizer.name_or_path", "seq_len": "seq_len"}, "pool.")
    cfg, rd = setup(args, "pool")
    out = args.out or rd.pool
    from datamates.core.pool import Pool, _summary, build_pool

    if args.action == "build":
        build_pool(cfg.pool, out)
        print(f"pool: {out}")
    else:
        print(_summary(Pool(out).meta))
    return 0
