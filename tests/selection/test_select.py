"""`datamates select`: Gumbel-top-k independent of sharding, exact top-k as tau -> 0, the right
sampling distribution, O(k) streaming equal to a full sort, documents written back."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from scipy.special import softmax

from datamates.cli import main
from datamates.config.influence import SelectConfig
from datamates.errors import InputError
from datamates.selection.scores_io import SIGN, write_shard
from datamates.selection.select import (
    StreamingTopK,
    gumbel_noise,
    gumbel_top_k,
    select,
    selection_keys,
    uniform_noise,
)


def _scores_dir(path, ids, scores, shard_size, pool_id, label=(0.0, 1.0)):
    """A scores folder in the contract's format, sharded as given."""
    from datamates.run_dir import atomic_dir

    names = []
    with atomic_dir(path) as tmp:
        for i, s in enumerate(range(0, len(ids), shard_size)):
            names.append(f"shard_{i:05d}.parquet")
            write_shard(tmp / names[-1], ids[s : s + shard_size], scores[s : s + shard_size], pool_id=pool_id,
                        model_hash="m")
        (tmp / "meta.json").write_text(json.dumps({"sign": SIGN, "pool_id": pool_id, "model_hash": "m", "n": len(ids),
                                                   "shards": names, "label_mean": label[0], "label_std": label[1]}))
    return path


def _full_sort_top_k(keys, ids, k):
    order = np.lexsort((ids, -keys))  # key descending, then id ascending
    return np.sort(ids[order[:k]])


def test_selection_does_not_depend_on_sharding_or_order(tiny_pool, tmp_path):
    rng = np.random.default_rng(0)
    ids = rng.choice(len(tiny_pool), 5000, replace=False)
    s = rng.standard_normal(5000).astype(np.float32)
    cfg = SelectConfig(fraction=0.2, temperature=0.5, seed=11, scale="none")
    outs = []
    for j, shard in enumerate((5000, 777, 64)):
        perm = rng.permutation(5000) if j else np.arange(5000)
        d = _scores_dir(tmp_path / f"scores{j}", ids[perm], s[perm], shard, tiny_pool.pool_id)
        outs.append(np.load(select(cfg, d, tiny_pool, tmp_path / f"sel{j}") / "ids.npy"))
    outs.append(np.load(select(cfg, (ids[::-1], s[::-1]), tiny_pool, tmp_path / "mem") / "ids.npy"))
    assert len(outs[0]) == 1000 and all(np.array_equal(outs[0], o) for o in outs[1:])
    # and it is the full-sort answer on the keys
    keys = selection_keys(ids, s.astype(np.float64), method="gumbel", temperature=0.5, seed=11)
    assert np.array_equal(outs[0], _full_sort_top_k(keys, ids, 1000))
    # another seed, another sample
    other = np.load(select(SelectConfig(seed=12, scale="none"), (ids, s), tiny_pool, tmp_path / "s12") / "ids.npy")
    assert not np.array_equal(other, outs[0])


def test_tau_to_zero_is_exact_top_k(tiny_pool, tmp_path):
    rng = np.random.default_rng(1)
    ids = rng.choice(len(tiny_pool), 3000, replace=False)
    s = rng.permutation(3000).astype(np.float64) * 1e-3  # distinct scores, spacing 1e-3
    top = np.sort(ids[np.argsort(s)[:600]])  # the 600 lowest predicted deltas
    for tau, method in ((1e-9, "gumbel"), (0.0, "gumbel"), (0.5, "topk")):
        for variant in ("exact", "mates"):
            got = gumbel_top_k([(ids, s)], 600, method=method, temperature=tau, seed=3, gumbel=variant)
            assert np.array_equal(got, top), (tau, method, variant)
    # ties (float32 scores) go to the lower id, whatever the order
    tied = np.zeros(3000)
    assert np.array_equal(gumbel_top_k([(ids[::-1], tied)], 10, method="topk"), np.sort(ids)[:10])


def test_gumbel_top_1_samples_softmax():
    """Gumbel-max: P(item i is kept, k=1) = softmax(-z / tau)_i for the exact variant."""
    z = np.array([0.0, 0.5, 1.0, -0.7])
    tau = 0.8
    n = 20000
    counts = np.zeros(4)
    ids = np.arange(4)
    for seed in range(n):
        counts[gumbel_top_k([(ids, z)], 1, temperature=tau, seed=seed)[0]] += 1
    p = softmax(-z / tau)
    assert np.abs(counts / n - p).max() < 4 * np.sqrt(p.max() * (1 - p.max()) / n)
    # MATES's reflected variant keeps the lowest z more often, but not with softmax probabilities
    counts_m = np.zeros(4)
    for seed in range(4000):
        counts_m[gumbel_top_k([(ids, z)], 1, temperature=tau, seed=seed, gumbel="mates")[0]] += 1
    assert counts_m.argmax() == 3


def test_noise_is_uniform_and_keyed_by_id():
    ids = np.arange(1_000_000, dtype=np.int64)
    u = uniform_noise(ids, 5)
    assert 0 < u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 2e-3 and abs(u.var() - 1 / 12) < 1e-3
    assert abs(gumbel_noise(ids, 5).mean() - np.euler_gamma) < 5e-3
    sub = np.array([999_999, 3, 123_456])
    assert np.array_equal(uniform_noise(sub, 5), u[sub])
    assert not np.allclose(uniform_noise(sub, 6), u[sub])


def test_streaming_top_k_equals_full_sort():
    rng = np.random.default_rng(2)
    ids = rng.permutation(200_000).astype(np.int64)
    keys = np.round(rng.standard_normal(200_000), 2)  # many ties
    for k, room in ((1, 1), (999, 10), (50_000, 1 << 16), (50_000, 100), (200_000, 1 << 16)):
        top = StreamingTopK(k, slack=0.0, min_room=room)
        for s in range(0, len(ids), 7919):
            top.push(keys[s : s + 7919], ids[s : s + 7919])
        got = top.result()
        assert np.array_equal(got, _full_sort_top_k(keys, ids, k)), (k, room)


def test_random_selection_and_domain_counts(tiny_pool, tmp_path):
    ids = np.arange(0, len(tiny_pool), 3)
    out = select(SelectConfig(method="random", fraction=0.1, seed=4), ids, tiny_pool, tmp_path / "rand")
    chosen = np.load(out / "ids.npy")
    meta = json.loads((out / "meta.json").read_text())
    assert len(chosen) == meta["k"] == int(len(ids) * 0.1) and np.isin(chosen, ids).all()
    assert np.all(np.diff(chosen) > 0)
    dom = np.asarray(tiny_pool.seq_domain)[chosen]
    assert meta["kept_per_domain"] == {d: int((dom == i).sum()) for i, d in enumerate(tiny_pool.domains)
                                       if (dom == i).any()}
    cdom = np.asarray(tiny_pool.seq_domain)[ids]
    assert meta["candidates_per_domain"] == {d: int((cdom == i).sum()) for i, d in enumerate(tiny_pool.domains)
                                             if (cdom == i).any()}
    # random = the k largest Gumbel keys: scores are ignored
    s = np.random.default_rng(0).standard_normal(len(ids))
    again = select(SelectConfig(method="random", fraction=0.1, seed=4), (ids, s), tiny_pool, tmp_path / "rand2")
    assert np.array_equal(np.load(again / "ids.npy"), chosen)
    with pytest.raises(InputError, match="needs scores"):
        select(SelectConfig(method="gumbel"), ids, tiny_pool, tmp_path / "x")


def test_write_documents_in_input_format(tiny_pool, tmp_path):
    ids = np.arange(0, len(tiny_pool), 7)
    s = np.random.default_rng(5).standard_normal(len(ids))
    out = select(SelectConfig(fraction=0.002, write_documents=True, scale="block"), (ids, s), tiny_pool, tmp_path / "sel")
    chosen = np.load(out / "ids.npy")
    meta = json.loads((out / "meta.json").read_text())
    docs = tiny_pool.docs
    rows = tiny_pool.docs_of_many(chosen)
    assert meta["documents"]["documents"] == len(rows)
    written = {}
    for f in (out / "documents").rglob("*.jsonl.gz"):
        with gzip.open(f, "rt") as fh:
            written[str(f.relative_to(out / "documents"))] = [json.loads(line) for line in fh]
    assert sum(len(v) for v in written.values()) == len(rows)
    inputs = tiny_pool.meta["inputs"]
    for r in rows:  # every selected document, byte-identical to its input line
        fi, line = int(docs.column("file")[r].as_py()), int(docs.column("line")[r].as_py())
        with gzip.open(inputs[fi]["path"], "rt") as fh:
            src = next(line_ for n, line_ in enumerate(fh, start=1) if n == line)
        assert json.loads(src) in written[inputs[fi]["rel"]]


def test_cli_select(tiny_pool, tmp_path, capsys):
    ids = np.arange(100, 1100)
    d = _scores_dir(tmp_path / "scores", ids, np.linspace(0, 1, 1000).astype(np.float32), 300, tiny_pool.pool_id)
    rc = main(["select", "--scores", str(d), "--pool", str(tiny_pool.path), "--out", str(tmp_path / "sel"),
               "--method", "topk", "--fraction", "0.05", "--run-dir", str(tmp_path / "run")])
    assert rc == 0 and "selected 50 of 1,000 (topk)" in capsys.readouterr().out
    assert np.array_equal(np.load(tmp_path / "sel" / "ids.npy"), np.arange(100, 150))
    rc = main(["select", "--scores", str(tmp_path / "nope"), "--pool", str(tiny_pool.path), "--out",
               str(tmp_path / "sel2"), "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "no complete scores here" in err
