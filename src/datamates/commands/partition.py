"""`datamates partition`: split a pool into units (by domain, a docs column, source file, k-means
clusters of embeddings, or at random), hold out evaluation sequences per domain, write the manifest."""

from __future__ import annotations

import argparse

from datamates.commands._common import add_config_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pool", metavar="DIR", help="pool folder (default: pool_dir, else <run>/pool)")
    p.add_argument("--out", "-o", metavar="DIR", help="partition folder (default: <run>/partitions)")
    p.add_argument("--by", choices=["domain", "field", "file", "cluster", "random"], help="ablation.partition.by")
    p.add_argument("--field", metavar="COLUMN", help="docs.parquet column for --by field (ablation.partition.field)")
    p.add_argument("-k", type=int, metavar="K", help="units for --by cluster / random (ablation.partition.k)")
    p.add_argument("--token-balanced", action="store_true", default=None,
                   help="equal tokens per unit (ablation.partition.token_balanced)")
    add_config_args(p)


def run(args: argparse.Namespace) -> int:
    from datamates.commands._common import flag_sets, setup

    flag_sets(args, {k: k for k in ("by", "field", "k", "token_balanced")}, "ablation.partition.")
    cfg, rd = setup(args, "partition")
    from datamates.ablation.partition import partition, summary
    from datamates.core.pool import Pool

    pool = Pool(args.pool or getattr(cfg, "pool_dir", None) or rd.pool)
    m = partition(pool, cfg.ablation.partition, args.out or rd.partitions)
    print(summary(m.data))
    print(f"partitions: {m.path}")
    return 0
