"""MB of raw text per second of `datamates pool build` vs a naive loop (json.loads, encode one
document at a time, concatenate, write), same inputs and tokenizer, same process. Prints JSON.

    python benchmarks/pool_build.py [--input ../shared/data/pretrain] [--tokenizer .../tokenizer.json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from datamates.config.base import data_dir
from datamates.config.core import PoolConfig, TokenizerConfig
from datamates.core.pool import build_pool, discover_inputs
from datamates.core.tokenizer import load_tokenizer


def raw_bytes(files) -> int:
    total = 0
    for f in files:
        opener = gzip.open if f.path.name.endswith(".gz") else open
        with opener(f.path, "rb") as fh:
            for line in fh:
                if line.strip():
                    total += len(json.loads(line)["text"].encode())
    return total


def naive(files, tok, seq_len: int, out: Path) -> None:
    eos = tok.token_to_id("<|endoftext|>")
    stream = []
    for f in files:
        opener = gzip.open if f.path.name.endswith(".gz") else open
        with opener(f.path, "rt") as fh:
            for line in fh:
                if line.strip():
                    stream.extend(tok.encode(json.loads(line)["text"]).ids + [eos])
    arr = np.array(stream[: len(stream) // seq_len * seq_len], dtype=np.uint16)
    arr.tofile(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", default=str(data_dir() / "pretrain"))
    ap.add_argument("--tokenizer", default=str(data_dir() / "tokenizer/gpt-neox-20b/tokenizer.json"))
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    os.environ["DATAMATES_PROGRESS"] = "0"
    files = discover_inputs([args.input])
    mb = raw_bytes(files) / 1e6
    tok = load_tokenizer(args.tokenizer)
    ours, base = [], []
    for _ in range(args.repeats):  # interleaved, so background load hits both alike
        with tempfile.TemporaryDirectory() as d:
            cfg = PoolConfig(inputs=[args.input], seq_len=args.seq_len,
                             tokenizer=TokenizerConfig(name_or_path=args.tokenizer))
            t = time.perf_counter()
            build_pool(cfg, Path(d) / "pool")
            ours.append(time.perf_counter() - t)
            t = time.perf_counter()
            naive(files, tok, args.seq_len, Path(d) / "naive.bin")
            base.append(time.perf_counter() - t)
            n_ours = sum(f.stat().st_size for f in (Path(d) / "pool").glob("tokens_*.bin"))
    ours_s, naive_s = statistics.median(ours), statistics.median(base)
    print(json.dumps({
        "benchmark": "pool_build", "input": args.input, "text_MB": round(mb, 2), "files": len(files),
        "cpus": os.cpu_count(), "datamates_s": round(ours_s, 2), "datamates_MB_s": round(mb / ours_s, 2),
        "naive_s": round(naive_s, 2), "naive_MB_s": round(mb / naive_s, 2),
        "ratio": round(naive_s / ours_s, 2), "datamates_token_bytes": n_ours,
        "note": "datamates also writes the index, docs.parquet, per-domain packing and resume state; naive does not",
    }))


if __name__ == "__main__":
    main()
