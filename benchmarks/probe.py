"""Probes per second of the naive reference procedure, exact mode and first-order mode, side by
side in one process on the same checkpoint, candidates and reference set (issue 4).

    python benchmarks/probe.py --preset tiny  --n-ref 256 --naive 6 --exact 24 --first-order 256
    python benchmarks/probe.py --preset small --n-ref 128 --naive 3 --exact 6  --first-order 64

Each mode runs through the public stage (`datamates.selection.probe.probe`, in-process, 1 worker) and
its steady-state rate is `meta.json`'s `probes_per_s` (the per-checkpoint setup -- loading the state,
L_ref before the step and, for first_order, the reference gradient -- is reported separately as
`setup_s`). Repeats are interleaved (naive, exact, first_order, naive, ...) so that every mode sees
the same machine load. The first `--naive` candidates are labelled by all three modes; the JSON
reports how far exact is from naive on them (identical labels up to fp32 evaluation noise) and the
Spearman / Pearson of first_order vs exact on the `--exact` candidates.

The checkpoint is trained here once per preset (benchmarks/out/probe_<preset>/checkpoint, AdamW at a
constant lr after a short warmup, so the moments are real) unless --checkpoint is given.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DATAMATES_PROGRESS", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import pearsonr, spearmanr  # noqa: E402

from datamates.config.core import ModelConfig, TrainConfig  # noqa: E402
from datamates.config.probe import ProbeConfig  # noqa: E402
from datamates.core.checkpoint import load_model  # noqa: E402
from datamates.core.lm import n_params  # noqa: E402
from datamates.core.pool import Pool  # noqa: E402
from datamates.core.reference import load_reference  # noqa: E402
from datamates.core.train_loop import train  # noqa: E402
from datamates.selection.probe import probe, read_labels, read_meta  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PRESETS = {"tiny": "tiny", "small": "pythia-70m"}


def make_checkpoint(preset: str, pool: Pool, out: Path, steps: int) -> Path:
    mc = from_preset(PRESETS[preset])
    tc = TrainConfig(steps=steps, micro_batch_size=8, lr=2e-3, warmup_steps=5, schedule="constant",
                     checkpoint_every=10_000, log_every=10_000, device="cpu", seed=0)
    return train(tc, mc, pool, np.arange(0, 20_000), out)


def from_preset(name: str) -> ModelConfig:
    from datamates.config.base import from_dict

    return from_dict(ModelConfig, {"preset": name})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--pool", default=str(ROOT / "runs" / "tiny_cpu" / "pool"))
    ap.add_argument("--checkpoint", help="use this checkpoint instead of training one")
    ap.add_argument("--train-steps", type=int, default=30)
    ap.add_argument("--n-ref", type=int, default=256, help="LAMBADA reference examples (seed 1234)")
    ap.add_argument("--naive", type=int, default=6, help="candidates per naive repeat")
    ap.add_argument("--exact", type=int, default=24, help="candidates per exact repeat")
    ap.add_argument("--first-order", type=int, default=256, help="candidates per first_order repeat")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    pool = Pool(args.pool)
    work = Path(args.out) / f"probe_{args.preset}"
    ckpt = Path(args.checkpoint) if args.checkpoint else make_checkpoint(args.preset, pool, work / "checkpoint",
                                                                         args.train_steps)
    ref = load_reference("lambada_openai", pool.tokenizer(), size=args.n_ref, seed=1234)
    held_out = np.arange(25_000, len(pool))  # never trained on
    cand = np.random.default_rng(0).permutation(held_out)[: max(args.naive, args.exact, args.first_order)]
    sizes = {"naive": args.naive, "exact": args.exact, "first_order": args.first_order}
    rates: dict[str, list[float]] = {m: [] for m in sizes}
    setup: dict[str, list[float]] = {m: [] for m in sizes}
    labels: dict[str, np.ndarray] = {}
    for rep in range(args.repeats):
        for mode, n in sizes.items():
            out = work / f"{mode}_{rep}"
            shutil.rmtree(out, ignore_errors=True)
            cfg = ProbeConfig(mode=mode, device="cpu", chunk_size=64, batch_size=32, candidate_batch=16)
            t0 = time.time()
            probe(cfg, ckpt, pool, cand[:n], out, reference=ref)
            total = time.time() - t0
            meta = read_meta(out)
            rates[mode].append(meta["probes_per_s"])
            setup[mode].append(total - meta["probe_seconds"])
            labels[mode] = read_labels(out)[1]
            print(f"[rep {rep}] {mode:12s} {n:4d} probes  {meta['probes_per_s']:8.2f} probes/s  "
                  f"(setup {total - meta['probe_seconds']:.1f}s)", file=sys.stderr, flush=True)

    k, e = args.naive, min(args.exact, args.first_order)
    diff = np.abs(labels["exact"][:k] - labels["naive"][:k])
    med = {m: float(np.median(v)) for m, v in rates.items()}
    model = load_model(ckpt)
    result = {
        "benchmark": "probe",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()}-core CPU, torch {torch.__version__}, {args.threads} thread(s)",
        "preset": args.preset,
        "model": PRESETS[args.preset],
        "n_params": n_params(model),
        "seq_len": pool.seq_len,
        "reference": {"name": "lambada_openai", "size": len(ref), "target_tokens": ref.n_target_tokens,
                      "input_tokens": int(sum(len(x.context) + len(x.target) for x in ref.examples))},
        "candidates": sizes,
        "repeats": args.repeats,
        "probes_per_s": {m: [round(r, 4) for r in v] for m, v in rates.items()},
        "probes_per_s_median": {m: round(v, 4) for m, v in med.items()},
        "setup_s_median": {m: round(float(np.median(v)), 2) for m, v in setup.items()},
        "ratio_exact_vs_naive": round(med["exact"] / med["naive"], 2),
        "ratio_first_order_vs_exact": round(med["first_order"] / med["exact"], 2),
        "ratio_first_order_vs_naive": round(med["first_order"] / med["naive"], 2),
        "exact_vs_naive_labels": {"n": k, "max_abs_diff": float(diff.max()),
                                  "max_rel_diff": float((diff / np.abs(labels["naive"][:k])).max()),
                                  "label_abs_mean": float(np.abs(labels["naive"][:k]).mean())},
        "first_order_vs_exact": {"n": e, "spearman": float(spearmanr(labels["first_order"][:e], labels["exact"][:e])[0]),
                                 "pearson": float(pearsonr(labels["first_order"][:e], labels["exact"][:e])[0])},
        "goals": {"exact_vs_naive": ">= 5", "first_order_vs_exact": ">= 20"},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
