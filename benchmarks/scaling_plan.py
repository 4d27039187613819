"""The cost of a MATES run at paper scale, from datamates's own FLOPs counts (docs/scaling.md).

    python benchmarks/scaling_plan.py                       # paper_410m and its 1B twin, 8 x H100, MFU 40%
    python benchmarks/scaling_plan.py --json                # the same numbers as JSON
    python benchmarks/scaling_plan.py --gpus 8 --mfu 0.4 --peak-tflops 989

Nothing is trained: the models are built on the meta device and every count comes from the code the
stages run. FLOPs per token: `core.lm.flops_per_token` (LM: 6 N + 6 L T d to train, a third to run
forward; the fit's encoder: that / 3 = 2 N + 2 L T d forward, 3x to train), exactly as the
artifacts' meta.json record them. Tokens: training = steps x global batch x seq_len (the
checkpoint's count); probing = `selection.probe.oracle.probe_tokens` on the real reference set
(1,024 LAMBADA examples, seed 1234, GPT-NeoX tokenizer from $DATAMATES_DATA); fit (finetune) =
epochs x training labels x encoder tokens + one validation pass per `eval_every` steps
(`selection.fit`); scoring = the candidate block (stage_steps x global batch / fraction, the
default of `mates.candidates_per_stage`) x encoder tokens per sequence (`score_counts`). Assumption:
a 1,024-token C4 sequence fills the encoder's `max_tokens` (1,024 WordPiece tokens; real counts are
what the encoder tokenizer gives, never more). The lm fit mode (LM-feature influence models) runs
one LM forward per labelled and per scored sequence (`influence_model.score_counts`).

Overhead = selection FLOPs / training FLOPs of the MATES branch (accounting.summarize_branch's
`selection_overhead`); the share of the branch's total (MATES's way of reporting it) is printed too.
Wall time = FLOPs / (gpus x peak x MFU).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass, replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import BertConfig, BertModel, GPTNeoXForCausalLM  # noqa: E402

from datamates.config.base import data_dir, from_dict  # noqa: E402
from datamates.config.core import ModelConfig  # noqa: E402
from datamates.config.run import load_config  # noqa: E402
from datamates.core.lm import flops_per_token, hf_config  # noqa: E402

GiB = 1024**3
ENCODERS = {  # shapes of the scoring encoders (BertConfig defaults = bert-base-uncased)
    "bert-base-uncased": BertConfig(),
    "minilm-l6": BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
}


def lm_on_meta(preset: str, seq_len: int, vocab: int = 50277):
    mc = from_dict(ModelConfig, {"preset": preset, "context": seq_len})
    with torch.device("meta"):
        return GPTNeoXForCausalLM(hf_config(mc, vocab, 0))


def encoder_fpt(name: str, chunk_len: int) -> float:
    """Encoder forward FLOPs per token as fit.py records them: flops_per_token(encoder, chunk_len) / 3."""
    with torch.device("meta"):
        enc = BertModel(ENCODERS[name])
    return flops_per_token(enc, chunk_len) / 3


def reference_examples(size: int, seed: int):
    from tokenizers import Tokenizer

    from datamates.core.reference import load_reference

    tok = Tokenizer.from_file(str(data_dir() / "tokenizer" / "gpt-neox-20b" / "tokenizer.json"))
    return load_reference(str(data_dir() / "eval" / "lambada_openai.jsonl"), tok, size=size, seed=seed).examples


@dataclass
class Plan:
    name: str
    preset: str
    probe_mode: str = "exact"
    n_probes: int = 80_000
    fit_mode: str = "finetune"  # finetune | lm
    encoder: str = "bert-base-uncased"
    enc_max_tokens: int = 1024
    candidate_factor: float = 1.0  # x the default candidate block (stage_steps x batch / fraction)


def cost(plan: Plan, cfg, examples, gpus: int, mfu: float, peak: float) -> dict:
    from datamates.selection.probe.oracle import probe_tokens

    m = cfg.mates
    T = cfg.pool.seq_len
    lm = lm_on_meta(plan.preset, T)
    f_train = flops_per_token(lm, T)
    f_fwd = f_train / 3
    batch = cfg.train.micro_batch_size * cfg.train.grad_accum * gpus
    rounds = m.stages - m.warmup_stages
    train_tokens = (m.stages * m.stage_steps + m.decay_steps) * batch * T  # one branch (MATES)
    train = train_tokens * f_train
    # probing, per round: the code's own token counts
    pcfg = replace(m.probe, mode=plan.probe_mode, n_probes=plan.n_probes)
    pt = probe_tokens(pcfg, examples, plan.n_probes, T, lm.config.max_position_embeddings)
    probe = pt.get("lm_train", 0) * f_train + pt.get("lm_forward", 0) * f_fwd
    # fit, per round
    n_labels = plan.n_probes
    n_val = max(1, round(m.fit.val_fraction * n_labels))
    n_train = n_labels - n_val
    chunk = m.fit.encoder.chunk_len if plan.enc_max_tokens >= m.fit.encoder.chunk_len else plan.enc_max_tokens
    fe = encoder_fpt(plan.encoder, chunk)
    if plan.fit_mode == "finetune":
        steps = m.fit.epochs * math.ceil(n_train / m.fit.batch_size)
        evals = steps // m.fit.eval_every + 1
        fit = (m.fit.epochs * n_train * plan.enc_max_tokens * 3 * fe + evals * n_val * plan.enc_max_tokens * fe)
    else:  # lm features: one LM forward per labelled sequence (features from the current model)
        fit = n_labels * T * f_fwd
    # scoring, per round
    n_cand = int((m.candidates_per_stage or m.stage_steps * batch / m.select.fraction) * plan.candidate_factor)
    score = n_cand * (T * f_fwd if plan.fit_mode == "lm" else plan.enc_max_tokens * fe)
    sel = rounds * (probe + fit + score)
    rate = gpus * peak * 1e12 * mfu

    def hours(f: float) -> float:
        return f / rate / 3600

    return {
        "plan": plan.name, "model": plan.preset, "lm_flops_per_token_train": f_train,
        "n_lm_params_counted": int((f_train - 6 * lm.config.num_hidden_layers * T * lm.config.hidden_size) / 6),
        "global_batch": batch, "selection_rounds": rounds, "candidates_per_round": n_cand,
        "reference_tokens": int(pt.get("lm_forward", 0) / (2 if plan.probe_mode == "first_order" else 1 + plan.n_probes))
        if plan.probe_mode != "first_order" else None,
        "flops": {"train": train, "probe": rounds * probe, "fit": rounds * fit, "score": rounds * score,
                  "selection": sel, "total": train + sel},
        "hours": {"train": hours(train), "probe": hours(rounds * probe), "fit": hours(rounds * fit),
                  "score": hours(rounds * score), "selection": hours(sel), "total": hours(train + sel)},
        "overhead_of_train": sel / train, "share_of_total": sel / (train + sel),
    }


def memory_estimate(preset: str, seq_len: int, batch: int, budget_gb: float) -> dict:
    """The first-order probe's memory plan at this shape (selection/probe/first_order.py)."""
    from datamates.selection.probe.first_order import plan_micro_batch

    lm = lm_on_meta(preset, seq_len)
    params = [p for p in lm.parameters() if p.requires_grad]
    p = plan_micro_batch(lm, params, seq_len, candidate_batch=batch, budget_bytes=int(budget_gb * GiB),
                         device="cuda", precision="auto")  # bf16 autocast: its weight cache counts
    old = sum(x.numel() for x in params) * 4 * (batch + 3)  # the dense all-parameter buffers + 3 copies before
    return {**p.describe(), "before_streaming_dense_plus_copies_gb": old / GiB}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="paper_410m")
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--mfu", type=float, default=0.40)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="H100 SXM bf16 dense")
    ap.add_argument("--gpu-memory-gb", type=float, default=79.6, help="GiB per GPU (H100 SXM: 81,559 MiB)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cfg = load_config(args.config)
    examples = reference_examples(cfg.mates.probe.reference_size or 1024, cfg.mates.probe.reference_seed)
    plans = []
    for preset in (cfg.model.preset, "pythia-1b"):
        tag = preset.replace("pythia-", "")
        plans += [
            Plan(f"{tag} as configured (exact 80k, bert-base)", preset),
            Plan(f"{tag} first-order labels", preset, probe_mode="first_order"),
            Plan(f"{tag} exact, 10k probes", preset, n_probes=10_000),
            Plan(f"{tag} exact 80k, MiniLM-L6 encoder", preset, encoder="minilm-l6"),
            Plan(f"{tag} first-order, LM-feature influence model", preset, probe_mode="first_order", fit_mode="lm"),
            Plan(f"{tag} first-order + MiniLM-L6", preset, probe_mode="first_order", encoder="minilm-l6"),
            Plan(f"{tag} first-order + MiniLM-L6, 512 encoder tokens", preset, probe_mode="first_order",
                 encoder="minilm-l6", enc_max_tokens=512),
            Plan(f"{tag} first-order + bert-base, half the candidate block", preset, probe_mode="first_order",
                 candidate_factor=0.5),
        ]
    rows = [cost(p, cfg, examples, args.gpus, args.mfu, args.peak_tflops) for p in plans]
    mem = {}
    for preset in ("pythia-410m", "pythia-1b"):  # the default budget: 80% of what is free once theta, m, v, rho are in
        resident = memory_estimate(preset, cfg.pool.seq_len, 1, 1e6)["resident_gb"]
        mem[preset] = memory_estimate(preset, cfg.pool.seq_len, cfg.mates.probe.candidate_batch,
                                      (args.gpu_memory_gb - resident) * 0.8)
    if args.json:
        print(json.dumps({"setup": vars(args), "plans": rows, "first_order_memory": mem}, indent=1))
        return
    print(f"{args.config}: {args.gpus} GPUs x {args.peak_tflops:g} TFLOP/s x MFU {args.mfu:.0%}; "
          f"global batch {rows[0]['global_batch']} x {cfg.pool.seq_len}; {rows[0]['selection_rounds']} selection rounds; "
          f"{rows[0]['candidates_per_round']:,} candidates scored per round; "
          f"reference tokens per exact probe R = {rows[0]['reference_tokens']:,}")
    print()
    print("| plan | train | probe | fit | score | selection | sel/train | sel/total | hours train | hours selection |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        f, h = r["flops"], r["hours"]
        print(f"| {r['plan']} | {f['train']:.3g} | {f['probe']:.3g} | {f['fit']:.3g} | {f['score']:.3g} | "
              f"{f['selection']:.3g} | {r['overhead_of_train']:.1%} | {r['share_of_total']:.1%} | "
              f"{h['train']:.1f} | {h['selection']:.1f} |")
    print()
    print("per stage (one selection round before each of the stages after the warmup; training: one stage of "
          "stage_steps; FLOPs, hours):")
    for r in rows:
        if "as configured" not in r["plan"] and "+ MiniLM-L6, 512" not in r["plan"]:
            continue
        n, f, h = r["selection_rounds"], r["flops"], r["hours"]
        stage_train = f["train"] / (cfg.mates.stages + cfg.mates.decay_steps / cfg.mates.stage_steps)
        stage_h = h["train"] / (cfg.mates.stages + cfg.mates.decay_steps / cfg.mates.stage_steps)
        print(f"  {r['plan']}: train {stage_train:.3g} ({stage_h:.2f} h); probe {f['probe'] / n:.3g} "
              f"({h['probe'] / n:.2f} h); fit {f['fit'] / n:.3g} ({h['fit'] / n:.2f} h); score {f['score'] / n:.3g} "
              f"({h['score'] / n:.2f} h); selection / stage training {f['selection'] / n / stage_train:.1%}")
    print()
    print(f"first-order probe memory at seq_len {cfg.pool.seq_len}, candidate_batch {cfg.mates.probe.candidate_batch}, "
          f"{args.gpu_memory_gb:g} GB GPU (default budget: 80% of what is free after the resident state):")
    for preset, m in mem.items():
        terms = ", ".join(f"{k} {v:.2f}" for k, v in m["per_sample_terms_gb"].items())
        print(f"  {preset}: {m['n_params'] / 1e6:.0f}M params; resident {m['resident_gb']:.2f} GiB; per sample "
              f"{m['per_sample_gb']:.2f} GiB ({terms}); micro-batch {m['micro_batch']}; workspace min "
              f"{m['workspace_min_gb']:.2f} GiB; peak {m['least_peak_gb']:.1f} GiB with the least workspace, "
              f"<= {m['peak_gb']:.1f} GiB with the default budget (before streaming: dense per-sample "
              f"gradients + 3 copies = {m['before_streaming_dense_plus_copies_gb']:.1f} GiB on top of activations)")


if __name__ == "__main__":
    main()
