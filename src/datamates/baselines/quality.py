"""A QuRating-style quality rater (Wettig et al., ICML 2024, "QuRating: Selecting High-Quality Data
for Training Language Models", §2-3), trained on the judgements a user gives.

The rater is the influence model's architecture with a frozen trunk (selection/influence_model.py,
fit mode `frozen`): e(x) = mean-pooled encoder embedding (the same chunking and pool-level
embedding cache), q(x) = w . e(x) + b. Its head is fitted by

  pointwise {text, label}:          ridge regression of the z-scored label on standardised e(x),
                                    alpha by exact leave-one-out error (core/regression.ridge_loo,
                                    the frozen influence model's fit)
  pairwise {text_a, text_b, prefer}: Bradley-Terry, P(a > b) = sigmoid(q(a) - q(b)) (QuRating's
                                    loss on GPT-3.5 comparisons):  min_w  sum -log sigmoid(y w.(e_a - e_b))
                                    + alpha ||w||^2 by L-BFGS (scipy), alpha by validation loss

A held-out split (`val_fraction`) reports whether the rater beats the constant predictor.

Selection: QuRating samples with temperature tau = 2 over the quality ratings instead of taking
the top: Gumbel-top-k on q / tau, i.e. the common `select` with temperature 2 on the candidates'
standardised scores (`select_hint`: scale block). Score = -q (lower is better).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datamates.artifacts import Output, produce
from datamates.baselines._common import (
    check_ids,
    counts,
    digest,
    encoder_embeddings,
    text_embeddings,
    with_encoder,
    write_scores,
)
from datamates.config.base import config_hash, knob, to_dict, validate
from datamates.config.influence import EncoderConfig
from datamates.core.jsonl import iter_jsonl
from datamates.core.pool import Pool
from datamates.core.regression import regression_metrics, ridge_loo, split_train_val
from datamates.errors import ConfigError, InputError
from datamates.log import get_logger
from datamates.run_dir import atomic_write_json, encoder_cache_dir, is_done, read_json
from datamates.selection.encode import backbone_hash, resolve_backbone

log = get_logger(__name__)


@dataclass(kw_only=True)
class RaterConfig:
    """QuRating-style quality rater (Wettig et al. 2024): frozen encoder + linear head on judgements."""

    labels: str | None = knob(None, "JSONL(.gz) of judgements: {text, label} (pointwise) or "
                                    "{text_a, text_b, prefer: a|b} (pairwise, Bradley-Terry)")
    text_field: str = knob("text", "text field of pointwise records")
    label_field: str = knob("label", "label field of pointwise records (a number; higher is better)")
    encoder: EncoderConfig | None = knob(None, "encoder (frozen) whose mean-pooled embeddings the head reads; null: "
                                               "in a run, the run's encoder (mates.fit.encoder), in score-with the "
                                               "encoder defaults")
    ridge_alphas: list[float] = knob([0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0],
                                     "L2 penalties tried: pointwise by leave-one-out (core/regression.ridge_loo), pairwise by "
                                     "the validation Bradley-Terry loss")
    val_fraction: float = knob(0.1, "share of judgements held out to report the rater's quality", gt=0, lt=1)
    split_seed: int = knob(1234, "seed of the train/validation split")
    temperature: float = knob(2.0, "selection temperature on the standardised predicted quality "
                                   "(QuRating: tau = 2, sampling rather than top-k)", ge=0)
    batch_size: int = knob(64, "encoder chunks per forward", ge=1)
    device: str = knob("auto", "auto, cpu, cuda, cuda:N")
    min_labels: int = knob(8, "refuse to fit on fewer judgements", ge=4)


# the data bundle's human quality labels (web domain; {text, label} with label 0 / 1)
BUNDLE_LABELS = "pretrain/web/dclm_pool_quality_labeled_499.jsonl.gz"


def read_judgements(path: str | Path, text_field: str = "text", label_field: str = "label"
                    ) -> tuple[str, list[Any], np.ndarray]:
    """('pointwise', texts, labels [n]) or ('pairwise', [(text_a, text_b)], y [n] in {+1, -1}).
    Records of the other shape, empty texts and non-numeric labels are one-line errors naming the line."""
    path = Path(path)
    kind = None
    items: list[Any] = []
    ys: list[float] = []
    for line_no, r in iter_jsonl(path, "judgement file"):
        if not isinstance(r, dict):
            raise InputError(f"{path}:{line_no}: expected a JSON object")
        k = "pairwise" if "text_a" in r else "pointwise"
        if kind is None:
            kind = k
        elif k != kind:
            raise InputError(f"{path}:{line_no}: a {k} record in a file of {kind} judgements; use one shape per file")
        if kind == "pairwise":
            if "text_b" not in r or r.get("prefer") not in ("a", "b"):
                raise InputError(f"{path}:{line_no}: a pairwise judgement needs text_a, text_b and prefer: \"a\" | \"b\"")
            items.append((str(r["text_a"]), str(r["text_b"])))
            ys.append(1.0 if r["prefer"] == "a" else -1.0)
        else:
            if text_field not in r or label_field not in r:
                raise InputError(f"{path}:{line_no}: a pointwise judgement needs fields {text_field!r} and {label_field!r} "
                                 "(or text_a, text_b, prefer for pairwise)")
            try:
                y = float(r[label_field])
            except (TypeError, ValueError):
                raise InputError(f"{path}:{line_no}: label {r[label_field]!r} is not a number") from None
            if not math.isfinite(y):
                raise InputError(f"{path}:{line_no}: label {r[label_field]!r} is not finite")
            if not str(r[text_field]).strip():
                raise InputError(f"{path}:{line_no}: empty text")
            items.append(str(r[text_field]))
            ys.append(y)
    if kind is None:
        raise InputError(f"{path}: no judgements")
    y_arr = np.asarray(ys, dtype=np.float64)
    if len(np.unique(y_arr)) < 2:
        raise InputError(f"{path}: every judgement has the same label ({ys[0]:g}); a rater needs at least two classes")
    return kind, items, y_arr


def fit_bradley_terry(d: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """w minimising sum_i log(1 + exp(-y_i w.d_i)) + alpha ||w||^2 (d: e_a - e_b, standardised)."""
    from scipy.optimize import minimize
    from scipy.special import expit

    def f(w):
        m = y * (d @ w)
        loss = np.logaddexp(0.0, -m).sum() + alpha * w @ w
        g = -(d * (y * expit(-m))[:, None]).sum(0) + 2 * alpha * w
        return loss, g

    res = minimize(f, np.zeros(d.shape[1]), jac=True, method="L-BFGS-B", options={"maxiter": 500})
    return res.x


def _bt_loss(d: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    return float(np.mean(np.logaddexp(0.0, -y * (d @ w))))


def fit_rater(cfg: RaterConfig, kind: str, items: list[Any], y: np.ndarray) -> dict[str, Any]:
    cfg = with_encoder(cfg)
    """The rater's head on frozen embeddings: {w [H], b, metrics, tokens, n_params, backbone_hash}."""
    tr, va = split_train_val(len(y), cfg.val_fraction, cfg.split_seed)
    if kind == "pointwise":
        emb, tokens, n_params, bh = text_embeddings(items, cfg.encoder, batch_size=cfg.batch_size, device=cfg.device)
        mu, sd = float(y[tr].mean()), float(y[tr].std())
        if not sd > 0:
            raise InputError(f"{cfg.labels}: the training split has one class only; give more varied labels")
        z = (y - mu) / sd
        alpha, w, b, loo = ridge_loo(emb[tr].astype(np.float64), z[tr], cfg.ridge_alphas)
        m = regression_metrics(emb[va] @ w + b, z[va], const=0.0)
        pred = emb[va] @ w + b
        acc = None
        if len(np.unique(y)) == 2:  # binary labels: accuracy of thresholding at the midpoint
            lo, hi = np.unique(y)
            thr = ((lo + hi) / 2 - mu) / sd
            acc = float(np.mean((pred > thr) == (y[va] == hi)))
        metrics = {"kind": kind, "n_train": int(len(tr)), "n_val": int(len(va)), "ridge_alpha": alpha,
                   "val_spearman": m["spearman"], "val_mse_z": m["mse"], "val_mse_z_constant": m["mse_constant"],
                   "val_accuracy": acc}
        w, b = w * sd, b * sd + mu  # back to label units: q(x) = predicted label
    else:
        texts = [t for pair in items for t in pair]
        emb, tokens, n_params, bh = text_embeddings(texts, cfg.encoder, batch_size=cfg.batch_size, device=cfg.device)
        ea, eb = emb[0::2].astype(np.float64), emb[1::2].astype(np.float64)
        mu, sd = emb[np.concatenate([2 * tr, 2 * tr + 1])].mean(0), emb.std(0) + 1e-8
        d = (ea - eb) / sd
        best = None
        for a in cfg.ridge_alphas:
            wa = fit_bradley_terry(d[tr], y[tr], a)
            val = _bt_loss(d[va], y[va], wa)
            if best is None or val < best[1]:
                best = (a, val, wa)
        alpha, val_loss, ws = best
        acc = float(np.mean(np.sign(d[va] @ ws) == y[va]))
        metrics = {"kind": kind, "n_train": int(len(tr)), "n_val": int(len(va)), "bt_alpha": alpha,
                   "val_bt_loss": val_loss, "val_bt_loss_constant": math.log(2.0), "val_accuracy": acc}
        w = ws / sd
        b = float(-(mu / sd) @ ws)
    log.info("rater (%s): %s", kind, ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                             for k, v in metrics.items()))
    return {"w": np.asarray(w, np.float64), "b": float(b), "metrics": metrics, "tokens": tokens,
            "n_params": n_params, "backbone_hash": bh}


def _cached_rater(cfg: RaterConfig, kind: str, items: list[Any], y: np.ndarray, pool: Pool,
                  cache_dir: str | Path | None) -> dict[str, Any]:
    """fit_rater, once per (judgements, rater knobs, encoder): the head is kept in the pool's
    encoder cache (`rater-<key>/`), so every stage and seed of a run reuses it. The judgement
    tokens are counted only when the rater is fitted."""
    knobs = {k: v for k, v in to_dict(cfg).items() if k not in ("labels", "temperature", "batch_size", "device")}
    key = digest(config_hash({"items": items, "y": y.tolist()}), config_hash(knobs),
                 backbone_hash(resolve_backbone(cfg.encoder.backbone)))
    folder = (Path(cache_dir) if cache_dir is not None else encoder_cache_dir(pool.path)) / f"rater-{key}"
    if is_done(folder):  # the folder is named by the key (a cache from before produce has no fingerprint)
        head = np.load(folder / "head.npz")
        info = read_json(folder / "rater.json")
        log.info("rater: reusing the head fitted on these judgements (%s)", folder)
        return {"w": head["w"], "b": float(head["b"]), "metrics": info["metrics"], "tokens": 0,
                "n_params": info["n_params"], "backbone_hash": info["backbone_hash"]}
    r: dict[str, Any] = {}

    def build(tmp: Path) -> None:
        r.update(fit_rater(cfg, kind, items, y))
        np.savez(tmp / "head.npz", w=r["w"], b=np.float64(r["b"]))
        atomic_write_json(tmp / "rater.json", {"metrics": r["metrics"], "n_params": r["n_params"],
                                               "backbone_hash": r["backbone_hash"], "labels": str(cfg.labels)})

    produce(Output(folder, "rater", {"key": key}), build)
    return r


def rate(cfg: RaterConfig, pool: Pool, ids: np.ndarray | None, out: str | Path, *,
         cache_dir: str | Path | None = None) -> Path:
    """Fit the rater on `cfg.labels` and write -q(x) of every candidate to `out` (scores format)."""
    cfg = with_encoder(cfg)
    validate(cfg)
    if not cfg.labels:
        raise ConfigError("baselines.rater.labels: give a JSONL of judgements ({text, label} or "
                          "{text_a, text_b, prefer}), e.g. --labels FILE")
    ids = check_ids(ids, pool)
    kind, items, y = read_judgements(cfg.labels, cfg.text_field, cfg.label_field)
    if len(y) < cfg.min_labels:
        raise InputError(f"{cfg.labels}: {len(y)} judgements, fewer than baselines.rater.min_labels = {cfg.min_labels}")
    r = _cached_rater(cfg, kind, items, y, pool, cache_dir)
    emb, enc_tokens, _ = encoder_embeddings(pool, cfg.encoder, ids, cache_dir=cache_dir,
                                                   batch_size=cfg.batch_size, device=cfg.device)
    pos = {int(i): j for j, i in enumerate(ids)}

    def score_fn(part: np.ndarray) -> np.ndarray:
        e = emb[[pos[int(i)] for i in part]].astype(np.float64)
        return -(e @ r["w"] + r["b"])

    n_p = r["n_params"]

    def meta() -> dict[str, Any]:
        return {"method": "rater", "label_mean": 0.0, "label_std": 1.0, "labels": str(cfg.labels),
                "judgements": kind, "rater_metrics": r["metrics"], "backbone_hash": r["backbone_hash"],
                "config": to_dict(cfg),
                "select_hint": {"method": "gumbel", "temperature": cfg.temperature, "scale": "block"},
                **counts("encoder_forward", enc_tokens + r["tokens"], 2.0 * n_p)}

    plan = {"pool_id": pool.pool_id, "method": "rater",
            "model_hash": digest("rater", r["w"], r["b"], r["backbone_hash"])}
    return write_scores(out, pool, ids, plan, 1 << 16, score_fn, meta, desc="rater scores")
