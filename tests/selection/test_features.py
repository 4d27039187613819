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

from datamates.config.executor import ExecutorConfig
from datamates.config.influence import FitConfig, ScoreConfig
from datamates.core.checkpoint import load_model
from datamates.core.reference import load_reference
from datamates.selection.features import LMFeaturizer, head_direction
from datamates.selection.fit import fit
from datamates.selection.score import read_scores, score

from .conftest import IM_ENCODER, scores_one_and_sharded, write_labels

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
        cfgs = {"one": cfgs["one"], "workers": ScoreConfig(device="cpu", shard_size=20, executor=ExecutorConfig(workers=2, threads=1))}
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


# ----------------------------------------------------------------------------- cheaper features (issue 28)


def _by_hand(model, x: torch.Tensor, k: int):
    """Logits and head inputs of the first k GPT-NeoX blocks, the layers run one by one by hand:
    embedding, rotary tables, blocks 1..k with a causal mask, the final norm, the output head."""
    from transformers.masking_utils import create_causal_mask

    base = model.gpt_neox
    e = base.embed_in(x)
    pos = torch.arange(x.shape[1])[None]
    mask = create_causal_mask(config=model.config, inputs_embeds=e, attention_mask=None, cache=None,
                              position_ids=pos)
    rope = base.rotary_emb(e, position_ids=pos)
    r = e
    for layer in list(base.layers)[:k]:
        r = layer(r, attention_mask=mask, position_ids=pos, position_embeddings=rope)
        r = r[0] if isinstance(r, tuple) else r
    h = base.final_layer_norm(r)
    return model.get_output_embeddings()(h).double(), h.double()


def _stats_by_hand(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    tok = F.cross_entropy(logits[:-1], x[1:], reduction="none")
    logp = torch.log_softmax(logits[:-1], -1)
    ent = -(logp.exp() * logp).sum(-1)
    return torch.stack([tok.mean(), *torch.quantile(tok, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)),
                        tok.std(), ent.mean()])


@pytest.mark.parametrize("prefix,exit_layer", [(None, None), (16, None), (None, 1), (24, 1), (32, 0)])
def test_prefix_and_early_exit_by_hand(prefix, exit_layer, tiny_ckpt, tiny_pool, ids, ref, feats):
    """Features of the first `prefix` tokens through the first `exit_layer` blocks (logit lens) equal a
    hand computation that runs the blocks one by one on the prefix; the featurizer's forward really is
    shorter (the prefix) and shallower (the blocks it keeps)."""
    D, full = feats
    model = load_model(tiny_ckpt)
    model.eval()
    L = model.config.num_hidden_layers
    k = L if exit_layer is None else exit_layer
    f = LMFeaturizer(tiny_ckpt, direction=D, batch_size=16, prefix_tokens=prefix, exit_layer=exit_layer)
    assert f.model.config.num_hidden_layers == k and len(f.model.gpt_neox.layers) == k
    got = f.features(tiny_pool.tokens(ids[:40]), ["stats", "hidden", "fo"])
    W = model.get_output_embeddings().weight.double()
    with torch.no_grad():
        for j in (0, 11, 39):
            x = torch.as_tensor(tiny_pool.tokens(ids[j : j + 1]), dtype=torch.long)[:, :prefix]
            logits, h = _by_hand(model, x, k)
            logits, h, x0 = logits[0], h[0], x[0]
            np.testing.assert_allclose(got["stats"][j], _stats_by_hand(logits, x0).numpy(), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(got["hidden"][j], h.mean(0).numpy(), rtol=1e-4, atol=1e-5)
            # fo = <D, grad_W mean_t l_t> with grad_W l_t = (p_t - e_{x_t+1}) h_t^T, formed densely
            p = torch.softmax(logits[:-1], -1)
            p[torch.arange(len(x0) - 1), x0[1:]] -= 1
            gW = p.T @ h[:-1] / (len(x0) - 1)
            assert gW.shape == W.shape
            assert got["fo"][j, 0] == pytest.approx(float((D.double() * gW).sum()), rel=1e-3, abs=1e-9)
    if prefix is None and exit_layer is None:  # the hand path is the model's own forward
        np.testing.assert_allclose(got["stats"], full["stats"][:40], rtol=1e-5, atol=1e-6)


def test_feature_grid_equals_the_featurizer(tiny_ckpt, tiny_pool, ids, feats):
    """The benchmark's one-forward grid of (prefix, exit) views equals each view's own featurizer."""
    from datamates.selection.features import feature_grid

    D, _ = feats
    tokens = tiny_pool.tokens(ids[:24])
    views = {(p, e): ["stats", "hidden", "fo"] for p in (None, 16) for e in (None, 0, 1)}
    views[(8, 1)] = ["hidden"]
    grid = feature_grid(tiny_ckpt, tokens, views, direction=D, batch_size=8)
    assert set(grid) == set(views) and set(grid[(8, 1)]) == {"hidden"}
    for (p, e), got in grid.items():
        want = LMFeaturizer(tiny_ckpt, direction=D, prefix_tokens=p, exit_layer=e).features(tokens, views[(p, e)])
        for kind in want:
            np.testing.assert_allclose(got[kind], want[kind], rtol=1e-4, atol=1e-6, err_msg=f"{p} {e} {kind}")


def test_cheaper_features_counted(tiny_ckpt, tiny_pool, ids, ref, tmp_path, one_thread):
    """fit and score record the prefix's tokens and the early exit's FLOPs per token: with every block
    and the whole row they are today's counts (core.lm.flops_per_token / 3 per token)."""
    from datamates.core.lm import flops_per_token
    from datamates.run_dir import read_json

    y = 1e-3 * np.random.default_rng(3).standard_normal(len(ids))
    labels = write_labels(tmp_path / "probe", ids, y, tiny_pool.pool_id)
    model = load_model(tiny_ckpt)
    T, L = tiny_pool.seq_len, model.config.num_hidden_layers
    V, H = model.get_output_embeddings().weight.shape
    full = flops_per_token(model, T) / 3
    block = sum(p.numel() for p in model.gpt_neox.layers[0].parameters())
    cand = np.arange(3, len(tiny_pool), 211)[:20]
    for name, kw in {"full": {}, "cheap": {"prefix_tokens": 16, "exit_layer": 1}}.items():
        out = fit(replace(LM_FIT, features=["stats", "hidden", "fo"], **kw), [labels], tiny_pool, tmp_path / name,
                  checkpoint=tiny_ckpt, reference=ref)
        meta = read_json(out / "meta.json")
        sm = read_json(score(ScoreConfig(device="cpu"), out, tiny_pool, cand, tmp_path / f"s_{name}") / "meta.json")
        P = kw.get("prefix_tokens", T)
        k = kw.get("exit_layer", L)
        want = full - (L - k) * block * 2.0 - 2.0 * (L - k) * T * H + 2.0 * (k * (P - T)) * H
        assert meta["flops_per_token"]["lm_forward"] == pytest.approx(want, rel=1e-9)
        assert meta["flops_per_token"]["fo_head"] == 2.0 * H * V
        assert meta["tokens"] == {"lm_forward": len(ids) * P, "fo_head": len(ids) * P}
        assert sm["tokens"] == {"lm_forward": len(cand) * P, "fo_head": len(cand) * P}
        if name == "full":
            assert meta["flops_per_token"]["lm_forward"] == pytest.approx(full, rel=1e-12)


@pytest.mark.parametrize("kw", [{"prefix_tokens": 24}, {"exit_layer": 1}, {"prefix_tokens": 16, "exit_layer": 0}])
def test_planted_signal_cheaper_features(kw, tiny_ckpt, tiny_pool, ids, ref, tmp_path, one_thread):
    """Each cheaper view fits a label planted in its own features (stats + hidden + fo)."""
    D = head_direction(tiny_ckpt, ref, pad_id=tiny_pool.eos_id)
    f = LMFeaturizer(tiny_ckpt, direction=D, **kw).features(tiny_pool.tokens(ids), ["stats", "hidden", "fo"])
    rng = np.random.default_rng(0)
    X = np.concatenate([f[k] for k in ("stats", "hidden", "fo")], axis=1)
    Xs = (X - X.mean(0)) / (X.std(0) + 1e-12)
    y = Xs @ rng.standard_normal(X.shape[1])
    y = 1e-3 * (y + 0.05 * y.std() * rng.standard_normal(len(y)))
    labels = write_labels(tmp_path / "probe", ids, y, tiny_pool.pool_id)
    out = fit(replace(LM_FIT, features=["stats", "hidden", "fo"], **kw), [labels], tiny_pool, tmp_path / "im",
              checkpoint=tiny_ckpt, reference=ref)
    from datamates.run_dir import read_json

    assert read_json(out / "metrics.json")["val_spearman"] > 0.9


def test_cheaper_scores_same_across_shards(tiny_ckpt, tiny_pool, ids, ref, tmp_path, one_thread):
    """A prefix + early-exit model scores the same with one shard and with shards of 7."""
    y = 1e-3 * np.random.default_rng(2).standard_normal(len(ids))
    labels = write_labels(tmp_path / "probe", ids, y, tiny_pool.pool_id)
    model = fit(replace(LM_FIT, features=["stats", "hidden", "fo"], prefix_tokens=20, exit_layer=1), [labels],
                tiny_pool, tmp_path / "im", checkpoint=tiny_ckpt, reference=ref)
    runs = scores_one_and_sharded(model, tiny_pool, np.arange(5, len(tiny_pool), 173)[:60], tmp_path)
    np.testing.assert_array_equal(runs["one"], runs["shards"])


def test_exit_layer_beyond_the_model(tiny_ckpt):
    from datamates.errors import ConfigError

    with pytest.raises(ConfigError, match="exit_layer"):
        LMFeaturizer(tiny_ckpt, exit_layer=99)


def test_mates_full_is_the_full_lm_feature_model():
    """`mates-full` keeps today's LM-feature model reachable by name whatever the run's prefix / exit."""
    from datamates.selectors import SELECTORS, full_lm_fit

    cheap = replace(FitConfig(mode="lm"), features=["hidden"], prefix_tokens=32, exit_layer=1)
    full = full_lm_fit(cheap)
    assert (full.mode, full.features, full.head, full.prefix_tokens, full.exit_layer) == \
        ("lm", ["stats", "hidden", "fo"], "ridge", None, None)
    assert "mates-full" in SELECTORS


@pytest.mark.parametrize("config", ["arena_gpu.yaml", "paper_410m.yaml"])
def test_mates_prefix_is_the_presets_pick(config):
    """`mates-prefix` is issue 28's pick as the GPU / paper presets spell it (seq_len/16 prefix tokens,
    embedding + head only), whatever the run's own fit: the CPU arenas can run it beside `mates`."""
    from pathlib import Path

    from datamates.config.run import load_config
    from datamates.selectors import SELECTORS, prefix_lm_fit

    cfg = load_config(str(Path(__file__).parents[2] / "configs" / config))
    fields = ("mode", "features", "head", "prefix_tokens", "exit_layer")
    pick = prefix_lm_fit(FitConfig(mode="finetune"), cfg.pool.seq_len)
    assert [getattr(pick, f) for f in fields] == [getattr(cfg.mates.fit, f) for f in fields]
    assert "mates-prefix" in SELECTORS


def test_embed_by_hand_and_counted(tiny_ckpt, tiny_pool, ids, ref, tmp_path, one_thread):
    """`embed` = the mean over the WHOLE candidate of norm(E[x_t]) (the LM's input embedding through its
    final norm), whatever the prefix; counted as lm_embed tokens of whole candidates, no LM forward
    when it is the only kind; and a planted signal in it is recovered."""
    from datamates.run_dir import read_json

    model = load_model(tiny_ckpt)
    f = LMFeaturizer(tiny_ckpt, prefix_tokens=16, exit_layer=1)
    got = f.features(tiny_pool.tokens(ids[:20]), ["embed"])["embed"]
    assert f.forwards == 0
    with torch.no_grad():
        x = torch.as_tensor(tiny_pool.tokens(ids[:20]), dtype=torch.long)
        want = model.gpt_neox.final_layer_norm(model.gpt_neox.embed_in(x)).mean(1).double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    E = LMFeaturizer(tiny_ckpt).features(tiny_pool.tokens(ids), ["embed"])["embed"]
    rng = np.random.default_rng(0)
    y = ((E - E.mean(0)) / (E.std(0) + 1e-12)) @ rng.standard_normal(E.shape[1])
    y = 1e-3 * (y + 0.05 * y.std() * rng.standard_normal(len(y)))
    labels = write_labels(tmp_path / "probe", ids, y, tiny_pool.pool_id)
    out = fit(replace(LM_FIT, features=["embed", "stats"], prefix_tokens=16, exit_layer=0), [labels], tiny_pool,
              tmp_path / "im", checkpoint=tiny_ckpt, reference=ref)
    assert read_json(out / "metrics.json")["val_spearman"] > 0.9
    meta = read_json(out / "meta.json")
    T, H = tiny_pool.seq_len, model.config.hidden_size
    assert meta["tokens"] == {"lm_forward": len(ids) * 16, "lm_embed": len(ids) * T}
    assert meta["flops_per_token"]["lm_embed"] == 2.0 * 2 * H  # the final LayerNorm's weight and bias
    cand = np.arange(3, len(tiny_pool), 211)[:20]
    sm = read_json(score(ScoreConfig(device="cpu"), out, tiny_pool, cand, tmp_path / "s") / "meta.json")
    assert sm["tokens"] == {"lm_forward": len(cand) * 16, "lm_embed": len(cand) * T}
