"""The executor (datamates/executor.py): probing and scoring throughput with 1 vs 2 workers through
it, and its overhead per shard.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/executor.py [--pool DIR] [--probes 64] [--scores 2048]
        [--empty 200] [--repeats 2]

  overhead  a job of `--empty` shards whose work is nothing (fn returns a 1-element array, saved
            as .npz by run_dir.atomic_write_bytes): executor.run (inline; local with 2 processes)
            against the same calls in a plain loop; reported as milliseconds per shard. The local
            figure includes starting 2 spawned processes (a torch import each).
  probe     exact probes (one AdamW step + reference pass per candidate) of a tiny GPT-NeoX on the
            pool: probe.executor.workers 1 vs 2 (local processes), 1 torch thread per worker, 8 chunks.
  score     a frozen-MiniLM influence model fitted on those labels scores `--scores` pool
            sequences: score.executor.workers 1 vs 2, 1 thread per worker, 8 shards (embeddings computed
            fresh in each run: the embedding cache is per run).

Labels and scores must be identical between 1 and 2 workers (checked). On a 2-core machine the
ratio is bounded near 2x and falls when other jobs share the cores: measure on a quiet machine.
Without --pool a small pool is built once from $DATAMATES_DATA into benchmarks/out/executor/.
Prints one JSON object (also benchmarks/out/executor.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DATAMATES_PROGRESS", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from datamates import executor  # noqa: E402
from datamates.config.base import data_dir  # noqa: E402
from datamates.config.core import ModelConfig, PoolConfig, TokenizerConfig, TrainConfig  # noqa: E402
from datamates.config.executor import ExecutorConfig  # noqa: E402
from datamates.config.influence import EncoderConfig, FitConfig, ScoreConfig  # noqa: E402
from datamates.config.probe import ProbeConfig  # noqa: E402
from datamates.core.pool import Pool, build_pool  # noqa: E402
from datamates.core.reference import load_reference  # noqa: E402
from datamates.core.train_loop import train  # noqa: E402
from datamates.run_dir import atomic_write_bytes  # noqa: E402
from datamates.selection.fit import fit  # noqa: E402
from datamates.selection.probe import probe, read_labels  # noqa: E402
from datamates.selection.score import read_scores, score  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out" / "executor"


# ----------------------------------------------------------------------------- overhead


class Empty:
    """A worker whose shards do nothing."""

    def __call__(self, slot: executor.Slot):
        return lambda i: np.array([i])


def save_npz(path: Path, arr: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, x=arr)
    atomic_write_bytes(path, buf.getvalue())


def overhead(n: int) -> dict[str, float]:
    folder = OUT / "empty"
    res = {}
    for tag in ("loop", "inline", "local2"):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        paths = [folder / f"{i:06d}.npz" for i in range(n)]
        t0 = time.perf_counter()
        if tag == "loop":
            fn = Empty()(executor.Slot())
            for i, p in enumerate(paths):
                save_npz(p, fn(i))
        else:
            job = executor.Job("empty", paths, Empty(), save=save_npz)
            executor.run(job, ExecutorConfig(workers=1 if tag == "inline" else 2, threads=1), device="cpu",
                         progress=False)
        res[tag] = time.perf_counter() - t0
        assert all(p.exists() for p in paths)
    return {"shards": n, "loop_ms_per_shard": 1e3 * res["loop"] / n,
            "inline_ms_per_shard": 1e3 * res["inline"] / n,
            "inline_overhead_ms_per_shard": 1e3 * (res["inline"] - res["loop"]) / n,
            "local2_ms_per_shard_incl_start": 1e3 * res["local2"] / n,
            "local2_seconds_total": res["local2"]}


# ----------------------------------------------------------------------------- probe and score


def small_pool() -> Pool:
    out = OUT / "pool"
    if (out / "DONE").exists():
        return Pool(out)
    d = data_dir()
    inputs = [str(d / "pretrain/web/c4_100_domains_theguardian_10.jsonl.gz"),
              str(d / "pretrain/wiki/nq_open_oracle_wikipedia_passages.jsonl.gz")]
    build_pool(PoolConfig(inputs=inputs, seq_len=64, shard_sequences=4096, tokenizer=TokenizerConfig(vocab_size=512)),
               out)
    return Pool(out)


def checkpoint(pool: Pool) -> Path:
    out = OUT / "checkpoint"
    if (out / "DONE").exists():
        return out
    tc = TrainConfig(steps=20, micro_batch_size=8, lr=3e-3, warmup_steps=2, schedule="constant",
                     checkpoint_every=10_000, log_every=10_000, device="cpu", seed=0)
    mc = ModelConfig(preset="tiny", n_layers=2, d_model=64, n_heads=2, context=128)
    return train(tc, mc, pool, np.arange(0, len(pool), 2), out)


def timed_probe(ckpt, pool, ids, ref, workers: int, tag: str) -> tuple[float, np.ndarray]:
    out = OUT / f"probe_{tag}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = ProbeConfig(mode="exact", device="cpu", executor=ExecutorConfig(workers=workers, threads=1),
                      chunk_size=max(1, len(ids) // 8), batch_size=16)
    t0 = time.perf_counter()
    probe(cfg, ckpt, pool, ids, out, reference=ref)
    return time.perf_counter() - t0, read_labels(out)[1]


def timed_score(model_dir, pool, ids, workers: int, tag: str) -> tuple[float, np.ndarray]:
    out, cache = OUT / f"scores_{tag}", OUT / f"cache_{tag}"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    shutil.copytree(OUT / "cache_tokens", cache)  # encoder tokens cached; embeddings computed in the run
    cfg = ScoreConfig(shard_size=max(1, len(ids) // 8), executor=ExecutorConfig(workers=workers, threads=1),
                      device="cpu", batch_size=32)
    t0 = time.perf_counter()
    score(cfg, model_dir, pool, ids, out, cache_dir=cache)
    return time.perf_counter() - t0, read_scores(out)[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pool", help="a built pool (default: a small one built into benchmarks/out/executor)")
    ap.add_argument("--probes", type=int, default=64)
    ap.add_argument("--scores", type=int, default=2048)
    ap.add_argument("--empty", type=int, default=200, help="empty shards for the overhead figure")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    result: dict = {"cpus": os.cpu_count(), "repeats": args.repeats, "overhead": overhead(args.empty)}

    pool = Pool(args.pool) if args.pool else small_pool()
    ckpt = checkpoint(pool)
    ref = load_reference("lambada_openai", pool.tokenizer(), size=32, seed=1234)
    rng = np.random.default_rng(0)
    held = np.arange(1, len(pool), 2)  # never trained on
    cand = np.sort(rng.choice(held, args.probes, replace=False))
    t = {1: [], 2: []}
    labels = {}
    for _ in range(args.repeats):  # interleaved: both see the same machine load
        for w in (1, 2):
            dt, labels[w] = timed_probe(ckpt, pool, cand, ref, w, f"w{w}")
            t[w].append(dt)
    assert np.array_equal(labels[1], labels[2]), "probe labels differ between 1 and 2 workers"
    p1, p2 = min(t[1]), min(t[2])
    result["probe"] = {"probes": args.probes, "chunks": 8, "mode": "exact", "model": "2 layers x 64",
                       "probes_per_s_1_worker": args.probes / p1, "probes_per_s_2_workers": args.probes / p2,
                       "ratio_2_over_1": p1 / p2, "seconds": t, "labels_identical": True}

    enc = EncoderConfig(backbone="minilm", max_tokens=64, chunk_len=64)
    model_dir = OUT / "influence_model"
    if not (model_dir / "DONE").exists():
        fit(FitConfig(mode="frozen", encoder=enc, min_labels=8, device="cpu"), [OUT / "probe_w1"], pool, model_dir,
            cache_dir=OUT / "fit_cache")
    ids = np.sort(rng.choice(len(pool), args.scores, replace=False))
    from datamates.selection.encode import TokenCache

    shutil.rmtree(OUT / "cache_tokens", ignore_errors=True)
    TokenCache(pool, enc, OUT / "cache_tokens").ensure(ids)
    t = {1: [], 2: []}
    sc = {}
    for _ in range(args.repeats):
        for w in (1, 2):
            dt, sc[w] = timed_score(model_dir, pool, ids, w, f"w{w}")
            t[w].append(dt)
    assert np.array_equal(sc[1], sc[2]), "scores differ between 1 and 2 workers"
    s1, s2 = min(t[1]), min(t[2])
    result["score"] = {"sequences": args.scores, "shards": 8, "encoder": "MiniLM-L6 frozen, 64 tokens",
                       "seq_per_s_1_worker": args.scores / s1, "seq_per_s_2_workers": args.scores / s2,
                       "ratio_2_over_1": s1 / s2, "seconds": t, "scores_identical": True}
    text = json.dumps(result, indent=2)
    print(text)
    (ROOT / "benchmarks" / "out" / "executor.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
