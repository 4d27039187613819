"""`datamates score-with METHOD`: score candidate sequences with a static baseline (DSIR, SemDeDup,
a quality rater, a fastText classifier, a perplexity filter) into a scores folder that `datamates
select` reads unchanged. Knobs: baselines.<method>.* (docs/baselines.md), set with --set."""

from __future__ import annotations

import argparse

from datamates.commands._common import add_config_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("method", metavar="METHOD", help="a scorer of the registry that runs on its own (dsir, semdedup, "
                   "qurating, fasttext, perplexity, ...; docs/baselines.md)")
    p.add_argument("--pool", metavar="DIR", help="pool folder (default: <run>/pool)")
    p.add_argument("--ids", metavar="FILE", help="candidate sequence ids (.npy, text, or a folder with ids.npy); "
                   "default: every sequence of the pool")
    p.add_argument("--out", "-o", metavar="DIR", required=True, help="scores folder to write")
    p.add_argument("--reference", metavar="SPEC", help="dsir / classifier: reference set (lambada_openai, flan_cot, "
                   "dolly, or a JSONL file)")
    p.add_argument("--labels", metavar="FILE", help="rater: JSONL of judgements ({text, label} or "
                   "{text_a, text_b, prefer})")
    p.add_argument("--model", "-m", metavar="PATH", help="classifier: an existing fastText .bin; perplexity: the "
                   "reference LM (datamates checkpoint or Hugging Face causal LM)")
    p.add_argument("--eps", type=float, help="semdedup: duplicate threshold in (0, 1) (default: from keep_fraction)")
    p.add_argument("--cache-dir", metavar="DIR", help="encoder token / embedding cache (default: <pool>/encoder_cache)")
    add_config_args(p)


def run(args: argparse.Namespace) -> int:
    from datamates.commands._common import read_ids, setup
    from datamates.config.base import apply_sets, from_dict, resolve_owned, to_dict
    from datamates.config.baselines import BaselinesConfig
    from datamates.errors import ConfigError
    from datamates.selectors import REGISTRY, SECTIONS, canonical

    name = canonical(args.method)
    if name not in REGISTRY or REGISTRY[name].standalone is None:
        usable = ", ".join(s.name for s in REGISTRY.values() if s.standalone)
        raise ConfigError(f"score-with {args.method}: not a scorer that runs on its own; available: {usable}")
    scorer = REGISTRY[name]
    m = scorer.section
    own = [s for s in args.sets if s.startswith("baselines.")]
    args.sets = [s for s in args.sets if not s.startswith("baselines.")]
    for flag in ("reference", "labels", "model", "eps"):
        v = getattr(args, flag)
        if v is None:
            continue
        if flag not in scorer.flags:
            raise ConfigError(f"--{flag} does not apply to {args.method} (its options: "
                              f"{', '.join('--' + a for a in scorer.flags)}; other knobs: --set baselines.{m}.KEY=VALUE)")
        own.append(f"baselines.{m}.{flag}={v}")
    cfg, rd = setup(args, "score-with")
    data = apply_sets({"baselines": to_dict(BaselinesConfig())}, own)
    bcfg = from_dict(BaselinesConfig, data["baselines"], prefix="baselines.")
    resolve_owned(bcfg, SECTIONS, prefix="baselines.")  # the scorers' own sections (Scorer.config)
    import numpy as np

    from datamates.core.pool import Pool
    from datamates.selection.scores_io import scores_meta

    pool = Pool(args.pool or rd.pool)
    ids = read_ids(args.ids) if args.ids else np.arange(len(pool), dtype=np.int64)
    kw = {"cache_dir": args.cache_dir} if scorer.cache else {}
    scorer.scoring_function()(scorer.section_config(bcfg, "baselines."), pool, ids, args.out, **kw)
    meta = scores_meta(args.out)
    hint = meta.get("select_hint", {})
    print(f"{scorer.name} scores: {args.out} ({meta['n']:,} sequences in {len(meta['shards'])} shards)")
    if hint:
        tau = f" --tau {hint['temperature']:g}" if hint.get("method") == "gumbel" else ""
        print(f"  the paper's selection: datamates select --scores {args.out} --method {hint['method']}{tau} "
              f"--set mates.select.scale={hint['scale']}" + (f" -k {hint['k']}" if hint.get("k") else "") + " ...")
    return 0
