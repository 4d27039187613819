"""One selection protocol for every selector (issue 18, item 1): `select` standardises every
selector's raw scores the same way, so two selectors handed identical scores keep identical ids,
whatever form the scores come in (an influence model's scores folder with label statistics, or an
oracle's in-memory labels); the effective temperature is logged; the registry is the one list of names."""

from __future__ import annotations

import json

import numpy as np
import pytest

from datamates.config.influence import SelectConfig
from datamates.config.mates import MatesConfig
from datamates.errors import ConfigError
from datamates.run_dir import RunDir, atomic_dir, read_json
from datamates.selection.scores_io import SIGN, write_shard
from datamates.selection.select import select
from datamates.selectors import REGISTRY, SELECTORS, StageInputs, _select, resolve_selectors


def _scores_folder(path, ids, scores, pool_id, label_mean, label_std):
    """An influence model's scores folder (the contract's format), with its label statistics."""
    with atomic_dir(path) as tmp:
        write_shard(tmp / "shard_00000.parquet", ids, scores, pool_id=pool_id, model_hash="m")
        (tmp / "meta.json").write_text(json.dumps({"sign": SIGN, "pool_id": pool_id, "model_hash": "m", "n": len(ids),
                                                   "shards": ["shard_00000.parquet"], "label_mean": label_mean,
                                                   "label_std": label_std}))
    return path


def _inputs(rd: RunDir, pool, ids, k) -> StageInputs:
    return StageInputs(MatesConfig(), rd, pool, 2, None, ids, np.zeros(0, np.int64), k, rd.root / "cache")


def test_two_selectors_handed_identical_scores_keep_identical_ids(tiny_pool, tmp_path):
    """`mates` hands a scores folder whose label statistics make its z-scores shrink (sd 0.2);
    `oracle` hands the same values in memory. Under the one protocol both are standardised over the
    block and keep the same ids. (The old default, scale 'label' for mates and 'block' forced for
    oracle and loss, kept different sets: mates was sampled five times hotter.)"""
    rng = np.random.default_rng(3)
    ids = np.sort(rng.choice(len(tiny_pool), 2000, replace=False))
    s = rng.standard_normal(2000).astype(np.float32)
    rd = RunDir(tmp_path / "run")
    folder = _scores_folder(tmp_path / "scores", ids, s, tiny_pool.pool_id, label_mean=0.3, label_std=5.0)
    a = _select(_inputs(rd.branch("mates"), tiny_pool, ids, 400), folder)
    b = _select(_inputs(rd.branch("oracle"), tiny_pool, ids, 400), (ids, s))
    ka, kb = np.load(a / "ids.npy"), np.load(b / "ids.npy")
    assert len(ka) == 400
    np.testing.assert_array_equal(ka, kb)
    ma, mb = read_json(a / "meta.json"), read_json(b / "meta.json")
    assert ma["scale"] == mb["scale"] == "block"
    assert ma["effective"] == mb["effective"]


def test_effective_temperature_is_logged(tiny_pool, tmp_path):
    """meta.json's `effective`: sd of the standardised scores and the share of the kept set that
    exact top-k keeps too, checked against a hand computation; scale 'label' (the parity option)
    shows its shrunken sd, and a lower tau keeps more of the exact top-k."""
    rng = np.random.default_rng(5)
    ids = np.sort(rng.choice(len(tiny_pool), 3000, replace=False))
    s = rng.standard_normal(3000) * 2.0 + 1.0
    k = 600
    exact = np.sort(ids[np.argsort(s, kind="stable")[:k]])
    metas = {}
    for tau in (0.05, 1.0):
        out = select(SelectConfig(temperature=tau), (ids, s), tiny_pool, tmp_path / f"t{tau}", k=k)
        kept = np.load(out / "ids.npy")
        e = read_json(out / "meta.json")["effective"]
        assert e["z_sd"] == pytest.approx(1.0, abs=1e-9)
        assert e["topk_overlap"] == pytest.approx(len(np.intersect1d(kept, exact)) / k)
        assert e["random_overlap"] == pytest.approx(k / 3000)
        metas[tau] = e
    assert metas[0.05]["topk_overlap"] > metas[1.0]["topk_overlap"] > 0.2
    folder = _scores_folder(tmp_path / "sc", ids, s, tiny_pool.pool_id, label_mean=1.0, label_std=8.0)
    out = select(SelectConfig(scale="label"), folder, tiny_pool, tmp_path / "label", k=k)
    m = read_json(out / "meta.json")
    assert m["scale"] == "label"
    assert m["effective"]["z_sd"] == pytest.approx(np.std(s) / 8.0, rel=1e-6)
    assert m["effective"]["tau_effective"] == pytest.approx(0.5 / (np.std(s) / 8.0), rel=1e-6)
    # in-memory scores have no label statistics: scale 'label' falls back to the block, and says so
    out = select(SelectConfig(scale="label"), (ids, s), tiny_pool, tmp_path / "fallback", k=k)
    assert read_json(out / "meta.json")["scale"] == "block"


def test_registry_is_the_one_list_of_names():
    assert resolve_selectors(["all"]) == [n for n in SELECTORS if REGISTRY[n].in_all]
    assert "mates+fasttext" in SELECTORS and "mates+fasttext" not in resolve_selectors(["all"])  # named, not in all
    assert resolve_selectors(["mates", "random", "mates"]) == ["mates", "random"]
    with pytest.raises(ConfigError, match="unknown selector 'nope'; available: all, random"):
        resolve_selectors(["random", "nope"])
    MatesConfig(selectors=["anything-registered-later"]).check()  # the config keeps no copy of the names
    with pytest.raises(ConfigError, match="named twice"):
        MatesConfig(selectors=["random", "random"]).check()
