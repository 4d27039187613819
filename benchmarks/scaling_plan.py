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
import functools
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


def lm_on_meta(preset: str | dict, seq_len: int, vocab: int = 50277):
    """The LM of a preset name, or of a dict of ModelConfig fields (a proxy's shape), on the meta device."""
    mc = from_dict(ModelConfig, {"preset": preset, "context": seq_len} if isinstance(preset, str)
                   else {**preset, "context": seq_len})
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


LM_KINDS = ("stats", "hidden", "fo")


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
    # lm mode (selection/features.py): the feature kinds, the prefix as a share of seq_len and the exit
    # as a share of the LM's blocks (the bench measures 32/64/128 of 256 tokens, 0..3 of 4 blocks)
    lm_kinds: tuple[str, ...] = LM_KINDS
    prefix_frac: float | None = None
    exit_frac: float | None = None
    distill_ratio: float = 0.0  # distillation: the teacher (full LM features) labels ratio x n_train candidates
    student: str | None = None  # None: the student is the lm view above; or an encoder name (minilm-l6)
    views: tuple = ()  # a combination: ((kinds, prefix_frac, exit_frac, of the proxy?), ...) priced as the sum of its views
    proxy: str | dict | None = None  # a proxy LM (selection/proxy.py) of this preset or shape: trained on every
    #                                  token the LM trains on, its features (the views marked proxy) in place of the LM's


@functools.cache
def proxy_shape_for_ratio(preset: str, T: int, ratio: float) -> tuple[tuple[str, object], ...]:
    """The paper-scale proxy priced for a bench proxy: the GPT-NeoX shape (1-12 blocks, width 64-1024 by
    64, heads of 64) whose training FLOPs per token over `preset`'s are closest to the bench proxy's own
    ratio (a bench proxy that costs 1/6 of its LM is priced as a paper-scale proxy that costs 1/6 of its
    LM); as ModelConfig items."""
    big = flops_per_token(lm_on_meta(preset, T), T)
    best = None
    for n_layers in range(1, 13):
        for d in range(64, 1025, 64):
            shape = {"preset": "tiny", "n_layers": n_layers, "d_model": d, "n_heads": max(1, d // 64)}
            gap = abs(math.log(flops_per_token(lm_on_meta(shape, T), T) / big / ratio))
            if best is None or gap < best[0]:
                best = (gap, shape)
    return tuple(best[1].items())


def lm_feature_cost(preset: str, T: int, kinds, prefix_frac: float | None, exit_frac: float | None) -> dict:
    """Counted FLOPs of one candidate's LM features at paper scale: the code's own price
    (features.feature_flops_per_candidate) on the meta-device LM, truncated to the exit."""
    from datamates.selection.features import feature_flops_per_candidate, truncate_layers

    lm = lm_on_meta(preset, T)
    L = lm.config.num_hidden_layers
    k = L if exit_frac is None else int(round(exit_frac * L))
    P = T if prefix_frac is None else max(2, int(round(prefix_frac * T)))
    truncate_layers(lm, k)
    return {"per_candidate": feature_flops_per_candidate(lm, list(kinds), T, P), "prefix_tokens": P, "exit_layer": k,
            "n_layers": L}


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
    lm_view = None
    if plan.fit_mode == "lm":  # lm features: one (prefix, early-exit) LM forward per labelled sequence
        lm_view = lm_feature_cost(plan.proxy or plan.preset, T, plan.lm_kinds, plan.prefix_frac, plan.exit_frac)
        if plan.views:  # a combination of views: their features side by side, their prices summed
            parts = [lm_feature_cost(plan.proxy if on_proxy else plan.preset, T, kinds, pf, ef)
                     for kinds, pf, ef, on_proxy in plan.views]
            lm_view = {"per_candidate": sum(p["per_candidate"] for p in parts), "views": parts}
        full = lm_feature_cost(plan.preset, T, LM_KINDS, None, None)["per_candidate"]
        n_dist = int(round(plan.distill_ratio * n_train))
        student = lm_view["per_candidate"] if plan.student is None else plan.enc_max_tokens * fe
        # features of the labelled sequences (+ with distillation: the teacher's full features of them and
        # of the n_dist candidates it labels, and the student's features of those)
        fit = n_labels * lm_view["per_candidate"] if not n_dist else (n_labels + n_dist) * (full + student)
        per_cand = student
    else:
        per_cand = plan.enc_max_tokens * fe
    # scoring, per round
    n_cand = int((m.candidates_per_stage or m.stage_steps * batch / m.select.fraction) * plan.candidate_factor)
    score = n_cand * per_cand
    # the proxy LM trains on every token the LM trains on (warmup, selection stages and the decay)
    proxy_train = train_tokens * flops_per_token(lm_on_meta(plan.proxy, T), T) if plan.proxy else 0.0
    sel = rounds * (probe + fit + score) + proxy_train
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
                  "proxy_train": proxy_train, "selection": sel, "total": train + sel},
        "hours": {"train": hours(train), "probe": hours(rounds * probe), "fit": hours(rounds * fit),
                  "score": hours(rounds * score), "selection": hours(sel), "total": hours(train + sel)},
        "overhead_of_train": sel / train, "share_of_total": sel / (train + sel),
        "score_flops_per_candidate": per_cand, "lm_view": lm_view,
    }


def bench_plan(row: dict, preset: str, bench_T: int, bench_L: int, T: int = 1024) -> Plan:
    """The paper-scale plan of one influence-bench variant (experiments/influence_bench/results.json):
    its prefix and exit as shares of the bench's tokens and blocks, its kinds, its distillation."""
    variant = row["variant"]
    proxy = dict(proxy_shape_for_ratio(preset, T, row["proxy_train_share"])) if row.get("proxy") else None
    if row.get("views"):  # a combination 'VIEW&VIEW' (a view of the proxy carries its shape 4th)
        views = tuple((tuple("stats" if k == "loss" else k for k in v[2]), None if v[0] is None else v[0] / bench_T,
                       None if v[1] is None or v[3:] else v[1] / bench_L, bool(v[3:])) for v in row["views"])
        return Plan(variant, preset, probe_mode="first_order", fit_mode="lm", views=views, proxy=proxy)
    kinds = tuple("stats" if k == "loss" else k for k in row["kinds"])
    p, e = row.get("prefix_tokens"), row.get("exit_layer")
    plan = Plan(variant, preset, probe_mode="first_order", fit_mode="lm", lm_kinds=kinds, proxy=proxy,
                prefix_frac=None if p is None else p / bench_T,
                exit_frac=None if e is None or proxy else e / bench_L)
    if row.get("distill_n"):
        plan.distill_ratio = row["distill_n"] / row["n_train"]
    if "encoder" in kinds:  # the student (or the feature) is MiniLM-L6 at 512 tokens at paper scale
        plan.encoder, plan.enc_max_tokens = "minilm-l6", 512
        if kinds == ("encoder",):
            plan.fit_mode = "frozen" if not row.get("distill_n") else "lm"
            plan.student = "minilm-l6" if row.get("distill_n") else None
    return plan


def bench_prices(path: str, cfg, examples, args) -> dict:
    """Every bench variant (rows of early / middle / late) with its worst-case validation Spearman and its
    price at 410m and 1b; the pick: the best worst case among those at <= args.budget at 410m."""
    res = json.load(open(path))
    sets = [s for s in ("early", "middle", "late") if s in res]
    T, L = res[sets[0]].get("seq_len", 256), res[sets[0]].get("n_layers", 4)
    by_var: dict[str, dict] = {}
    for s in sets:
        for r in res[s]["rows"]:
            if r["head"] not in ("ridge",) or r["variant"] in ("encoder", "stats+hidden+fo+encoder") or \
                    ("kinds" not in r and "views" not in r):
                continue
            by_var.setdefault(r["variant"], {"row": r, "rho": {}})["rho"][s] = r["val_spearman"]
    rows = []
    for v, d in by_var.items():
        if len(d["rho"]) < len(sets):
            continue
        plans = {pre: bench_plan(d["row"], pre, T, L, cfg.pool.seq_len) for pre in ("pythia-410m", "pythia-1b")}
        c = {pre: cost(pl, cfg, examples, args.gpus, args.mfu, args.peak_tflops) for pre, pl in plans.items()}
        px = {pre: pl.proxy for pre, pl in plans.items() if pl.proxy}
        rows.append({"variant": v + "".join(f" [proxy at {pre[7:]}: {s['n_layers']} x {s['d_model']}]"
                                            for pre, s in px.items()),
                     "rho": d["rho"], "worst": min(d["rho"].values()),
                     "score_flops_per_candidate_410m": c["pythia-410m"]["score_flops_per_candidate"],
                     "overhead_410m": c["pythia-410m"]["overhead_of_train"],
                     "overhead_1b": c["pythia-1b"]["overhead_of_train"]})
        if v == "stats+hidden+fo":  # the smaller candidate block, as a control: today's model, half the candidates
            pl = replace(bench_plan(d["row"], "pythia-410m", T, L), candidate_factor=0.5)
            p1 = replace(bench_plan(d["row"], "pythia-1b", T, L), candidate_factor=0.5)
            rows.append({"variant": "keep 40% (half the block), stats+hidden+fo", "rho": d["rho"],
                         "worst": min(d["rho"].values()),
                         "score_flops_per_candidate_410m": c["pythia-410m"]["score_flops_per_candidate"],
                         "overhead_410m": cost(pl, cfg, examples, args.gpus, args.mfu, args.peak_tflops)["overhead_of_train"],
                         "overhead_1b": cost(p1, cfg, examples, args.gpus, args.mfu, args.peak_tflops)["overhead_of_train"]})
    rows.sort(key=lambda r: -r["worst"])
    ok = [r for r in rows if r["overhead_410m"] <= args.budget]
    return {"sets": sets, "rows": rows, "pick": ok[0]["variant"] if ok else None, "budget": args.budget}


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
    ap.add_argument("--bench", default=os.path.join(os.path.dirname(__file__), "..", "experiments", "influence_bench",
                                                    "results.json"),
                    help="the influence bench's results: every variant priced at paper scale, and the pick")
    ap.add_argument("--budget", type=float, default=0.05, help="selection / training FLOPs the pick may cost at 410M")
    args = ap.parse_args()
    cfg = load_config(args.config)
    examples = reference_examples(cfg.mates.probe.reference_size or 1024, cfg.mates.probe.reference_seed)
    plans = []
    for preset in (cfg.model.preset, "pythia-1b"):
        tag = preset.replace("pythia-", "")
        plans += [
            Plan(f"{tag} MATES recipe (exact 80k, bert-base; mates-parity)", preset),
            Plan(f"{tag} first-order labels", preset, probe_mode="first_order"),
            Plan(f"{tag} exact, 10k probes", preset, n_probes=10_000),
            Plan(f"{tag} exact 80k, MiniLM-L6 encoder", preset, encoder="minilm-l6"),
            Plan(f"{tag} first-order, LM-feature influence model", preset, probe_mode="first_order", fit_mode="lm"),
            Plan(f"{tag} first-order, LM features, keep 40% (half the block)", preset, probe_mode="first_order",
                 fit_mode="lm", candidate_factor=0.5),
            Plan(f"{tag} first-order, LM features of a 1/8 prefix", preset, probe_mode="first_order", fit_mode="lm",
                 prefix_frac=1 / 8),
            Plan(f"{tag} first-order, LM features at exit 1/4", preset, probe_mode="first_order", fit_mode="lm",
                 exit_frac=1 / 4),
            Plan(f"{tag} first-order, LM features, 1/8 prefix + exit 1/4", preset, probe_mode="first_order",
                 fit_mode="lm", prefix_frac=1 / 8, exit_frac=1 / 4),
            Plan(f"{tag} first-order, LM stats+hidden, 1/8 prefix + exit 1/4", preset, probe_mode="first_order",
                 fit_mode="lm", prefix_frac=1 / 8, exit_frac=1 / 4, lm_kinds=("stats", "hidden")),
            Plan(f"{tag} first-order, LM hidden, 1/4 prefix + exit 1/4", preset, probe_mode="first_order",
                 fit_mode="lm", prefix_frac=1 / 4, exit_frac=1 / 4, lm_kinds=("hidden",)),
            Plan(f"{tag} first-order, LM features distilled into MiniLM-L6 (512 tokens)", preset,
                 probe_mode="first_order", fit_mode="lm", distill_ratio=2.5, student="minilm-l6", enc_max_tokens=512,
                 encoder="minilm-l6"),
            Plan(f"{tag} first-order + MiniLM-L6", preset, probe_mode="first_order", encoder="minilm-l6"),
            Plan(f"{tag} first-order + MiniLM-L6, 512 encoder tokens", preset, probe_mode="first_order",
                 encoder="minilm-l6", enc_max_tokens=512),
            Plan(f"{tag} first-order + bert-base, half the candidate block", preset, probe_mode="first_order",
                 candidate_factor=0.5),
        ]
    rows = [cost(p, cfg, examples, args.gpus, args.mfu, args.peak_tflops) for p in plans]
    bench = bench_prices(args.bench, cfg, examples, args) if args.bench and os.path.exists(args.bench) else None
    mem = {}
    for preset in ("pythia-410m", "pythia-1b"):  # the default budget: 80% of what is free once theta, m, v, rho are in
        resident = memory_estimate(preset, cfg.pool.seq_len, 1, 1e6)["resident_gb"]
        mem[preset] = memory_estimate(preset, cfg.pool.seq_len, cfg.mates.probe.candidate_batch,
                                      (args.gpu_memory_gb - resident) * 0.8)
    if args.json:
        print(json.dumps({"setup": vars(args), "plans": rows, "first_order_memory": mem, "bench": bench}, indent=1))
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
        if "MATES recipe" not in r["plan"] and "+ MiniLM-L6, 512" not in r["plan"]:
            continue
        n, f, h = r["selection_rounds"], r["flops"], r["hours"]
        stage_train = f["train"] / (cfg.mates.stages + cfg.mates.decay_steps / cfg.mates.stage_steps)
        stage_h = h["train"] / (cfg.mates.stages + cfg.mates.decay_steps / cfg.mates.stage_steps)
        print(f"  {r['plan']}: train {stage_train:.3g} ({stage_h:.2f} h); probe {f['probe'] / n:.3g} "
              f"({h['probe'] / n:.2f} h); fit {f['fit'] / n:.3g} ({h['fit'] / n:.2f} h); score {f['score'] / n:.3g} "
              f"({h['score'] / n:.2f} h); selection / stage training {f['selection'] / n / stage_train:.1%}")
    if bench:
        print()
        print(f"influence-bench variants priced (first-order labels, {cfg.mates.probe.n_probes:,} per round; prefix and exit "
              "scaled by their share of the bench's 256 tokens and 4 blocks); worst = the lowest validation Spearman of "
              f"{', '.join(bench['sets'])}; pick: the best worst case at <= {args.budget:.0%} at 410m:")
        print()
        print("| variant | " + " | ".join(bench["sets"]) + " | worst | score FLOPs/cand 410m | 410m sel/train | "
              "1b sel/train |")
        print("|---|" + "---|" * (len(bench["sets"]) + 4))
        for r in bench["rows"]:
            mark = " **(pick)**" if r["variant"] == bench["pick"] else ""
            print(f"| {r['variant']}{mark} | " + " | ".join(f"{r['rho'][n]:.3f}" for n in bench["sets"]) +
                  f" | {r['worst']:.3f} | {r['score_flops_per_candidate_410m']:.3g} | {r['overhead_410m']:.1%} | "
                  f"{r['overhead_1b']:.1%} |")
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
