"""`datamates ablate`: the proxy (merged unit models) of every mixture, gold models (trained on
the union) for a sample, their correlation per evaluation set, plots and a report in <run>/ablation/."""

from __future__ import annotations

import argparse

from datamates.commands._common import add_config_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pool", metavar="DIR", help="pool folder (default: pool_dir, else <run>/pool)")
    p.add_argument("--subsets", metavar="FILE",
                   help="mixtures to evaluate: YAML/JSON list of unit lists, or one 'a+b+c' per line (default: all)")
    p.add_argument("--gold", metavar="FILE", help="gold mixtures, same format (default: ablation.gold / gold_count)")
    p.add_argument("--no-train-gold", action="store_true", help="fail instead of training missing gold models")
    p.add_argument("--out", "-o", metavar="DIR", help="report folder (default: <run>/ablation)")
    p.add_argument("--add-unit", metavar="NAME",
                   help="incremental study: add unit NAME (sequence ids of the pool, --input) to the partition, train "
                        "only its model from the study's seed, and evaluate only the mixtures that contain it")
    p.add_argument("--input", metavar="PATH", help="--add-unit: the unit's sequence ids (.npy, text, or a folder with ids.npy)")
    p.add_argument("--model", metavar="CKPT",
                   help="--add-unit: an already trained unit model (must have branched from this study's seed)")
    add_config_args(p)


def read_mixtures(path: str) -> list[list[str]]:
    """A list of mixtures from YAML / JSON (list of lists of unit names) or text ('a+b' per line)."""
    from pathlib import Path

    import yaml

    from datamates.errors import InputError

    p = Path(path)
    if not p.exists():
        raise InputError(f"{path}: no such file")
    text = p.read_text()
    if p.suffix in (".yaml", ".yml", ".json"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise InputError(f"{path}: not valid YAML/JSON ({str(e).splitlines()[0]})") from None
        if not isinstance(data, list) or not all(isinstance(m, list) and all(isinstance(u, str) for u in m) for m in data):
            raise InputError(f"{path}: expected a list of lists of unit names, e.g. [[books, web], [wiki]]")
        return data
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if line:
            out.append([u.strip() for u in line.split("+")])
            if any(not u for u in out[-1]):
                raise InputError(f"{path}:{n}: empty unit name in {line!r}")
    return out


def run(args: argparse.Namespace) -> int:
    from datamates.commands._common import setup

    cfg, rd = setup(args, "ablate")
    from datamates.commands._common import write_run_config

    write_run_config(cfg, rd)
    from datamates.ablation.report import headline
    from datamates.core.pool import Pool
    from datamates.errors import InputError
    from datamates.pipelines.ablation import ablate

    pool = Pool(args.pool or getattr(cfg, "pool_dir", None) or rd.pool)
    subsets = read_mixtures(args.subsets) if args.subsets else None
    gold = read_mixtures(args.gold) if args.gold else None
    if args.add_unit is None and (args.input or args.model):
        raise InputError("--input / --model go with --add-unit NAME")
    if args.add_unit is not None:
        from datamates.commands._common import read_ids
        from datamates.pipelines.ablation import add_unit_study

        if not args.input:
            raise InputError(f"--add-unit {args.add_unit}: give the unit's sequence ids with --input PATH")
        if subsets or gold:
            raise InputError("--add-unit evaluates the mixtures that contain the new unit; leave out --subsets / --gold")
        ids = read_ids(args.input, len(pool), "--input")
        res = add_unit_study(cfg.ablation, cfg.train, cfg.model, rd, pool, args.add_unit, ids, args.input,
                             model=args.model, out=args.out)
        t = res["this_run"]
        print(f"added unit {args.add_unit}: {t['units_trained']} model trained, {t['proxy_evaluations']} mixtures "
              f"evaluated, {t['gold_trained']} gold models trained")
    else:
        res = ablate(cfg.ablation, cfg.train, cfg.model, rd, pool, subsets=subsets, gold=gold,
                     train_gold_models=not args.no_train_gold, out=args.out)
    print(headline(res))
    print(f"report: {(args.out or rd.ablation)}/report.md")
    return 0
