"""Real cost of the influence model's features (issue 28): seconds per 1,000 candidates on this CPU at
the arena shape, for each cheaper LM view against today's full-forward default, in one process.

    PYTHONPATH=src python benchmarks/influence_cost.py [--config arena_cpu] [--n 256] [--repeats 3] [--threads 1]

The LM is the config's model (configs/arena_cpu.yaml: the tiny GPT-NeoX, T = 256, an 8,192-token
vocabulary) with random weights (the speed of a forward does not depend on them), written to a
temporary checkpoint and featurised by the code the fit and the scorer run (`LMFeaturizer`, with
`prefix_tokens` / `exit_layer`); the `fo` direction is a random [V, H] matrix. Candidates are random
token rows. Every variant runs `--repeats` times interleaved with the default (the median is kept),
so a machine that gets busier or quieter during the run shifts both alike; ratios are against the
default measured in the same process. Also printed: the counted FLOPs per candidate
(features.feature_flops_per_token) so counted and measured savings can be compared, and the peak
resident memory of the process. Wall-clock numbers from a shared machine: say so when quoting them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

DEFAULT = "stats+hidden+fo"
VARIANTS = [DEFAULT, "p64:stats+hidden+fo", "p32:stats+hidden+fo", "e1:stats+hidden+fo", "e2:stats+hidden+fo",
            "p32e1:stats+hidden+fo", "p64e1:stats+hidden+fo", "p32e1:stats+hidden", "p32e1:hidden", "p64e2:hidden",
            "p32e0:hidden", "e0:hidden", "embed", "p16e0:embed+stats+hidden+fo", "p16e1:embed+stats+hidden",
            "p16e1:embed+stats+fo"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="arena_cpu")
    ap.add_argument("--n", type=int, default=256, help="candidates per measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from datamates.config.run import load_config
    from datamates.core.lm import build_model
    from datamates.selection.features import LMFeaturizer
    from datamates.selection.features import parse_view as parse

    cfg = load_config(args.config)
    T = cfg.pool.seq_len
    V = cfg.pool.tokenizer.vocab_size or 8192
    model = build_model(cfg.model, V, 0, seed=0)
    H = model.get_output_embeddings().weight.shape[1]
    D = torch.randn(V, H, generator=torch.Generator().manual_seed(0)) * 1e-3
    tokens = np.random.default_rng(0).integers(0, V, (args.n, T))
    variants = args.variants.split(",")
    if DEFAULT not in variants:
        variants = [DEFAULT, *variants]
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        feats = {v: LMFeaturizer(tmp, direction=D, batch_size=cfg.mates.fit.lm_batch_size,
                                 prefix_tokens=parse(v)[0], exit_layer=parse(v)[1]) for v in variants}
        for v, f in feats.items():  # warm-up: first-call allocations
            f.features(tokens[:16], parse(v)[2])
        times: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(args.repeats):
            for v in variants:
                t0 = time.perf_counter()
                feats[v].features(tokens, parse(v)[2])
                times[v].append(time.perf_counter() - t0)
    base = statistics.median(times[DEFAULT])
    rows = {}
    for v in variants:
        f = feats[v]
        P = f.tokens_per_row(T)
        from datamates.selection.features import feature_flops_per_candidate

        counted = feature_flops_per_candidate(f.model, parse(v)[2], T, f.prefix_tokens)
        med = statistics.median(times[v])
        rows[v] = {"seconds_per_1000": round(med / args.n * 1000, 3), "ratio_to_default": round(med / base, 4),
                   "counted_flops_per_candidate": counted, "prefix_tokens": P,
                   "exit_layer": f.exit_layer, "runs_s": [round(t, 3) for t in times[v]]}
    for v in variants:
        rows[v]["counted_ratio_to_default"] = round(rows[v]["counted_flops_per_candidate"] /
                                                    rows[DEFAULT]["counted_flops_per_candidate"], 4)
    print(json.dumps({"config": args.config, "shape": {"seq_len": T, "vocab": V, "hidden": H,
                                                       "layers": int(model.config.num_hidden_layers)},
                      "threads": args.threads, "candidates": args.n, "repeats": args.repeats, "default": DEFAULT,
                      "variants": rows, "load_avg_1m_at_end": os.getloadavg()[0],
                      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                      "proxy_lm": "not built (issue 28: last priority, not done)"}, indent=1))


if __name__ == "__main__":
    main()
