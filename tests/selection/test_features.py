"""Model-aware influence-model features (selection/features.py, fit mode lm): each feature against a
hand / autograd computation on the tiny checkpoint, each variant fits a planted signal (a label that
is a known function of the feature), one LM forward per candidate for features and scoring, and the
same predictions across score shard sizes and workers."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from datamates.config.influence import FitConfig, ScoreConfig
from datamates.core.checkpoint import load_model
from datamates.core.reference import load_reference
from datamates.selection.features import LMFeaturizer, head_direction
from datamates.selection.fit import fit
from datamates.selection.score import read_scores, score

from .conftest import IM_ENCODER, write_labels

LM_FIT = FitConfig(mode="lm", features=["stats"], val_fraction=0.25, device="cpu", lm_batch_size=16,
                   encoder=IM_ENCODER, embed_batch_size=32)


@pytest.fixture(scope="module")
def ids(tiny_pool):
    return np.arange(1, len(tiny_pool), 97)[:160]  # odd: unseen by tiny_ckpt


@pytest.fixture(scope="module")
def ref(tiny_pool):
    return load_reference("lambada_openai", tiny_pool.tokenizer(), size=32, seed=0)


@pytest.fixture(scope="module")
def feats(tiny_ckpt, tiny_pool, ids, ref):
    D = head_direction(tiny_ckpt, ref, pad_id=tiny_pool.eos_id)
    f = LMFeaturizer(tiny_ckpt, direction=D, batch_size=16)
    return D, f.features(tiny_pool.tokens(ids), ["stats", "hidden", "fo"])


def test_features_against_autograd(tiny_ckpt, tiny_pool, ids, feats):
    """stats = the token losses and entropies by hand; hidden = the head input's mean; fo = <D,
    grad_W lm_loss(x)> by autograd on the output head W."""
    D, got = feats
    model = load_model(tiny_ckpt)
    model.eval()
    W = model.get_output_embeddings().weight
    for j in (0, 7, 33):
        x = torch.as_tensor(tiny_pool.tokens(ids[j : j + 1]), dtype=torch.long)
        box = {}
        h = model.get_output_embeddings().register_forward_hook(lambda m, i, o, box=box: box.__setitem__("h", i[0]))
        logits = model(input_ids=x).logits[0, :-1].double()
        h.remove()
        tok = F.cross_entropy(logits, x[0, 1:], reduction="none")
        logp = torch.log_softmax(logits, -1)
        ent = -(logp.exp() * logp).sum(-1)
        want = [tok.mean(), *torch.quantile(tok, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)), tok.std(),
                ent.mean()]
        np.testing.assert_allclose(got["stats"][j], torch.stack(want).detach().numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got["hidden"][j], box["h"][0].mean(0).detach().numpy(), rtol=1e-4, atol=1e-5)
        model.zero_grad()
        F.cross_entropy(model(input_ids=x).logits[0, :-1].float(), x[0, 1:]).backward()
        fo = float((D.double() * W.grad.double()).sum())
        assert got["fo"][j, 0] == pytest.approx(fo, rel=1e-3, abs=1e-9)


def test_direction_is_the_linearised_adamw_head_step(tiny_ckpt, tiny_pool, ref):
    """D = (1 - b1) lr / bc1 * grad_W L_ref / (sqrt(b2 v / bc2) + eps), against torch.optim.AdamW: a
    tiny gradient eps*G on W alone moves W by ~ -eps (1-b1) lr/bc1 G/(sqrt(b2 v/bc2)+eps) beyond the
    zero-gradient step, so <grad L_ref, W'(eps G) - W'(0)> / eps -> -<D, G>."""
    from datamates.core.checkpoint import load_optimizer_state
    from datamates.core.reference import ReferenceBatches
    from datamates.core.train_loop import make_optimizer
    from datamates.selection.features import next_step_lr_of

    D = head_direction(tiny_ckpt, ref, pad_id=tiny_pool.eos_id).double()
    tcfg, lr = next_step_lr_of(tiny_ckpt)
    G = torch.randn(D.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps = 1e-10  # far below sqrt(v) everywhere: the step is linear in the gradient
    after = []
    for scale in (0.0, eps):
        model = load_model(tiny_ckpt).double()
        opt = make_optimizer(model, tcfg)
        load_optimizer_state(tiny_ckpt, model, opt)
        for g in opt.param_groups:
            g["lr"] = lr  # the rate of the step after the checkpoint
        W = model.get_output_embeddings().weight
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        W.grad = scale * G
        opt.step()
        after.append(W.detach().clone())
    model = load_model(tiny_ckpt).double()
    rb = ReferenceBatches(ref.examples, max_len=model.config.max_position_embeddings, pad_id=tiny_pool.eos_id)
    rb.backward(model)
    r = model.get_output_embeddings().weight.grad
    lhs = float((r * (after[1] - after[0])).sum()) / eps
    assert lhs == pytest.approx(-float((D * G).sum()), rel=2e-2)


@pytest.mark.parametrize("features,head", [(["stats"], "ridge"), (["hidden"], "ridge"), (["fo"], "ridge"),
                                           (["stats", "fo"], "ridge"), (["stats", "hidden", "fo"], "ridge")])
def test_planted_signal(features, head, tiny_ckpt, tiny_pool, ids, ref, feats, tmp_path, one_thread):
    """A label that is a known function of the features is recovered on the validation split."""
    _, f = feats
    rng = np.random.default_rng(0)
    X = np.concatenate([f[k] for k in features], axis=1)
    Xs = (X - X.mean(0)) / (X.std(0) + 1e-12)
    y = Xs @ rng.standard_normal(X.shape[1])
    y = 1e-3 * (y + 0.05 * y.std() * rng.standard_normal(len(y)))
    labels = write_labels(tmp_path / "probe", ids, y, tiny_pool.pool_id)
    cfg = replace(LM_FIT, features=features, head=head)
    out = fit(cfg, [labels], tiny_pool, tmp_path / "im", checkpoint=tiny_ckpt, reference=ref)
    from datamates.run_dir import read_json

    m = read_json(out / "metrics.json")
    assert m["val_spearman"] > 0.9, m


def test_mlp_beats_ridge_on_a_nonlinear_signal(tiny_ckpt, tiny_pool, ids, ref, feats, tmp_path, one_thread):
    _, f = feats
    x = (f["stats"][:, 0] - f["stats"][:, 0].mean()) / f["stats"][:, 0].std()
    y = 1e-3 * np.abs(x)
    labels = write_labels(tmp_path / "probe", ids, y, tiny_pool.pool_id)
    from datamates.run_dir import read_json

    got = {}
    for head in ("ridge", "mlp"):
        out = fit(replace(LM_FIT, head=head), [labels], tiny_pool, tmp_path / head, checkpoint=tiny_ckpt)
        got[head] = read_json(out / "metrics.json")["val_spearman"]
    assert got["mlp"] > 0.9 and got["mlp"] > got["ridge"] + 0.2, got


def _count_lm_forwards(model_type: str):
    calls = {"n": 0}

    def hook(mod, inp, out):
        if type(mod).__name__ == model_type:
            calls["n"] += 1

    return calls, torch.nn.modules.module.register_module_forward_hook(hook)


def test_one_forward_per_candidate(tiny_ckpt, tiny_pool, ids, ref, tmp_path, one_thread):
    """stats + hidden + fo of n candidates: ceil(n / batch) LM forwards in fit and in score (no
    second pass for the features, none for the `fo` term)."""
    y = 1e-3 * np.random.default_rng(1).standard_normal(len(ids))
    labels = write_labels(tmp_path / "probe", ids, y, tiny_pool.pool_id)
    cfg = replace(LM_FIT, features=["stats", "hidden", "fo"])
    name = type(load_model(tiny_ckpt)).__name__
    calls, h = _count_lm_forwards(name)
    try:
        head_direction(tiny_ckpt, ref, pad_id=tiny_pool.eos_id)
        n_ref = calls["n"]  # the reference pass of D, once per fit (not per candidate)
        calls["n"] = 0
        model = fit(cfg, [labels], tiny_pool, tmp_path / "im", checkpoint=tiny_ckpt, reference=ref)
        n_fit = calls["n"]
        calls["n"] = 0
        cand = np.arange(3, len(tiny_pool), 211)[:40]
        score(ScoreConfig(device="cpu"), model, tiny_pool, cand, tmp_path / "scores")
        n_score = calls["n"]
    finally:
        h.remove()
    assert n_fit == -(-len(ids) // 16) + n_ref
    assert n_score == -(-40 // 16)


def _same_scores(workers: bool, tiny_ckpt, tiny_pool, ids, ref, tmp_path):
    y = 1e-3 * np.random.default_rng(2).standard_normal(len(ids))
    labels = write_labels(tmp_path / "probe", ids, y, tiny_pool.pool_id)
    model = fit(replace(LM_FIT, features=["stats", "fo"]), [labels], tiny_pool, tmp_path / "im",
                checkpoint=tiny_ckpt, reference=ref)
    cand = np.arange(5, len(tiny_pool), 173)[:60]
    cfgs = {"one": ScoreConfig(device="cpu"), "shards": ScoreConfig(device="cpu", shard_size=7)}
    if workers:
        cfgs = {"one": cfgs["one"], "workers": ScoreConfig(device="cpu", shard_size=20, workers=2, threads_per_worker=1)}
    runs = {}
    for name, cfg in cfgs.items():
        sid, sc = read_scores(score(cfg, model, tiny_pool, cand, tmp_path / f"scores_{name}"))
        runs[name] = sc[np.argsort(sid)]
    for name in runs:
        np.testing.assert_array_equal(runs["one"], runs[name])
    return model, cand, runs


@pytest.mark.slow  # two spawned scoring processes, each loading the LM
def test_same_scores_with_two_workers(tiny_ckpt, tiny_pool, ids, ref, tmp_path, one_thread):
    _same_scores(True, tiny_ckpt, tiny_pool, ids, ref, tmp_path)


def test_same_scores_across_shards(tiny_ckpt, tiny_pool, ids, ref, tmp_path, one_thread):
    model, cand, runs = _same_scores(False, tiny_ckpt, tiny_pool, ids, ref, tmp_path)
    # and the scores are the fitted head on the features, in label units
    from datamates.selection.influence_model import load_influence_model

    lm = load_influence_model(model)
    want = lm.to_delta(lm.model.predict_z(tiny_pool, np.sort(cand)))
    np.testing.assert_allclose(runs["one"], want, rtol=1e-6)
    assert spearmanr(runs["one"], want).statistic > 0.999


def test_cli_lm_fit_bad_checkpoint(tiny_pool, ids, tmp_path, capsys):
    """`datamates fit --mode lm` on a checkpoint folder that is not one: one stderr line, exit 2."""
    from datamates.cli import main

    labels = write_labels(tmp_path / "probe", ids, 1e-3 * np.arange(len(ids), dtype=float), tiny_pool.pool_id)
    rc = main(["fit", "--mode", "lm", "--labels", str(labels), "--pool", str(tiny_pool.path), "--out",
               str(tmp_path / "im"), "--checkpoint", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "nowhere" in err[0] and "Traceback" not in err[0], err
    assert not (tmp_path / "im").exists()
