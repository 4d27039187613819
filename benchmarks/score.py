"""Pool scoring with the influence model: datamates vs MATES's naive procedure, and Ray vs local.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/score.py [--n 128] [--repeats 2] [--threads 1] [--ray]

Same model (MiniLM influence model, MATES layout: 1024 encoder tokens as 2 x 512 chunks, the
second without [CLS]), same candidates (random sequences of the pool, 256 LM tokens each), fp32:

  naive  MATES's `predict_data_influence.py` on CPU: every call decodes the LM tokens and runs the
         HF tokenizer (max_length 1024, padding="max_length", truncation), views the batch as
         [2B, 512], encodes every chunk (all-pad ones included), masked mean over both chunks,
         head; batches of 32 sequences in the given order.
  ours   `datamates.selection.score.score` (local backend, 1 worker): encoder tokens from the
         pool-level cache (built once per pool: timed separately), chunks sorted by length and
         padded per batch of 32 chunks, all-pad chunks skipped, inference_mode.

Scores must agree to 1e-4 (in z units of the labels). Repeats are interleaved so both sides see
the same machine load. With --ray: the same scores through Ray Data (1 actor, `ray.init(num_cpus=2)`)
vs local. Prints one JSON object (also benchmarks/out/score.json).
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
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from datamates.config.executor import ExecutorConfig  # noqa: E402
from datamates.config.influence import EncoderConfig, FitConfig, ScoreConfig  # noqa: E402
from datamates.core.pool import Pool  # noqa: E402
from datamates.run_dir import atomic_dir  # noqa: E402
from datamates.selection.fit import fit  # noqa: E402
from datamates.selection.influence_model import load_influence_model  # noqa: E402
from datamates.selection.score import read_scores, score  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out" / "score"
MATES_ENCODER = EncoderConfig(backbone="minilm", max_tokens=1024, chunk_len=512, chunking="mates")


def influence_model(pool: Pool) -> Path:
    """A MATES-layout influence model fitted (2 fine-tuning steps) on planted labels; built once."""
    model_dir = OUT / "model"
    if (model_dir / "DONE").exists():
        return model_dir
    ids = np.random.default_rng(1).choice(len(pool), 64, replace=False)
    y = 1e-3 * np.random.default_rng(2).standard_normal(64)
    with atomic_dir(OUT / "labels", {"sign": "planted"}) as tmp:
        pq.write_table(pa.table({"seq_id": ids, "ref_loss_delta": y}), tmp / "labels.parquet")
    cfg = FitConfig(mode="finetune", encoder=MATES_ENCODER, epochs=1, batch_size=32, micro_batch_size=8,
                    eval_every=100, device="cpu")
    return fit(cfg, [OUT / "labels"], pool, model_dir, cache_dir=OUT / "fit_cache")


def decode(pool: Pool, tok, row: np.ndarray) -> str:
    """The text the encoder sees: pieces between EOS decoded without specials, joined by a blank line."""
    cut = np.nonzero(row == pool.eos_id)[0]
    start, parts = 0, []
    for c in [*cut.tolist(), len(row)]:
        if c > start:
            t = tok.decode(row[start:c].tolist(), skip_special_tokens=True).strip()
            if t:
                parts.append(t)
        start = c + 1
    return "\n\n".join(parts)


@torch.inference_mode()
def naive_scores(model_dir: Path, pool: Pool, ids: np.ndarray, batch: int = 32) -> np.ndarray:
    from transformers import AutoTokenizer

    lm = load_influence_model(model_dir)
    hf = AutoTokenizer.from_pretrained(str(lm.tokenizer_path))
    lm_tok = pool.tokenizer()
    enc, model = lm.encoder_cfg, lm.model
    out = []
    for s in range(0, len(ids), batch):
        part = ids[s : s + batch]
        texts = [decode(pool, lm_tok, row) for row in pool.tokens(part)]
        b = hf(texts, max_length=enc.max_tokens, truncation=True, padding="max_length", return_tensors="pt")
        x = b["input_ids"].view(-1, enc.chunk_len)  # [2B, 512]
        m = b["attention_mask"].view(-1, enc.chunk_len)
        h = model.encoder(input_ids=x, attention_mask=m).last_hidden_state  # [2B, 512, H]
        summed = (h * m.unsqueeze(-1)).sum(1).view(len(part), -1, h.shape[-1]).sum(1)  # [B, H]
        mean = summed / m.view(len(part), -1).sum(1, keepdim=True)
        out.append(model.head(mean)[:, 0].double().numpy())
    return lm.to_delta(np.concatenate(out))


def ours(model_dir: Path, pool: Pool, ids: np.ndarray, cache: Path, tag: str, **kw) -> tuple[float, np.ndarray, np.ndarray]:
    out = OUT / f"scores_{tag}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = ScoreConfig(batch_size=32, shard_size=max(1, len(ids) // 4), device="cpu", **kw)
    t0 = time.perf_counter()
    score(cfg, model_dir, pool, ids, out, cache_dir=cache)
    dt = time.perf_counter() - t0
    got_ids, s = read_scores(out)
    return dt, got_ids, s.astype(np.float64)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pool", default=str(ROOT / "runs" / "tiny_cpu" / "pool"))
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ray", action="store_true", help="also Ray Data vs local")
    ap.add_argument("--ray-only", action="store_true", help="only Ray Data vs local (skip naive vs ours)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    pool = Pool(args.pool)
    model_dir = influence_model(pool)
    lm = load_influence_model(model_dir)
    ids = np.random.default_rng(0).choice(len(pool), args.n, replace=False)

    # one-time, per pool: decode + re-tokenize into the encoder cache
    cache = OUT / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    from datamates.selection.encode import TokenCache

    t0 = time.perf_counter()
    tc = TokenCache(pool, MATES_ENCODER, cache, tokenizer_path=lm.tokenizer_path)
    tc.ensure(ids)
    t_cache = time.perf_counter() - t0
    enc_tokens = np.mean([len(c) + 2 for c in tc.get(ids)])
    result: dict = {"n_sequences": args.n, "threads": args.threads, "lm_seq_len": pool.seq_len}

    if not args.ray_only:
        naive_t, ours_t = [], []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            s_naive = naive_scores(model_dir, pool, ids)
            naive_t.append(time.perf_counter() - t0)
            dt, got_ids, s_ours = ours(model_dir, pool, ids, cache, "local")
            ours_t.append(dt)
            print(f"repeat {r}: naive {naive_t[-1]:.1f} s, ours {dt:.1f} s", flush=True)
        assert np.array_equal(got_ids, ids)
        z_diff = float(np.abs((s_naive - s_ours) / lm.label_std).max())
        result |= {
            "encoder_tokens_per_sequence": {"naive (padded)": MATES_ENCODER.max_tokens,
                                            "ours (real)": round(float(enc_tokens), 1)},
            "naive_seq_per_s": [round(args.n / t, 2) for t in naive_t],
            "ours_seq_per_s": [round(args.n / t, 2) for t in ours_t],
            "speedup": round(float(np.median(naive_t) / np.median(ours_t)), 2),
            "speedup_per_repeat": [round(a / b, 2) for a, b in zip(naive_t, ours_t)],
            "token_cache_build_s (once per pool)": round(t_cache, 2),
            "speedup_including_cache_build": round(float(np.median(naive_t) / (np.median(ours_t) + t_cache)), 2),
            "max_abs_diff_z": z_diff, "identical_1e-4": z_diff <= 1e-4,
        }
    if args.ray or args.ray_only:
        # Ray runs its workers at niceness 15 (ray-project/ray#24928): on this shared VM that alone
        # makes the actor several times slower than the local process; compare at equal priority
        os.environ.setdefault("RAY_worker_niceness", "0")
        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        t_ray_init = time.perf_counter() - t0
        try:
            dt_ray, ids_ray, s_ray = ours(model_dir, pool, ids, cache, "ray", executor=ExecutorConfig(backend="ray", workers=1))
        finally:
            ray.shutdown()
        dt_loc, ids_loc, s_loc = ours(model_dir, pool, ids, cache, "local")
        assert np.array_equal(ids_ray, ids_loc)
        result["ray_vs_local"] = {
            "ray_actors": 1, "ray_cpus": 2, "worker_niceness": os.environ["RAY_worker_niceness"],
            "ray_init_s": round(t_ray_init, 2),
            "ray_seconds": round(dt_ray, 2), "local_seconds": round(dt_loc, 2),
            "ray_seq_per_s": round(args.n / dt_ray, 2), "local_seq_per_s": round(args.n / dt_loc, 2),
            "max_abs_diff": float(np.abs(s_ray - s_loc).max()),
            "same_scores": bool(np.allclose(s_ray, s_loc, rtol=1e-5, atol=1e-9)),
        }
    name = "score_ray.json" if args.ray_only else "score.json"
    (OUT.parent / name).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
