"""The fastText filter ranks planted positives above negatives, reloads its own .bin, honours a
user's positive label, and refuses a file that is not a fastText model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from datamates.baselines._common import sequence_texts
from datamates.baselines.classifier import ClassifierConfig, classify, load_classifier, positive_probability
from datamates.errors import InputError
from datamates.selection.scores_io import read_scores, scores_meta

pytest.importorskip("fasttext")


def test_planted_positives_rank_above_negatives(tiny_pool, tmp_path):
    """Positives: science (arXiv) sequences as the 'reference set'; the pool's unseen science
    sequences must get higher P(positive) than its web sequences."""
    sci = tiny_pool.ids_in_domain("science")
    web = tiny_pool.ids_in_domain("web")
    rng = np.random.default_rng(0)
    train_sci = rng.choice(sci, 300, replace=False)
    ref = tmp_path / "ref.jsonl"
    ref.write_text("\n".join(json.dumps({"text": t}) for t in sequence_texts(tiny_pool, train_sci)) + "\n")
    test_sci = rng.choice(np.setdiff1d(sci, train_sci), 30, replace=False)  # rare in the candidates, as in a real pool
    test_web = rng.choice(web, 1500, replace=False)  # negatives are drawn from the candidates (mostly web)
    ids = np.sort(np.concatenate([test_sci, test_web]))
    cfg = ClassifierConfig(reference=str(ref), positives=300, negatives=300, shard_size=400)
    out = classify(cfg, tiny_pool, ids, tmp_path / "scores")
    got, s = read_scores(out)
    pos = np.isin(got, test_sci)
    # AUC: P(score of a positive < score of a negative), lower is better
    auc = (s[pos][:, None] < s[~pos][None, :]).mean()
    assert auc > 0.75, auc  # a constant scorer gives 0.5; here ~0.83 (64-token sequences, 300 positives)
    meta = scores_meta(out)
    assert meta["method"] == "classifier" and meta["n_positives"] == 300 and len(meta["shards"]) == 4
    # the trained classifier is kept and reloads to the same probabilities; a re-run is reproducible
    again = classify(ClassifierConfig(model=str(out / "classifier.bin"), shard_size=1000), tiny_pool, ids,
                     tmp_path / "again")
    np.testing.assert_array_equal(read_scores(again)[1], s)
    rerun = classify(cfg, tiny_pool, ids, tmp_path / "rerun")
    np.testing.assert_array_equal(read_scores(rerun)[1], s)


def test_user_model_and_bad_files(tiny_pool, tmp_path):
    import fasttext

    f = tmp_path / "train.txt"
    f.write_text("\n".join(["__label__good the proof of the theorem follows"] * 30
                           + ["__label__bad buy cheap shoes now online"] * 30) + "\n")
    m = fasttext.train_supervised(str(f), epoch=20, thread=1, seed=0, verbose=0)
    m.save_model(str(tmp_path / "user.bin"))
    model = load_classifier(tmp_path / "user.bin")
    p = positive_probability(model, ["the proof of the theorem", "buy cheap shoes"], "__label__good")
    assert p[0] > 0.5 > p[1]
    # a two-label model: P(good) + P(bad) = 1 for every text (fastText's list predict breaks this)
    q = positive_probability(model, ["the proof of the theorem", "buy cheap shoes"], "__label__bad")
    np.testing.assert_allclose(p + q, 1.0, atol=1e-4)
    ids = np.arange(20)
    with pytest.raises(InputError, match="has no label '__label__hq'"):
        classify(ClassifierConfig(model=str(tmp_path / "user.bin")), tiny_pool, ids, tmp_path / "x")
    out = classify(ClassifierConfig(model=str(tmp_path / "user.bin"), positive_label="__label__good"), tiny_pool,
                   ids, tmp_path / "ok")
    assert scores_meta(out)["n"] == 20
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a model at all" * 10)
    with pytest.raises(InputError, match="junk.bin: not a fastText model"):
        classify(ClassifierConfig(model=str(junk)), tiny_pool, ids, tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
