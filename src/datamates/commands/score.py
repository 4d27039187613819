"""`datamates score`: predicted ref_loss_delta of every candidate sequence, in resumable shards.
Knobs: mates.score.* (`datamates config show`). Under `torchrun --nproc_per_node N -m datamates score`
the ranks share the shards (docs/executor.md)."""

from __future__ import annotations

import argparse

from datamates.commands._common import add_config_args, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", metavar="DIR", help="influence model folder (default: <run>/stage_NN/influence_model)")
    p.add_argument("--ids", metavar="FILE", help="candidate sequence ids (.npy, text, or a folder with ids.npy); "
                   "default: every sequence of the pool")
    p.add_argument("--stage", type=positive_int, metavar="N", help="stage number: default --model and --out of that stage")
    p.add_argument("--pool", metavar="DIR", help="pool folder (default: <run>/pool)")
    p.add_argument("--out", "-o", metavar="DIR", help="scores folder (default: <run>/stage_NN/scores)")
    p.add_argument("--workers", type=int, metavar="N", help="parallel workers (mates.score.executor.workers)")
    p.add_argument("--backend", choices=["local", "ray"], help="mates.score.executor.backend")
    p.add_argument("--cache-dir", metavar="DIR", help="encoder token / embedding cache (default: <pool>/encoder_cache)")
    add_config_args(p)


def run(args: argparse.Namespace) -> int:
    from datamates.commands._common import flag_sets, read_ids, setup

    flag_sets(args, {"workers": "executor.workers", "backend": "executor.backend"}, "mates.score.")

    cfg, rd = setup(args, "score")
    import numpy as np

    from datamates.core.pool import Pool
    from datamates.errors import InputError
    from datamates.selection.score import score
    from datamates.selection.scores_io import scores_meta

    if (not args.model or not args.out) and args.stage is None:
        raise InputError("give --model DIR and --out DIR, or --stage N")
    model = args.model or rd.influence_model(args.stage)
    out = args.out or rd.scores(args.stage)
    pool = Pool(args.pool or rd.pool)
    ids = read_ids(args.ids, len(pool), "--ids") if args.ids else np.arange(len(pool))
    from datamates.executor import lead_ranks
    from datamates.log import is_main

    lead_ranks(lambda: score(cfg.mates.score, model, pool, ids, out, cache_dir=args.cache_dir),
               device=cfg.mates.score.device, logs=rd.logs, distributed=cfg.distributed)  # ranks share the shards
    if not is_main():
        return 0
    meta = scores_meta(out)
    print(f"scores: {out} ({meta['n']:,} sequences in {len(meta['shards'])} shards)")
    return 0
