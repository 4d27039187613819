"""Generic regression heads and their metrics, on feature matrices (no pool, no model):

    split_train_val(n, val_fraction, seed) -> (train rows, validation rows)
    ridge_loo(X, y, alphas) -> (alpha, w, b, {alpha: LOO MSE})     ridge, alpha by exact leave-one-out
    fit_head(X, z, head="ridge"|"mlp") -> head dict                  (influence_model.predict_head applies it)
    regression_metrics(pred, true, const) -> spearman, pearson, mse, mse of a constant

Used by the influence model's feature heads (selection/fit.py) and the rater baseline
(baselines/quality.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def split_train_val(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the training and validation splits (MATES: 10% held out, seed 1234)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val = min(n - 2, max(2, int(round(n * val_fraction))))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


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


DEFAULT_ALPHAS = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0)


def fit_head(X: np.ndarray, z: np.ndarray, *, head: str = "ridge", alphas: Sequence[float] = DEFAULT_ALPHAS,
             seed: int = 0, hidden: int = 64, epochs: int = 300, weight_decay: float = 1e-3,
             weights: np.ndarray | None = None) -> dict[str, Any]:
    """A head on a feature matrix X [n, d] fitted to z [n]; `predict_head` applies it.

    ridge: `ridge_loo` (standardized features, alpha by exact leave-one-out MSE).
    mlp:   f(x) = w2 . gelu(W1 xs + b1) + b2 on standardized xs, full-batch AdamW (lr 1e-2, weight decay
           `weight_decay`) on the MSE for `epochs` steps, the step count picked by the MSE on a 10% inner
           split of the training rows (seed `seed`), then refitted on all training rows for that many steps."""
    X = np.asarray(X, np.float64)
    z = np.asarray(z, np.float64)
    wts = None if weights is None or np.all(np.asarray(weights) == 1) else np.asarray(weights, np.float64)
    if head == "ridge":
        if wts is None:
            alpha, w, b, loo = ridge_loo(X, z, alphas)
        else:  # weighted ridge: weighted centring and scaling, rows scaled by sqrt(weight)
            mu_w = (wts[:, None] * X).sum(0) / wts.sum()
            sd_w = np.sqrt((wts[:, None] * (X - mu_w) ** 2).sum(0) / wts.sum()) + 1e-8
            zbar = float((wts * z).sum() / wts.sum())
            r = np.sqrt(wts)
            alpha, ws, _b0, loo = ridge_loo(r[:, None] * (X - mu_w) / sd_w, r * (z - zbar), alphas)
            w = ws / sd_w
            b = zbar - float(mu_w @ w)  # b0 (the scaled problem's intercept) is ~0 after weighted centring
        return {"head": "ridge", "w": w, "b": b, "alpha": alpha, "loo_mse": loo}
    if head != "mlp":
        raise ValueError(f"unknown head {head!r}; available: ridge, mlp")
    mu, sd = X.mean(0), X.std(0) + 1e-8
    Xs = torch.as_tensor((X - mu) / sd, dtype=torch.float32)
    zt = torch.as_tensor(z, dtype=torch.float32)
    wt = torch.as_tensor(np.ones(len(z)) if wts is None else wts / wts.mean(), dtype=torch.float32)
    perm = np.random.default_rng(seed).permutation(len(z))
    n_in = max(2, len(z) // 10)
    inner, rest = perm[:n_in], perm[n_in:]

    def train(rows: np.ndarray, steps: int, watch: np.ndarray | None):
        g = torch.Generator().manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Linear(X.shape[1], hidden), torch.nn.GELU(), torch.nn.Linear(hidden, 1))
        for p in net.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 / max(1, p.shape[-1]) ** 0.5))
        opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=weight_decay)
        r = torch.as_tensor(rows)
        best = (math.inf, 0)
        for step in range(1, steps + 1):
            opt.zero_grad()
            loss = (wt[r] * (net(Xs[r])[:, 0] - zt[r]) ** 2).mean()
            loss.backward()
            opt.step()
            if watch is not None and step % 10 == 0:
                with torch.no_grad():
                    m = float(torch.nn.functional.mse_loss(net(Xs[torch.as_tensor(watch)])[:, 0], zt[watch]))
                if m < best[0]:
                    best = (m, step)
        return net, best[1]

    with torch.enable_grad():
        _, n_steps = train(rest, epochs, inner)
        net, _ = train(np.arange(len(z)), max(10, n_steps), None)
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return {"head": "mlp", "mu": mu, "sd": sd, "state": state, "hidden": hidden, "steps": max(10, n_steps)}
