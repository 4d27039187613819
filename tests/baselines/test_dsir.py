"""DSIR: weights equal the reference package `data-selection` (HashedNgramDSIR) on the same texts,
a hand computation on a 3-document corpus, streaming by shard changes nothing, and the common
`select` at temperature 1 is DSIR's importance resampling."""

from __future__ import annotations

import gzip
import json
import math

import numpy as np
import pytest

from datamates.baselines._common import sequence_texts
from datamates.baselines.dsir import DSIRConfig, HashedNgrams, dsir, log_diff
from datamates.config.influence import SelectConfig
from datamates.errors import InputError
from datamates.selection.scores_io import read_scores, scores_meta
from datamates.selection.select import read_selection, select


def _jsonl(path, texts):
    with (gzip.open(path, "wt") if str(path).endswith(".gz") else open(path, "w")) as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    return path


def test_hand_computation_three_documents():
    """B large enough that the 3-document vocabulary has no collisions: the weights are the
    closed form sum_g c_g(x) log(p_t(g) / p_r(g)) computed by hand over n-gram strings."""
    raw = ["the cat sat", "the dog sat", "a cat ran"]
    target = ["the cat", "the cat sat"]
    feat = HashedNgrams(num_buckets=1 << 20, ngrams=2)

    def grams(t):
        w = t.split()
        return w + [" ".join(p) for p in zip(w, w[1:])]

    for t in raw + target:
        assert len({feat._bucket(g) for g in grams(t)}) == len(set(grams(t)))  # no collisions
    ld = log_diff(feat.total(target), feat.total(raw), 1e-8)
    got = feat.counts_many(raw) @ ld
    # hand: raw n-grams (15 in all), target n-grams (2 + 3 unigrams, 1 + 2 bigrams = 8)
    from collections import Counter

    cr, ct = Counter(g for t in raw for g in grams(t)), Counter(g for t in target for g in grams(t))
    nr, nt = sum(cr.values()), sum(ct.values())
    assert (nr, nt) == (15, 8)
    want = [sum(math.log(ct[g] / nt + 1e-8) - math.log(cr[g] / nr + 1e-8) for g in grams(x)) for x in raw]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    assert got[0] > got[1] and got[0] > got[2]  # "the cat sat" is in the target


def test_weights_equal_the_data_selection_package(tiny_pool, tmp_path):
    pytest.importorskip("data_selection")
    from data_selection import HashedNgramDSIR

    ids = np.arange(3, len(tiny_pool), 97)[:150]
    texts = sequence_texts(tiny_pool, ids)
    target = [t for t in texts[::7]] + ["The cat sat on the mat. It was a sunny day; the cat slept."] * 3
    target.append("In how many ways: ¹⁶c₂ (b) 3⁴ x₁ café")  # characters where `re` and NLTK's `regex` \w differ
    raw_f, tgt_f = _jsonl(tmp_path / "raw.jsonl", texts), _jsonl(tmp_path / "target.jsonl", target)  # the package reads plain JSONL
    pkg = HashedNgramDSIR([str(raw_f)], [str(tgt_f)], cache_dir=str(tmp_path / "cache"), num_proc=1,
                          ngrams=2, num_buckets=10000, min_example_length=0)
    pkg.fit_importance_estimator(num_tokens_to_fit="all")
    pkg.compute_importance_weights()
    want = np.load(tmp_path / "cache" / "log_importance_weights" / "0.npy")

    feat = HashedNgrams(10000, 2)
    ld = log_diff(feat.total(target), feat.total(texts))
    np.testing.assert_allclose(ld, pkg.log_diff, rtol=0, atol=1e-9)
    np.testing.assert_allclose(feat.counts_many(texts) @ ld, want, rtol=0, atol=1e-6)

    # the stage itself (streamed, float32 on disk) on the same candidates and reference file
    out = dsir(DSIRConfig(reference=str(tgt_f), shard_size=40), tiny_pool, ids, tmp_path / "scores")
    got_ids, s = read_scores(out)
    assert np.array_equal(got_ids, ids)
    np.testing.assert_allclose(-s.astype(np.float64), want, rtol=2e-7, atol=1e-5)  # float32 storage
    meta = scores_meta(out)
    assert meta["method"] == "dsir" and meta["text_units"]["words"] > 0 and meta["tokens"] == {} and len(meta["shards"]) == 4


def test_sharding_does_not_change_scores_or_selection(tiny_pool, tmp_path):
    ids = np.arange(0, len(tiny_pool), 53)
    ref = _jsonl(tmp_path / "ref.jsonl.gz", sequence_texts(tiny_pool, np.arange(1, len(tiny_pool), 301)))
    a = dsir(DSIRConfig(reference=str(ref), shard_size=7), tiny_pool, ids, tmp_path / "a")
    b = dsir(DSIRConfig(reference=str(ref), shard_size=100000), tiny_pool, ids[::-1].copy(), tmp_path / "b")
    ia, sa = read_scores(a)
    ib, sb = read_scores(b)
    assert np.array_equal(sa[np.argsort(ia)], sb[np.argsort(ib)])
    cfg = SelectConfig(fraction=0.25, temperature=1.0, scale="none")  # importance resampling
    sel_a = read_selection(select(cfg, a, tiny_pool, tmp_path / "sa"))
    sel_b = read_selection(select(cfg, b, tiny_pool, tmp_path / "sb"))
    assert np.array_equal(sel_a, sel_b) and len(sel_a) == len(ids) // 4


def test_reference_without_text_is_refused(tiny_pool, tmp_path):
    bad = tmp_path / "empty.jsonl"
    bad.write_text(json.dumps({"text": "   "}) + "\n")
    with pytest.raises(InputError, match="empty target|no usable text"):
        dsir(DSIRConfig(reference=str(bad)), tiny_pool, np.arange(10), tmp_path / "x")
    assert not (tmp_path / "x").exists()
