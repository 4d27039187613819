"""`datamates select`: keep a fraction of the candidates by Gumbel-top-k on their scores (or top-k,
or uniformly at random). Knobs: mates.select.* (`datamates config show`)."""

from __future__ import annotations

import argparse

from datamates.commands._common import add_config_args, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scores", metavar="DIR", help="scores folder (default: <run>/stage_NN/scores)")
    p.add_argument("--ids", metavar="FILE", help="candidate ids for --method random without scores")
    p.add_argument("--stage", type=positive_int, metavar="N", help="stage number: default --scores and --out of that stage")
    p.add_argument("--pool", metavar="DIR", help="pool folder (default: <run>/pool)")
    p.add_argument("--out", "-o", metavar="DIR", help="selection folder (default: <run>/stage_NN/selected)")
    p.add_argument("--method", choices=["gumbel", "topk", "random"], help="mates.select.method")
    p.add_argument("--fraction", type=float, metavar="F", help="share kept (mates.select.fraction)")
    p.add_argument("-k", type=positive_int, metavar="K", help="number kept (overrides --fraction)")
    p.add_argument("--temperature", "--tau", type=float, metavar="TAU", help="mates.select.temperature")
    p.add_argument("--seed", type=int, help="mates.select.seed")
    p.add_argument("--write-documents", action="store_true", default=None, help="also write the selected documents (input format)")
    add_config_args(p)


def run(args: argparse.Namespace) -> int:
    from datamates.commands._common import flag_sets, read_ids, setup

    flag_sets(args, {k: k for k in ("method", "fraction", "temperature", "seed", "write_documents")}, "mates.select.")

    cfg, rd = setup(args, "select")
    from datamates.core.pool import Pool
    from datamates.errors import InputError
    from datamates.run_dir import read_json
    from datamates.selection.select import select

    if args.ids and args.scores:
        raise InputError("give --scores or --ids, not both")
    if args.ids:
        candidates = read_ids(args.ids, flag="--ids")
    elif args.scores or args.stage is not None:
        candidates = args.scores or rd.scores(args.stage)
    else:
        raise InputError("give --scores DIR (or --ids FILE for random selection), or --stage N")
    if not args.out and args.stage is None:
        raise InputError("give --out DIR or --stage N")
    out = args.out or rd.selected(args.stage)
    pool = Pool(args.pool or rd.pool)
    from datamates.integrations.attributes import write_attributes

    select(cfg.mates.select, candidates, pool, out, k=args.k, attributes=write_attributes)
    meta = read_json(f"{out}/meta.json")
    print(f"selected {meta['k']:,} of {meta['n_candidates']:,} ({meta['method']}) -> {out}/ids.npy")
    for d, c in meta["kept_per_domain"].items():
        print(f"  {d:<20} {c:>10,}")
    if "documents" in meta:
        print(f"  documents: {meta['documents']['documents']:,} in {meta['documents']['files']} files -> {out}/documents")
    return 0
