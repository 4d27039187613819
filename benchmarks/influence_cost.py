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

The proxy LM (selection/proxy.py; variants `proxy[SHAPE]:VIEW`, e.g. proxy[L2d32h1]:stats+hidden+fo) is
the config's model at that shape, random weights, featurised the same way; its price also has a
training part (it trains on every token the LM trains on), measured as seconds per AdamW step of
8 x T tokens against the LM's step in the same process (`train_step_seconds`). Memory (`--memory`):
the peak resident memory of a fresh child process that loads one model and featurises the candidates
(the LM's default path vs the proxy's), and the counted bytes of each model's parameters + AdamW state.
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
            "p16e1:embed+stats+fo", "proxy[L2d32h1]:stats+hidden+fo", "proxy[L2d32h1]:p32:stats+hidden+fo"]


def split_proxy(v: str) -> tuple[str | None, str]:
    """'proxy[L2d32h1]:VIEW' -> ('L2d32h1', 'VIEW'); a view of the LM -> (None, v)."""
    if not v.startswith("proxy["):
        return None, v
    shape, rest = v[len("proxy["):].split("]", 1)
    return shape, rest.lstrip(":")


def build(cfg, V: int, shape: str | None):
    from datamates.core.lm import build_model
    from datamates.selection.proxy import parse_shape, proxy_model_config

    mc = cfg.model
    if shape is not None:
        n_layers, d_model, n_heads = parse_shape(shape)
        mc = proxy_model_config(cfg.model, n_layers=n_layers, d_model=d_model, n_heads=n_heads)
    return build_model(mc, V, 0, seed=0)


def train_step_seconds(model, V: int, T: int, steps: int, batch: int = 8) -> float:
    """Median seconds of one AdamW step (forward, backward, clip, step) on batch x T random tokens."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    x = torch.from_numpy(np.random.default_rng(1).integers(0, V, (batch, T)))
    out = []
    for _ in range(steps + 1):  # the first: allocations
        t0 = time.perf_counter()
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        out.append(time.perf_counter() - t0)
    return statistics.median(out[1:])


def _child_peak(config: str, V: int, shape: str | None, view: str, n: int, threads: int, q) -> None:
    """A fresh process: load one model, featurise n candidates, report its peak resident memory."""
    torch.set_num_threads(threads)
    from datamates.config.run import load_config
    from datamates.selection.features import LMFeaturizer, parse_view

    cfg = load_config(config)
    model = build(cfg, V, shape)
    H = model.get_output_embeddings().weight.shape[1]
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        del model
        p, e, kinds = parse_view(view)
        f = LMFeaturizer(tmp, direction=torch.randn(V, H) * 1e-3, batch_size=cfg.mates.fit.lm_batch_size,
                         prefix_tokens=p, exit_layer=e)
        f.features(np.random.default_rng(0).integers(0, V, (n, cfg.pool.seq_len)), kinds)
    # VmHWM, not ru_maxrss: Linux keeps a forked process's ru_maxrss from its parent across exec
    hwm = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM:"))
    q.put(round(hwm / 1024, 1))


def memory(args, V: int) -> dict:
    import multiprocessing as mp

    from datamates.config.run import load_config

    cfg = load_config(args.config)
    ctx = mp.get_context("spawn")
    out = {}
    for v in (DEFAULT, *[x for x in args.variants.split(",") if x.startswith("proxy[")]):
        shape, view = split_proxy(v)
        q = ctx.Queue()
        p = ctx.Process(target=_child_peak, args=(args.config, V, shape, view, args.n, args.threads, q))
        p.start()
        peak = q.get()
        p.join()
        m = build(cfg, V, shape)
        n_par = sum(t.numel() for t in m.parameters())
        out[v] = {"peak_rss_mib_featurising": peak, "parameters": n_par,
                  "params_plus_adamw_mib_fp32": round(n_par * 4 * 3 / 2**20, 2)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="arena_cpu")
    ap.add_argument("--n", type=int, default=256, help="candidates per measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--train-steps", type=int, default=5, help="AdamW steps timed per model (the proxy's training price)")
    ap.add_argument("--memory", action="store_true", help="also the peak memory of the LM's and the proxy's paths "
                    "(a fresh child process each)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from datamates.config.run import load_config
    from datamates.selection.features import LMFeaturizer, feature_flops_per_candidate, parse_view

    def parse(v):
        return parse_view(split_proxy(v)[1])

    cfg = load_config(args.config)
    T = cfg.pool.seq_len
    V = cfg.pool.tokenizer.vocab_size or 8192
    tokens = np.random.default_rng(0).integers(0, V, (args.n, T))
    variants = args.variants.split(",")
    if DEFAULT not in variants:
        variants = [DEFAULT, *variants]
    shapes = list(dict.fromkeys(split_proxy(v)[0] for v in variants))  # None: the LM itself
    models = {sh: build(cfg, V, sh) for sh in shapes}
    step_s = {sh: train_step_seconds(m, V, T, args.train_steps) for sh, m in models.items()}
    model = models[None]
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {}
        for sh, m in models.items():
            dirs[sh] = os.path.join(tmp, sh or "lm")
            m.save_pretrained(dirs[sh], safe_serialization=True)
        Ds = {sh: torch.randn(V, m.get_output_embeddings().weight.shape[1], generator=torch.Generator().manual_seed(0))
              * 1e-3 for sh, m in models.items()}
        feats = {v: LMFeaturizer(dirs[split_proxy(v)[0]], direction=Ds[split_proxy(v)[0]],
                                 batch_size=cfg.mates.fit.lm_batch_size, prefix_tokens=parse(v)[0],
                                 exit_layer=parse(v)[1]) for v in variants}
        for v, f in feats.items():  # warm-up: first-call allocations
            f.features(tokens[:16], parse(v)[2])
        times: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(args.repeats):
            for v in variants:
                t0 = time.perf_counter()
                feats[v].features(tokens, parse(v)[2])
                times[v].append(time.perf_counter() - t0)
    H = model.get_output_embeddings().weight.shape[1]
    base = statistics.median(times[DEFAULT])
    rows = {}
    for v in variants:
        f = feats[v]
        P = f.tokens_per_row(T)
        counted = feature_flops_per_candidate(f.model, parse(v)[2], T, f.prefix_tokens)
        med = statistics.median(times[v])
        rows[v] = {"seconds_per_1000": round(med / args.n * 1000, 3), "ratio_to_default": round(med / base, 4),
                   "counted_flops_per_candidate": counted, "prefix_tokens": P,
                   "exit_layer": f.exit_layer, "runs_s": [round(t, 3) for t in times[v]]}
        if split_proxy(v)[0] is not None:  # + the proxy's own training, per token the LM trains on
            sh = split_proxy(v)[0]
            rows[v]["proxy_train_step_ratio_to_lm"] = round(step_s[sh] / step_s[None], 4)
    for v in variants:
        rows[v]["counted_ratio_to_default"] = round(rows[v]["counted_flops_per_candidate"] /
                                                    rows[DEFAULT]["counted_flops_per_candidate"], 4)
    print(json.dumps({"config": args.config, "shape": {"seq_len": T, "vocab": V, "hidden": H,
                                                       "layers": int(model.config.num_hidden_layers)},
                      "threads": args.threads, "candidates": args.n, "repeats": args.repeats, "default": DEFAULT,
                      "variants": rows, "load_avg_1m_at_end": os.getloadavg()[0],
                      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                      "train_step_seconds": {sh or "lm": round(t, 4) for sh, t in step_s.items()},
                      "memory": memory(args, V) if args.memory else None}, indent=1))


if __name__ == "__main__":
    main()
