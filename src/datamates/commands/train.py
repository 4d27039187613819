"""`datamates train`: train the LM on a pool's sequences (all, or an id list). Works under
torchrun for DDP: `torchrun --nproc_per_node 2 -m datamates train ...`."""

from __future__ import annotations

import argparse

from datamates.commands._common import add_config_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pool", metavar="DIR", help="pool folder (default: <run>/pool)")
    p.add_argument("--ids", metavar="FILE", help="sequence ids to train on (.npy, text, or a selected/ folder); default: all")
    p.add_argument("--init", metavar="CKPT", help="start from this checkpoint (weights, and AdamW state if train.init_optimizer)")
    p.add_argument("--out", "-o", metavar="DIR", help="final checkpoint folder (default: <run>/checkpoint)")
    p.add_argument("--steps", type=int, metavar="N", help="optimizer steps (train.steps)")
    add_config_args(p)


def run(args: argparse.Namespace) -> int:
    from datamates.commands._common import flag_sets, read_ids, setup

    flag_sets(args, {"steps": "steps"}, "train.")

    cfg, rd = setup(args, "train")
    import numpy as np

    from datamates.core.pool import Pool
    from datamates.core.train_loop import read_train_log, train
    from datamates.log import ascii_curve, is_main

    pool = Pool(args.pool or rd.pool)
    ids = read_ids(args.ids, len(pool), "--ids") if args.ids else np.arange(len(pool))
    out = train(cfg.train, cfg.model, pool, ids, args.out or rd.root / "checkpoint", init=args.init)
    if is_main():
        losses = [r["loss"] for r in read_train_log(out)]
        if losses:
            print(ascii_curve(losses, title="training loss"))
        print(f"checkpoint: {out}")
    return 0
