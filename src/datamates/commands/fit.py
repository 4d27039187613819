"""`datamates fit`: fit the data influence model to probe labels (MATES recipe, a frozen trunk
with a ridge head, or the LM's own features). Knobs: mates.fit.* (`datamates config show`)."""

from __future__ import annotations

import argparse

from datamates.commands._common import add_config_args, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--labels", "-l", action="append", metavar="DIR",
                   help="probe folder(s) with labels.parquet (repeatable; default: <run>/stage_NN/probe)")
    p.add_argument("--stage", type=positive_int, metavar="N", help="stage number: default --labels and --out of that stage")
    p.add_argument("--pool", metavar="DIR", help="pool folder (default: <run>/pool)")
    p.add_argument("--out", "-o", metavar="DIR", help="influence model folder (default: <run>/stage_NN/influence_model)")
    p.add_argument("--mode", choices=["finetune", "frozen", "lm"], help="mates.fit.mode (lm: the LM's own features, "
                   "docs/influence_model.md)")
    p.add_argument("--checkpoint", metavar="DIR", help="lm mode: the LM checkpoint whose features the model uses "
                   "(default: the checkpoint the labels were probed at)")
    p.add_argument("--backbone", metavar="NAME|PATH", help="encoder: minilm, a local folder or a hub name "
                   "(mates.fit.encoder.backbone)")
    p.add_argument("--cache-dir", metavar="DIR", help="encoder token / embedding cache (default: <pool>/encoder_cache)")
    add_config_args(p)


def run(args: argparse.Namespace) -> int:
    from datamates.commands._common import flag_sets, setup

    flag_sets(args, {"mode": "mode", "backbone": "encoder.backbone"}, "mates.fit.")

    cfg, rd = setup(args, "fit")
    from datamates.core.pool import Pool
    from datamates.errors import InputError
    from datamates.selection.fit import fit, fit_summary

    if not args.labels and args.stage is None:
        raise InputError("give --labels DIR (a probe folder) or --stage N")
    if not args.out and args.stage is None:
        raise InputError("give --out DIR or --stage N")
    labels = args.labels or [rd.probe(args.stage)]
    out = args.out or rd.influence_model(args.stage)
    pool = Pool(args.pool or rd.pool)
    fit(cfg.mates.fit, labels, pool, out, cache_dir=args.cache_dir, checkpoint=args.checkpoint)
    print(fit_summary(out))
    print(f"influence model: {out}")
    return 0
