"""SemDeDup: on planted near-duplicates the rule removes exactly the duplicates and keeps the
member of each duplicate group farthest from its centroid; eps from the fraction; bad eps."""

from __future__ import annotations

import numpy as np
import pytest

from datamates.baselines.semdedup import SemDeDupConfig, eps_for_fraction, keep_order, semdedup, uniqueness
from datamates.config.influence import EncoderConfig, SelectConfig
from datamates.core.kmeans import spherical_kmeans
from datamates.errors import ConfigError
from datamates.selection.scores_io import read_scores, scores_meta
from datamates.selection.select import read_selection, select


def _planted(seed=0, n_unique=60, groups=10, dim=32):
    """n_unique random unit vectors plus `groups` duplicate groups of 3 near-copies (cos > 0.999)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_unique, dim))
    dup_of = {}
    rows = list(x)
    for g in range(groups):
        for _ in range(2):
            dup_of[len(rows)] = g
            rows.append(x[g] + 0.01 * rng.standard_normal(dim))
    x = np.asarray(rows)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, dup_of


def test_planted_duplicates_removed_farthest_kept():
    x, dup_of = _planted()
    labels, cent = spherical_kmeans(x, 4, seed=0)
    u = uniqueness(x, labels, cent)
    eps = 0.01  # duplicates: cos > 0.999; random 32-d unit vectors: cos < 0.9
    kept = set(np.nonzero(u >= eps)[0].tolist())
    for g in range(10):
        group = [g] + [i for i, h in dup_of.items() if h == g]
        assert len(set(labels[group])) == 1  # a group falls in one cluster
        c = cent[labels[g]]
        far = min(group, key=lambda i: float(x[i] @ c))  # lowest similarity to the centroid
        assert kept & set(group) == {far}, (group, far)
    n_groups_members = 10 * 3
    assert len(kept) == 60 - 10 + 10 == len(x) - (n_groups_members - 10)
    # eps from the fraction: keeping exactly the non-duplicates gives an eps that removes only duplicates
    eps_f, n_kept = eps_for_fraction(u, 60 / len(x))
    assert n_kept == 60 and set(np.nonzero(u >= eps_f)[0].tolist()) == kept
    # the keep order's prefix of length 60 is the kept set
    order = keep_order(u, np.arange(len(x)))
    assert set(order[:60].tolist()) == kept


def test_naive_loop_agrees():
    """uniqueness() equals the paper's per-cluster loop written out (Algorithm A.7)."""
    x, _ = _planted(seed=3)
    labels, cent = spherical_kmeans(x, 5, seed=2)
    u = uniqueness(x, labels, cent)
    for j in range(5):
        m = [i for i in range(len(x)) if labels[i] == j]
        m.sort(key=lambda i: (float(x[i] @ cent[j].astype(np.float64)), i))
        for t, i in enumerate(m):
            want = 2.0 if t == 0 else 1.0 - max(float(x[i] @ x[s]) for s in m[:t])
            assert u[i] == pytest.approx(want, abs=1e-6)


def _dup_pool(tiny_pool, tmp_path, ids, pairs):
    """A copy of the tiny pool in which sequence b of each (a, b) pair is overwritten by a near-copy
    of sequence a (one token changed): planted near-duplicates at the selection unit."""
    import shutil

    from datamates.core.pool import Pool

    dst = tmp_path / "pool"
    shutil.copytree(tiny_pool.path, dst, ignore=shutil.ignore_patterns("encoder_cache"))
    pool = Pool(dst)
    for a, b in pairs:
        row = pool.tokens([a])[0].copy()
        row[-2] = row[-3]
        shard = np.searchsorted(pool._offsets_arr, b, side="right") - 1
        mm = np.memmap(sorted(dst.glob("tokens_*.bin"))[shard], dtype=pool.dtype, mode="r+",
                       shape=pool._shards[shard].shape)
        mm[b - pool._offsets[shard]] = row
        mm.flush()
    return Pool(dst)


@pytest.mark.usefixtures("one_thread")
def test_semdedup_on_a_pool_with_planted_duplicates(tiny_pool, tmp_path):
    from datamates.baselines._common import encoder_embeddings

    ids = np.arange(1, len(tiny_pool), 97)[:160]
    pairs = [(int(ids[i]), int(ids[i + 80])) for i in range(0, 40, 4)]  # 10 planted pairs
    pool = _dup_pool(tiny_pool, tmp_path, ids, pairs)
    enc = EncoderConfig(backbone="minilm", max_tokens=128, chunk_len=64)
    cfg = SemDeDupConfig(encoder=enc, clusters=4, eps=0.15)  # planted pairs: cos > 0.92; natural pairs here: < 0.73
    out = semdedup(cfg, pool, ids, tmp_path / "scores", cache_dir=tmp_path / "cache")
    meta = scores_meta(out)
    assert meta["n"] == len(ids) and meta["tokens"]["encoder_forward"] > 0 and meta["flops"] > 0
    got_ids, rank = read_scores(out)
    assert np.array_equal(got_ids, ids) and sorted(rank.tolist()) == list(range(len(ids)))
    sel = read_selection(select(SelectConfig(method="topk"), out, pool, tmp_path / "sel", k=meta["n_kept"]))
    removed = set(ids.tolist()) - set(sel.tolist())
    assert len(removed) == len(pairs) == meta["n_duplicates"]
    emb, _, _ = encoder_embeddings(pool, enc, ids, cache_dir=tmp_path / "cache")
    labels, cent = np.load(out / "clusters.npy"), np.load(out / "centroids.npy")
    pos = {int(i): j for j, i in enumerate(ids)}
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    for a, b in pairs:
        ja, jb = pos[a], pos[b]
        assert labels[ja] == labels[jb]
        c = cent[labels[ja]]
        far, near = (a, b) if e[ja] @ c < e[jb] @ c else (b, a)
        assert far in sel and near in removed  # exactly one of the pair goes: the one nearer the centroid
    # eps from the requested fraction: keeping 150 of 160 removes exactly the planted copies
    out2 = semdedup(SemDeDupConfig(encoder=enc, clusters=4, keep_fraction=150 / 160), pool, ids, tmp_path / "s2",
                    cache_dir=tmp_path / "cache")
    m2 = scores_meta(out2)
    assert m2["n_kept"] == 150 and 0 < m2["eps"] < 1 and m2["tokens"]["encoder_forward"] == 0  # cached
    sel2 = read_selection(select(SelectConfig(method="topk"), out2, pool, tmp_path / "sel2", k=150))
    assert np.array_equal(sel2, sel)
    with pytest.raises(ConfigError, match="eps"):
        semdedup(SemDeDupConfig(encoder=enc, eps=1.5), pool, ids, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_spherical_kmeans_recovers_planted_clusters():
    """4 well-separated directions + small noise: faiss's spherical k-means finds them exactly
    (the clustering call of SemDeDup and of cluster partitions), the same on every call."""
    rng = np.random.default_rng(1)
    centers = np.linalg.qr(rng.standard_normal((16, 4)))[0].T  # 4 orthonormal directions
    truth = np.repeat(np.arange(4), 50)
    x = centers[truth] + 0.05 * rng.standard_normal((200, 16))
    labels, cent = spherical_kmeans(x, 4, seed=3)
    assert all(len(set(labels[truth == j])) == 1 for j in range(4)) and len(set(labels)) == 4
    np.testing.assert_allclose(np.linalg.norm(cent, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(labels, spherical_kmeans(x, 4, seed=3)[0])
    from datamates.errors import InputError

    with pytest.raises(InputError, match="cannot make 5 clusters"):
        spherical_kmeans(x[:4], 5)
