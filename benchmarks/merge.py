"""Benchmark: evaluating every mixture's merged proxy, and what the proxy study saves.

Part 1 - all 2^K - 1 subset proxies of K unit models (same input, contenders side by side):

    naive_disk     per subset: `merge(...)` its k unit checkpoints to disk, `load_model`, evaluate
                   (re-reads k models and writes one per subset: the ez-data-ablations workflow)
    naive_memory   per subset: read its k unit models from disk into a running sum, load into a
                   resident model, evaluate (re-reads k models per subset, no disk write)
    gray_stream    Gray-code walk: add / remove the one changed unit model, read from disk
    gray_cached    Gray-code walk with all K unit models resident (datamates ablate's default)

Each contender runs in its own spawned process (one after another, same machine, same files) so
its peak RSS can be read; a baseline process that only loads the resident model and evaluates
once gives the memory every contender pays anyway. The per-subset evaluation is a small fixed
batch, so merge costs are visible; the eval NLLs of all contenders are compared (they must agree).

Part 2 - amortisation at the tiny preset of experiments/ablation_proxy: measured seconds per
training step and per full evaluation (held-out sets + LAMBADA) give the cost of the proxy study
(K unit trainings + 2^K - 1 merges and evaluations) against training a gold model for every
mixture (sum_k C(K,k) k = K 2^(K-1) unit trainings + the same evaluations).

Part 3 - incremental studies (issue 17): on a real pool, a K-unit study (the first K domains, the
tiny preset) is extended by `add_unit_study` with the (K+1)-th domain, and a (K+1)-unit study is run
from scratch from the same seed state, in one run: models trained, mixtures evaluated and seconds
of each (the seed is shared and not counted); the two tables must agree.

    .venv/bin/python benchmarks/merge.py                 # pythia-70m shapes, K = 5
    .venv/bin/python benchmarks/merge.py --preset tiny   # quick
    .venv/bin/python benchmarks/merge.py --incremental-only --pool runs/tiny_cpu/pool   # part 3 only
Prints JSON; the figures go to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DATAMATES_PROGRESS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]


def _setup(out: Path, preset: str, K: int, vocab: int) -> dict:
    """Seed checkpoint + K unit checkpoints (seed + noise of std 1e-3) and a fixed eval batch."""
    import numpy as np
    import torch

    from datamates.config.base import from_dict
    from datamates.config.core import ModelConfig
    from datamates.core.checkpoint import save_checkpoint
    from datamates.core.lm import build_model, n_params

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cfg = from_dict(ModelConfig, {"preset": preset, "context": 256})
    seed = build_model(cfg, vocab, 0, 0)
    save_checkpoint(out / "seed", seed, None, {"global_step": 0, "tokenizer_hash": "bench"})
    g = torch.Generator().manual_seed(1)
    for i in range(K):
        with torch.no_grad():
            m = build_model(cfg, vocab, 0, 0)
            for p in m.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 1e-3)
        save_checkpoint(out / f"unit{i}", m, None, {"global_step": 0, "tokenizer_hash": "bench"})
    np.save(out / "eval.npy", np.random.default_rng(0).integers(0, vocab, size=(2, 128)))
    return {"params": n_params(seed), "bytes_per_model": (out / "unit0" / "model.safetensors").stat().st_size}


def _contender(name: str, out: str, K: int, q) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from datamates.ablation import mixture_key
    from datamates.ablation.merge import RunningMerge, UnitStore, gray_code_masks, members, merge
    from datamates.core.checkpoint import load_model
    from datamates.core.loss import sequence_nll

    out = Path(out)
    units = [out / f"unit{i}" for i in range(K)]
    x = np.load(out / "eval.npy")
    model = load_model(out / "seed")
    nll: dict[str, float] = {}
    t_merge = t_eval = 0.0
    reads = passes = 0  # unit models read from disk; passes of one unit model over the running sum
    t0 = time.time()
    if name == "baseline":
        nll["seed"] = float(sequence_nll(model, x).sum())
    elif name == "naive_disk":
        del model
        for mask in gray_code_masks(K):
            idx = members(mask)
            a = time.time()
            path = merge([units[i] for i in idx], out / "tmp_merged")
            m = load_model(path)
            b = time.time()
            nll[mixture_key([str(i) for i in idx])] = float(sequence_nll(m, x).sum())
            t_eval += time.time() - b
            t_merge += b - a
            reads += len(idx)
            passes += len(idx)
            del m
            shutil.rmtree(path)
    elif name == "naive_memory":
        store = UnitStore(units, model, cache=False)
        for mask in gray_code_masks(K):
            idx = members(mask)
            a = time.time()
            rm = RunningMerge(store)
            rm.recompute(mask)
            rm.load_into(model)
            reads += rm.unit_reads
            passes += rm.unit_reads
            del rm
            b = time.time()
            nll[mixture_key([str(i) for i in idx])] = float(sequence_nll(model, x).sum())
            t_eval += time.time() - b
            t_merge += b - a
    else:
        a = time.time()
        store = UnitStore(units, model, cache=(name == "gray_cached"))
        rm = RunningMerge(store, recompute_every=16)
        t_merge += time.time() - a
        for mask in gray_code_masks(K):
            idx = members(mask)
            a = time.time()
            rm.set(mask)
            rm.load_into(model)
            b = time.time()
            nll[mixture_key([str(i) for i in idx])] = float(sequence_nll(model, x).sum())
            t_eval += time.time() - b
            t_merge += b - a
        passes = rm.unit_reads
        reads = K if name == "gray_cached" else rm.unit_reads
    total = time.time() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    q.put({"name": name, "seconds": total, "merge_s": t_merge, "eval_s": t_eval, "unit_model_reads": reads,
           "unit_passes": passes, "peak_rss_mb": peak_mb, "nll": nll})


def run_contender(name: str, out: Path, K: int) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_contender, args=(name, str(out), K, q))
    p.start()
    res = q.get()
    p.join()
    return res


def amortisation(K: int, unit_steps: int, seed_steps: int) -> dict:
    """Measured seconds per training step and per full evaluation at the tiny preset."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from datamates.config.base import data_dir, from_dict
    from datamates.config.core import ModelConfig, TrainConfig
    from datamates.core.lm import build_model
    from datamates.core.loss import load_lambada
    from datamates.core.pool import Pool
    from datamates.core.train_loop import lm_loss, make_optimizer
    from datamates.pipelines.ablation import EvalSets

    pool_path = ROOT / "runs" / "tiny_cpu" / "pool"
    if not (pool_path / "DONE").exists():
        return {"skipped": f"no pool at {pool_path} (build it with `datamates pool build -c tiny_cpu`)"}
    pool = Pool(pool_path)
    model = build_model(from_dict(ModelConfig, {"preset": "tiny"}), pool.vocab_size, pool.eos_id, 0)
    opt = make_optimizer(model, TrainConfig())
    rng = np.random.default_rng(0)
    times = []
    for i in range(8):  # micro-batch 8 x 256 tokens, as the experiment
        x = torch.from_numpy(pool.tokens(np.sort(rng.choice(len(pool), 8, replace=False))))
        a = time.time()
        lm_loss(model, x).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        if i >= 2:
            times.append(time.time() - a)
    t_step = float(np.median(times))
    held = {d: np.sort(rng.choice(np.nonzero(np.asarray(pool.seq_domain) == j)[0], 64, replace=False))
            for j, d in enumerate(pool.domains)}
    evs = EvalSets(pool, held, {d: 1.0 for d in held}, load_lambada(data_dir() / "eval" / "lambada_openai.jsonl",
                                                            pool.tokenizer(), n=500), 32, "fp32", "bench")
    a = time.time()
    evs.evaluate(model)
    t_eval = time.time() - a
    M = 2 ** K - 1
    unit_trainings_all_gold = K * 2 ** (K - 1)
    proxy_train = (seed_steps + K * unit_steps) * t_step
    gold_train = (seed_steps + unit_trainings_all_gold * unit_steps) * t_step
    return {
        "preset": "tiny", "seq_len": pool.seq_len, "micro_batch": 8, "K": K, "mixtures": M,
        "unit_steps": unit_steps, "seed_steps": seed_steps,
        "seconds_per_step": t_step, "seconds_per_eval": t_eval,
        "proxy_study_s": proxy_train + M * t_eval,
        "every_gold_s": gold_train + M * t_eval,
        "proxy_study_train_unit_trainings": K,
        "every_gold_unit_trainings": unit_trainings_all_gold,
        "ratio_every_gold_over_proxy": (gold_train + M * t_eval) / (proxy_train + M * t_eval),
        "ratio_training_only": gold_train / proxy_train,
    }


def incremental(pool_path: Path, out: Path, K: int, unit_steps: int, seed_steps: int, tokens: int,
                lambada_n: int) -> dict:
    """Part 3: a (K+1)-unit study from scratch vs a K-unit study extended by one unit."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from datamates.ablation.partition import add_unit, partition
    from datamates.ablation.train_partition import train_partitions, train_seed
    from datamates.config.ablation import (
        AblationConfig,
        AblationEvalConfig,
        BranchConfig,
        PartitionConfig,
        SeedConfig,
    )
    from datamates.config.base import data_dir, from_dict
    from datamates.config.core import ModelConfig, TrainConfig
    from datamates.core.pool import Pool
    from datamates.pipelines.ablation import ablate, add_unit_study
    from datamates.run_dir import RunDir

    if not (pool_path / "DONE").exists():
        return {"skipped": f"no pool at {pool_path} (build it with `datamates pool build -c tiny_cpu`)"}
    pool = Pool(pool_path)
    if len(pool.domains) < K + 1:
        return {"skipped": f"{pool_path} has {len(pool.domains)} domains; K + 1 = {K + 1} needed"}
    if out.exists():
        shutil.rmtree(out)
    doms = pool.domains[: K + 1]
    cfg = AblationConfig(
        partition=PartitionConfig(by="domain", token_balanced=True, heldout_sequences=16, domains=doms[:K]),
        seed=SeedConfig(steps=seed_steps, warmup_steps=max(1, seed_steps // 10)),
        branch=BranchConfig(steps=unit_steps), gold_count=0, gold_singletons=True, plots=False,
        eval=AblationEvalConfig(tokens_per_set=tokens, lambada=str(data_dir() / "eval" / "lambada_openai.jsonl"),
                                lambada_n=lambada_n))
    tcfg = TrainConfig(micro_batch_size=8, checkpoint_every=10_000, log_every=10_000, device="cpu", seed=0)
    mcfg = from_dict(ModelConfig, {"preset": "tiny"})
    a = RunDir(out / "incremental")
    man = partition(pool, cfg.partition, a.partitions)
    seed = train_seed(man, pool, cfg.seed, tcfg, mcfg, a.seed_model)
    rest = man.rest_ids()
    new_ids = rest[np.asarray(pool.seq_domain)[rest] == pool.domains.index(doms[K])][: man.data["unit_sequences"]]
    t0 = time.time()
    train_partitions(man, pool, seed, a.root / "units", tcfg, mcfg, cfg.branch)
    base = ablate(cfg, tcfg, mcfg, a, pool)
    t_base = time.time() - t0
    t0 = time.time()
    inc = add_unit_study(cfg, tcfg, mcfg, a, pool, doms[K], new_ids, "benchmark")
    t_inc = time.time() - t0
    b = RunDir(out / "scratch")
    man_b = add_unit(partition(pool, cfg.partition, b.partitions), pool, doms[K], new_ids, "benchmark")
    shutil.copytree(seed, b.seed_model)
    t0 = time.time()
    train_partitions(man_b, pool, b.seed_model, b.root / "units", tcfg, mcfg, cfg.branch)
    scratch = ablate(cfg, tcfg, mcfg, b, pool)
    t_scratch = time.time() - t0
    ta = {r["mixture"]: r["eval"]["heldout_all"]["logppl"] for r in inc["proxies"]}
    tb = {r["mixture"]: r["eval"]["heldout_all"]["logppl"] for r in scratch["proxies"]}
    shutil.rmtree(out, ignore_errors=True)
    return {
        "K": K, "unit_steps": unit_steps, "seed_steps": seed_steps, "tokens_per_set": tokens, "lambada_n": lambada_n,
        "k_unit_study": {"seconds": t_base, "models_trained": K, "evaluations": base["this_run"]["proxy_evaluations"]},
        "incremental_add_one": {"seconds": t_inc, "models_trained": inc["this_run"]["units_trained"],
                                "evaluations": inc["this_run"]["proxy_evaluations"]},
        "scratch_k_plus_1": {"seconds": t_scratch, "models_trained": K + 1,
                             "evaluations": scratch["this_run"]["proxy_evaluations"]},
        "ratio_scratch_over_incremental": t_scratch / t_inc,
        "max_abs_logppl_diff": max(abs(ta[m] - tb[m]) for m in tb) if ta.keys() == tb.keys() else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="pythia-70m", help="model shape of the merge benchmark")
    ap.add_argument("--units", type=int, default=5, help="K unit models (2^K - 1 subsets)")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "merge"))
    ap.add_argument("--unit-steps", type=int, default=70, help="amortisation: steps per unit (experiment: 70)")
    ap.add_argument("--seed-steps", type=int, default=400, help="amortisation: seed steps (experiment: 400)")
    ap.add_argument("--skip-amortisation", action="store_true")
    ap.add_argument("--pool", default=str(ROOT / "runs" / "tiny_cpu" / "pool"), help="part 3: the pool")
    ap.add_argument("--incremental-only", action="store_true", help="run part 3 only")
    ap.add_argument("--skip-incremental", action="store_true")
    ap.add_argument("--inc-units", type=int, default=4, help="part 3: K (the study before the new unit)")
    ap.add_argument("--inc-unit-steps", type=int, default=10, help="part 3: steps per unit")
    ap.add_argument("--inc-seed-steps", type=int, default=50, help="part 3: seed steps (not timed)")
    ap.add_argument("--inc-tokens", type=int, default=4096, help="part 3: eval tokens per held-out set")
    ap.add_argument("--inc-lambada", type=int, default=200, help="part 3: LAMBADA examples")
    args = ap.parse_args()
    if args.incremental_only:
        print(json.dumps(incremental(Path(args.pool), Path(args.out) / "incremental", args.inc_units,
                                     args.inc_unit_steps, args.inc_seed_steps, args.inc_tokens, args.inc_lambada),
                         indent=2))
        return
    out = Path(args.out)
    K = args.units
    info = _setup(out, args.preset, K, args.vocab)
    results = {"machine": f"{os.cpu_count()} CPU cores (shared), 1 torch thread per contender",
               "preset": args.preset, "K": K, "subsets": 2 ** K - 1, **info, "contenders": {}}
    for name in ("baseline", "naive_disk", "naive_memory", "gray_stream", "gray_cached"):
        r = run_contender(name, out, K)
        results["contenders"][name] = r
        print(f"{name:>13}: {r['seconds']:7.2f} s  merge {r['merge_s']:7.2f} s  reads {r['unit_model_reads']:3d}  passes {r['unit_passes']:3d}  "
              f"peak RSS {r['peak_rss_mb']:7.0f} MB", file=sys.stderr)
    base = results["contenders"]["baseline"]
    ref = results["contenders"]["naive_disk"]["nll"]
    for name, r in results["contenders"].items():
        r["peak_rss_over_baseline_mb"] = r["peak_rss_mb"] - base["peak_rss_mb"]
        if name != "baseline":
            r["max_rel_nll_diff_vs_naive_disk"] = max(abs(r["nll"][k] - v) / abs(v) for k, v in ref.items())
        r.pop("nll")
    c = results["contenders"]
    results["speedup_merge_gray_cached_vs_naive_disk"] = c["naive_disk"]["merge_s"] / c["gray_cached"]["merge_s"]
    results["speedup_merge_gray_cached_vs_naive_memory"] = c["naive_memory"]["merge_s"] / c["gray_cached"]["merge_s"]
    results["speedup_merge_gray_stream_vs_naive_memory"] = c["naive_memory"]["merge_s"] / c["gray_stream"]["merge_s"]
    results["speedup_total_gray_cached_vs_naive_disk"] = c["naive_disk"]["seconds"] / c["gray_cached"]["seconds"]
    if not args.skip_amortisation:
        results["amortisation"] = amortisation(K, args.unit_steps, args.seed_steps)
    shutil.rmtree(out, ignore_errors=True)
    if not args.skip_incremental:
        results["incremental"] = incremental(Path(args.pool), out / "incremental", args.inc_units,
                                             args.inc_unit_steps, args.inc_seed_steps, args.inc_tokens,
                                             args.inc_lambada)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
