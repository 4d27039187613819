"""Indicative check of `mates+fasttext` (issue 30 item 3) on stored junk-arena runs, without training:
at a run's first selection stage every branch starts from the same warmup checkpoint, so the stored
`mates@REF` stage scores are exactly what `mates+fasttext`'s mates step computes there. This script
scores the same block with the prior (fastText with the run's `mates.baselines.classifier`; for comparison the
model-free `heuristic` rules and the stage's starting model's perplexity, low first), combines z(mates) + w z(prior) for several w
(baselines/prior.py), selects with the run's `mates.select` and counts the junk kept, beside the
stored picks of `random`, `loss` and `mates@REF` of that stage. One stage, 80 of 400: indicative only
(the arena's later stages, training and the targets are not run).

    python experiments/selection_arena/prior_pick.py experiments/selection_arena/runs/junk_s{0,1,2} \
        --out /tmp/prior_pick [--branch mates@clean] [--weights 0 0.5 1 2]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import yaml

from datamates.baselines._common import counts, digest, write_scores
from datamates.baselines.classifier import classify
from datamates.baselines.heuristic import heuristic
from datamates.baselines.perplexity import perplexity_filter
from datamates.baselines.prior import PriorConfig, combine
from datamates.config.base import from_dict
from datamates.config.run import RunConfig
from datamates.core.pool import Pool
from datamates.selection.scores_io import read_scores
from datamates.selection.select import read_selection, select
from datamates.selectors import section


def junk_kept(pool: Pool, ids: np.ndarray) -> dict[str, int]:
    dom = np.asarray(pool.seq_domain)[ids]
    out = {"all": 0}
    for i, d in enumerate(pool.domains):
        if d.startswith("junk_"):
            n = int((dom == i).sum())
            out[d[5:]] = n
            out["all"] += n
    return out


def restored(folder: Path, pool: Pool, out: Path) -> Path:
    """The stored scores' values (seq_id, score) as a scores folder of this code version (the stored
    folder may carry an identity hash of an older one); its values are read from the shards as they are."""
    parts = [pq.read_table(f) for f in sorted(folder.glob("shard_*.parquet"))]
    ids = np.concatenate([t.column("seq_id").to_numpy() for t in parts]).astype(np.int64)
    val = dict(zip(ids.tolist(), np.concatenate([t.column("score").to_numpy() for t in parts]).tolist()))
    plan = {"pool_id": pool.pool_id, "method": "restored", "model_hash": digest(str(folder))}
    return write_scores(out, pool, ids, plan, 65536, lambda part: np.array([val[int(i)] for i in part]),
                        lambda: {"restored_from": str(folder), **counts(None)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--branch", default="mates@clean")
    ap.add_argument("--weights", nargs="+", type=float, default=[0.0, 0.5, 1.0, 2.0])
    args = ap.parse_args()
    rows: dict[str, list[dict[str, int]]] = {}
    for run in args.runs:
        data = yaml.safe_load((run / "config.yaml").read_text())
        data.pop("config_hash", None)  # written beside the knobs by `datamates run`
        cfg = from_dict(RunConfig, data, where=f"{run / 'config.yaml'}: ")
        stage = cfg.mates.warmup_stages + 1
        pool = Pool(run / "pool")
        work = args.out / run.name
        scores = restored(run / args.branch / f"stage_{stage:02d}" / "scores", pool, work / "mates")
        block, _ = read_scores(scores)
        k = len(read_selection(run / "random" / f"stage_{stage:02d}" / "selected"))
        priors = {"fasttext": classify(section(cfg.mates.baselines, "classifier"), pool, block, work / "fasttext"),
                  "heuristic": heuristic(section(cfg.mates.baselines, "heuristic"), pool, block, work / "heuristic"),
                  # the stage's starting model (the shared warmup's last checkpoint), low perplexity first
                  "perplexity": perplexity_filter(replace(section(cfg.mates.baselines, "perplexity"), device="cpu", model=str(
                      run / "warmup" / f"stage_{stage - 1:02d}" / "checkpoint")), pool, block, work / "perplexity")}
        picks = {b: read_selection(run / b / f"stage_{stage:02d}" / "selected") for b in ("random", "loss", args.branch)
                 if (run / b / f"stage_{stage:02d}" / "selected").exists()}
        for name, folder in priors.items():
            picks[f"{name} alone"] = read_selection(select(cfg.mates.select, folder, pool, work / f"sel_{name}", k=k))
            for w in args.weights:
                comb = combine(PriorConfig(weight=w), pool, block, work / f"comb_{name}_{w}", influence=scores,
                               prior=folder)
                picks[f"{args.branch}+{name} w={w:g}"] = read_selection(
                    select(cfg.mates.select, comb, pool, work / f"sel_{name}_{w}", k=k))
        for label, ids in picks.items():
            rows.setdefault(label, []).append(junk_kept(pool, ids))
        print(f"{run.name}: stage {stage}, k = {k} of {len(block)}", flush=True)
    kinds = [kd for kd in rows[next(iter(rows))][0] if kd != "all"]
    n = len(args.runs)
    print(f"\njunk kept at the first selection stage, {n} run(s): mean share (count per run); per kind: total")
    print("| pick | junk share | per run | " + " | ".join(kinds) + " |")
    print("|---|---|---|" + "---|" * len(kinds))
    for label, rs in rows.items():
        shares = [r["all"] / k for r in rs]
        print(f"| {label} | {np.mean(shares):.1%} | {', '.join(str(r['all']) for r in rs)} | "
              + " | ".join(str(sum(r[kd] for r in rs)) for kd in kinds) + " |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "prior_pick.json").write_text(json.dumps({"k": k, "runs": [str(r) for r in args.runs], "rows": rows},
                                                         indent=1))


if __name__ == "__main__":
    main()
