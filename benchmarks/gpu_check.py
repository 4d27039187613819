"""The GPU check: every number the CPU machines cannot give, in one run of under 8 minutes on one
H100 / H200, printed as one JSON summary (also written to <out>/gpu_check.json).

    bash benchmarks/gpu_check.sh                  # on the GPU machine (calls this file)
    bash benchmarks/gpu_check.sh --cpu-dry-run    # every part on CPU at tiny sizes: checks the script

Parts, in order (each records its seconds and its peak memory: torch.cuda.max_memory_allocated on
CUDA, the process's peak RSS on CPU; a part that fails records its error and the rest still run):

  pytest_gpu   `pytest -m gpu` (CUDA against CPU numbers; the dry run only collects them).
  pool         the pool the other parts read: $DATAMATES_DATA/pretrain with the GPT-NeoX tokenizer
               (seq_len 1024, MATES's selection unit), or synthetic text with a trained BPE when the
               data bundle is absent (the model keeps the 160m shape: ModelConfig.vocab_size = 50304).
  train        tokens/s of `core.train_loop.train` vs a plain PyTorch loop (what a user writes:
               default torch.optim.AdamW, autocast bf16, clip, step) at the pythia-160m shape,
               interleaved repeats, medians; ratio = datamates / plain;
               MFU = tokens/s x flops_per_token / peak, flops_per_token = 6 N + 6 L T d
               (core/lm.py), peak = 989 TFLOP/s dense bf16 for H100 and H200 (NVIDIA data sheets;
               other GPUs: --peak-tflops), detected with torch.cuda.get_device_name.
  probe        probes/s of the exact and first-order probes (selection/probe) from the trained
               160m checkpoint: 1024 LAMBADA examples as the reference set (MATES), or pool
               sequences without the bundle; steady-state rate from meta.json (setup reported apart).
  score        sequences/s of `InfluenceScorer` with a BERT-base-shaped encoder built from a
               BertConfig (random weights, bert-base-uncased WordPiece from the offline MiniLM
               package; nothing is downloaded), MATES's encoder input (1024 tokens as 2 x 512),
               fine-tuned 1 epoch on synthetic labels so the model folder is the real thing; tokens
               cached first, so the rate is the encoder's.
  evaluate     examples/s of `evaluate` (the nine tasks + LAMBADA, --eval-limit examples each) on
               the 160m checkpoint; needs the data bundle's eval/ files.

Nothing here downloads: models are built from configs, data comes from the bundle or is synthetic.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DATAMATES_PROGRESS", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MARKER = ".gpu_check"  # the work folder is wiped at the next run only if it holds this file
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0}  # dense bf16 tensor-core peak (SXM data sheets)

# sizes: the GPU run at the pythia-160m / BERT-base shapes; the dry run tiny, on CPU
SIZES = {
    "gpu": dict(model=dict(preset="pythia-160m", vocab_size=50304), seq_len=1024, micro_batch=16, train_steps=30,
                train_warmup=5, repeats=2, probe_ref=1024, exact_n=32, fo_n=256, fo_batch=16,
                encoder=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
                enc_max_tokens=1024, enc_chunk=512, fit_labels=64, score_n=4096, score_batch=64, eval_limit=200,
                pytest_timeout=300),
    "cpu": dict(model=dict(preset="tiny", n_layers=2, d_model=32, n_heads=2, context=128), seq_len=64, micro_batch=4,
                train_steps=6, train_warmup=2, repeats=1, probe_ref=8, exact_n=3, fo_n=6, fo_batch=3,
                encoder=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
                enc_max_tokens=128, enc_chunk=64, fit_labels=24, score_n=32, score_batch=16, eval_limit=3,
                pytest_timeout=300),
}


# ----------------------------------------------------------------------------- bookkeeping


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_memory(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 3)}
    return {"peak_rss_gb_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}


def run_part(name: str, fn, device: torch.device, summary: dict, deadline: float) -> None:
    if time.time() > deadline:
        summary["parts"][name] = {"skipped": "time budget spent"}
        return
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    try:
        res = fn()
    except Exception as e:  # one part failing must not hide the others' numbers
        res = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}",
               "traceback_tail": traceback.format_exc().splitlines()[-6:]}
    res = {**res, "seconds": round(time.time() - t0, 2), **_peak_memory(device)}
    summary["parts"][name] = res
    print(f"[gpu_check] {name}: {json.dumps(res)}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- parts


def part_pytest(dry: bool, timeout: int) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-rs"]
    if dry:
        cmd.append("--collect-only")  # no CUDA here: the gpu tests would only skip
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    tail = next((ln for ln in reversed(lines) if " in " in ln and ("passed" in ln or "failed" in ln
                                                                    or "skipped" in ln or "collected" in ln
                                                                    or "error" in ln)), lines[-1] if lines else "")
    failed = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
    return {"returncode": r.returncode, "summary": tail.strip("= "), "failed": failed[:20],
            "collected_only": dry}


def _data() -> Path | None:
    from datamates.config.base import data_dir

    d = data_dir()
    return d if (d / "pretrain").is_dir() else None


def _synthetic_corpus(folder: Path, n_docs: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    words = ["the", "of", "model", "data", "token", "train", "loss", "probe", "score", "select", "a", "is",
             "influence", "reference", "sequence", "pool", "stage", "random", "gradient", "step"]
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "synthetic.jsonl", "w") as fh:
        for i in range(n_docs):
            n = int(rng.integers(50, 400))
            fh.write(json.dumps({"id": f"s{i}", "text": " ".join(rng.choice(words, n)) + "."}) + "\n")


def part_pool(work: Path, dry: bool, size: dict) -> tuple[dict, object]:
    from datamates.config.core import PoolConfig, TokenizerConfig
    from datamates.core.pool import Pool, build_pool

    data = _data()
    neox = data / "tokenizer" / "gpt-neox-20b" / "tokenizer.json" if data else None
    if data is not None and not dry:
        inputs, tok = [str(data / "pretrain")], TokenizerConfig(name_or_path=str(neox) if neox.exists() else None)
        source = "bundle"
    elif data is not None:  # dry run: one small file of the bundle, a 512-token BPE
        inputs = [str(data / "pretrain" / "web" / "c4_100_domains_theguardian_10.jsonl.gz")]
        tok, source = TokenizerConfig(vocab_size=512), "bundle (one file)"
    else:
        _synthetic_corpus(work / "corpus", 300 if dry else 20000)
        inputs, tok, source = [str(work / "corpus")], TokenizerConfig(vocab_size=512 if dry else 8192), "synthetic"
    out = build_pool(PoolConfig(inputs=inputs, seq_len=size["seq_len"], tokenizer=tok), work / "pool")
    pool = Pool(out)
    return {"source": source, "sequences": len(pool), "seq_len": pool.seq_len, "vocab": pool.vocab_size}, pool


def _plain_loop(model_cfg, pool, ids: np.ndarray, steps: int, warmup: int, B: int, device: torch.device) -> dict:
    """The baseline a user writes by hand: default AdamW (foreach on CUDA), bf16 autocast on CUDA,
    clip 1.0, step. Returns tokens/s after `warmup` steps and the model's training FLOPs per token."""
    import torch.nn.functional as F

    from datamates.core.lm import autocast, build_model, flops_per_token

    model = build_model(model_cfg, pool.vocab_size, pool.eos_id, 0).to(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    t_start = None
    for step in range(steps):
        if step == warmup:
            _sync(device)
            t_start = time.perf_counter()
        x = torch.from_numpy(pool.tokens(ids[step * B : (step + 1) * B])).to(device)
        with autocast(device, "auto"):
            logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(), x[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
    _sync(device)
    tok_s = (steps - warmup) * B * pool.seq_len / (time.perf_counter() - t_start)
    fpt = flops_per_token(model, pool.seq_len)
    del model, opt
    return {"tok_s": tok_s, "flops_per_token": fpt}


def _ours(model_cfg, pool, ids: np.ndarray, steps: int, warmup: int, B: int, device: torch.device, out: Path) -> float:
    from datamates.config.core import TrainConfig
    from datamates.core.train_loop import read_train_log, train

    cfg = TrainConfig(steps=steps, micro_batch_size=B, lr=1e-3, warmup_steps=0, schedule="constant",
                      checkpoint_every=10**9, log_every=10**9, device=str(device), seed=0)
    if out.exists():
        shutil.rmtree(out)
    train(cfg, model_cfg, pool, ids, out)
    log = read_train_log(out)
    return (steps - warmup) * B * pool.seq_len / (log[-1]["elapsed_s"] - log[warmup - 1]["elapsed_s"])


def part_train(pool, work: Path, size: dict, device: torch.device, peak_tflops: float | None) -> tuple[dict, Path]:
    from datamates.config.base import from_dict
    from datamates.config.core import ModelConfig

    model_cfg = from_dict(ModelConfig, size["model"])
    steps, warm, B = size["train_steps"], size["train_warmup"], size["micro_batch"]
    n = steps * B
    if len(pool) < n:
        raise RuntimeError(f"pool has {len(pool)} sequences, the training part needs {n}")
    ids = np.arange(n, dtype=np.int64)
    ours, plain, fpt = [], [], None
    ckpt = work / "checkpoint"
    for _ in range(size["repeats"]):  # interleaved: background load hits both alike
        p = _plain_loop(model_cfg, pool, ids, steps, warm, B, device)
        plain.append(p["tok_s"])
        fpt = p["flops_per_token"]
        ours.append(_ours(model_cfg, pool, ids, steps, warm, B, device, ckpt))
    o, b = statistics.median(ours), statistics.median(plain)
    res = {"shape": size["model"], "seq_len": pool.seq_len, "micro_batch": B, "steps_timed": steps - warm,
           "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
           "datamates_tok_s": round(o), "plain_loop_tok_s": round(b), "ratio": round(o / b, 3),
           "per_repeat": {"datamates": [round(x) for x in ours], "plain": [round(x) for x in plain]},
           "flops_per_token": fpt, "peak_tflops": peak_tflops}
    if peak_tflops:
        res["mfu_datamates"] = round(o * fpt / (peak_tflops * 1e12), 4)
        res["mfu_plain"] = round(b * fpt / (peak_tflops * 1e12), 4)
    return res, ckpt


def part_probe(pool, ckpt: Path, work: Path, size: dict, device: torch.device) -> dict:
    from datamates.config.probe import ProbeConfig
    from datamates.selection.probe import probe, read_meta

    data = _data()
    lam = data / "eval" / "lambada_openai.jsonl" if data else None
    ref = str(lam) if lam is not None and lam.exists() else str(pool.path)
    used = size["train_steps"] * size["micro_batch"]
    out = {"reference": Path(ref).name, "reference_size": size["probe_ref"]}
    for mode, n in (("exact", size["exact_n"]), ("first_order", size["fo_n"])):
        cand = np.arange(used, used + n, dtype=np.int64)  # not trained on
        if cand[-1] >= len(pool):
            raise RuntimeError(f"pool has {len(pool)} sequences, probing needs {cand[-1] + 1}")
        cfg = ProbeConfig(mode=mode, device=str(device), reference=ref, reference_size=size["probe_ref"],
                          chunk_size=max(n, 1), candidate_batch=size["fo_batch"])
        dst = work / f"probe_{mode}"
        probe(cfg, ckpt, pool, cand, dst)
        meta = read_meta(dst)
        out[mode] = {"probes": n, "probes_per_s": round(meta["probes_per_s"], 3),
                     "setup_s": round(meta["seconds"] - meta["probe_seconds"], 2),
                     "label_mean": meta["stats"]["mean"]}
    return out


def _bert_folder(dst: Path, dims: dict) -> Path:
    """A BERT-base-shaped encoder from config (random weights) + the bert-base-uncased WordPiece
    files of the offline MiniLM package: a real encoder folder, nothing downloaded."""
    from transformers import BertConfig, BertModel

    from datamates.selection.encode import resolve_backbone

    src = resolve_backbone("minilm")
    cfg = BertConfig(vocab_size=30522, max_position_embeddings=512, **dims)
    torch.manual_seed(0)
    BertModel(cfg, add_pooling_layer=False).save_pretrained(str(dst), safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)
    return dst


def part_score(pool, work: Path, size: dict, device: torch.device) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from datamates.config.influence import EncoderConfig, FitConfig
    from datamates.run_dir import atomic_dir, meta_record
    from datamates.selection.fit import fit
    from datamates.selection.score import InfluenceScorer

    enc_dir = _bert_folder(work / "bert_base_shape", size["encoder"])
    enc = EncoderConfig(backbone=str(enc_dir), max_tokens=size["enc_max_tokens"], chunk_len=size["enc_chunk"])
    n_fit, n = size["fit_labels"], size["score_n"]
    if len(pool) < n_fit + n:
        raise RuntimeError(f"pool has {len(pool)} sequences, scoring needs {n_fit + n}")
    fit_ids = np.arange(n_fit, dtype=np.int64)
    labels = work / "labels"
    with atomic_dir(labels, meta_record("gpu_check", sign="synthetic labels", pool_id=pool.pool_id)) as tmp:
        y = np.random.default_rng(0).standard_normal(n_fit) * 1e-3
        pq.write_table(pa.table({"seq_id": fit_ids, "ref_loss_delta": y}), tmp / "labels.parquet")
    cache = work / "encoder_cache"
    t0 = time.time()
    model_dir = fit(FitConfig(mode="finetune", encoder=enc, epochs=1, batch_size=16, eval_every=10**6,
                              val_fraction=0.25, min_labels=16, device=str(device)), [labels], pool,
                    work / "influence_model", cache_dir=cache)
    fit_s = time.time() - t0
    scorer = InfluenceScorer(model_dir, pool, cache_dir=cache, batch_size=size["score_batch"], device=str(device))
    ids = np.arange(n_fit, n_fit + n, dtype=np.int64)
    t0 = time.time()
    scorer.cache.ensure(ids)
    tokenize_s = time.time() - t0
    scorer(ids[: size["score_batch"]])  # warm-up (kernels, allocator)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _sync(device)
    t0 = time.perf_counter()
    s = scorer(ids)
    _sync(device)
    secs = time.perf_counter() - t0
    return {"encoder": {**size["encoder"], "vocab": 30522}, "max_tokens": enc.max_tokens, "chunk_len": enc.chunk_len,
            "sequences": n, "sequences_per_s": round(n / secs, 2), "fit_1_epoch_s": round(fit_s, 2),
            "encoder_tokenize_s": round(tokenize_s, 2), "scores_finite": bool(np.isfinite(s).all())}


def part_evaluate(ckpt: Path, size: dict, device: torch.device) -> dict:
    from datamates.config.evaluate import EvalConfig
    from datamates.evaluate import evaluate

    data = _data()
    if data is None or not (data / "eval").is_dir():
        return {"skipped": "no data bundle (set DATAMATES_DATA): the tasks' files live in its eval/"}
    _sync(device)
    t0 = time.perf_counter()
    res = evaluate(EvalConfig(tasks=["nine"], reference=["lambada_openai"], limit=size["eval_limit"],
                              device=str(device)), ckpt, None)
    _sync(device)
    secs = time.perf_counter() - t0
    n = sum(t["n"] for t in res["tasks"].values()) + sum(r["n"] for r in res["reference"].values())
    return {"tasks": len(res["tasks"]) + len(res["reference"]), "examples": n,
            "examples_per_s": round(n / secs, 2), "limit_per_task": size["eval_limit"],
            "stage_examples_per_s": res["timing"]["examples_per_second"]}


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-dry-run", action="store_true", help="every part on CPU at tiny sizes (no GPU needed)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "gpu_check"),
                    help="work folder; the summary goes to <out>/gpu_check.json")
    ap.add_argument("--budget-s", type=float, default=450, help="parts not started by then are skipped")
    ap.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak of another GPU, for the MFU")
    ap.add_argument("--skip", nargs="*", default=[], choices=["pytest_gpu", "train", "probe", "score", "evaluate"])
    args = ap.parse_args(argv)
    t_start = time.time()
    deadline = t_start + args.budget_s
    dry = args.cpu_dry_run
    if not dry and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run with --cpu-dry-run to check the script on CPU", file=sys.stderr)
        return 2
    device = torch.device("cpu" if dry else "cuda")
    size = SIZES["cpu" if dry else "gpu"]
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    if dry:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    work = Path(args.out)
    if work.exists() and any(work.iterdir()) and not (work / MARKER).exists():
        print(f"gpu_check: {work} is a folder this script did not make; pass another --out", file=sys.stderr)
        return 2
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / MARKER).write_text("made by benchmarks/gpu_check.py; deleted and remade by its next run\n")
    summary: dict = {"check": "gpu_check", "dry_run": dry, "device": name, "date": time.strftime("%Y-%m-%d"),
                     "torch": torch.__version__, "cuda": torch.version.cuda, "peak_bf16_tflops": peak, "parts": {}}
    state: dict = {}

    def want(p: str) -> bool:
        return p not in args.skip

    if want("pytest_gpu"):
        run_part("pytest_gpu", lambda: part_pytest(dry, size["pytest_timeout"]), device, summary, deadline)

    def pool_part():
        res, state["pool"] = part_pool(work, dry, size)
        return res

    run_part("pool", pool_part, device, summary, deadline)
    if "pool" in state:
        def train_part():
            res, state["ckpt"] = part_train(state["pool"], work, size, device, peak)
            return res

        if want("train") or want("probe") or want("evaluate"):
            run_part("train", train_part, device, summary, deadline)
        if "ckpt" in state and want("probe"):
            run_part("probe", lambda: part_probe(state["pool"], state["ckpt"], work, size, device), device, summary,
                     deadline)
        if want("score"):
            run_part("score", lambda: part_score(state["pool"], work, size, device), device, summary, deadline)
        if "ckpt" in state and want("evaluate"):
            run_part("evaluate", lambda: part_evaluate(state["ckpt"], size, device), device, summary, deadline)
    summary["total_seconds"] = round(time.time() - t_start, 1)
    summary["ok"] = all("error" not in p for p in summary["parts"].values()) and (
        summary["parts"].get("pytest_gpu", {}).get("returncode", 0) == 0)
    (work / "gpu_check.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
