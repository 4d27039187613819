"""Exact oracle labels for the influence-fit experiment (MATES §3.1, docs/methods.md#one-exact-probe), computed with a
naive loop so this experiment does not depend on the prober being written concurrently:

    ref_loss_delta(x) = L_ref(theta') - L_ref(theta),  theta' = one AdamW step on x from the
                        checkpoint's full state (weights + AdamW moments + step count)

AdamW exactly as the training loop (`make_optimizer`: betas 0.9/0.95, wd 0.1 on all parameters,
clip 1.0), at the run's peak LR (MATES probes at the peak LR 1e-3; here 2e-3, the tiny_cpu peak).
L_ref = mean last-word NLL on 1024 LAMBADA-OpenAI examples (seed 1234), `core.loss.reference_loss`.
Probe sequences: a random sample of the pool that the checkpoint never trained on.

Writes runs/probe/labels.parquet + meta.json in the contract's format (docs/contracts.md).
Usage: python experiments/influence_fit/probe_labels.py --n 1000
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file

from datamates.config.base import from_dict
from datamates.config.core import TrainConfig
from datamates.core.checkpoint import load_model, trainer_state
from datamates.core.loss import load_lambada, reference_loss, sequence_nll
from datamates.core.pool import Pool
from datamates.core.train_loop import DataOrder, lm_loss, make_optimizer
from datamates.run_dir import atomic_dir, meta_record

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pool", default="runs/tiny_cpu/pool")
    ap.add_argument("--ckpt", default=str(HERE / "runs/ckpt"))
    ap.add_argument("--out", default=str(HERE / "runs/probe"))
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--ref-size", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pool = Pool(args.pool)
    state = trainer_state(args.ckpt)
    tcfg = from_dict(TrainConfig, state["train_config"])
    seen = DataOrder(np.arange(state["call"]["n_ids"]), state["call"]["seed"]).take(0, state["call"]["cursor"])
    unseen = np.setdiff1d(np.arange(len(pool)), seen)
    probe_ids = np.sort(np.random.default_rng(args.seed).choice(unseen, args.n, replace=False))

    base = load_model(args.ckpt)
    base.eval()  # no dropout in the LM; eval mode only silences train-time paths
    tok = pool.tokenizer()
    ref = load_lambada(Path(os.environ.get("DATAMATES_DATA", "/work/shared/data")) / "eval/lambada_openai.jsonl",
                       tok, n=args.ref_size, seed=1234)
    before = reference_loss(base, ref, batch_size=64)
    opt_tensors = load_file(str(Path(args.ckpt) / "optimizer.safetensors"))
    by_name: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in opt_tensors.items():
        moment, name = key.split(".", 1)
        by_name.setdefault(name, {})[moment] = t
    base_params = {n: p.detach().clone() for n, p in base.named_parameters()}
    own_nll = sequence_nll(base, pool.tokens(probe_ids), batch_size=32) / (pool.seq_len - 1)

    model = load_model(args.ckpt)
    params = dict(model.named_parameters())
    out_rows = []
    t0 = time.time()
    for j, sid in enumerate(probe_ids):
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(base_params[n])
        opt = make_optimizer(model, tcfg)
        for n, p in params.items():
            st = by_name[n]
            opt.state[p] = {"step": st["step"].clone().float(), "exp_avg": st["exp_avg"].clone(),
                            "exp_avg_sq": st["exp_avg_sq"].clone()}
        for g in opt.param_groups:
            g["lr"] = tcfg.lr
        model.train()
        x = torch.from_numpy(pool.tokens([sid]))
        loss = lm_loss(model, x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        after = reference_loss(model, ref, batch_size=64)
        out_rows.append((int(sid), after - before, after))
        if (j + 1) % 50 == 0:
            el = time.time() - t0
            print(f"{j + 1}/{len(probe_ids)} probes, {el:.0f} s ({el / (j + 1):.2f} s/probe)", flush=True)
    ids = np.array([r[0] for r in out_rows], dtype=np.int64)
    delta = np.array([r[1] for r in out_rows])
    meta = meta_record(
        "experiments/influence_fit/probe_labels.py",
        sign="ref_loss_delta = L_ref(after one AdamW step on the sequence) - L_ref(before); lower is better",
        mode="naive", checkpoint=str(args.ckpt), pool_id=pool.pool_id,
        reference={"name": "lambada_openai", "size": len(ref), "seed": 1234, "ref_loss_before": before},
        lr=tcfg.lr, probe_count=len(ids), probe_seed=args.seed, seconds=round(time.time() - t0, 1),
    )
    with atomic_dir(Path(args.out), meta) as tmp:
        pq.write_table(pa.table({"seq_id": ids, "ref_loss_delta": delta,
                                 "ref_loss_after": np.array([r[2] for r in out_rows]),
                                 "own_loss": own_nll, "domain": pool.domain_of(ids).astype(np.int64)}),
                       tmp / "labels.parquet")
    print(json.dumps({"n": len(ids), "ref_loss_before": before, "delta_mean": float(delta.mean()),
                      "delta_std": float(delta.std()), "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
