"""`datamates fit`: the influence model learns a planted signal; bad labels are refused."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest

from datamates.cli import main
from datamates.config.influence import FitConfig
from datamates.errors import ConfigError, IncompatibleArtifacts, InputError, NumericalError
from datamates.selection.fit import fit, read_labels, ridge_loo, split_train_val
from datamates.selection.influence_model import model_hash_of

from .conftest import IM_ENCODER, planted_signal, write_labels

pytestmark = pytest.mark.usefixtures("im_one_thread")


def test_frozen_beats_constant_on_planted_signal(im_frozen_model, im_labels, tiny_pool):
    m = json.loads((im_frozen_model / "metrics.json").read_text())
    assert m["mode"] == "frozen" and m["n_train"] + m["n_val"] == 160 and m["n_val"] == 40
    # held-out labels: better than predicting the training mean, and ranked right (the planted
    # signal is the domain; 64-token snippets of different domains overlap, so it is not perfect)
    assert m["val_mse_z"] < 0.9 * m["val_mse_z_constant"]
    assert m["val_spearman"] > 0.3
    # the recorded label statistics and identity are those of the training split and of the saved files
    ids, y = read_labels([im_labels], tiny_pool)
    tr, va = split_train_val(len(ids), 0.25, 1234)
    cfg = json.loads((im_frozen_model / "influence_config.json").read_text())
    assert cfg["mode"] == "frozen" and cfg["embedding_precision"] == "fp32"
    assert cfg["label_mean"] == float(y[tr].mean()) and cfg["label_std"] == float(y[tr].std())
    assert cfg["model_hash"] == model_hash_of(im_frozen_model) == m["model_hash"]
    val = pq.read_table(im_frozen_model / "val_predictions.parquet")
    assert val.column("seq_id").to_pylist() == ids[va].tolist()
    np.testing.assert_array_equal(val.column("ref_loss_delta").to_numpy(), y[va])
    for f in ("head.safetensors", "scatter.png", "meta.json", "DONE"):
        assert (im_frozen_model / f).stat().st_size > 0, f
    assert not (im_frozen_model / "encoder").exists()  # the frozen trunk is referenced, not copied


def test_fitted_model_reproduces_its_validation_predictions(im_frozen_model, tiny_pool, im_cache):
    """The saved model, loaded back by the scorer, predicts what fit reported."""
    from datamates.selection.score import InfluenceScorer

    val = pq.read_table(im_frozen_model / "val_predictions.parquet").to_pandas()
    scorer = InfluenceScorer(im_frozen_model, tiny_pool, cache_dir=im_cache)
    np.testing.assert_allclose(scorer(val["seq_id"].to_numpy()), val["predicted"].to_numpy(), rtol=1e-4, atol=1e-9)


def test_ridge_leave_one_out_matches_brute_force():
    """Closed-form LOO errors and weights == refitting ridge (unpenalized intercept) n times."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 8)) * rng.uniform(0.5, 3, 8) + rng.standard_normal(8)
    y = X @ rng.standard_normal(8) + 0.5 * rng.standard_normal(30)
    alphas = [0.1, 3.0, 50.0]
    alpha, w, b, loo = ridge_loo(X, y, alphas)
    mu, sd = X.mean(0), X.std(0) + 1e-8
    Z = np.hstack([np.ones((30, 1)), (X - mu) / sd])  # standardization is a fixed transform of X

    def solve(rows, a):
        P = a * np.eye(9)
        P[0, 0] = 0.0  # the intercept is not penalized
        return np.linalg.solve(Z[rows].T @ Z[rows] + P, Z[rows].T @ y[rows])

    for a in alphas:
        err = [(y[i] - Z[i] @ solve(np.arange(30) != i, a)) ** 2 for i in range(30)]
        assert loo[a] == pytest.approx(np.mean(err), rel=1e-8)
    assert alpha == min(loo, key=loo.get)
    theta = solve(np.ones(30, bool), alpha)
    np.testing.assert_allclose(X @ w + b, Z @ theta, rtol=1e-9, atol=1e-9)


def test_finetune_keeps_best_checkpoint(tiny_pool, im_labels, im_cache, tmp_path):
    cfg = FitConfig(mode="finetune", encoder=IM_ENCODER, epochs=1, batch_size=40, micro_batch_size=20, eval_every=2,
                    lr=2e-4, val_fraction=0.25, embed_batch_size=40, device="cpu")
    out = fit(cfg, [im_labels], tiny_pool, tmp_path / "im", cache_dir=im_cache)
    m = json.loads((out / "metrics.json").read_text())
    hist = m["history"]
    assert [h["step"] for h in hist] == [2, 3]
    curve = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]  # datamates.tracking
    assert curve == [{"step": h["step"], **{f"fit/{k}": v for k, v in sorted(h.items()) if k != "step"}} for h in hist]
    best = max(hist, key=lambda h: h["val_spearman"])
    assert m["best_step"] == best["step"] and m["val_spearman"] == pytest.approx(best["val_spearman"])
    assert (out / "encoder" / "model.safetensors").exists()
    # what was kept is what the scorer loads back
    from datamates.selection.score import InfluenceScorer

    val = pq.read_table(out / "val_predictions.parquet").to_pandas()
    got = InfluenceScorer(out, tiny_pool, cache_dir=im_cache)(val["seq_id"].to_numpy())
    np.testing.assert_allclose(got, val["predicted"].to_numpy(), rtol=1e-4, atol=1e-9)
    # a finished fit on the same labels and config is not redone
    stamp = (out / "DONE").stat().st_mtime_ns
    fit(cfg, [im_labels], tiny_pool, out, cache_dir=im_cache)
    assert (out / "DONE").stat().st_mtime_ns == stamp


def test_bad_labels_are_refused_and_nothing_is_written(tiny_pool, im_label_ids, im_cache, tmp_path):
    cfg = FitConfig(mode="frozen", encoder=IM_ENCODER, device="cpu")
    y = planted_signal(tiny_pool, im_label_ids)
    out = tmp_path / "im"

    y_nan = y.copy()
    y_nan[5] = np.nan
    with pytest.raises(NumericalError, match=r"1 of 160 labels are NaN.*seq_id " + str(im_label_ids[5])):
        fit(cfg, [write_labels(tmp_path / "nan", im_label_ids, y_nan)], tiny_pool, out, cache_dir=im_cache)
    few = write_labels(tmp_path / "few", im_label_ids[:10], y[:10])
    with pytest.raises(InputError, match="10 labels, fewer than fit.min_labels = 16"):
        fit(cfg, [few], tiny_pool, out, cache_dir=im_cache)
    with pytest.raises(InputError, match="labelled 2 times"):
        fit(cfg, [few, few], tiny_pool, out, cache_dir=im_cache)
    other = write_labels(tmp_path / "other", im_label_ids, y, pool_id="0123456789abcdef")
    with pytest.raises(IncompatibleArtifacts, match="probed on pool 0123456789abcdef"):
        fit(cfg, [other], tiny_pool, out, cache_dir=im_cache)
    assert not out.exists() and not (tmp_path / "im.partial").exists()


def test_not_an_encoder_backbone_writes_nothing(tiny_pool, im_labels, tiny_model_cfg, tmp_path):
    from datamates.core.lm import build_model

    lm = tmp_path / "lm"
    build_model(tiny_model_cfg, 512, 0, seed=0).save_pretrained(str(lm))
    cfg = FitConfig(mode="frozen", encoder=replace(IM_ENCODER, backbone=str(lm)), device="cpu")
    with pytest.raises(ConfigError, match="is not an encoder"):
        fit(cfg, [im_labels], tiny_pool, tmp_path / "im", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "im").exists() and not (tmp_path / "cache").exists()


def test_split_and_read_labels(tiny_pool, im_labels, im_label_ids):
    ids, y = read_labels([im_labels], tiny_pool)
    assert np.array_equal(ids, im_label_ids) and y.dtype == np.float64
    tr, va = split_train_val(100, 0.1, 1234)
    assert len(va) == 10 and len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == 100


def test_cli_fit(tiny_pool, im_labels, im_cache, tmp_path, capsys):
    common = ["--pool", str(tiny_pool.path), "--cache-dir", str(im_cache), "--run-dir", str(tmp_path / "run"),
              "--set", "mates.fit.encoder.max_tokens=128", "--set", "mates.fit.encoder.chunk_len=64"]
    rc = main(["fit", "--labels", str(im_labels), "--out", str(tmp_path / "im"), "--mode", "frozen", *common])
    assert rc == 0
    assert "validation Spearman" in capsys.readouterr().out
    rc = main(["fit", "--labels", str(tmp_path / "missing"), "--out", str(tmp_path / "im2"), *common])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "no probe labels here" in err
