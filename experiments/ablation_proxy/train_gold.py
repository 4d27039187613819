"""Train the gold models of a study before `datamates ablate` (which would train the same ones and
finds them done): lets the training of a study run while its evaluation code is still changing.
Usage: train_gold.py CONFIG RUN_DIR POOL [--set KEY=VALUE ...]"""

import sys
from pathlib import Path

from datamates.ablation.ablate import choose_gold
from datamates.ablation.partition import read_manifest
from datamates.ablation.train_partition import resolve_seed, train_gold
from datamates.config import load_config
from datamates.core.pool import Pool
from datamates.log import setup_logging
from datamates.run_dir import RunDir

cfg_path, run, pool_path, *rest = sys.argv[1:]
sets = [rest[i + 1] for i in range(0, len(rest), 2) if rest[i] == "--set"]
cfg = load_config(cfg_path, sets)
rd = RunDir(Path(run))
setup_logging(rd.logs / "train-gold.log")
pool = Pool(pool_path)
man = read_manifest(rd.partitions)
a = cfg.ablation
gold = a.gold if a.gold is not None else choose_gold(man.units, a.gold_count, a.gold_seed)
gold = [g for g in gold if len(g) > 1]
seed = resolve_seed(a.seed, rd.seed_model)
print("gold mixtures:", ["+".join(g) for g in gold], flush=True)
train_gold(man, pool, seed, rd.root / "gold", gold, cfg.train, cfg.model, a.branch, balance=a.gold_balance,
           log_dir=rd.logs)
