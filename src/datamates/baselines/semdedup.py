"""SemDeDup: semantic deduplication (Abbas et al. 2023, "SemDeDup: Data-efficient learning at
web-scale through semantic deduplication", §3 and Algorithm A.7).

1. e_i = mean-pooled frozen encoder embedding of sequence i (the influence model's encoder and its
   pool-level embedding cache, selection/encode.py), normalised to unit length.
2. k-means (spherical, faiss: core/kmeans.py) into K clusters with centroids c.
3. Within each cluster, order the members by cosine similarity to the centroid, *ascending*
   (the farthest from the centroid first: the paper keeps the least prototypical member), and for
   the t-th member take its largest similarity to an earlier member,
       M_t = max_{s < t} e_t . e_s        (M = -inf for the first member)
   A member is a near-duplicate at threshold eps when M_t > 1 - eps; SemDeDup drops those.
4. The keep decision is monotone in eps: member t is kept iff eps <= 1 - M_t =: u_t. So one
   ordering serves every eps: sort all candidates by u descending (ties: lower id first); the set
   SemDeDup keeps at any eps is a prefix of it. eps given: kept = {u_t >= eps}; eps null: eps is
   the largest value that keeps round(keep_fraction x n).

Scores are the rank in that order (0 = kept first), lower is better, so `select` with top-k
(`select_hint`) and k = the number kept at eps returns exactly SemDeDup's set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datamates.artifacts import produce
from datamates.baselines._common import (
    check_ids,
    counts,
    digest,
    encoder_embeddings,
    encoder_parameters,
    with_encoder,
)
from datamates.config.base import config_hash, knob, to_dict, validate
from datamates.config.influence import EncoderConfig
from datamates.core.kmeans import spherical_kmeans
from datamates.core.pool import Pool
from datamates.errors import ConfigError
from datamates.identity import hash_ids
from datamates.log import get_logger
from datamates.run_dir import meta_record
from datamates.selection.scores_io import SIGN, finished_scores, scores_output, shard_name, write_shard

log = get_logger(__name__)


@dataclass(kw_only=True)
class SemDeDupConfig:
    """SemDeDup (Abbas et al. 2023, §3): k-means on embeddings, near-duplicates removed per cluster."""

    encoder: EncoderConfig | None = knob(None, "encoder of the embeddings (frozen); null: in a run, the run's "
                                               "encoder (mates.fit.encoder: its cached embeddings are reused), "
                                               "in score-with the encoder defaults")
    clusters: int = knob(100, "k-means clusters (the paper: 50,000 for LAION-440M; capped at n / 4)", ge=1)
    kmeans_iters: int = knob(20, "k-means iterations (faiss)", ge=1)
    eps: float | None = knob(None, "duplicate threshold: drop a sequence whose cosine similarity to an earlier "
                                   "one of its cluster exceeds 1 - eps; null: chosen so `keep_fraction` is kept",
                             gt=0, lt=1)
    keep_fraction: float = knob(0.8, "share kept when eps is null (eps is then the largest value that keeps it)",
                                gt=0, le=1)
    batch_size: int = knob(64, "encoder chunks per forward", ge=1)
    device: str = knob("auto", "auto, cpu, cuda, cuda:N")
    seed: int = knob(0, "seed of the k-means initialisation")


def uniqueness(emb: np.ndarray, labels: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """u_t = 1 - max cosine similarity to an earlier member of its cluster (earlier = farther from
    the centroid); 2.0 for the first member of a cluster (kept at every eps). [n] float64."""
    x = np.asarray(emb, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    u = np.empty(len(x), dtype=np.float64)
    for j in np.unique(labels):
        m = np.nonzero(labels == j)[0]
        c = centroids[j].astype(np.float64)
        order = m[np.lexsort((m, x[m] @ c))]  # ascending similarity to the centroid, ties by id
        sim = x[order] @ x[order].T  # [m, m]
        sim = np.tril(sim, -1) + np.triu(np.full_like(sim, -np.inf))  # only earlier members count
        best = sim.max(1)
        u[order] = np.where(np.isfinite(best), 1.0 - best, 2.0)
    return u


def keep_order(u: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Positions sorted by u descending, ties to the lower id."""
    return np.lexsort((ids, -u))


def eps_for_fraction(u: np.ndarray, fraction: float) -> tuple[float, int]:
    """(eps, n kept): the largest eps keeping at least round(fraction x n) (sequences tied with the
    last kept one are kept too)."""
    k = max(1, int(round(fraction * len(u))))
    uk = float(np.sort(u)[::-1][k - 1])
    eps = min(uk, 1.0 - 1e-12)
    return eps, int((u >= eps).sum())


def semdedup(cfg: SemDeDupConfig, pool: Pool, ids: np.ndarray | None, out: str | Path, *,
             cache_dir: str | Path | None = None) -> Path:
    """SemDeDup scores (rank in the keep order) of candidates `ids`, written to `out`."""
    cfg = with_encoder(cfg)
    validate(cfg)
    if cfg.eps is not None and not 0 < cfg.eps < 1:
        raise ConfigError(f"baselines.semdedup.eps = {cfg.eps}: must be in (0, 1)")
    ids = check_ids(ids, pool)
    out = Path(out)
    plan: dict[str, Any] = {"pool_id": pool.pool_id, "method": "semdedup", "config_hash": config_hash(cfg),
                            "ids_hash": hash_ids(ids), "n": int(len(ids))}
    if finished_scores(out, plan):
        return out
    emb, enc_tokens, _ = encoder_embeddings(pool, cfg.encoder, ids, cache_dir=cache_dir,
                                                   batch_size=cfg.batch_size, device=cfg.device)
    k = max(1, min(cfg.clusters, len(ids) // 4))
    if k < cfg.clusters:
        log.info("SemDeDup: %d candidates, clusters capped at %d (n / 4)", len(ids), k)
    labels, centroids = spherical_kmeans(emb, k, seed=cfg.seed, niter=cfg.kmeans_iters)
    u = uniqueness(emb, labels, centroids)
    if cfg.eps is None:
        eps, n_kept = eps_for_fraction(u, cfg.keep_fraction)
    else:
        eps, n_kept = float(cfg.eps), int((u >= cfg.eps).sum())
    order = keep_order(u, ids)
    rank = np.empty(len(ids), dtype=np.float64)
    rank[order] = np.arange(len(ids), dtype=np.float64)
    model_hash = digest("semdedup", labels, u)

    def build(work: Path) -> dict[str, Any]:
        write_shard(work / shard_name(0), ids, rank, pool_id=pool.pool_id, model_hash=model_hash)
        np.save(work / "clusters.npy", labels)  # [n] cluster of each candidate (in `ids` order)
        np.save(work / "centroids.npy", centroids)  # [K, H] unit rows
        return meta_record(  # produce writes it, with the seconds this took
            "score-with", sign=SIGN, **plan, model_hash=model_hash, shards=[shard_name(0)],
            label_mean=0.0, label_std=1.0, eps=eps, n_kept=n_kept, n_duplicates=int(len(ids) - n_kept),
            clusters=int(k), config=to_dict(cfg),
            select_hint={"method": "topk", "temperature": 0.0, "scale": "none", "k": n_kept},
            **counts("encoder_forward", enc_tokens, 2.0 * encoder_parameters(cfg.encoder)))

    produce(scores_output(out, plan, inputs=(pool.path,)), build)
    log.info("SemDeDup: eps %.4g keeps %d of %d (%d near-duplicates) in %d clusters -> %s", eps, n_kept, len(ids),
             len(ids) - n_kept, k, out)
    return out
