"""TRAK featurisation (DsDm, baselines/trak.py) in candidates per second against the brute-force
per-example gradient loop, in one process on the same model, candidates and projection (issue 13).

    python benchmarks/trak.py --pool runs/tiny_cpu/pool --checkpoint CKPT --n 256 --dim 2048
    python benchmarks/trak.py --pool runs/tiny_cpu/pool --n 32 --dim 512 --projection rademacher

    ours     `featurize`: PerSampleGrads (one batched forward + one backward per --batch-size candidates,
             selection/probe/first_order.py) and the projection of each parameter's per-example gradient
             (the input embedding's rows only)
    brute    per candidate: model.zero_grad(); lm_loss(row).backward(); the full gradient of every
             parameter (the whole embedding matrix too) projected densely: through the materialised
             P [N, d] when it fits in --max-matrix-gb, else parameter by parameter with the same P

Both give the same features (the JSON reports their largest relative difference). Repeats are
interleaved (ours, brute, ours, ...) so both see the same machine load; the rate of a method is its
candidates over its best repeat's seconds. Without --checkpoint the model is a fresh one of --preset
(gradients of a random init cost the same as a trained model's). Writes benchmarks/out/trak_*.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DATAMATES_PROGRESS", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from datamates.baselines.trak import Projection, featurize, trainable  # noqa: E402
from datamates.core.checkpoint import load_model  # noqa: E402
from datamates.core.pool import Pool  # noqa: E402
from datamates.core.train_loop import lm_loss  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def brute_features(model, tokens: np.ndarray, proj: Projection, P: torch.Tensor | None) -> np.ndarray:
    params = trainable(model)
    out = np.empty((len(tokens), proj.d), dtype=np.float32)
    model.eval()
    for k, row in enumerate(tokens):
        model.zero_grad(set_to_none=True)
        lm_loss(model, torch.as_tensor(row[None], dtype=torch.long)).backward()
        if P is not None:
            g = torch.cat([p.grad.reshape(-1) for p in params])
            out[k] = (g @ P).numpy()
        else:
            f = torch.zeros(proj.d)
            for i, p in enumerate(params):
                f += proj.dense(i, p.grad.reshape(1, -1))[0]
            out[k] = f.numpy()
    model.zero_grad(set_to_none=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", default=str(ROOT / "runs" / "tiny_cpu" / "pool"))
    ap.add_argument("--checkpoint", help="a datamates checkpoint; default: a fresh model of --preset")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--n", type=int, default=256, help="candidates featurised by ours per repeat")
    ap.add_argument("--n-brute", type=int, default=None, help="candidates of the brute loop per repeat (default n)")
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--projection", default="countsketch", choices=["countsketch", "rademacher", "gaussian"])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-matrix-gb", type=float, default=2.0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    pool = Pool(args.pool)
    if args.checkpoint:
        model = load_model(args.checkpoint)
    else:
        from datamates.config.base import from_dict
        from datamates.config.core import ModelConfig
        from datamates.core.lm import build_model

        model = build_model(from_dict(ModelConfig, {"preset": args.preset}), pool.tokenizer().get_vocab_size(),
                            pool.eos_id, seed=0)
    model.eval()
    nb = args.n_brute or args.n
    ids = np.arange(0, len(pool), max(1, len(pool) // max(args.n, nb)))[: max(args.n, nb)]
    tokens = pool.tokens(ids)
    proj = Projection([tuple(p.shape) for p in trainable(model)], args.dim, args.projection, seed=0)
    P = proj.matrix() if proj.n_params * proj.d * 4 / 2**30 <= args.max_matrix_gb else None
    ours_s, brute_s = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        f_ours = featurize(model, tokens[: args.n], proj, batch_size=args.batch_size)
        ours_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        f_brute = brute_features(model, tokens[:nb], proj, P)
        brute_s.append(time.perf_counter() - t)
    m = min(args.n, nb)
    scale = float(np.abs(f_brute[:m]).max()) or 1.0
    res = {
        "pool": str(args.pool), "checkpoint": args.checkpoint, "preset": None if args.checkpoint else args.preset,
        "n_params": proj.n_params, "seq_len": int(tokens.shape[1]), "dim": proj.d, "projection": proj.kind,
        "batch_size": args.batch_size, "threads": args.threads, "repeats": args.repeats,
        "brute_projection": "materialised P" if P is not None else "per parameter, same P",
        "ours_candidates_per_s": args.n / min(ours_s), "brute_candidates_per_s": nb / min(brute_s),
        "ours_seconds": ours_s, "brute_seconds": brute_s,
        "max_rel_difference": float(np.abs(f_ours[:m] - f_brute[:m]).max() / scale),
    }
    res["ratio_ours_over_brute"] = res["ours_candidates_per_s"] / res["brute_candidates_per_s"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    f = out / f"trak_{args.projection}_d{proj.d}.json"
    f.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    print(f"-> {f}")


if __name__ == "__main__":
    main()
