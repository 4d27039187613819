"""Tokens per second of `datamates.core.train_loop.train` vs a plain hand-written PyTorch loop,
same model, same batches, same process, interleaved repeats. Prints JSON with the ratio.

    python benchmarks/train_throughput.py [--pool runs/tiny_cpu/pool] [--preset tiny] [--steps 12]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from datamates.config.base import from_dict
from datamates.config.core import ModelConfig, TrainConfig
from datamates.core.lm import autocast, build_model, resolve_device
from datamates.core.pool import Pool
from datamates.core.train_loop import read_train_log, train


def plain_loop(model_cfg, pool, ids, cfg: TrainConfig, warmup: int) -> float:
    """The baseline: what a user would write by hand. Returns tokens/s after `warmup` steps."""
    device = resolve_device(cfg.device)
    model = build_model(model_cfg, pool.vocab_size, pool.eos_id, cfg.seed).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.1, foreach=False)
    order = np.random.default_rng([cfg.seed, 0]).permutation(len(ids))
    B = cfg.micro_batch_size
    t_start = None
    for step in range(cfg.steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t_start = time.perf_counter()
        x = torch.from_numpy(pool.tokens(ids[order[step * B : (step + 1) * B]])).to(device)
        with autocast(device, cfg.precision):
            logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(), x[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (cfg.steps - warmup) * B * pool.seq_len / (time.perf_counter() - t_start)


def ours(model_cfg, pool, ids, cfg: TrainConfig, warmup: int) -> float:
    out = Path(tempfile.mkdtemp()) / "ck"
    train(cfg, model_cfg, pool, ids, out)
    log = read_train_log(out)
    shutil.rmtree(out.parent)
    dt = log[-1]["elapsed_s"] - log[warmup - 1]["elapsed_s"]
    return (cfg.steps - warmup) * cfg.micro_batch_size * pool.seq_len / dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pool", default="runs/tiny_cpu/pool")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    os.environ["DATAMATES_PROGRESS"] = "0"
    pool = Pool(args.pool)
    model_cfg = from_dict(ModelConfig, {"preset": args.preset})
    cfg = TrainConfig(steps=args.steps, micro_batch_size=args.batch, lr=1e-3, warmup_steps=0,
                      checkpoint_every=10**9, log_every=10**9, device=args.device, seed=0)
    ids = np.arange(len(pool))
    a, b = [], []
    for _ in range(args.repeats):  # interleaved, so background load hits both alike
        b.append(plain_loop(model_cfg, pool, ids, cfg, args.warmup))
        a.append(ours(model_cfg, pool, ids, cfg, args.warmup))
    res = {
        "benchmark": "train_throughput", "device": str(resolve_device(args.device)), "preset": args.preset,
        "seq_len": pool.seq_len, "micro_batch": args.batch, "steps_timed": args.steps - args.warmup,
        "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
        "datamates_tok_s": [round(x) for x in a], "plain_loop_tok_s": [round(x) for x in b],
        "ratio_median": round(statistics.median(a) / statistics.median(b), 3),
        "ratio_per_repeat": [round(x / y, 3) for x, y in zip(a, b)],
    }
    print(json.dumps(res))


if __name__ == "__main__":
    main()
