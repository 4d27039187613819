"""Spherical k-means with faiss (Johnson et al. 2019), the one clustering call of datamates: used by
SemDeDup (baselines/semdedup.py) and by cluster partitions (ablation/partition.py).

    rows x_i are L2-normalised;  c_j = normalize(mean of the x_i assigned to j);  assign i -> argmax_j x_i . c_j

faiss's `Kmeans(d, k, niter, seed, spherical=True)` runs Lloyd iterations from a seeded random
sample of k points (init "random", the default); init "kmeans++" starts instead from k-means++ D^2
seeding (Arthur & Vassilvitskii 2007: each next centre drawn with probability proportional to the
squared distance to the nearest centre so far), which finds well-separated clusters that a random
sample of k points often misses (two seeds in one cluster). With one thread the result is a pure
function of (x, k, seed, niter, init).
"""

from __future__ import annotations

import numpy as np

from datamates.errors import ConfigError, InputError


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ConfigError("k-means needs faiss: pip install 'datamates[baselines]' (faiss-cpu)") from None
    return faiss


def kmeanspp_init(x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """k-means++ seeds [k, d] float32 (rows of `x`, which are unit rows here), seeded."""
    rng = np.random.default_rng([seed & 0x7FFFFFFF, 11])
    n = len(x)
    idx = [int(rng.integers(n))]
    d2 = np.maximum(((x - x[idx[0]]) ** 2).sum(1), 0.0).astype(np.float64)
    for _ in range(1, k):
        tot = d2.sum()
        j = int(rng.choice(n, p=d2 / tot)) if tot > 0 else int(rng.integers(n))
        idx.append(j)
        d2 = np.minimum(d2, ((x - x[j]) ** 2).sum(1))
    return np.ascontiguousarray(x[idx], dtype=np.float32)


def spherical_kmeans(x: np.ndarray, k: int, *, seed: int = 0, niter: int = 20, init: str = "random"
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(labels [n] int64, centroids [k, d] float32 unit rows) of the L2-normalised rows of `x`."""
    faiss = _faiss()
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    if n < k:
        raise InputError(f"k-means: {n} points cannot make {k} clusters; lower the number of clusters")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # reproducible
    try:
        km = faiss.Kmeans(x.shape[1], int(k), niter=int(niter), seed=int(seed) & 0x7FFFFFFF, spherical=True,
                          verbose=False, min_points_per_centroid=1, max_points_per_centroid=1 << 30)
        km.train(x, init_centroids=kmeanspp_init(x, int(k), seed) if init == "kmeans++" else None)
        _, labels = km.index.search(x, 1)
    finally:
        faiss.omp_set_num_threads(threads)
    return labels[:, 0].astype(np.int64), np.asarray(km.centroids, dtype=np.float32)
