"""The noise check (issue 18, item 7) measures what it says: noise planted in a tiny pool (generated
here: word-shuffled real text, random characters, repeated boilerplate), then selections whose noise
share is known -- random keeps about the planted share, a selector that scores noise worst keeps
none, one that scores it best keeps more than random and is flagged."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from datamates_testing import tiny_pool_config

from datamates.config.influence import SelectConfig
from datamates.core.pool import Pool, build_pool
from datamates.selection.select import select

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def noise_mod():
    spec = importlib.util.spec_from_file_location("arena_noise", ROOT / "experiments" / "selection_arena" / "noise.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def noised_pool(noise_mod, data, tmp_path_factory) -> Pool:
    root = tmp_path_factory.mktemp("noised")
    src = root / "src" / "web"
    src.mkdir(parents=True)
    for f in ("c4_100_domains_theguardian_10.jsonl.gz", "dolma_cc_en_head-0091.jsonl.gz", "dolma_cc_en_head-0174.jsonl.gz"):
        (src / f).symlink_to(data / "pretrain" / "web" / f)
    counts = noise_mod.planted_corpus(root / "src", root / "corpus", rate=0.07, seed=0)
    assert counts["noise_docs"] >= 9
    kinds = {json.loads(line)["id"].split("-")[1] for line in open(root / "corpus" / "noise" / "noise.jsonl")}
    assert kinds == {"shuffled", "random", "boilerplate"}
    build_pool(tiny_pool_config([str(root / "corpus")]), root / "pool")
    return Pool(root / "pool")


def test_noise_share_of_known_selections(noise_mod, noised_pool, tmp_path):
    pool = noised_pool
    noise = pool.domains.index("noise")
    is_noise = np.asarray(pool.seq_domain) == noise
    share = is_noise.mean()
    assert 0.03 < share < 0.15  # about the planted 7% of the pool's sequences
    ids = np.arange(len(pool))
    k = len(ids) // 5
    run = tmp_path / "run"
    worst = is_noise.astype(np.float64)  # lower is better: noise scored worst
    select(SelectConfig(), ids, pool, run / "random" / "stage_02" / "selected", method="random", k=k)
    select(SelectConfig(method="topk"), (ids, worst), pool, run / "cleaner" / "stage_02" / "selected", k=k)
    select(SelectConfig(), (ids, -worst), pool, run / "noise_lover" / "stage_02" / "selected", k=k)
    rep = noise_mod.noise_report(run)
    sel = rep["selectors"]
    kept = np.load(run / "random" / "stage_02" / "selected" / "ids.npy")
    assert sel["random"]["kept"] == pytest.approx(is_noise[kept].mean())  # the meta.json count is the hand count
    assert sel["random"]["kept"] == pytest.approx(share, abs=0.02)
    assert sel["random"]["candidates"] == pytest.approx(share)
    assert sel["cleaner"]["kept"] == 0.0 and not sel["cleaner"]["more_than_random"]
    assert sel["noise_lover"]["kept"] > 3 * share and sel["noise_lover"]["more_than_random"]
    assert json.loads((run / "noise.json").read_text())["random"] == rep["random"]


def test_unigram_entropy_is_the_hand_computation(noise_mod, noised_pool):
    ids = np.arange(0, len(noised_pool), 7)
    toks = noised_pool.tokens(ids).ravel()
    _, c = np.unique(toks, return_counts=True)
    p = c / c.sum()
    assert noise_mod.unigram_entropy(noised_pool, ids) == pytest.approx(float(-(p * np.log(p)).sum()))
