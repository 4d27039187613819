"""Group-level selection (selection/group.py, `group:NAME` in selectors.py): on a planted pool of
near-identical clusters it picks from every cluster and never two near-duplicates, where the plain
top-k of the same scores takes near-duplicates of one cluster; the diversity term splits a cluster's
quota between its sub-groups; the allocation is proportional and capped; the registry composes
`group:` with every scorer; a tiny run with the new selectors goes end to end (slow)."""

from __future__ import annotations

import numpy as np
import pytest

from datamates.config.influence import SelectConfig
from datamates.errors import ConfigError
from datamates.run_dir import read_json
from datamates.selection.group import GroupConfig, allocate, group_order
from datamates.selection.select import read_selection, select, standardised_keys
from datamates.selectors import get_selector, resolve_selectors

from .conftest import tiny_run


def _planted(n_clusters=4, per=10, H=16, seed=0):
    """Unit centres plus 1e-3 noise: every pair inside a cluster has cosine > 0.99."""
    rng = np.random.default_rng(seed)
    centres = np.linalg.qr(rng.normal(size=(H, H)))[0][:n_clusters]  # orthonormal rows
    emb = np.repeat(centres, per, axis=0) + 1e-3 * rng.normal(size=(n_clusters * per, H))
    return emb, np.repeat(np.arange(n_clusters), per)


def _cos(emb):
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    return x @ x.T


def _group(cfg: SelectConfig, gcfg: GroupConfig, ids, scores, emb, k, pool, out):
    ids_, z, keys, info = standardised_keys(cfg, (ids, scores), pool)
    assert np.array_equal(ids_, ids)
    rank, ginfo = group_order(ids, z, keys, emb, k, gcfg, temperature=cfg.temperature,
                              topk=cfg.method == "topk" or cfg.temperature == 0)
    return read_selection(select(cfg, (ids, rank), pool, out, method="group", k=k, group=ginfo))


@pytest.mark.parametrize("temperature", [0.0, 0.5])
def test_planted_clusters_every_cluster_no_near_duplicates(temperature, tiny_pool, tmp_path):
    emb, cluster = _planted()
    ids = np.arange(100, 140)
    rng = np.random.default_rng(1)
    scores = np.where(cluster == 0, -3.0, 0.0) + 0.01 * rng.normal(size=len(ids))  # cluster 0 is the best
    cfg = SelectConfig(temperature=temperature)
    k = 4
    plain = read_selection(select(cfg, (ids, scores), tiny_pool, tmp_path / "plain", k=k))
    got = _group(cfg, GroupConfig(clusters=4), ids, scores, emb, k, tiny_pool, tmp_path / "group")
    sim = _cos(emb)
    pos_plain, pos_group = np.searchsorted(ids, plain), np.searchsorted(ids, got)
    if temperature == 0:
        assert set(cluster[pos_plain]) == {0}  # plain top-k: all from the best cluster
    assert (sim[np.ix_(pos_plain, pos_plain)] > 0.99).sum() > k  # near-duplicate pairs (beyond the diagonal)
    assert sorted(cluster[pos_group]) == [0, 1, 2, 3]  # group: every cluster, no two near-duplicates
    off = sim[np.ix_(pos_group, pos_group)][~np.eye(k, dtype=bool)]
    assert (off < 0.5).all()
    meta = read_json(tmp_path / "group" / "meta.json")
    assert meta["method"] == "group" and meta["k"] == k and meta["group"]["quota"] == [1, 1, 1, 1]
    assert meta["group"]["overlap_with_independent"] == pytest.approx(len(np.intersect1d(got, plain)) / k)


def test_diversity_term_splits_a_cluster(tiny_pool, tmp_path):
    """One cluster (clusters=1) of two sub-groups of near-duplicates, A scored better than B: alpha = 0 takes two
    A's (Gumbel-top-k inside the cluster), a large alpha one A and one B."""
    rng = np.random.default_rng(2)
    a, b = np.eye(8)[0], 0.5 * np.eye(8)[0] + 0.866 * np.eye(8)[1]  # cos(a, b) = 0.5
    # goodness: A 1, B exp(-2) (z = -1, +1, top-k); after an A, B's factor 1 + 20 (1 - 0.5) = 11 beats A's ~1
    emb = np.vstack([a + 1e-3 * rng.normal(size=(6, 8)), b + 1e-3 * rng.normal(size=(6, 8))])
    ids = np.arange(200, 212)
    scores = np.r_[np.zeros(6), np.ones(6)] + 1e-3 * rng.normal(size=12)
    cfg = SelectConfig(temperature=0.0)
    two = _group(cfg, GroupConfig(clusters=1, alpha=0.0), ids, scores, emb, 2, tiny_pool, tmp_path / "a0")
    assert (np.searchsorted(ids, two) < 6).all()
    mixed = _group(cfg, GroupConfig(clusters=1, alpha=20.0), ids, scores, emb, 2, tiny_pool, tmp_path / "a20")
    assert sorted(np.searchsorted(ids, mixed) < 6) == [False, True]


@pytest.mark.parametrize("temperature", [0.0, 0.5])
def test_standardised_keys_are_the_keys_select_ranks(temperature, tiny_pool, tmp_path):
    """The group path starts from exactly what select would keep: the top-k of its keys is select's set."""
    rng = np.random.default_rng(3)
    ids = np.sort(rng.choice(len(tiny_pool), 300, replace=False))
    scores = rng.normal(size=300)
    cfg = SelectConfig(temperature=temperature, seed=5)
    _, z, keys, info = standardised_keys(cfg, (ids, scores), tiny_pool)
    np.testing.assert_allclose(z, (scores - scores.mean()) / scores.std())
    want = read_selection(select(cfg, (ids, scores), tiny_pool, tmp_path / "s", k=60))
    np.testing.assert_array_equal(np.sort(ids[np.argsort(-keys, kind="stable")[:60]]), want)


def test_allocate():
    np.testing.assert_array_equal(allocate([10, 20, 30], [10, 20, 30], 6), [1, 2, 3])
    np.testing.assert_array_equal(allocate([1, 1, 1], [5, 5, 5], 4), [2, 1, 1])  # remainder to the lower index
    np.testing.assert_array_equal(allocate([100, 1, 1], [2, 10, 10], 6), [2, 2, 2])  # capped, excess re-allocated
    np.testing.assert_array_equal(allocate([0, 0], [3, 3], 4), [2, 2])  # no weight: by size
    assert allocate(np.random.default_rng(0).random(7), np.full(7, 9), 31).sum() == 31


def test_registry_composes_group_with_every_scorer():
    assert resolve_selectors(["group:mates", "group:dsdm", "group:loss"]) == ["group:mates", "group:dsdm",
                                                                             "group:loss"]
    assert callable(get_selector("group:oracle")) and callable(get_selector("group:rholoss"))
    assert "group:mates" not in resolve_selectors(["all"])
    for bad in ("group:random", "group:nope", "group:", "group:group:mates"):
        with pytest.raises(ConfigError, match="group:NAME needs a scoring selector"):
            resolve_selectors([bad])


@pytest.mark.slow  # a tiny MATES run of five selectors: ~4 min on 2 shared cores
def test_tiny_run_with_the_new_selectors(tiny_pool, tmp_path):
    from datamates.pipelines import run_mates

    c, rd = tiny_run(tiny_pool, tmp_path, "new", {
        "selectors": ["random", "dsdm", "rholoss", "group:mates", "group:oracle"], "stages": 3, "stage_steps": 4,
        "heldout_per_domain": 8, "decay_steps": 2, "decay_half_life": 1.0, "curve_reference_size": 16,
        "probe": {"mode": "first_order", "n_probes": 32, "reference_size": 16, "chunk_size": 8},
        "fit": {"mode": "frozen", "encoder": {"max_tokens": 64, "chunk_len": 64}, "min_labels": 8},
        "select": {"temperature": 0.1}})
    m = run_mates(c, rd)
    for name in ("dsdm", "rholoss", "group:mates", "group:oracle"):
        br = rd.branch(name)
        for s in (2, 3):
            meta = read_json(br.selected(s) / "meta.json")
            assert len(read_selection(br.selected(s))) == meta["k"] == int(meta["n_candidates"] * 0.2)
        assert name in m["selectors"]
    acc = m["selectors"]["dsdm"]["accounting"]["flops"]
    assert acc["score"] > 0
    assert read_json(rd.branch("group:mates").selected(2) / "meta.json")["method"] == "group"
    assert read_json(rd.branch("rholoss").scores(2) / "meta.json")["irreducible_trained_here"]
    assert not read_json(rd.branch("rholoss").scores(3) / "meta.json")["irreducible_trained_here"]


def test_a_finished_group_run_resumes(tiny_pool, tmp_path):
    """A finished run with a group selector, run again (as the arena does to add a selector), reuses its
    selections: the group's counted encoder cost is accounting in meta.json, not part of the selection's
    identity, and counts the block's embeddings whether computed or found cached (the cached rerun once
    counted 0 tokens and refused its own selection: 'made from other inputs (group.encoder_flops ...)');
    a selection whose older fingerprint holds that cost is reused too."""
    from datamates.pipelines import run_mates

    c, rd = tiny_run(tiny_pool, tmp_path, "g", {
        "selectors": ["random", "group:loss"], "stages": 2, "stage_steps": 2, "heldout_per_domain": 4,
        "decay_steps": 0, "curve_reference_size": 8, "fit": {"encoder": {"max_tokens": 64, "chunk_len": 64}}},
        n_layers=1, limit=4)
    run_mates(c, rd)
    sel = rd.branch("group:loss").selected(2)
    before = (sel / "meta.json").read_bytes()
    assert read_json(sel / "meta.json")["group"]["encoder_tokens"] > 0
    run_mates(c, rd)  # every embedding is cached now
    assert (sel / "meta.json").read_bytes() == before
    # a selection an older datamates finished, its fingerprint holding the (then cache-dependent) cost
    import json

    done = json.loads((sel / "DONE").read_text())
    assert not any("encoder" in k for k in done["fingerprint"])  # accounting is not an input
    done["fingerprint"].update({"group.encoder_tokens": "1", "group.encoder_flops": "2.0"})
    (sel / "DONE").write_text(json.dumps(done))
    run_mates(c, rd)
    assert (sel / "meta.json").read_bytes() == before
