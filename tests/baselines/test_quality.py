"""The quality rater recovers a planted signal (beats the constant predictor on held-out labels),
pointwise and pairwise (Bradley-Terry), and refuses labels with one class."""

from __future__ import annotations

import json

import numpy as np
import pytest

from datamates.baselines._common import sequence_texts
from datamates.baselines.quality import RaterConfig, fit_bradley_terry, fit_rater, rate, read_judgements
from datamates.config.influence import EncoderConfig, SelectConfig
from datamates.errors import InputError
from datamates.selection.scores_io import read_scores, scores_meta
from datamates.selection.select import read_selection, select

ENC = EncoderConfig(backbone="minilm", max_tokens=128, chunk_len=64)


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _planted(tiny_pool, n_per=40, seed=0):
    """Texts of science (arXiv) and web sequences; label 1 for science: a signal in the text."""
    rng = np.random.default_rng(seed)
    sci = rng.choice(tiny_pool.ids_in_domain("science"), n_per, replace=False)
    web = rng.choice(tiny_pool.ids_in_domain("web"), n_per, replace=False)
    ids = np.concatenate([sci, web])
    y = np.concatenate([np.ones(n_per), np.zeros(n_per)])
    return sequence_texts(tiny_pool, ids), y, ids


def test_bradley_terry_matches_a_hand_logistic_fit():
    """fit_bradley_terry minimises the stated loss: its gradient vanishes at the optimum."""
    rng = np.random.default_rng(0)
    d = rng.standard_normal((200, 5))
    w_true = np.array([2.0, -1.0, 0.0, 0.5, 0.0])
    y = np.where(rng.random(200) < 1 / (1 + np.exp(-d @ w_true)), 1.0, -1.0)
    w = fit_bradley_terry(d, y, alpha=0.1)
    m = y * (d @ w)
    grad = -(d * (y / (1 + np.exp(m)))[:, None]).sum(0) + 0.2 * w
    assert np.abs(grad).max() < 1e-3
    assert np.corrcoef(w, w_true)[0, 1] > 0.9


@pytest.mark.usefixtures("one_thread")
def test_pointwise_rater_beats_constant_and_scores_the_pool(tiny_pool, tmp_path):
    texts, y, _ = _planted(tiny_pool)
    f = _write(tmp_path / "labels.jsonl", [{"text": t, "label": int(v)} for t, v in zip(texts, y)])
    cfg = RaterConfig(labels=str(f), encoder=ENC, val_fraction=0.25)
    kind, items, yy = read_judgements(f)
    r = fit_rater(cfg, kind, items, yy)
    m = r["metrics"]
    assert m["val_mse_z"] < 0.7 * m["val_mse_z_constant"] and m["val_accuracy"] >= 0.8
    # the pool: unseen science sequences rank above unseen web sequences
    rng = np.random.default_rng(5)
    sci = rng.choice(tiny_pool.ids_in_domain("science"), 30, replace=False)
    web = rng.choice(tiny_pool.ids_in_domain("web"), 30, replace=False)
    ids = np.sort(np.concatenate([sci, web]))
    out = rate(cfg, tiny_pool, ids, tmp_path / "scores", cache_dir=tmp_path / "cache")
    got, s = read_scores(out)
    is_sci = np.isin(got, sci)
    assert s[is_sci].mean() < s[~is_sci].mean()
    meta = scores_meta(out)
    assert meta["select_hint"]["temperature"] == 2.0 and meta["tokens"]["encoder_forward"] > 0
    # a second stage on the same judgements reuses the fitted head and the cached embeddings
    again = rate(cfg, tiny_pool, ids, tmp_path / "again", cache_dir=tmp_path / "cache")
    assert scores_meta(again)["tokens"]["encoder_forward"] == 0
    np.testing.assert_array_equal(read_scores(again)[1], s)
    # QuRating's sampling at tau = 2 on standardised scores: a science-heavy but not deterministic pick
    sel = read_selection(select(SelectConfig(fraction=0.5, temperature=2.0, scale="block"), out, tiny_pool,
                                tmp_path / "sel"))
    assert np.isin(sel, sci).sum() > 15


@pytest.mark.usefixtures("one_thread")
def test_pairwise_rater_recovers_preferences(tiny_pool, tmp_path):
    texts, y, _ = _planted(tiny_pool, n_per=40, seed=1)
    sci, web = texts[:40], texts[40:]
    rng = np.random.default_rng(2)
    rows = []
    for i in range(60):
        a, b = sci[i % 40], web[(i * 7) % 40]
        if rng.random() < 0.5:
            rows.append({"text_a": a, "text_b": b, "prefer": "a"})
        else:
            rows.append({"text_a": b, "text_b": a, "prefer": "b"})
    f = _write(tmp_path / "pairs.jsonl", rows)
    kind, items, yy = read_judgements(f)
    assert kind == "pairwise"
    r = fit_rater(RaterConfig(labels=str(f), encoder=ENC, val_fraction=0.25), kind, items, yy)
    assert r["metrics"]["val_bt_loss"] < r["metrics"]["val_bt_loss_constant"]
    assert r["metrics"]["val_accuracy"] >= 0.8


def test_one_class_and_bad_records_are_refused(tiny_pool, tmp_path):
    f = _write(tmp_path / "one.jsonl", [{"text": "some text", "label": 1}] * 10)
    with pytest.raises(InputError, match="two classes"):
        rate(RaterConfig(labels=str(f), encoder=ENC), tiny_pool, np.arange(5), tmp_path / "x")
    g = _write(tmp_path / "bad.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": "high"}])
    with pytest.raises(InputError, match=r"bad.jsonl:2: label 'high' is not a number"):
        read_judgements(g)
    assert not (tmp_path / "x").exists()


def test_bundle_labels_file_reads(data):
    kind, items, y = read_judgements(data / "pretrain/web/dclm_pool_quality_labeled_499.jsonl.gz")
    assert kind == "pointwise" and len(items) == 499 and set(np.unique(y)) == {0.0, 1.0}
