"""The influence-model benchmark (issue 14): every variant fitted on every label set, one command.

    .venv/bin/python experiments/influence_bench/labels.py --n 2000 --exact 150 --threads 1   # labels (once)
    .venv/bin/python experiments/influence_bench/run.py [--sets early,middle,late] [--finetune]
    .venv/bin/python experiments/influence_bench/run.py --labels experiments/influence_bench/labels_n1200 \
        --sets early,middle,late,arena_s0 --threads 2                                      # issue 28's run

Label sets (labels.py): first-order probe labels of 2,000 random pool candidates at warmup stages 2, 8
and 16 of the selection arena's seed 0, one fixed 80/20 train/validation split (split.npy), and exact
labels of the first 150 candidates to check the first-order ones. Variants (docs/influence_model.md):

    encoder          MiniLM mean-pooled embedding (frozen), ridge          (today's `mates` default)
    loss             the LM's mean loss alone, ridge                       (the `loss` selector's signal)
    stats            LM loss statistics (6), ridge
    hidden           LM last hidden state mean-pooled (H), ridge
    fo               first-order head term <D, grad_W lm_loss(x)> (1), ridge
    stats+fo, stats+hidden, stats+hidden+fo, stats+hidden+fo+encoder       ridge
    mlp:stats+hidden+fo                                                     a small MLP head
    finetune         MATES: the fine-tuned encoder (--finetune; minutes on CPU)

Cheaper views of the LM (issue 28; docs/influence_model.md#cheaper-features), `[pP][eK]:kinds`:

    pP:kinds         the features of the candidate's first P tokens only (fit.prefix_tokens = P)
    eK:kinds         early exit after K of the LM's blocks, logit lens through its final norm and head
                     (fit.exit_layer = K; e0: the input embedding)
    pPeK:kinds       both
    distill>VIEW     distillation: the full stats+hidden+fo model (ridge on the training rows' labels)
                     labels --distill-n more pool candidates; the student VIEW (an LM view, or
                     `encoder`: frozen MiniLM) is fitted on the training labels + the teacher's labels
    proxy[SHAPE]:VIEW  the features of a small proxy LM of SHAPE (L2d32h1: 2 blocks, d 32, 1 head; the run's
                     model otherwise) trained on the warmup's stream up to the set's stage (selection/proxy.py;
                     runs/proxy/), against its own reference gradient; no early exit
    keep 40%         the smaller candidate block is priced, not fitted: today's model on half the block
                     (benchmarks/scaling_plan.py)

The LM views of a set come from one full forward per batch (`features.feature_grid`: the block
outputs are hooked; a causal LM's prefix forward is the prefix of its forward), equal to the
featurizer each view runs in a fit (tests/selection/test_features.py); the FLOPs per candidate are
the code's own count of that view (`features.feature_flops_per_token` on the truncated LM x P).

Each variant: validation Spearman with a bootstrap 95% interval (2,000 resamples of the validation
rows), Spearman against the exact labels on the validation rows that have one, FLOPs of labels (the
training labels' probes) + fit (features of the training rows) + scoring one candidate, and wall
time of features + fit. Writes results.json and the table in README.md (between the markers).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

HERE = Path(__file__).resolve().parent
LABELS = HERE / "labels"  # the fixed label sets (a copy of labels.py's output in runs/labels, committed)
if not (LABELS / "candidates.npy").exists():
    LABELS = HERE / "runs" / "labels"
sys_path = str(HERE)
import sys  # noqa: E402

sys.path.insert(0, sys_path)
from labels import ARENA, SETS, arena_inputs  # noqa: E402

RIDGE = ["loss", "stats", "hidden", "fo", "stats+fo", "stats+hidden", "stats+hidden+fo", "encoder",
         "stats+hidden+fo+encoder"]
MLP = ["mlp:stats+hidden+fo"]
CURVE = ["stats+fo", "stats+hidden", "stats+hidden+fo", "encoder"]  # validation Spearman against the number of training labels


def bootstrap_ci(pred, true, n=2000, seed=0):
    rng = np.random.default_rng(seed)
    vals = [spearmanr(pred[i], true[i]).statistic for i in (rng.integers(0, len(true), len(true)) for _ in range(n))]
    return float(np.nanpercentile(vals, 2.5)), float(np.nanpercentile(vals, 97.5))


def read(folder: Path) -> dict[int, float]:
    t = pq.read_table(folder / "labels.parquet")
    return dict(zip(t.column("seq_id").to_pylist(), t.column("ref_loss_delta").to_pylist(), strict=True))


def probe_flops(folder: Path) -> float:
    """Counted FLOPs of a probe folder (accounting: tokens x FLOPs per token, train = 3x forward)."""
    m = json.loads((folder / "meta.json").read_text())
    tok, fpt = m.get("tokens", {}), m.get("flops_per_token", {})
    return float(sum(tok[k] * fpt.get(k, 0.0) for k in tok))


def label_set(name: str):
    """(first-order folder, exact folder, checkpoint, arena run, ids [n] in row order, split [n] 1 = val)
    of a label set, or None when its labels are not finished. early/middle/late: labels.py's sets;
    arena_sN: the arena's own labels at seed N's stage-16 checkpoint (the oracle's 400 first-order
    labels of block 17; the `mates` branch's 96 exact labels of the plan's probe set as the check)."""
    if name in SETS:
        fo_dir, ex_dir = LABELS / f"{name}_first_order", LABELS / f"{name}_exact"
        ckpt, arena = ARENA / "warmup" / f"stage_{SETS[name]:02d}" / "checkpoint", ARENA
        if not (fo_dir / "DONE").exists():
            return None
        ids_all, split = np.load(LABELS / "candidates.npy"), np.load(LABELS / "split.npy")
        lab = read(fo_dir)
        keep = np.array([int(i) in lab for i in ids_all])
        return fo_dir, ex_dir, ckpt, arena, ids_all[keep], split[keep]
    if name.startswith("arena_s"):
        arena = ARENA.parent / f"arena_cpu_s{int(name[len('arena_s'):])}"
        fo_dir, ex_dir = arena / "oracle" / "stage_17" / "probe", arena / "mates" / "stage_17" / "probe"
        if not (fo_dir / "DONE").exists():
            return None
        ids = np.array(sorted(read(fo_dir)), dtype=np.int64)
        split = np.zeros(len(ids), np.int8)
        split[np.random.default_rng(0).permutation(len(ids))[: len(ids) // 5]] = 1
        return fo_dir, ex_dir, arena / "warmup" / "stage_16" / "checkpoint", arena, ids, split
    raise SystemExit(f"unknown label set {name!r}: early, middle, late, arena_s0..arena_s4")


# cheaper views of the LM (issue 28): prefix P of the candidate's T tokens, exit after k of its L blocks
LM_KINDS = ["stats", "hidden", "fo"]


def view_name(p, e) -> str:
    return ("" if p is None else f"p{p}") + ("" if e is None else f"e{e}")


def parse_variant(v: str):
    """'[mlp:][distill>][proxy[SHAPE]][pP][eK]:kinds' or 'kinds' -> (head, distill student?, proxy shape or
    None, prefix, exit, kinds). proxy[L2d32]: the features of a small proxy LM of that shape trained on the
    warmup's stream (selection/proxy.py) instead of the LM's."""
    head = "ridge"
    if v.startswith("mlp:"):
        head, v = "mlp", v[4:]
    from datamates.selection.features import parse_view

    distill = v.startswith("distill>")
    if distill:
        v = v[len("distill>"):]
    proxy = None
    if v.startswith("proxy["):
        proxy, v = v[len("proxy["):].split("]", 1)
        v = v.lstrip(":")
    p, e, kinds = parse_view(v)
    if proxy is not None and e is not None:
        raise SystemExit(f"{v}: an early exit of the proxy is not priced (benchmarks/scaling_plan.py); use its full depth")
    return head, distill, proxy, p, e, kinds


def proxy_checkpoint(arena: Path, cfg, pool, shape: str, stage: int) -> Path:
    """The proxy LM of `shape` trained on the arena's warmup stream, stages 1..stage (resumable, kept)."""
    from datamates.selection.proxy import parse_shape, proxy_model_config, train_proxy
    from datamates.selection.select import read_selection

    n_layers, d_model, n_heads = parse_shape(shape)
    pm = proxy_model_config(cfg.model, n_layers=n_layers, d_model=d_model, n_heads=n_heads)
    stream = [(s, read_selection(arena / "warmup" / f"stage_{s:02d}" / "selected")) for s in range(1, stage + 1)]
    return train_proxy(cfg, pm, pool, stream, HERE / "runs" / "proxy" / arena.name / shape)[-1]


SHF = "stats+hidden+fo"
# the head (V x H per token, 3 passes over V for stats + fo) dominates this LM's cost, so the views that need
# it are a chosen few: the prefix curve at full depth and at exit 1, the exit curve at prefix 64; `hidden`
# alone needs no head and is cheap in every view
CHEAP = ([f"p{p}:{SHF}" for p in (16, 32, 64, 128)] + [f"e{e}:{SHF}" for e in (1,)]
         + [f"p64e{e}:{SHF}" for e in (0, 1, 2)] + [f"p{p}e1:{SHF}" for p in (16, 32)] + [f"p16e0:{SHF}"]
         + [f"p{p}e1:stats+hidden" for p in (16, 32)] + ["p16e1:stats", "p16e1:fo", "p16e1:stats+fo"]
         + [f"{view_name(p, e)}:hidden" for p in (None, 16, 32, 64, 128) for e in (0, 1, 2, None)
            if (p, e) != (None, None)])
# combinations: views joined by '&' (their features side by side, their FLOPs summed); e0:hidden over the whole
# candidate is the LM's normalised input embedding, mean-pooled (a lookup and a norm: ~0 FLOPs), the other
# view a short prefix through few blocks and the head
COMBO = ["e0:hidden&p16e0:stats+hidden+fo", "e0:hidden&p16e1:stats+hidden+fo", "e0:hidden&p16e1:stats+hidden",
         "e0:hidden&p16e1:stats+fo", "e0:hidden&p32e1:stats+hidden+fo", "e0:hidden&p64e1:stats+hidden+fo",
         "e0:hidden&p16:stats+hidden+fo", "e0:hidden&p32:stats+hidden+fo", "e0:hidden&e1:stats+hidden+fo",
         "e0:hidden&fo", "e0:hidden&stats+fo", "e0:hidden&p64e0:stats+hidden+fo"]
# a proxy LM (selection/proxy.py) trained on the warmup's stream: three shapes, its views and a combination
PROXY = ["proxy[L2d32h1]:stats+hidden+fo", "proxy[L2d32h1]:hidden", "proxy[L2d32h1]:stats+fo",
         "e0:hidden&proxy[L2d32h1]:stats+hidden+fo", "proxy[L2d32h1]:p64:stats+hidden+fo",
         "proxy[L2d32h1]:p32:stats+hidden+fo", "proxy[L1d16h1]:stats+hidden+fo", "e0:hidden&proxy[L1d16h1]:stats+hidden+fo",
         "proxy[L1d8h1]:stats+hidden+fo", "e0:hidden&proxy[L1d8h1]:stats+hidden+fo",
         "proxy[L1d4h1]:stats+hidden+fo", "e0:hidden&proxy[L1d4h1]:stats+hidden+fo"]
DISTILL = ["distill>e0:hidden", "distill>p32e0:hidden", "distill>p32e1:hidden", "distill>p64e1:hidden",
           "distill>p128e1:hidden", f"distill>p16e1:{SHF}", f"distill>p32e1:{SHF}", "distill>encoder"]


def distill_ids(pool, plan, exclude: np.ndarray, n: int) -> np.ndarray:
    """n pool candidates (outside the held-out documents, the guard and `exclude`) the teacher labels."""
    rest = np.setdiff1d(np.arange(len(pool)), np.concatenate([plan.heldout, plan.guard, exclude]))
    return np.sort(np.random.default_rng(1).choice(rest, min(n, len(rest)), replace=False))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", default="early,middle,late")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--finetune", action="store_true")
    ap.add_argument("--variants", default="")
    ap.add_argument("--distill-n", type=int, default=2400, help="candidates the teacher (the full LM-feature "
                    "model) labels for the distilled students")
    ap.add_argument("--encoder", action="store_true", help="also the MiniLM variants (minutes of CPU per set)")
    ap.add_argument("--labels", default="", help="folder of the early/middle/late label sets (default: labels/, "
                    "issue 14's 2,000-label sets; issue 28 ran on labels_n1200/)")
    ap.add_argument("--max-n", type=int, default=0, help="use only the first N candidates of a set (a random "
                    "subset: labels.py draws them in random order); 0: all")
    args = ap.parse_args()
    global LABELS
    if args.labels:
        LABELS = Path(args.labels)
    torch.set_num_threads(args.threads)
    from datamates.config.influence import EncoderConfig
    from datamates.core.checkpoint import load_model
    from datamates.selection.encode import TokenCache, backbone_hash, encoder_tokens
    from datamates.selection.features import feature_flops_per_token, head_direction, truncate_layers
    from datamates.selection.fit import fit_head
    from datamates.selection.influence_model import (
        InfluenceModel,
        frozen_embeddings,
        load_encoder,
        predict_head,
    )

    variants = list(dict.fromkeys(args.variants.split(",") if args.variants else RIDGE + MLP + CHEAP + COMBO + DISTILL + PROXY))
    if not args.encoder and not args.variants:
        variants = [v for v in variants if "encoder" not in v]
    enc_cfg = EncoderConfig(backbone="minilm", max_tokens=128, chunk_len=128)  # the arena's encoder input
    results = json.loads((HERE / "results.json").read_text()) if (HERE / "results.json").exists() else {}
    for name in args.sets.split(","):
        spec = label_set(name)
        if spec is None:
            print(f"{name}: labels not finished; skipped", flush=True)
            continue
        fo_dir, ex_dir, ckpt, arena, ids, sp = spec
        if args.max_n and len(ids) > args.max_n:
            ids, sp = ids[: args.max_n], sp[: args.max_n]
            name = f"{name}_n{args.max_n}"
        cfg, pool, plan, ref = arena_inputs(arena)
        cache_dir = HERE / "runs" / "cache"
        if name.startswith("arena_s"):  # the arena's own encoder cache holds these sequences' embeddings
            from datamates.run_dir import encoder_cache_dir

            cache_dir = encoder_cache_dir(pool.path)
        lab = read(fo_dir)
        y = np.array([lab[int(i)] for i in ids])
        tr, va = np.flatnonzero(sp == 0), np.flatnonzero(sp == 1)
        exact = read(ex_dir) if (ex_dir / "DONE").exists() and json.loads(
            (ex_dir / "meta.json").read_text()).get("mode") == "exact" else {}  # a rerun arena may hold first-order ones
        ex_ids = np.array(sorted(set(exact) - set(ids[tr].tolist())), dtype=np.int64)  # never trained on
        dist = distill_ids(pool, plan, np.concatenate([ids, ex_ids]), args.distill_n) if any(
            "distill>" in v for v in variants) else np.zeros(0, np.int64)
        every = np.concatenate([ids, np.setdiff1d(ex_ids, ids), dist])
        label_flops_each = probe_flops(fo_dir) / len(lab)
        t0 = time.time()
        D = head_direction(ckpt, ref, pad_id=pool.eos_id)
        parsed = [parse_variant(part) for v in variants for part in v.split("&")]
        views: dict = {(None, None): list(LM_KINDS)}  # the teacher and today's default
        dviews: dict = {(None, None): list(LM_KINDS)} if len(dist) else {}
        pviews: dict = {}  # proxy shape -> its views
        for _head, distill, px, p, e, kinds in parsed:
            lk = ["stats" if k == "loss" else k for k in kinds if k != "encoder"]
            if px is not None:
                vw = pviews.setdefault(px, {})
                vw[(p, e)] = sorted(set(vw.get((p, e), [])) | set(lk), key=LM_KINDS.index)
                continue
            for vw in (views, dviews) if distill else (views,):
                if lk:
                    vw[(p, e)] = sorted(set(vw.get((p, e), [])) | set(lk), key=LM_KINDS.index)
        feats, t_lm = cached_grid(HERE / "runs" / "features" / f"{name}.npz", ckpt, pool, every[: len(every) - len(dist)],
                                  views, D)
        stage = int(ckpt.parent.name.split("_")[1])
        proxies, pfeats, t_px = {}, {}, {}
        for px, vw in pviews.items():  # the proxy's own head direction (its reference gradient and AdamW state)
            t0 = time.time()
            proxies[px] = proxy_checkpoint(arena, cfg, pool, px, stage)
            t_train = time.time() - t0
            pfeats[px], t_f = cached_grid(HERE / "runs" / "features" / f"{name}_proxy_{px}.npz", proxies[px], pool,
                                          every[: len(every) - len(dist)], vw,
                                          head_direction(proxies[px], ref, pad_id=pool.eos_id))
            t_px[px] = t_f
            print(f"{name:7s} proxy {px}: {proxies[px]} (trained in {t_train:.0f} s; features {t_f:.0f} s)", flush=True)
        dfeats = cached_grid(HERE / "runs" / "features" / f"{name}_distill.npz", ckpt, pool, dist, dviews, D)[0] \
            if len(dist) else {}
        T = pool.seq_len
        lm = load_model(ckpt)
        L = lm.config.num_hidden_layers

        def proxy_train_share(px) -> float | None:
            """The proxy's training FLOPs per token over the LM's (it trains on every token the LM trains on)."""
            from datamates.core.lm import flops_per_token

            return None if px is None else flops_per_token(load_model(proxies[px]), T) / flops_per_token(lm, T)

        def lm_flops(kinds, p, e, px=None) -> float:
            """Counted FLOPs of one candidate's LM features (features.feature_flops_per_token x tokens)."""
            src = ckpt if px is None else proxies[px]
            m = load_model(src)
            m = truncate_layers(m, m.config.num_hidden_layers if e is None else e)
            P = T if p is None else min(p, T)
            return P * sum(feature_flops_per_token(m, kinds, P).values())

        if any("encoder" in v for v in variants):
            t0 = time.time()
            tc = TokenCache(pool, enc_cfg, cache_dir)
            tc.ensure(every)
            enc = InfluenceModel(load_encoder(tc.backbone))
            E, _ = frozen_embeddings(enc, tc, every, backbone_digest=backbone_hash(tc.backbone),
                                     device=torch.device("cpu"), precision="fp32", batch_size=64, cache_dir=cache_dir)
            t_enc = time.time() - t0
            enc_fwd = flops_per_token_enc(enc, enc_cfg) * encoder_tokens(tc.get(ids[:200]), enc_cfg, tc.tok) / 200
        else:
            E, t_enc, enc_fwd = None, 0.0, 0.0
        pos = {int(i): j for j, i in enumerate(every)}
        ex_rows = np.array([pos[int(i)] for i in ex_ids], dtype=np.int64)
        dist_rows = np.array([pos[int(i)] for i in dist], dtype=np.int64)
        ex_y = np.array([exact[int(i)] for i in ex_ids])
        common = [i for i in exact if i in lab]
        fidelity = (float(spearmanr([exact[i] for i in common], [lab[i] for i in common]).statistic)
                    if len(common) >= 5 else None)

        def design(kinds, p, e, distill_rows=False, px=None):
            """[rows of `every`, d] (or of `dist` with distill_rows) of the variant's features (of the proxy `px`)."""
            src = dfeats if distill_rows else feats if px is None else pfeats[px]
            parts = []
            for k in kinds:
                if k == "encoder":
                    parts.append(E[dist_rows] if distill_rows else E[: len(every) - len(dist)])
                elif k == "loss":
                    parts.append(src[(p, e)]["stats"][:, :1])
                else:
                    parts.append(src[(p, e)][k])
            return np.concatenate(parts, axis=1)

        mu, sd = y[tr].mean(), y[tr].std()
        teacher = None
        rows = []
        for v in variants:
            if "&" in v:
                rows.append(_combo(v, design, lm_flops, y, tr, va, mu, sd, label_flops_each, proxy_train_share))
                r = rows[-1]
                print(f"{name:7s} {v:32s} rho {r['val_spearman']:+.3f} [{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}]  "
                      f"score/cand {r['flops_score_one']:.3g} FLOPs", flush=True)
                continue
            head, distill, px, p, e, kinds = parse_variant(v)
            X = design(kinds, p, e, px=px)
            t0 = time.time()
            xtr, ztr = X[tr], (y[tr] - mu) / sd
            fit_extra = 0.0
            if distill:  # the teacher (full stats+hidden+fo, ridge on the oracle labels) labels `dist`
                if teacher is None:
                    Xt = design(LM_KINDS, None, None)
                    teacher = predict_head(fit_head(Xt[tr], (y[tr] - mu) / sd, head="ridge"),
                                           design(LM_KINDS, None, None, distill_rows=True))
                xtr, ztr = np.concatenate([xtr, design(kinds, p, e, distill_rows=True)]), np.concatenate([ztr, teacher])
                fit_extra = len(dist) * lm_flops(LM_KINDS, None, None)
            model = fit_head(xtr, ztr, head=head, seed=0)
            pred = predict_head(model, X[:len(ids)][va])
            t_fit = time.time() - t0
            rho = float(spearmanr(pred, y[va]).statistic)
            lo, hi = bootstrap_ci(pred, y[va])
            rho_ex = (float(spearmanr(predict_head(model, X[ex_rows]), ex_y).statistic)
                      if len(ex_rows) >= 5 else None)
            lm_k = [k for k in kinds if k != "encoder"]
            lm_k = ["stats" if k == "loss" else k for k in lm_k]
            score_flops = (lm_flops(lm_k, p, e, px) if lm_k else 0.0) + (enc_fwd if "encoder" in kinds else 0.0)
            wall = t_fit + ((t_lm if px is None else t_px[px]) if lm_k else 0.0) + (t_enc if "encoder" in kinds else 0.0)
            rows.append({"variant": v, "head": head, "prefix_tokens": p, "exit_layer": e, "kinds": kinds,
                         "proxy": px, "proxy_train_share": proxy_train_share(px),
                         "distill_n": int(len(dist)) if distill else 0,
                         "val_spearman": rho, "ci95": [lo, hi], "exact_spearman": rho_ex,
                         "n_exact_val": int(len(ex_rows)), "n_train": int(len(tr)), "n_val": int(len(va)),
                         "flops_labels": label_flops_each * len(tr),
                         "flops_fit": score_flops * (len(tr) + (len(dist) if distill else 0)) + fit_extra,
                         "flops_score_one": score_flops, "flops_score_one_full_lm": lm_flops(LM_KINDS, None, None),
                         "wall_s": round(wall, 2), "fit_alpha": model.get("alpha")})
            print(f"{name:7s} {v:32s} rho {rho:+.3f} [{lo:+.3f}, {hi:+.3f}]  exact {rho_ex}  "
                  f"score/cand {score_flops:.3g} FLOPs", flush=True)
        curve = {}  # label count -> validation Spearman (the first n training rows: a random subset)
        for v in CURVE:
            if "encoder" in v and E is None:
                continue
            X = design(v.split("+"), None, None)
            pts = []
            for n in (77, 154, 307, 614, 1228, len(tr)):
                if n > len(tr):
                    continue
                sub = tr[np.random.default_rng(n).permutation(len(tr))[:n]]
                mdl = fit_head(X[sub], (y[sub] - y[sub].mean()) / y[sub].std(), head="ridge")
                pts.append([int(n), float(spearmanr(predict_head(mdl, X[va]), y[va]).statistic)])
            curve[v] = pts
            print(f"{name:7s} label curve {v}: " + ", ".join(f"{n}: {r:+.3f}" for n, r in pts), flush=True)
        if args.finetune:
            rows.append(_finetune(name, fo_dir, pool, ids, y, tr, va, enc_cfg, cache_dir, label_flops_each))
        results[name] = {"checkpoint": str(ckpt.relative_to(HERE.parent.parent)), "n_labels": int(len(ids)),
                         "n_exact": len(exact), "n_exact_eval": int(len(ex_ids)),
                         "first_order_vs_exact_spearman": fidelity, "n_layers": int(L), "seq_len": int(T),
                         "label_flops_each": label_flops_each, "lm_forward_flops": lm_flops(["stats"], None, None),
                         "rows": rows, "label_curve": curve}
        now = json.loads((HERE / "results.json").read_text()) if (HERE / "results.json").exists() else {}
        if name in now:  # a run of some variants only (--variants, --finetune) keeps the set's other rows
            done = {r["variant"] for r in results[name]["rows"]}
            results[name]["rows"] = [r for r in now[name]["rows"] if r["variant"] not in done] + results[name]["rows"]
            results[name]["label_curve"] = {**now[name].get("label_curve", {}), **results[name]["label_curve"]}
        now[name] = results[name]  # other sets may have been written by another run meanwhile
        results = now
        (HERE / "results.json").write_text(json.dumps(results, indent=1))
    _table(results)


def _combo(v, design, lm_flops, y, tr, va, mu, sd, label_flops_each, proxy_train_share) -> dict:
    """A combination 'VIEW:kinds&VIEW:kinds': the views' features side by side, one ridge head."""
    from datamates.selection.fit import fit_head
    from datamates.selection.influence_model import predict_head

    parts = [parse_variant(p) for p in v.split("&")]
    X = np.concatenate([design(kinds, p, e, px=px) for _, _, px, p, e, kinds in parts], axis=1)
    model = fit_head(X[tr], (y[tr] - mu) / sd, head="ridge", seed=0)
    pred = predict_head(model, X[: len(y)][va])
    rho = float(spearmanr(pred, y[va]).statistic)
    lo, hi = bootstrap_ci(pred, y[va])
    score = sum(lm_flops(["stats" if k == "loss" else k for k in kinds], p, e, px) for _, _, px, p, e, kinds in parts)
    pxs = sorted({px for _, _, px, *_ in parts if px is not None})
    return {"variant": v, "head": "ridge", "views": [[p, e, kinds] + ([px] if px else []) for _, _, px, p, e, kinds in parts],
            "proxy": pxs[0] if pxs else None, "proxy_train_share": proxy_train_share(pxs[0] if pxs else None),
            "prefix_tokens": None, "exit_layer": None, "kinds": None, "distill_n": 0,
            "val_spearman": rho, "ci95": [lo, hi], "exact_spearman": None, "n_exact_val": 0,
            "n_train": int(len(tr)), "n_val": int(len(va)), "flops_labels": label_flops_each * len(tr),
            "flops_fit": score * len(tr), "flops_score_one": score, "wall_s": None, "fit_alpha": model.get("alpha")}


def cached_grid(path: Path, ckpt, pool, ids: np.ndarray, views: dict, D):
    """features.feature_grid of `views` on `ids`, cached in `path` (kept while the ids and views agree)."""
    from datamates.selection.features import feature_grid

    keys = sorted(f"{view_name(p, e)}|{k}" for (p, e), kinds in views.items() for k in kinds)
    if path.exists():
        z = np.load(path)
        if np.array_equal(z["ids"], ids) and set(keys) <= set(z.files):
            out: dict = {}
            for (p, e), kinds in views.items():
                out[(p, e)] = {k: z[f"{view_name(p, e)}|{k}"] for k in kinds}
            return out, float(z["seconds"])
    t0 = time.time()
    grid = feature_grid(ckpt, pool.tokens(ids), views, direction=D, batch_size=16)
    sec = time.time() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, ids=ids, seconds=sec, **{f"{view_name(p, e)}|{k}": v for (p, e), d in grid.items() for k, v in d.items()})
    tmp.rename(path)
    return grid, sec


def flops_per_token_enc(enc, enc_cfg) -> float:
    from datamates.core.lm import flops_per_token

    return flops_per_token(enc.encoder, enc_cfg.chunk_len) / 3


def _finetune(name, fo_dir, pool, ids, y, tr, va, enc_cfg, cache_dir, label_flops_each):
    """MATES's recipe (fine-tuned MiniLM on text) on the same split: labels of the training rows only."""
    import pyarrow as pa

    from datamates.config.influence import FitConfig
    from datamates.selection.fit import fit

    work = HERE / "runs" / "finetune" / name
    work.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"seq_id": ids[tr], "ref_loss_delta": y[tr]}), work / "train.parquet")
    t0 = time.time()
    out = fit(FitConfig(mode="finetune", encoder=enc_cfg, device="cpu"), [work / "train.parquet"], pool,
              work / "model", cache_dir=cache_dir)
    from datamates.selection.score import InfluenceScorer

    pred = InfluenceScorer(out, pool, cache_dir=cache_dir)(ids[va])
    rho = float(spearmanr(pred, y[va]).statistic)
    lo, hi = bootstrap_ci(pred, y[va])
    m = json.loads((out / "meta.json").read_text())
    fl = sum(m["tokens"][k] * m["flops_per_token"][k] for k in m["tokens"])
    score_one = m["flops_per_token"]["encoder_forward"] * enc_cfg.max_tokens
    print(f"{name:7s} {'finetune':28s} rho {rho:+.3f} [{lo:+.3f}, {hi:+.3f}]", flush=True)
    return {"variant": "finetune", "head": "finetune", "val_spearman": rho, "ci95": [lo, hi], "exact_spearman": None,
            "n_train": int(len(tr)), "n_val": int(len(va)), "flops_labels": label_flops_each * len(tr),
            "flops_fit": fl, "flops_score_one": score_one, "wall_s": round(time.time() - t0, 1)}


def _table(results: dict) -> None:
    lines = ["| set | variant | val Spearman [95% CI] | vs exact | FLOPs labels | FLOPs fit | FLOPs score/cand | wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        for row in r["rows"]:
            ex = "" if row.get("exact_spearman") is None else f"{row['exact_spearman']:+.2f} (n={row.get('n_exact_val')})"
            lines.append(f"| {name} | {row['variant']} | {row['val_spearman']:+.3f} [{row['ci95'][0]:+.2f}, "
                         f"{row['ci95'][1]:+.2f}] | {ex} | {row['flops_labels']:.2e} | {row['flops_fit']:.2e} | "
                         f"{row['flops_score_one']:.2e} | {row['wall_s']} |")
        if r.get("first_order_vs_exact_spearman") is not None:
            lines.append(f"| {name} | (first-order vs exact labels, n={r['n_exact']}) | "
                         f"{r['first_order_vs_exact_spearman']:+.3f} | | | | | |")
    table = "\n".join(lines)
    readme = HERE / "README.md"
    text = readme.read_text() if readme.exists() else "<!-- table -->\n<!-- /table -->\n"
    a, b = text.split("<!-- table -->")[0], text.split("<!-- /table -->")[1]
    readme.write_text(a + "<!-- table -->\n" + table + "\n<!-- /table -->" + b)
    print(table)


if __name__ == "__main__":
    main()
