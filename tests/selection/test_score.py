"""`datamates score`: the same scores as MATES's naive procedure, shard by shard, resumable, the
same from every backend; shards of another model or pool are refused."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from datamates.config.executor import ExecutorConfig
from datamates.config.influence import FitConfig, ScoreConfig
from datamates.errors import IncompatibleArtifacts
from datamates.selection.encode import TokenCache
from datamates.selection.influence_model import load_influence_model
from datamates.selection.score import read_scores, score
from datamates.selection.scores_io import shard_name, write_shard

from .conftest import IM_ENCODER

pytestmark = pytest.mark.usefixtures("im_one_thread")


@pytest.fixture(scope="module")
def cand(tiny_pool) -> np.ndarray:
    """90 candidates in a scrambled order (ids need not be sorted)."""
    return np.random.default_rng(3).choice(len(tiny_pool), 90, replace=False)


@pytest.fixture(scope="module")
def scored(im_frozen_model, tiny_pool, cand, tmp_path_factory):
    """Scores in 3 shards, computed with a fresh cache (nothing precomputed)."""
    root = tmp_path_factory.mktemp("scores")
    out = score(ScoreConfig(shard_size=32, batch_size=16, device="cpu"), im_frozen_model, tiny_pool, cand,
                root / "scores", cache_dir=root / "cache")
    return out, root / "cache"


def naive_z(model_dir, pool, ids, cache_dir) -> np.ndarray:
    """MATES's way, per stage: decode the LM tokens, tokenize with the HF tokenizer call, pad every
    chunk to chunk_len, encode in the given order, masked mean over all chunks, head."""
    from transformers import AutoTokenizer

    lm = load_influence_model(model_dir)
    enc = lm.encoder_cfg
    hf = AutoTokenizer.from_pretrained(str(lm.tokenizer_path))
    texts = TokenCache(pool, enc, cache_dir).texts(ids)
    per = enc.chunk_len - 2
    n_chunks = enc.max_tokens // enc.chunk_len
    out = []
    with torch.inference_mode():
        for t in texts:
            content = hf(t, add_special_tokens=False, truncation=True, max_length=n_chunks * per)["input_ids"]
            pieces = [content[s : s + per] for s in range(0, len(content), per)] or [[]]
            batch = hf.pad({"input_ids": [[hf.cls_token_id, *p, hf.sep_token_id] for p in pieces]},
                           padding="max_length", max_length=enc.chunk_len, return_tensors="pt")
            h = lm.model.encoder(**batch).last_hidden_state  # [chunks, chunk_len, H]
            m = batch["attention_mask"].unsqueeze(-1).float()
            e = (h * m).sum((0, 1)) / m.sum()
            out.append(float(lm.model.head(e)[0]))
    return np.array(out)


def test_scores_equal_naive_procedure(scored, im_frozen_model, tiny_pool, cand):
    out, cache = scored
    ids, s = read_scores(out)
    assert np.array_equal(ids, cand)  # shards keep the candidates' order, keyed by id
    assert sorted(p.name for p in out.glob("shard_*.parquet")) == [shard_name(i) for i in range(3)]
    lm = load_influence_model(im_frozen_model)
    z = (s.astype(np.float64) - lm.label_mean) / lm.label_std
    np.testing.assert_allclose(z, naive_z(im_frozen_model, tiny_pool, cand, cache), atol=1e-4)
    meta = __import__("json").loads((out / "meta.json").read_text())
    assert meta["pool_id"] == tiny_pool.pool_id and meta["model_hash"] == lm.model_hash and "lower is better" in meta["sign"]


def test_resume_recomputes_only_missing_shards(scored, im_frozen_model, tiny_pool, cand, tmp_path):
    out, cache = scored
    part = tmp_path / "scores.partial"  # what a run killed after two shards leaves behind
    shutil.copytree(out, part)
    for f in ("DONE", "meta.json", shard_name(1)):
        (part / f).unlink()
    again = score(ScoreConfig(shard_size=32, device="cpu"), im_frozen_model, tiny_pool, cand, tmp_path / "scores",
                  cache_dir=cache)
    meta = __import__("json").loads((again / "meta.json").read_text())
    assert meta["scored_this_call"] == 32
    np.testing.assert_array_equal(read_scores(again)[1], read_scores(out)[1])
    # a finished folder for the same model and ids is returned as it is
    assert score(ScoreConfig(shard_size=32, device="cpu"), im_frozen_model, tiny_pool, cand, again,
                 cache_dir=cache) == again


def test_foreign_shards_are_refused(scored, im_frozen_model, im_labels, tiny_pool, cand, tmp_path, im_cache):
    from datamates.selection.fit import fit

    out, cache = scored
    # another influence model (same labels, another head): its hash differs
    other = fit(FitConfig(mode="frozen", encoder=IM_ENCODER, ridge_alphas=[1e6], val_fraction=0.25, device="cpu"),
                [im_labels], tiny_pool, tmp_path / "other_model", cache_dir=im_cache)
    with pytest.raises(IncompatibleArtifacts, match="model_hash"):
        score(ScoreConfig(shard_size=32, device="cpu"), other, tiny_pool, cand, out, cache_dir=cache)
    # a shard of another model dropped into an interrupted run
    part = tmp_path / "s.partial"
    part.mkdir()
    write_shard(part / shard_name(0), cand[:32], np.zeros(32), pool_id=tiny_pool.pool_id, model_hash="ffffffffffffffff")
    with pytest.raises(IncompatibleArtifacts, match="shard_00000.parquet: shard was scored with model_hash ffff"):
        score(ScoreConfig(shard_size=32, device="cpu"), im_frozen_model, tiny_pool, cand, tmp_path / "s", cache_dir=cache)
    # a finished scores folder with a shard swapped in from another pool
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    ids, sc = (c.to_numpy() for c in pq.read_table(bad / shard_name(2)).columns)
    write_shard(bad / shard_name(2), ids, sc, pool_id="0000000000000000", model_hash="x")
    with pytest.raises(IncompatibleArtifacts, match="shard_00002.parquet: shard was scored with pool_id 0000"):
        read_scores(bad)
    shutil.copy(bad / shard_name(0), bad / "shard_00007.parquet")
    with pytest.raises(IncompatibleArtifacts, match="not listed in meta.json"):
        read_scores(bad)


def test_local_workers_give_the_same_scores(scored, im_frozen_model, tiny_pool, cand, tmp_path):
    out, cache = scored
    two = score(ScoreConfig(shard_size=32, executor=ExecutorConfig(workers=2, threads=1), device="cpu"), im_frozen_model,
                tiny_pool, cand, tmp_path / "two", cache_dir=tmp_path / "cache2")
    ids2, s2 = read_scores(two)
    ids1, s1 = read_scores(out)
    assert np.array_equal(ids1, ids2)
    np.testing.assert_allclose(s2, s1, rtol=1e-5, atol=1e-9)


@pytest.mark.ray
@pytest.mark.slow  # Ray start-up (make test-all runs it)
def test_ray_backend_gives_the_same_scores(scored, im_frozen_model, tiny_pool, cand, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    out, _ = scored
    monkeypatch.setenv("RAY_worker_niceness", "0")  # Ray's default 15 starves the actor on a busy machine
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # 1 actor: leave a CPU for Ray's tasks
    try:
        r = score(ScoreConfig(shard_size=32, backend="ray", workers=1, device="cpu"), im_frozen_model, tiny_pool,
                  cand, tmp_path / "ray", cache_dir=tmp_path / "cache_ray")
    finally:
        ray.shutdown()
    ids_r, s_r = read_scores(r)
    ids_l, s_l = read_scores(out)
    assert np.array_equal(ids_r, ids_l)
    np.testing.assert_allclose(s_r, s_l, rtol=1e-5, atol=1e-9)


def test_loss_scores_equal_the_models_loss_and_select_the_highest(tiny_ckpt, tiny_pool, cand, tmp_path):
    """The `loss` selector's scores are minus the checkpoint's mean next-token loss on each
    candidate (a hand-written forward); top-k on them keeps the k highest-loss candidates."""
    import torch.nn.functional as F

    from datamates.config.influence import SelectConfig
    from datamates.core.checkpoint import load_model
    from datamates.selection.score import score_by_loss
    from datamates.selection.select import select

    out = score_by_loss(tiny_ckpt, tiny_pool, cand, tmp_path / "scores", batch_size=7)
    ids, s = read_scores(out)
    model = load_model(tiny_ckpt).eval()
    with torch.no_grad():
        x = torch.from_numpy(tiny_pool.tokens(ids).astype(np.int64))
        logits = model(input_ids=x).logits
        want = -F.cross_entropy(logits[:, :-1].transpose(1, 2), x[:, 1:], reduction="none").mean(1).numpy()
    np.testing.assert_allclose(s, want, rtol=1e-5, atol=1e-5)
    assert sorted(ids.tolist()) == sorted(cand.tolist())
    sel = np.load(select(SelectConfig(method="topk"), out, tiny_pool, tmp_path / "sel", k=10) / "ids.npy")
    assert sorted(sel.tolist()) == sorted(ids[np.argsort(s)[:10]].tolist())
    assert score_by_loss(tiny_ckpt, tiny_pool, cand, out) == out  # finished: returned as it is
    with pytest.raises(IncompatibleArtifacts, match="ids_hash"):
        score_by_loss(tiny_ckpt, tiny_pool, cand[:50], out)


def test_fit_and_score_see_the_same_features(tiny_pool, im_label_ids, tmp_path):
    """The frozen head is applied to the very features it was fitted on: fit and score embed through one
    function, and the embedding cache is keyed by the precision the encoder ran in (issue 11, defect 5:
    fit embedded with fp32 weights under autocast, score with bf16 weights, and a cache filled at one
    precision was read at the other)."""
    from datamates.selection.encode import EmbeddingCache
    from datamates.selection.fit import fit
    from datamates.selection.influence_model import read_influence_config
    from datamates.selection.score import InfluenceScorer

    from .conftest import planted_signal, write_labels

    ids = im_label_ids[::8]  # 20 labels, 5 per domain
    labels = write_labels(tmp_path / "probe", ids, planted_signal(tiny_pool, ids), tiny_pool.pool_id)
    fit_cache = tmp_path / "fit_cache"
    cfg = FitConfig(mode="frozen", encoder=IM_ENCODER, val_fraction=0.25, embed_batch_size=16, device="cpu",
                    precision="bf16")
    model = fit(cfg, [labels], tiny_pool, tmp_path / "im", cache_dir=fit_cache)
    icfg = read_influence_config(model)
    assert icfg["embedding_precision"] == "bf16"
    keys = {p: EmbeddingCache(tiny_pool, IM_ENCODER, icfg["backbone_hash"], fit_cache, precision=p).key
            for p in ("fp32", "bf16")}
    assert keys["fp32"] != keys["bf16"]
    at_fit = EmbeddingCache(tiny_pool, IM_ENCODER, icfg["backbone_hash"], fit_cache, precision="bf16").get(ids)

    # score, from an empty cache, computes the features itself: bit for bit those the head was fitted on
    scorer = InfluenceScorer(model, tiny_pool, cache_dir=tmp_path / "score_cache", batch_size=16, device="cpu",
                             precision="bf16")
    np.testing.assert_array_equal(scorer.embeddings(ids), at_fit)
    # an fp32 scorer on the fit's cache does not read the bf16 features: it computes (and caches) its own
    fp32 = InfluenceScorer(model, tiny_pool, cache_dir=fit_cache, batch_size=16, device="cpu", precision="fp32")
    e32 = fp32.embeddings(ids)
    assert not np.array_equal(e32, at_fit)
    np.testing.assert_allclose(e32, at_fit, rtol=0, atol=0.05 * np.abs(at_fit).max())  # equal up to bf16 rounding
    assert sorted(p.name for p in fit_cache.glob("emb-*")) == sorted(f"emb-{k}" for k in keys.values())
