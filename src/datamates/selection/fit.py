"""`datamates fit`: fit the data influence model to oracle probe labels (MATES §3.2; mates.md §4.1, §8.4).

Labels y_i = ref_loss_delta of probe sequence x_i (lower is better) are z-scored with the training
split's mean and std, z_i = (y_i - mu) / sigma, and the model f is fitted to them:

  finetune (MATES):  min_theta  1/|B| sum_{i in B} (f_theta(x_i) - z_i)^2  over encoder + head, AdamW
                     (lr 5e-5, wd 0.01 except biases and LayerNorm, linear decay, clip 1.0, batch 32,
                     5 epochs), fresh from the backbone each stage; the checkpoint with the best
                     validation Spearman (evaluated every `eval_every` steps) is kept.
  frozen (§8.4):     e(x) = mean-pooled embedding of the frozen backbone, cached once per pool;
                     f(x) = w . e(x) + b by ridge regression on standardized embeddings,
                     w = argmin ||z - E w||^2 + alpha ||w||^2, alpha picked by exact leave-one-out
                     error on the training split (closed form from one SVD).

90/10 split with seed 1234 as MATES. Reported on the validation split: Spearman, Pearson, MSE in
z units and the MSE of the constant predictor (the training mean), plus a scatter plot.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from datamates import tracking
from datamates.config.base import config_hash, to_dict, validate
from datamates.config.influence import FitConfig
from datamates.core.lm import flops_per_token, resolve_device
from datamates.core.pool import Pool
from datamates.errors import ArtifactMissing, IncompatibleArtifacts, InputError, NumericalError
from datamates.log import get_logger, progress_bar
from datamates.run_dir import atomic_dir, atomic_write_json, is_done, meta_record, read_json
from datamates.selection.encode import TokenCache, backbone_hash, encoder_tokens, make_chunks
from datamates.selection.influence_model import (
    CONFIG_FILE,
    HEAD_FILE,
    InfluenceModel,
    compute_precision,
    frozen_embeddings,
    head_predict,
    load_encoder,
    model_hash_of,
    pad_chunks,
    sequence_embeddings,
)

log = get_logger(__name__)

LABELS_FILE = "labels.parquet"


# ----------------------------------------------------------------------------- labels


def read_labels(labels: Sequence[str | Path], pool: Pool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(seq_id [n] int64, ref_loss_delta [n] float64) from one or more probe folders (or
    labels.parquet files). NaN / inf labels, duplicate ids, ids outside the pool and labels of
    another pool are refused with one line."""
    ids_parts, y_parts = [], []
    for spec in labels:
        p = Path(spec)
        f = p if p.suffix == ".parquet" else p / LABELS_FILE
        if not f.exists():
            raise ArtifactMissing(f"{f}: no probe labels here; run `datamates probe` first")
        meta_f = f.parent / "meta.json"
        meta = read_json(meta_f) if meta_f.exists() else {}
        if pool is not None and meta.get("pool_id") not in (None, pool.pool_id):
            raise IncompatibleArtifacts(f"{meta_f}: labels were probed on pool {meta['pool_id']}, this pool is "
                                        f"{pool.pool_id} ({pool.path})")
        try:
            table = pq.read_table(f)
        except Exception as e:
            raise InputError(f"{f}: not a readable Parquet file ({type(e).__name__})") from None
        for col in ("seq_id", "ref_loss_delta"):
            if col not in table.column_names:
                raise InputError(f"{f}: no column '{col}' (has {', '.join(table.column_names)})")
        ids = table.column("seq_id").to_numpy(zero_copy_only=False)
        y = table.column("ref_loss_delta").to_numpy(zero_copy_only=False).astype(np.float64)
        bad = ~np.isfinite(y)
        if bad.any():
            raise NumericalError(f"{f}: {int(bad.sum())} of {len(y)} labels are NaN or inf (first at seq_id "
                                 f"{int(ids[np.argmax(bad)])}); re-run the probe; nothing was fitted")
        ids_parts.append(ids.astype(np.int64))
        y_parts.append(y)
    ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int64)
    y = np.concatenate(y_parts) if y_parts else np.zeros(0)
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise InputError(f"{', '.join(map(str, labels))}: sequence id {int(uniq[counts > 1][0])} is labelled "
                         f"{int(counts[counts > 1][0])} times ({int((counts > 1).sum())} duplicated ids)")
    if pool is not None and len(ids) and (ids.min() < 0 or ids.max() >= len(pool)):
        raise InputError(f"{labels[0]}: sequence id {int(ids.max() if ids.max() >= len(pool) else ids.min())} "
                         f"is not in the pool {pool.path} (0..{len(pool) - 1})")
    return ids, y


def split_train_val(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the training and validation splits (MATES: 10% held out, seed 1234)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val = min(n - 2, max(2, int(round(n * val_fraction))))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


# ----------------------------------------------------------------------------- metrics


def regression_metrics(pred: np.ndarray, true: np.ndarray, const: float) -> dict[str, float]:
    from scipy.stats import pearsonr, spearmanr

    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    same = np.ptp(pred) == 0 or np.ptp(true) == 0
    return {
        "spearman": float("nan") if same else float(spearmanr(pred, true).statistic),
        "pearson": float("nan") if same else float(pearsonr(pred, true).statistic),
        "mse": float(np.mean((pred - true) ** 2)),
        "mse_constant": float(np.mean((const - true) ** 2)),
    }


def _nan_to_neg(x: float) -> float:
    return -math.inf if not math.isfinite(x) else x


# ----------------------------------------------------------------------------- fit


def fit(cfg: FitConfig, labels: Sequence[str | Path], pool: Pool, out: str | Path, *,
        cache_dir: str | Path | None = None) -> Path:
    """Fit the influence model of `cfg.mode` to the labels in `labels` (probe folders) and write it
    to `out` (see influence_model.py for the layout). Returns `out`; a finished `out` fitted on the
    same labels with the same config is kept as it is."""
    validate(cfg)
    out = Path(out)
    ids, y = read_labels(labels, pool)
    if len(ids) < cfg.min_labels:
        raise InputError(f"{', '.join(map(str, labels))}: {len(ids)} labels, fewer than fit.min_labels = "
                         f"{cfg.min_labels}; probe more sequences or lower fit.min_labels; nothing was fitted")
    labels_digest = config_hash({"ids": ids.tolist(), "y": y.tolist()})
    cfg_digest = config_hash(cfg)
    if is_done(out) and (out / "meta.json").exists():
        old = read_json(out / "meta.json")
        if old.get("labels_hash") == labels_digest and old.get("config_hash") == cfg_digest:
            log.info("%s is already fitted on these labels; skipping", out)
            return out
    t0 = time.time()
    tr, va = split_train_val(len(ids), cfg.val_fraction, cfg.split_seed)
    mu, sigma = float(y[tr].mean()), float(y[tr].std())
    if not sigma > 0:
        raise NumericalError(f"{labels[0]}: all {len(tr)} training labels are equal ({mu}); nothing to fit")
    z = (y - mu) / sigma
    device = resolve_device(cfg.device)

    cache = TokenCache(pool, cfg.encoder, cache_dir)
    cache.ensure(ids, desc="encoder tokens (labels)")
    content = cache.get(ids)
    bpath, bdigest = cache.backbone, backbone_hash(cache.backbone)
    tok = cache.tok
    log.info("fit %s: %d labels (%d train / %d validation), backbone %s, device %s", cfg.mode, len(ids),
             len(tr), len(va), cfg.encoder.backbone, device)

    torch.manual_seed(cfg.seed)
    if cfg.mode == "finetune":
        model, pred_va, extra = _fit_finetune(cfg, bpath, content, z, tr, va, tok, device)
    else:
        model, pred_va, extra = _fit_frozen(cfg, cache, bpath, bdigest, ids, z, tr, va, device, cache_dir)

    m_z = regression_metrics(pred_va, z[va], const=0.0)
    metrics = {
        "mode": cfg.mode,
        "n_labels": int(len(ids)), "n_train": int(len(tr)), "n_val": int(len(va)),
        "val_spearman": m_z["spearman"], "val_pearson": m_z["pearson"],
        "val_mse_z": m_z["mse"], "val_mse_z_constant": m_z["mse_constant"],
        "label_mean": mu, "label_std": sigma,
        "seconds": round(time.time() - t0, 2),
        **extra,
    }
    log.info("fit %s: validation Spearman %.4f, Pearson %.4f, MSE %.4f (constant predictor %.4f) on %d labels",
             cfg.mode, metrics["val_spearman"], metrics["val_pearson"], metrics["val_mse_z"],
             metrics["val_mse_z_constant"], len(va))

    # counted FLOPs (accounting.py): finetune = every training row each epoch + each validation pass
    def n_tok(rows):
        return encoder_tokens([content[i] for i in rows], cfg.encoder, tok)

    tokens = ({"encoder_train": cfg.epochs * n_tok(tr), "encoder_forward": len(extra["history"]) * n_tok(va)}
              if cfg.mode == "finetune" else {"encoder_forward": extra["encoder_tokens_computed"]})
    fe = flops_per_token(model.encoder, cfg.encoder.chunk_len) / 3  # 2 N + 2 L T d
    meta = meta_record("fit", config=to_dict(cfg), config_hash=cfg_digest, labels=[str(p) for p in labels],
                       labels_hash=labels_digest, pool_id=pool.pool_id, backbone=cfg.encoder.backbone,
                       backbone_hash=bdigest, metrics=metrics, tokens=tokens,
                       flops_per_token={"encoder_forward": fe, "encoder_train": 3 * fe})
    from safetensors.torch import save_file

    with atomic_dir(out, meta) as tmp:
        for h in extra.get("history", []):  # the validation curve: metrics.jsonl (+ TensorBoard / wandb)
            tracking.log_metrics(h["step"], {f"fit/{k}": v for k, v in h.items() if k != "step"}, folder=tmp)
        tracking.close(tmp)
        save_file({"head.weight": model.head.weight.detach().float().cpu().contiguous(),
                   "head.bias": model.head.bias.detach().float().cpu().contiguous()}, str(tmp / HEAD_FILE))
        if cfg.mode == "finetune":
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # its "Writing model shards" bar
            enc_dir = tmp / "encoder"
            model.encoder.save_pretrained(str(enc_dir), safe_serialization=True)
            _copy_tokenizer(bpath, enc_dir)
        digest = model_hash_of(tmp)
        atomic_write_json(tmp / CONFIG_FILE, {
            "mode": cfg.mode, "backbone": cfg.encoder.backbone, "backbone_path": str(bpath.resolve()),
            "backbone_hash": bdigest, "encoder": to_dict(cfg.encoder), "dropout": cfg.dropout,
            "embedding_precision": compute_precision(device, cfg.precision),
            "label_mean": mu, "label_std": sigma, "model_hash": digest, "pool_id": pool.pool_id,
            "sign": "predicts ref_loss_delta = L_ref(after) - L_ref(before); lower is better",
        })
        metrics["model_hash"] = digest
        atomic_write_json(tmp / "metrics.json", metrics)
        pq.write_table(pa.table({"seq_id": ids[va], "ref_loss_delta": y[va],
                                 "predicted": pred_va * sigma + mu}), tmp / "val_predictions.parquet")
        _scatter(tmp / "scatter.png", y[va], pred_va * sigma + mu, metrics, extra.get("history"))
    return out


def _copy_tokenizer(src: Path, dst: Path) -> None:
    import shutil

    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                 "merges.txt", "vocab.json", "spm.model", "sentencepiece.bpe.model"):
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)


def _linear_lr(step: int, total: int, warmup: int, lr: float) -> float:
    """HF Trainer's default schedule: linear warmup, then linear decay to 0 at `total`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * max(0.0, (total - step) / max(1, total - warmup))


def _predict_z(model: InfluenceModel, content: list[np.ndarray], rows: np.ndarray, cfg: FitConfig, tok,
               device: torch.device) -> np.ndarray:
    emb = sequence_embeddings(model, [content[i] for i in rows], cfg.encoder, tok, device=device,
                              precision=cfg.precision, batch_size=cfg.embed_batch_size)
    return head_predict(model, emb)


def _autocast(device: torch.device, precision: str):
    from datamates.core.lm import autocast

    return autocast(device, precision)


def _fit_finetune(cfg: FitConfig, bpath: Path, content: list[np.ndarray], z: np.ndarray, tr: np.ndarray,
                  va: np.ndarray, tok, device: torch.device) -> tuple[InfluenceModel, np.ndarray, dict[str, Any]]:
    encoder = load_encoder(bpath)
    model = InfluenceModel(encoder, dropout=cfg.dropout).to(device)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if (name.endswith("bias") or "norm" in name.lower()) else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    B = cfg.batch_size
    micro = cfg.micro_batch_size or B
    steps_per_epoch = math.ceil(len(tr) / B)
    total = cfg.epochs * steps_per_epoch
    zt = torch.as_tensor(z, dtype=torch.float32)
    history: list[dict[str, float]] = []
    best = {"spearman": -math.inf, "step": 0, "state": None, "pred": None}
    step = 0
    bar = progress_bar("fit (finetune)", total=total, unit="step")
    model.train()
    for epoch in range(cfg.epochs):
        perm = tr[np.random.default_rng([cfg.seed, epoch]).permutation(len(tr))]
        for b in range(steps_per_epoch):
            batch = perm[b * B : (b + 1) * B]
            for g in opt.param_groups:
                g["lr"] = _linear_lr(step, total, cfg.warmup_steps, cfg.lr)
            loss_sum = 0.0
            for s in range(0, len(batch), micro):
                mb = batch[s : s + micro]
                chunks, owner = make_chunks([content[i] for i in mb], cfg.encoder, tok)
                x, mask = pad_chunks(chunks, tok.pad_id)
                with _autocast(device, cfg.precision):
                    pred = model(x.to(device), mask.to(device), torch.as_tensor(owner, device=device), len(mb))
                loss = torch.nn.functional.mse_loss(pred.float(), zt[mb].to(device))
                (loss * len(mb) / len(batch)).backward()
                loss_sum += float(loss.detach()) * len(mb) / len(batch)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            if not math.isfinite(loss_sum):
                raise NumericalError(f"influence-model loss is {loss_sum} at step {step}; lower fit.lr")
            if step % cfg.eval_every == 0 or step == total:
                pred_va = _predict_z(model, content, va, cfg, tok, device)
                m = regression_metrics(pred_va, z[va], const=0.0)
                history.append({"step": step, "epoch": epoch + 1, "train_loss": loss_sum,
                                "val_spearman": m["spearman"], "val_pearson": m["pearson"], "val_mse_z": m["mse"]})
                log.info("fit step %d/%d: train MSE %.4f, validation Spearman %.4f", step, total, loss_sum,
                         m["spearman"])
                if _nan_to_neg(m["spearman"]) > best["spearman"] or best["state"] is None:
                    best = {"spearman": _nan_to_neg(m["spearman"]), "step": step, "pred": pred_va,
                            "state": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}}
    bar.close()
    model.load_state_dict(best["state"])
    model.eval()
    return model, best["pred"], {"best_step": best["step"], "total_steps": total, "history": history}


def _fit_frozen(cfg: FitConfig, tokens: TokenCache, bpath: Path, bdigest: str, ids: np.ndarray,
                z: np.ndarray, tr: np.ndarray, va: np.ndarray, device: torch.device,
                cache_dir: str | Path | None) -> tuple[InfluenceModel, np.ndarray, dict[str, Any]]:
    encoder = load_encoder(bpath)
    model = InfluenceModel(encoder, dropout=cfg.dropout).to(device).eval()
    # the features score will read back (same function, same cache key: pool, backbone, chunking, precision)
    E, n_tokens = frozen_embeddings(model, tokens, ids, backbone_digest=bdigest, device=device,
                                    precision=cfg.precision, batch_size=cfg.embed_batch_size, cache_dir=cache_dir,
                                    desc="frozen embeddings")
    E = E.astype(np.float64)  # [n, H]
    alpha, w, b, loo = ridge_loo(E[tr], z[tr], cfg.ridge_alphas)
    with torch.no_grad():
        model.head.weight.copy_(torch.as_tensor(w, dtype=torch.float32)[None])
        model.head.bias.fill_(float(b))
    pred_va = E[va] @ w + b
    log.info("frozen head: ridge alpha %g (leave-one-out MSE %s)", alpha,
             ", ".join(f"{a:g}: {m:.4f}" for a, m in loo.items()))
    return model, pred_va, {"ridge_alpha": alpha, "ridge_loo_mse": {str(k): v for k, v in loo.items()},
                            "encoder_tokens_computed": n_tokens,
                            "embedding_precision": compute_precision(device, cfg.precision)}


def ridge_loo(X: np.ndarray, y: np.ndarray, alphas: Sequence[float]) -> tuple[float, np.ndarray, float, dict[float, float]]:
    """Ridge regression of y on standardized X with an intercept; alpha by exact leave-one-out MSE.

    Xs = (X - mean) / std = U S V^T;  y_hat(alpha) = ybar + U diag(s^2 / (s^2 + alpha)) U^T (y - ybar)
    hat diagonal h_i = 1/n + sum_j U_ij^2 s_j^2 / (s_j^2 + alpha);  LOO residual = (y_i - y_hat_i) / (1 - h_i)
    Returns (alpha, w, b, {alpha: LOO MSE}) with f(x) = x . w + b on the raw (unstandardized) x."""
    X = np.asarray(X, np.float64)
    y = np.asarray(y, np.float64)
    n = len(y)
    mu, sd = X.mean(0), X.std(0) + 1e-8
    Xs = (X - mu) / sd
    ybar = y.mean()
    U, s, Vt = np.linalg.svd(Xs, full_matrices=False)
    Uty = U.T @ (y - ybar)
    loo: dict[float, float] = {}
    for a in alphas:
        d = s**2 / (s**2 + a)
        yhat = ybar + U @ (d * Uty)
        h = 1.0 / n + (U**2) @ d
        r = (y - yhat) / np.maximum(1 - h, 1e-12)
        loo[float(a)] = float(np.mean(r**2))
    alpha = min(loo, key=lambda a: loo[a])
    ws = Vt.T @ ((s / (s**2 + alpha)) * Uty)
    w = ws / sd
    b = float(ybar - mu @ w)
    return alpha, w, b, loo


def _scatter(path: Path, true: np.ndarray, pred: np.ndarray, metrics: dict[str, Any],
             history: list[dict[str, float]] | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = 2 if history else 1
    fig, axes = plt.subplots(1, ncols, figsize=(5.2 * ncols, 4.6), squeeze=False)
    ax = axes[0, 0]
    ax.scatter(true, pred, s=10, alpha=0.6)
    lo, hi = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="y = x")
    ax.set_xlabel("oracle ref_loss_delta (validation)")
    ax.set_ylabel("predicted ref_loss_delta")
    ax.set_title(f"{metrics['mode']}: Spearman {metrics['val_spearman']:.3f}, Pearson {metrics['val_pearson']:.3f} "
                 f"(n={metrics['n_val']})", fontsize=9)
    ax.legend(fontsize=8)
    if history:
        ax2 = axes[0, 1]
        ax2.plot([h["step"] for h in history], [h["val_spearman"] for h in history], "o-")
        ax2.set_xlabel("step")
        ax2.set_ylabel("validation Spearman")
        ax2.axvline(metrics.get("best_step", 0), color="k", ls=":", lw=0.8, label="kept")
        ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fit_summary(out: str | Path) -> str:
    m = read_json(Path(out) / "metrics.json")
    return (f"influence model ({m['mode']}): validation Spearman {m['val_spearman']:.4f}, Pearson "
            f"{m['val_pearson']:.4f}, MSE(z) {m['val_mse_z']:.4f} vs constant {m['val_mse_z_constant']:.4f} "
            f"[{m['n_train']} train / {m['n_val']} val labels]")


