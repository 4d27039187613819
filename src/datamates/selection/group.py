"""Group-level selection (Group-MATES style: Yu et al. 2025, "Data-Efficient Pretraining with Group-Level
Data Influence Modeling", §4: cluster-wise selection with a relational term), on top of any scoring
selector (`group:NAME` in selectors.py).

Per stage, on the candidate block with raw scores s_i (lower is better) and frozen encoder embeddings e_i:

1. The one protocol first (selection/select.py `standardised_keys`): z_i = standardised s_i (the
   run's `select.scale`), and the key select would rank, key_i = -z_i / tau + G(seed, id_i) (top-k or
   tau = 0: key_i = -z_i), with the same Gumbel noise keyed by (seed, id) and the same tau.
2. goodness_i = exp(key_i - max_j key_j), in (0, 1]: the candidate's Gumbel-perturbed softmax(-z / tau)
   weight, the quantity Gumbel-top-k ranks by. It is positive, as the multiplicative form needs, and
   the diversity factor below multiplies the candidate's selection odds.
3. Spherical k-means (core/kmeans.py, k-means++ seeding) of the unit e_i into C = min(clusters, n / 4)
   clusters (empty ones dropped).
4. Allocation of k over clusters by largest remainder, capped at each cluster's size (the excess
   goes to the clusters with room, by the same rule):
       size:   k_c proportional to n_c
       score:  k_c proportional to the cluster's noise-free softmax(-z / tau) mass sum_{i in c} exp(-z_i / tau)
               (the share an independent sampler draws from it, to first order); top-k: to the
               cluster's members in the plain top-k
5. Within cluster c, k_c greedy picks: each time the remaining candidate with the largest
       goodness_i * (1 + alpha * (1 - mean_{j in S_c} cos(e_i, e_j)))
   where S_c are the cluster's picks so far (an empty S_c: the factor is 1, the best goodness first).
   alpha = 0: Gumbel-top-k inside each cluster with the allocation above.

The picks, in order (cluster by cluster, each in pick order), get ranks 0..k-1 and every other
candidate a rank after them (by key); `select` with method 'group' keeps the k smallest ranks and
writes the one selection format (ids.npy + meta.json, the group's statistics in meta.json `group`).
Cost: one k-means and O(sum_c k_c n_c H) for the greedy, no model runs (the embeddings come from the
encoder cache: for `group:mates` the influence model already embedded the block).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from datamates.config.base import knob
from datamates.core.kmeans import spherical_kmeans
from datamates.errors import InputError


@dataclass(kw_only=True)
class GroupConfig:
    """Group-level selection (Group-MATES style, 2025): cluster-wise greedy with a diversity bonus."""

    clusters: int = knob(16, "k-means clusters of the candidate block (capped at n / 4)", ge=1)
    alpha: float = knob(1.0, "diversity weight: goodness(x) * (1 + alpha * (1 - mean cosine to the selected))", ge=0)
    allocation: Literal["size", "score"] = knob(
        "size", "share of k per cluster: size (proportional to its members) or score (to its softmax(-z / tau) "
                "mass; top-k: to its members in the plain top-k)")
    kmeans_iters: int = knob(20, "k-means iterations (faiss)", ge=1)
    seed: int = knob(0, "seed of the k-means initialisation")
    batch_size: int = knob(64, "encoder chunks per forward (embeddings not yet cached)", ge=1)
    device: str = knob("auto", "auto, cpu, cuda, cuda:N")


def allocate(weights: np.ndarray, sizes: np.ndarray, k: int) -> np.ndarray:
    """k_c >= 0 with sum k_c = k, k_c <= sizes_c, proportional to `weights` by largest remainder
    (ties to the lower cluster index); what a full cluster cannot take is re-allocated the same way."""
    weights = np.asarray(weights, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.int64)
    if k > sizes.sum():
        raise InputError(f"group selection: k = {k} exceeds the {int(sizes.sum())} candidates")
    out = np.zeros(len(sizes), dtype=np.int64)
    left = int(k)
    while left > 0:
        room = sizes - out
        open_ = room > 0
        w = np.where(open_, weights, 0.0)
        if w.sum() <= 0:  # no weight on the clusters with room: by size
            w = np.where(open_, sizes.astype(np.float64), 0.0)
        share = left * w / w.sum()
        base = np.minimum(np.floor(share).astype(np.int64), room)
        rem = share - np.floor(share)
        extra = left - int(base.sum())
        order = np.lexsort((np.arange(len(w)), -rem))
        for c in order:
            if extra <= 0:
                break
            if open_[c] and base[c] < room[c]:
                base[c] += 1
                extra -= 1
        out += base
        left = int(k - out.sum())
    return out


def greedy_diverse(goodness: np.ndarray, emb: np.ndarray, kc: int, alpha: float) -> np.ndarray:
    """Positions of kc picks, in pick order: argmax goodness_i * (1 + alpha (1 - mean cos to the picked))."""
    m = len(goodness)
    picked: list[int] = []
    sim_sum = np.zeros(m, dtype=np.float64)
    free = np.ones(m, dtype=bool)
    for t in range(min(kc, m)):
        factor = 1.0 + alpha * (1.0 - sim_sum / t) if t else np.ones(m)
        val = np.where(free, goodness * factor, -np.inf)
        j = int(np.argmax(val))  # ties: the first position (callers order members by id)
        picked.append(j)
        free[j] = False
        sim_sum += emb @ emb[j]
    return np.asarray(picked, dtype=np.int64)


def group_order(ids: np.ndarray, z: np.ndarray, keys: np.ndarray, emb: np.ndarray, k: int, cfg: GroupConfig, *,
                temperature: float, topk: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """Rank [n] float64 of every candidate (0..k-1: the group picks in order; k..n-1: the others by
    key) and the statistics for meta.json. `z`, `keys` from select.standardised_keys."""
    ids = np.asarray(ids, dtype=np.int64)
    n = len(ids)
    if not 0 < k <= n:
        raise InputError(f"group selection: k = {k} must be between 1 and the {n} candidates")
    if emb.shape[0] != n:
        raise InputError(f"group selection: {emb.shape[0]} embeddings for {n} candidates")
    x = np.asarray(emb, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    C = max(1, min(cfg.clusters, n // 4))
    labels = (np.zeros(n, dtype=np.int64) if C == 1 else
              spherical_kmeans(x, C, seed=cfg.seed, niter=cfg.kmeans_iters, init="kmeans++")[0])
    present = np.unique(labels)
    labels = np.searchsorted(present, labels)  # clusters 0..C'-1 (faiss may leave one empty)
    C = len(present)
    sizes = np.bincount(labels, minlength=C)
    keys = np.asarray(keys, dtype=np.float64)
    goodness = np.exp(keys - keys.max())
    if cfg.allocation == "size":
        weights = sizes.astype(np.float64)
    else:
        z = np.asarray(z, dtype=np.float64)
        if topk or temperature == 0:
            top = np.zeros(n, dtype=np.float64)
            top[np.lexsort((ids, z))[:k]] = 1.0  # the plain top-k (lowest z, ties to the lower id)
            member = top
        else:
            member = np.exp(-(z - z.min()) / temperature)
        weights = np.bincount(labels, weights=member, minlength=C)
    quota = allocate(weights, sizes, k)
    order: list[np.ndarray] = []
    mean_cos = []
    for c in range(C):
        if quota[c] == 0:
            continue
        m = np.nonzero(labels == c)[0]
        m = m[np.argsort(ids[m], kind="stable")]
        pick = m[greedy_diverse(goodness[m], x[m], int(quota[c]), cfg.alpha)]
        order.append(pick)
        if len(pick) > 1:
            s = x[pick] @ x[pick].T
            mean_cos.append(float((s.sum() - len(pick)) / (len(pick) * (len(pick) - 1))))
    chosen = np.concatenate(order)
    rank = np.empty(n, dtype=np.float64)
    rest = np.setdiff1d(np.arange(n), chosen)
    rest = rest[np.lexsort((ids[rest], -keys[rest]))]
    rank[chosen] = np.arange(k, dtype=np.float64)
    rank[rest] = np.arange(k, n, dtype=np.float64)
    plain = np.lexsort((ids, -keys))[:k]  # what select would keep from the same keys
    sc = x[chosen] @ x[chosen].T
    info = {"clusters": int(C), "alpha": float(cfg.alpha), "allocation": cfg.allocation,
            "cluster_sizes": sizes.tolist(), "quota": quota.tolist(),
            "mean_pairwise_cosine_selected": float((sc.sum() - k) / (k * (k - 1))) if k > 1 else None,
            "mean_within_cluster_cosine_selected": float(np.mean(mean_cos)) if mean_cos else None,
            "overlap_with_independent": float(len(np.intersect1d(chosen, plain)) / k),
            "config": {"clusters": cfg.clusters, "alpha": cfg.alpha, "allocation": cfg.allocation,
                       "kmeans_iters": cfg.kmeans_iters, "seed": cfg.seed}}
    return rank, info
