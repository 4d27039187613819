"""Label sets of the influence-model benchmark (issue 14 item 1): oracle probe labels of random pool
candidates at three checkpoints of the selection arena's seed-0 warmup, against the plan's reference
part, exactly as the arena's probes (mates.probe of experiments/selection_arena/runs/arena_cpu_s0).

    set       checkpoint                      labels
    early     warmup/stage_02/checkpoint      N first-order + M exact (on the first M candidates)
    middle    warmup/stage_08/checkpoint      same candidates
    late      warmup/stage_16/checkpoint      same candidates (the checkpoint the arena's first selection starts from)

Candidates: `--n` sequences drawn with seed 0 from the pool outside the plan's held-out documents and
guard (never the evaluation data); one fixed 80/20 train/validation split (seed 0) of their
positions, written as split.npy (1 = validation). Each label set is a `datamates probe` folder
(resumable by chunk: a killed run continues where it stopped, and a finished one is kept).

    .venv/bin/python experiments/influence_bench/labels.py --n 2000 --exact 150 --threads 1
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
ARENA = REPO / "experiments" / "selection_arena" / "runs" / "arena_cpu_s0"
SETS = {"early": 2, "middle": 8, "late": 16}


def arena_inputs(arena: Path = ARENA):
    """(run config, pool, plan, probe reference set) of an arena run (default: seed 0)."""
    from datamates.config.base import from_dict, load_yaml
    from datamates.config.run import RunConfig
    from datamates.core.pool import Pool
    from datamates.core.reference import load_reference
    from datamates.plan import make_plan

    data = load_yaml(arena / "config.yaml")
    data.pop("config_hash", None)  # written by the run next to the settings
    cfg = from_dict(RunConfig, data)
    pool = Pool(arena / "pool")
    plan = make_plan(cfg, pool, arena / "plan")
    p = cfg.mates.probe
    split = plan.split_of(p.reference)
    ref = load_reference(p.reference, pool.tokenizer(), size=p.reference_size, seed=p.reference_seed,
                         index=split.reference, tokenizer_hash=pool.tokenizer_hash)
    return cfg, pool, plan, ref


def candidates(pool, plan, n: int, out: Path) -> np.ndarray:
    f = out / "candidates.npy"
    if f.exists():
        return np.load(f)
    rest = np.setdiff1d(np.arange(len(pool)), np.concatenate([plan.heldout, plan.guard]))
    ids = np.random.default_rng(0).choice(rest, n, replace=False)  # random order: ids[:M] is a random subset
    split = np.zeros(n, np.int8)
    split[np.random.default_rng(0).permutation(n)[: n // 5]] = 1
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "split.npy", split)
    np.save(f, ids)
    return ids


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--exact", type=int, default=150)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "runs" / "labels"))
    ap.add_argument("--sets", default="early,middle,late")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from datamates.config.executor import ExecutorConfig
    from datamates.log import setup_logging
    from datamates.selection.probe import probe

    setup_logging()
    out = Path(args.out)
    cfg, pool, plan, ref = arena_inputs()
    ids = candidates(pool, plan, args.n, out)
    pcfg = replace(cfg.mates.probe, executor=ExecutorConfig(threads=args.threads), device="cpu")
    names = args.sets.split(",")
    for mode, sub in (("first_order", ids), ("exact", ids[: args.exact])):
        if not len(sub):  # --exact 0: no exact check labels
            continue
        for name in names:
            ckpt = ARENA / "warmup" / f"stage_{SETS[name]:02d}" / "checkpoint"
            t0 = time.time()
            if (out / f"{name}_{mode}" / "DONE").exists():  # a fixed label set: kept as it is, even if the
                continue                                      # probe code's settings have grown since
            probe(replace(pcfg, mode=mode), ckpt, pool, np.sort(sub), out / f"{name}_{mode}", reference=ref)
            print(f"{name} {mode}: {len(sub)} labels in {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
