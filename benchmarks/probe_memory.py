"""First-order probe memory: the chooser's estimate (selection/probe/first_order.py `plan_micro_batch`)
against the measured peak, and probes per second (issue 15, item 3; docs/scaling.md).

    # CPU, a tiny shape (minutes on 2 cores): estimate vs measured peak RSS growth
    python benchmarks/probe_memory.py --preset pythia-14m --seq-len 256 --batch 4
    # CUDA, the pythia-410m shape at MATES's 1024 tokens: peak allocated, probes/s
    python benchmarks/probe_memory.py --preset pythia-410m --seq-len 1024 --batch 16 --device cuda

The model is a random-init GPT-NeoX of the preset's shape (50,304-row vocabulary unless --vocab),
with Llama-style layers instead under --arch llama (same width, depth and heads; RMSNorm, SwiGLU,
untied head). The AdamW state is synthetic (m = 0, v ~ U(0, 1e-6), step 1000) and rho is random:
memory and speed do not depend on the values. Two runs per call, each in a fresh process so the
peak belongs to it: `budget` (memory_budget_gb = exactly K x per-sample + the minimum workspace,
so the streamed gradients get the least room: the estimate is tight there) and `free` (no
budget: the default, 80% of the free memory, so as many gradients as fit are kept between the two
passes). Measured: CUDA `torch.cuda.max_memory_allocated` minus the allocation before the first
batch; CPU the growth of peak RSS (`ru_maxrss`) over the RSS before the first batch, with glibc told
to mmap every block over 64 KiB (MALLOC_MMAP_THRESHOLD_) so that freed memory leaves the RSS. JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DATAMATES_PROGRESS", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402

GiB = 1024**3


def build(preset: str, arch: str, vocab: int, seq_len: int, device: torch.device):
    from datamates.config.base import from_dict
    from datamates.config.core import ModelConfig, TrainConfig
    from datamates.core.lm import build_model
    from datamates.selection.probe.oracle import AdamWHyper, ProbeState

    mc = from_dict(ModelConfig, {"preset": preset, "context": max(seq_len, 8)})
    if arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=vocab, hidden_size=mc.d_model, intermediate_size=(mc.d_ff or 4 * mc.d_model) * 2 // 3,
            num_hidden_layers=mc.n_layers, num_attention_heads=mc.n_heads, max_position_embeddings=mc.context,
            tie_word_embeddings=False))
    else:
        model = build_model(mc, vocab, 0, seed=0)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator(device="cpu").manual_seed(0)
    m = [torch.zeros_like(p) for p in params]
    v = [(torch.rand(p.shape, generator=gen) * 1e-6).to(device) for p in params]
    tc = TrainConfig(device=str(device))
    hyper = AdamWHyper(1e-3, tc.beta1, tc.beta2, tc.eps, tc.grad_clip, "benchmark")
    precision = "auto"
    state = ProbeState(model, tc, hyper, m, v, [1000.0] * len(params), [tc.weight_decay] * len(params), device,
                       precision, 1000)
    return state


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def one(args) -> dict:
    from datamates.selection.probe.first_order import FirstOrderConstants, FirstOrderProber, plan_micro_batch

    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    state = build(args.preset, args.arch, args.vocab, args.seq_len, device)
    gen = torch.Generator(device="cpu").manual_seed(1)
    rho = [(torch.randn(p.numel(), 1, generator=gen) * 1e-3).to(device) for p in state.params]
    consts = FirstOrderConstants("momentum", rho, np.zeros(1), np.zeros(1))
    ref_plan = plan_micro_batch(state.model, state.params, args.seq_len, candidate_batch=args.batch,
                                budget_bytes=1 << 60)
    budget = None
    if args.mode == "budget":
        budget = (args.batch * ref_plan.per_sample + ref_plan.workspace_min) / GiB
    fo = FirstOrderProber(state, consts, candidate_batch=args.batch, memory_budget_gb=budget)
    plan = fo.plan(args.seq_len)
    X = torch.randint(0, args.vocab, (plan.micro_batch * (1 + args.batches), args.seq_len), generator=gen).to(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = rss_bytes()
    fo.labels(X[: plan.micro_batch])  # first batch: warm-up, and the peak
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.time()
    fo.labels(X[plan.micro_batch :])
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    seconds = time.time() - t0
    used_ws = max(plan.budget - plan.micro_batch * plan.per_sample, plan.workspace_min)
    estimate = plan.micro_batch * plan.per_sample + (used_ws if args.mode == "budget" else 0)
    return {"mode": args.mode, "device": str(device), "preset": args.preset, "arch": args.arch,
            "seq_len": args.seq_len, "plan": plan.describe(),
            "estimate_working_set_gb": estimate / GiB, "measured_working_set_gb": peak / GiB,
            "measured_over_estimate": peak / max(estimate, 1),
            "note": ("free: the estimate counts K x per-sample only; the workspace grows into the free memory by design"
                     if args.mode == "free" else "budget: K x per-sample + the minimum workspace"),
            "probes_per_s": plan.micro_batch * args.batches / seconds, "timed_probes": plan.micro_batch * args.batches}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="pythia-14m")
    ap.add_argument("--arch", choices=["neox", "llama"], default="neox")
    ap.add_argument("--vocab", type=int, default=50304)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4, help="candidate_batch (the chooser may lower it)")
    ap.add_argument("--batches", type=int, default=2, help="timed micro-batches after the first")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mode", choices=["budget", "free", "both"], default="both")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args)))
        return
    out = []
    for mode in (["budget", "free"] if args.mode == "both" else [args.mode]):
        argv = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("mode", "one")]
        # every large block mmapped and unmapped on free: RSS follows the live bytes, ru_maxrss their peak
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        r = subprocess.run([sys.executable, __file__, *argv, "--mode", mode, "--one"], capture_output=True, text=True,
                           env=env)
        if r.returncode:
            sys.stderr.write(r.stderr[-3000:])
            raise SystemExit(r.returncode)
        out.append(json.loads(r.stdout.strip().splitlines()[-1]))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
