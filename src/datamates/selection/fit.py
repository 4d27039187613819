"""`datamates fit`: fit the data influence model to oracle probe labels (MATES §3.2; docs/methods.md#data-influence-model, docs/methods.md#scoring-the-pool).

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from datamates import tracking
from datamates.artifacts import Output, finished, produce
from datamates.config.base import config_hash, to_dict, validate
from datamates.config.influence import FitConfig
from datamates.core.checkpoint import checkpoint_hash
from datamates.core.lm import autocast, flops_per_token, resolve_device
from datamates.core.pool import Pool
from datamates.core.reference import load_reference
from datamates.core.regression import (  # noqa: F401  (fit_head, DEFAULT_ALPHAS re-exported)
    DEFAULT_ALPHAS,
    fit_head,
    regression_metrics,
    ridge_loo,
    split_train_val,
)
from datamates.errors import ArtifactMissing, IncompatibleArtifacts, InputError, NumericalError
from datamates.log import get_logger, progress_bar
from datamates.run_dir import atomic_write_json, meta_record, read_json
from datamates.selection.encode import (
    TokenCache,
    backbone_hash,
    encoder_tokens,
    make_chunks,
    resolve_backbone,
)
from datamates.selection.features import LMFeaturizer, head_direction, stack_features
from datamates.selection.influence_model import (
    CONFIG_FILE,
    HEAD_FILE,
    LM_HEAD_FILE,
    InfluenceModel,
    compute_precision,
    frozen_embeddings,
    head_predict,
    head_tensors,
    load_encoder,
    model_hash_of,
    pad_chunks,
    predict_head,
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


def _nan_to_neg(x: float) -> float:
    return -math.inf if not math.isfinite(x) else x


# ----------------------------------------------------------------------------- fit


def fit(cfg: FitConfig, labels: Sequence[str | Path], pool: Pool, out: str | Path, *,
        cache_dir: str | Path | None = None, checkpoint: str | Path | None = None, reference=None,
        history: Sequence[tuple[str | Path, float]] = ()) -> Path:
    """Fit the influence model of `cfg.mode` to the labels in `labels` (probe folders) and write it
    to `out` (see influence_model.py for the layout). Returns `out`; a finished `out` fitted on the
    same labels with the same config is kept as it is.

    lm mode (features of the LM, selection/features.py) also takes `checkpoint` (the LM whose
    features are used; default: the checkpoint the labels were probed at), `reference` (the probes'
    reference set, for the `fo` direction; default: the labels' probe config) and `history`:
    (probe folder, weight) pairs of earlier stages' labels added to the training rows with that
    weight (weighted ridge: rows scaled by sqrt(weight)); validation uses this stage's labels only."""
    validate(cfg)
    out = Path(out)
    ids, y = read_labels(labels, pool)
    if len(ids) < cfg.min_labels:
        raise InputError(f"{', '.join(map(str, labels))}: {len(ids)} labels, fewer than fit.min_labels = "
                         f"{cfg.min_labels}; probe more sequences or lower fit.min_labels; nothing was fitted")
    labels_digest = config_hash({"ids": ids.tolist(), "y": y.tolist()})
    cfg_digest = config_hash(cfg)
    if cfg.mode == "lm":
        return _fit_lm(cfg, labels, pool, out, ids, y, labels_digest=labels_digest, cache_dir=cache_dir,
                      checkpoint=checkpoint, reference=reference, history=history)
    output = _output(out, labels_digest, cfg_digest, pool, labels)
    if finished(output):
        return out

    def build(tmp: Path) -> dict[str, Any]:  # the fit itself runs under produce: its lock, its seconds
        tr, va, mu, sigma = _split_and_moments(labels, ids, y, cfg)
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
        _write_validation(tmp, metrics, digest, ids[va], y[va], pred_va * sigma + mu, extra.get("history"))
        return meta

    produce(output, build)
    return out


def _probe_meta(labels: Sequence[str | Path]) -> dict[str, Any]:
    p = Path(labels[0])
    f = (p.parent if p.suffix == ".parquet" else p) / "meta.json"
    return read_json(f) if f.exists() else {}


def lm_feature_matrix(cfg: FitConfig, featurizer, pool: Pool, ids: np.ndarray, *, cache_dir: str | Path | None,
                      device: torch.device) -> tuple[np.ndarray, int]:
    """[n, d] features of `cfg.features` (in that order) and the encoder tokens computed: THE feature
    path of lm-mode fit and score (one LM forward per candidate, `featurizer.features`)."""

    feats = featurizer.features(pool.tokens(ids), cfg.features) if any(k != "encoder" for k in cfg.features) else {}
    n_tokens = 0
    if "encoder" in cfg.features:
        tokens = TokenCache(pool, cfg.encoder, cache_dir)
        tokens.ensure(ids)
        enc = InfluenceModel(load_encoder(tokens.backbone)).to(device).eval()
        feats["encoder"], n_tokens = frozen_embeddings(
            enc, tokens, ids, backbone_digest=backbone_hash(tokens.backbone), device=device, precision=cfg.precision,
            batch_size=cfg.embed_batch_size, cache_dir=cache_dir)
    return stack_features(feats, cfg.features), n_tokens


def _fit_lm(cfg: FitConfig, labels: Sequence[str | Path], pool: Pool, out: Path, ids: np.ndarray, y: np.ndarray, *,
            labels_digest: str, cache_dir: str | Path | None, checkpoint: str | Path | None, reference,
            history: Sequence[tuple[str | Path, float]]) -> Path:
    """lm mode: features of the LM at `checkpoint` (selection/features.py) + a ridge / MLP head."""
    from safetensors.torch import save_file

    pm = _probe_meta(labels)
    checkpoint = Path(checkpoint or pm.get("checkpoint") or "")
    if not str(checkpoint) or not (checkpoint / "config.json").exists():
        raise ArtifactMissing(f"{labels[0]}: fit.mode lm needs the LM checkpoint whose features it uses; pass "
                              f"--checkpoint (got '{checkpoint}')")
    hist_ids, hist_y, hist_w = [], [], []
    for folder, weight in history:
        if weight <= 0:
            continue
        hi, hy = read_labels([folder], pool)
        hist_ids.append(hi)
        hist_y.append(hy)
        hist_w.append(np.full(len(hi), float(weight)))
    cfg_digest = config_hash({"cfg": to_dict(cfg), "checkpoint": checkpoint_hash(checkpoint),
                              "history": [[str(f), float(w)] for f, w in history],
                              "history_labels": config_hash([h.tolist() for h in hist_y])})
    output = _output(out, labels_digest, cfg_digest, pool, labels)
    if finished(output):
        return out

    def build(tmp: Path) -> dict[str, Any]:  # the fit itself runs under produce: its lock, its seconds
        tr, va, mu, sigma = _split_and_moments(labels, ids, y, cfg)
        device = resolve_device(cfg.device)
        direction, ref = None, reference
        if "fo" in cfg.features:
            if ref is None:
                pc = pm.get("config") or {}
                ref = load_reference(pc.get("reference", "lambada_openai"), pool.tokenizer(),
                                     size=pc.get("reference_size", 1024), seed=pc.get("reference_seed", 1234),
                                     tokenizer_hash=pool.tokenizer_hash)
            direction = head_direction(checkpoint, ref, device=device, pad_id=pool.eos_id)
        featurizer = LMFeaturizer(checkpoint, device=device, direction=direction, batch_size=cfg.lm_batch_size,
                                  prefix_tokens=cfg.prefix_tokens, exit_layer=cfg.exit_layer)
        all_ids = np.concatenate([ids, *hist_ids]) if hist_ids else ids
        X, n_enc_tokens = lm_feature_matrix(cfg, featurizer, pool, all_ids, cache_dir=cache_dir, device=device)
        Xc, Xh = X[: len(ids)], X[len(ids):]
        z = (y - mu) / sigma
        Xtr, ztr, wtr = Xc[tr], z[tr], np.ones(len(tr))
        if hist_ids:
            Xtr = np.concatenate([Xtr, Xh])
            ztr = np.concatenate([ztr, (np.concatenate(hist_y) - mu) / sigma])
            wtr = np.concatenate([wtr, np.concatenate(hist_w)])
        head = fit_head(Xtr, ztr, head=cfg.head, alphas=cfg.ridge_alphas, seed=cfg.seed, weights=wtr)
        pred_va = predict_head(head, Xc[va])
        m_z = regression_metrics(pred_va, z[va], const=0.0)
        metrics = {
            "mode": "lm", "features": list(cfg.features), "head": cfg.head,
            "n_labels": int(len(ids)), "n_train": int(len(tr)), "n_val": int(len(va)),
            "n_history": int(len(Xh)),
            "val_spearman": m_z["spearman"], "val_pearson": m_z["pearson"],
            "val_mse_z": m_z["mse"], "val_mse_z_constant": m_z["mse_constant"],
            "label_mean": mu, "label_std": sigma,
            "ridge_alpha": head.get("alpha"),
        }
        log.info("fit lm %s (%s): validation Spearman %.4f, Pearson %.4f on %d labels (+%d earlier-stage labels)",
                 "+".join(cfg.features), cfg.head, metrics["val_spearman"], metrics["val_pearson"], len(va), len(Xh))
        # counted FLOPs: one (prefix, early-exit) LM forward per labelled sequence, priced by the featurizer
        lm_kinds = [k for k in cfg.features if k != "encoder"]
        T = featurizer.tokens_per_row(pool.seq_len)
        fpt = featurizer.flops_per_token(lm_kinds, pool.seq_len) if lm_kinds else {}
        tokens = {k: int(len(all_ids)) * (pool.seq_len if k == "lm_embed" else T) for k in fpt}
        if n_enc_tokens:
            tokens["encoder_forward"] = n_enc_tokens
        meta = meta_record("fit", config=to_dict(cfg), config_hash=cfg_digest, labels=[str(p) for p in labels],
                           labels_hash=labels_digest, pool_id=pool.pool_id, checkpoint=str(checkpoint),
                           history=[[str(f), float(w)] for f, w in history], metrics=metrics, tokens=tokens,
                           flops_per_token=fpt)
        save_file(head_tensors(head, direction), str(tmp / LM_HEAD_FILE))
        digest = model_hash_of(tmp)
        enc = {}
        if "encoder" in cfg.features:
            bpath = resolve_backbone(cfg.encoder.backbone)
            enc = {"backbone": cfg.encoder.backbone, "backbone_path": str(bpath.resolve()),
                   "backbone_hash": backbone_hash(bpath)}
        atomic_write_json(tmp / CONFIG_FILE, {
            "mode": "lm", "features": list(cfg.features), "head": head["head"], "checkpoint": str(checkpoint.resolve()),
            "checkpoint_hash": checkpoint_hash(checkpoint), "encoder": to_dict(cfg.encoder), **enc,
            "lm_batch_size": cfg.lm_batch_size, "precision": cfg.precision,
            "prefix_tokens": cfg.prefix_tokens, "exit_layer": cfg.exit_layer, "lm_tokens_per_sequence": T,
            "label_mean": mu, "label_std": sigma, "model_hash": digest, "pool_id": pool.pool_id,
            "sign": "predicts ref_loss_delta = L_ref(after) - L_ref(before); lower is better",
        })
        _write_validation(tmp, metrics, digest, ids[va], y[va], pred_va * sigma + mu, None)
        return meta

    produce(output, build)
    return out



def _output(out: Path, labels_digest: str, cfg_digest: str, pool: Pool, labels: Sequence[str | Path]) -> Output:
    """The influence model as an artifact: made from these labels with these settings on this pool
    (a finished one with other labels or settings is refused unless --force)."""
    return Output(out, "influence_model", {"labels": labels_digest, "config": cfg_digest, "pool": pool.pool_id},
                  inputs=(pool.path, *labels))


def _split_and_moments(labels, ids: np.ndarray, y: np.ndarray, cfg: FitConfig):
    """The fixed train/validation split and the training labels' mean and sd (standardisation)."""
    tr, va = split_train_val(len(ids), cfg.val_fraction, cfg.split_seed)
    mu, sigma = float(y[tr].mean()), float(y[tr].std())
    if not sigma > 0:
        raise NumericalError(f"{labels[0]}: all {len(tr)} training labels are equal ({mu}); nothing to fit")
    return tr, va, mu, sigma


def _write_validation(tmp: Path, metrics: dict, digest: str, val_ids: np.ndarray, true: np.ndarray,
                      pred: np.ndarray, history) -> None:
    """metrics.json (with the model hash), the validation predictions and their scatter plot."""
    metrics["model_hash"] = digest
    atomic_write_json(tmp / "metrics.json", metrics)
    pq.write_table(pa.table({"seq_id": val_ids, "ref_loss_delta": true, "predicted": pred}),
                   tmp / "val_predictions.parquet")
    _scatter(tmp / "scatter.png", true, pred, metrics, history)

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


