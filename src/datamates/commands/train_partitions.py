"""`datamates train-partitions`: train the seed model (unless ablation.seed.checkpoint is given),
then continue pretraining one model per unit from it: same steps, constant learning rate, full
seed state. Finished units are skipped; an interrupted one resumes."""

from __future__ import annotations

import argparse

from datamates.commands._common import add_config_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pool", metavar="DIR", help="pool folder (default: pool_dir, else <run>/pool)")
    p.add_argument("--seed", metavar="CKPT", help="an existing seed checkpoint (ablation.seed.checkpoint)")
    p.add_argument("--units", metavar="A,B,...", help="train only these units (default: all)")
    p.add_argument("--steps", type=int, metavar="N", help="steps per unit (ablation.branch.steps)")
    p.add_argument("--workers", type=int, metavar="N", help="parallel trainings (ablation.branch.executor.workers)")
    p.add_argument("--backend", choices=["local", "ray", "process"],
                   help="ablation.branch.executor.backend (process: the old name of local, deprecated)")
    p.add_argument("--seed-only", action="store_true", help="train the seed model and stop")
    add_config_args(p)


def run(args: argparse.Namespace) -> int:
    from datamates.commands._common import flag_sets, setup

    if args.backend == "process":
        from datamates.config.base import deprecated

        deprecated("--backend process", "spell it --backend local")
        args.backend = "local"
    flag_sets(args, {"seed": "seed.checkpoint", "steps": "branch.steps", "workers": "branch.executor.workers",
                     "backend": "branch.executor.backend"}, "ablation.")
    cfg, rd = setup(args, "train-partitions")
    from datamates.ablation.partition import read_manifest
    from datamates.ablation.train_partition import resolve_seed, train_partitions, train_seed
    from datamates.core.pool import Pool

    pool = Pool(args.pool or getattr(cfg, "pool_dir", None) or rd.pool)
    manifest = read_manifest(rd.partitions)
    manifest.check_pool(pool)
    seed = train_seed(manifest, pool, cfg.ablation.seed, cfg.train, cfg.model, resolve_seed(cfg.ablation.seed, rd.seed_model))
    print(f"seed: {seed}")
    if args.seed_only:
        return 0
    units = [u.strip() for u in args.units.split(",") if u.strip()] if args.units else None
    out = train_partitions(manifest, pool, seed, rd.units, cfg.train, cfg.model, cfg.ablation.branch,
                           units=units, log_dir=rd.logs)
    for name, path in out.items():
        print(f"unit {name}: {path}")
    return 0
