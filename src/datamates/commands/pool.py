"""`datamates pool build|info`."""

from __future__ import annotations

import argparse

from datamates.commands._common import add_config_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["build", "info"], help="build: tokenize inputs into a pool; info: summary")
    p.add_argument("--input", "-i", action="append", metavar="PATH",
                   help="input file, folder, glob, save_to_disk folder, fsspec URL or hf:NAME[:CONFIG]:SPLIT "
                   "(repeatable; overrides pool.inputs; formats: docs/formats.md)")
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
        check_domain_field(cfg.pool)
        build_pool(cfg.pool, out)
        missing = int(Pool(out).meta.get("counters", {}).get("missing_domain", 0))
        if missing:
            print(f"warning: {missing:,} documents have no field '{cfg.pool.domain_field}' (pool.domain_field): "
                  "their domain is 'unknown'")
        print(f"pool: {out}")
    else:
        print(_summary(Pool(out).meta))
    return 0


def check_domain_field(cfg, sample: int = 1000) -> None:
    """With `pool.domain_from: field`, refuse a domain field that none of the first `sample`
    records has (every document would silently land in domain 'unknown'), naming the fields the
    records do have. Records that lack it later are counted and reported after the build."""
    if cfg.domain_from != "field" or not cfg.domain_field:
        return
    from collections import defaultdict

    from datamates.core.pool import discover_inputs, iter_records
    from datamates.errors import ConfigError

    counters: dict[str, int] = defaultdict(int)
    seen = 0
    for f in discover_inputs(cfg.inputs):
        for rec in iter_records(f, cfg, counters):
            seen += 1
            if rec.domain != "unknown" or counters["missing_domain"] < seen:
                return  # some record has the field
            if seen >= sample:
                break
        if seen >= sample:
            break
    if seen:
        raise ConfigError(
            f"pool.domain_field = '{cfg.domain_field}': none of the first {seen:,} records has this field "
            f"(first file: {discover_inputs(cfg.inputs)[0].rel}); give the field that holds the domain "
            "(a dotted path, e.g. meta.domain), or set pool.domain_from to folder, file or none"
        )
