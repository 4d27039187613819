"""`datamates merge`: average the parameters of unit models (a mixture's proxy) into a normal
checkpoint. Either checkpoint folders, or --units of a run's partitions."""

from __future__ import annotations

import argparse

from datamates.commands._common import add_config_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoints", nargs="*", metavar="CKPT", help="checkpoint folders to average")
    p.add_argument("--units", metavar="A,B,...", help="merge these units of the run (instead of CKPT paths)")
    p.add_argument("--groups", metavar="A,B;C,D",
                   help="macro-merge units of the run: merge each ';'-separated group, then the group models "
                        "(token-weighted on both levels = the flat token-weighted mean; --method uniform: mean of means)")
    p.add_argument("--out", "-o", metavar="DIR", help="output checkpoint (default with --units: <run>/merged/<A+B>)")
    p.add_argument("--method", choices=["uniform", "weighted", "task_arithmetic"], help="ablation.merge.method")
    p.add_argument("--weights", metavar="W1,W2,...|tokens",
                   help="per-model weights (method weighted / task_arithmetic), or 'tokens' (each unit's tokens)")
    p.add_argument("--seed", metavar="CKPT", help="seed checkpoint for task_arithmetic (default with --units: the run's seed)")
    p.add_argument("--lam", type=float, metavar="X", help="task_arithmetic lambda (ablation.merge.lam)")
    p.add_argument("--lam-scale", choices=["constant", "size"],
                   help="task_arithmetic: lambda = lam, or lam x number of models (ablation.merge.lam_scale)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="ablation.merge.out_dtype")
    add_config_args(p)


def run(args: argparse.Namespace) -> int:
    from datamates.commands._common import flag_sets, setup
    from datamates.errors import InputError

    flag_sets(args, {"method": "method", "lam": "lam", "lam_scale": "lam_scale", "dtype": "out_dtype"},
              "ablation.merge.")
    cfg, rd = setup(args, "merge")
    from datamates.ablation import mixture_key
    from datamates.ablation.merge import merge

    mc = cfg.ablation.merge
    if args.groups:
        from datamates.ablation.merge import macro_merge
        from datamates.ablation.partition import read_manifest

        if args.units or args.checkpoints:
            raise InputError("give --groups alone (no --units or checkpoint folders)")
        manifest = read_manifest(rd.partitions)
        if mc.method == "task_arithmetic" or args.weights is not None or args.seed or args.lam is not None:
            flag = ("--method task_arithmetic" if mc.method == "task_arithmetic" else "--weights"
                    if args.weights is not None else "--seed" if args.seed else "--lam")
            raise InputError(f"--groups with {flag}: a macro-merge is token-weighted (or, with --method uniform, a "
                             "mean of means) on both levels; drop the option, or merge --units for that method")
        groups = [manifest.check_names([u.strip() for u in g.split(",") if u.strip()], f"--groups [{i}]: ")
                  for i, g in enumerate(args.groups.split(";"))]
        named = [u for g in groups for u in g]
        twice = next((u for u in named if named.count(u) > 1), None)
        if twice is not None:  # its tokens would be counted twice in the token-weighted merge
            raise InputError(f"--groups {args.groups!r}: unit '{twice}' is named in two groups; name each unit once")
        rule = "uniform" if mc.method == "uniform" and args.method == "uniform" else "weighted"
        key = ";".join(mixture_key(g) for g in groups)
        out = args.out or rd.merged("macro~" + key.replace(";", "~"))
        from datamates.artifacts import check_not_input

        check_not_input(out, [rd.unit(u) for g in groups for u in g])
        path = macro_merge([[rd.unit(u) for u in g] for g in groups], out, group_dir=rd.merged("groups"),
                           within=rule, across=rule, out_dtype=mc.out_dtype)
        print(f"macro-merged checkpoint: {path}")
        return 0
    if args.units and args.checkpoints:
        raise InputError("give checkpoint folders or --units, not both")
    seed = args.seed
    weights: list[float] | str | None = None
    if args.units:
        from datamates.ablation.partition import read_manifest

        manifest = read_manifest(rd.partitions)
        names = manifest.check_names([u.strip() for u in args.units.split(",") if u.strip()], "--units: ")
        paths = [rd.unit(n) for n in names]
        out = args.out or rd.merged(mixture_key(names))
        if mc.method == "weighted" and args.weights is None:
            weights = [float(manifest.unit(n)["tokens"]) for n in names]
        if seed is None and mc.method == "task_arithmetic":
            seed = cfg.ablation.seed.checkpoint or rd.seed_model
    else:
        if not args.checkpoints:
            raise InputError("nothing to merge: give checkpoint folders or --units")
        if not args.out:
            raise InputError("--out is required when merging checkpoint folders")
        paths, out = args.checkpoints, args.out
    if args.weights is not None:
        if args.weights.strip() == "tokens":
            weights = "tokens"
        else:
            try:
                weights = [float(w) for w in args.weights.split(",")]
            except ValueError:
                raise InputError(f"--weights {args.weights!r}: expected numbers separated by commas, or 'tokens'") from None
    from datamates.artifacts import check_not_input

    check_not_input(out, [*paths, *([seed] if seed else [])])
    path = merge(paths, out, weights=weights, method=mc.method, seed=seed, lam=mc.lam, lam_scale=mc.lam_scale,
                 out_dtype=mc.out_dtype)
    print(f"merged checkpoint: {path}")
    return 0
