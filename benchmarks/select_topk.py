"""Gumbel-top-k over 10^8 synthetic scores in shards: streaming O(k) selection vs a full argsort and
vs np.argpartition (the O(N) baseline a numpy user writes).

    .venv/bin/python benchmarks/select_topk.py [--n 100000000] [--shard 1000000] [--fraction 0.2]

(Named select_topk.py, not select.py: a benchmarks/select.py would shadow the stdlib module
`select` for every script run from this folder.)

Scores of shard i are drawn from a generator seeded by i, ids are 0..N-1, so both contenders see
the same input without holding it twice. Each contender runs in its own subprocess (clean peak
RSS), one after the other:

  ours      for each shard: scores -> Gumbel keys (datamates.selection.select.selection_keys, noise
            keyed by (seed, id)) -> StreamingTopK.push; result() at the end.
  argsort   generate all N scores (float32), keys for all N (float64), np.argsort(-keys) (a full
            sort, int64 positions), keep the first k.
  argpartition  the same N keys, np.argpartition(-keys, k - 1)[:k] (introselect, O(N), no full
            sort): what a numpy user writes for "the k best". Expect it to be FASTER than ours
            (one C call over an array already in memory, against our per-shard filtering and
            compactions); what it cannot do is run in O(k) memory: it needs all N keys (8 B each)
            plus N int64 positions at once, where ours holds ~1.25 k pairs and one shard.
  genonly   generate + keys per shard, no selection (the floor both pay).

Same selected set checked (sha256 of the sorted ids). Prints one JSON object with wall seconds,
peak RSS (ru_maxrss) and the ratios against both baselines (a ratio < 1 means ours is slower);
also written to benchmarks/out/select_topk.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"


def shard_scores(i: int, n: int) -> np.ndarray:
    return np.random.default_rng([7, i]).standard_normal(n).astype(np.float32)


def run(which: str, n: int, shard: int, fraction: float, tau: float, seed: int) -> dict:
    from datamates.selection.select import StreamingTopK, selection_keys

    k = int(n * fraction)
    t0 = time.perf_counter()
    if which in ("ours", "genonly"):
        top = StreamingTopK(k) if which == "ours" else None
        for i, s in enumerate(range(0, n, shard)):
            m = min(shard, n - s)
            ids = np.arange(s, s + m, dtype=np.int64)
            keys = selection_keys(ids, shard_scores(i, m).astype(np.float64), method="gumbel", temperature=tau,
                                  seed=seed)
            if top is not None:
                top.push(keys, ids)
        chosen = top.result() if top is not None else np.zeros(0, np.int64)
        extra = {"compactions": top.compactions} if top is not None else {}
    else:  # argsort / argpartition: everything in memory
        scores = np.empty(n, dtype=np.float32)
        for i, s in enumerate(range(0, n, shard)):
            scores[s : s + min(shard, n - s)] = shard_scores(i, min(shard, n - s))
        ids = np.arange(n, dtype=np.int64)
        keys = selection_keys(ids, scores.astype(np.float64), method="gumbel", temperature=tau, seed=seed)
        del scores
        t_sort = time.perf_counter()
        if which == "argsort":
            chosen = np.sort(np.argsort(-keys)[:k])
        else:
            chosen = np.sort(np.argpartition(-keys, k - 1)[:k]) if k > 0 else np.zeros(0, np.int64)
        extra = {"sort_seconds": round(time.perf_counter() - t_sort, 2)}
    seconds = time.perf_counter() - t0
    return {"which": which, "seconds": round(seconds, 2),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
            "k": int(len(chosen)), "ids_sha256": hashlib.sha256(chosen.tobytes()).hexdigest()[:16], **extra}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000_000)
    ap.add_argument("--shard", type=int, default=1_000_000)
    ap.add_argument("--fraction", type=float, default=0.2)
    ap.add_argument("--tau", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", choices=["ours", "argsort", "argpartition", "genonly"])
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run(args.child, args.n, args.shard, args.fraction, args.tau, args.seed)))
        return
    base_rss = None
    results = {}
    for which in ("genonly", "ours", "argsort", "argpartition"):
        cmd = [sys.executable, __file__, "--child", which, "--n", str(args.n), "--shard", str(args.shard),
               "--fraction", str(args.fraction), "--tau", str(args.tau), "--seed", str(args.seed)]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
        results[which] = json.loads(res.stdout.strip().splitlines()[-1])
        print(which, results[which], file=sys.stderr, flush=True)
    base_rss = results["genonly"]["peak_rss_gb"]
    ours, gen = results["ours"], results["genonly"]

    def vs(b: str) -> dict:
        """Ratios of baseline b to ours: > 1 means ours is faster / smaller."""
        r = results[b]
        return {"speedup": round(r["seconds"] / ours["seconds"], 2),
                "speedup_excluding_generation": round(
                    (r["seconds"] - gen["seconds"]) / max(ours["seconds"] - gen["seconds"], 1e-9), 2),
                "memory_ratio": round(r["peak_rss_gb"] / ours["peak_rss_gb"], 2),
                "same_selection": r["ids_sha256"] == ours["ids_sha256"]}

    ratios = {b: vs(b) for b in ("argsort", "argpartition")}
    slower = [b for b, r in ratios.items() if r["speedup"] < 1]
    out = {
        "n": args.n, "shard": args.shard, "k": ours["k"], "tau": args.tau,
        "ours": ours, "argsort": results["argsort"], "argpartition": results["argpartition"], "genonly": gen,
        "same_selection": all(r["same_selection"] for r in ratios.values()),
        "vs_argsort": ratios["argsort"], "vs_argpartition": ratios["argpartition"],
        "memory_above_generation_gb": {b: round(results[b]["peak_rss_gb"] - base_rss, 3)
                                       for b in ("ours", "argsort", "argpartition")},
        "verdict": (f"ours is slower than {', '.join(slower)}; it is chosen for memory: O(k + shard) instead of "
                    "all N keys and positions at once, so a pool of any size streams from score shards"
                    if slower else "ours is faster than both and uses less memory"),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "select_topk.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
