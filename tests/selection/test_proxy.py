"""The proxy LM (selection/proxy.py, issue 28): a smaller shape of the run's model, trained stage by
stage on the big model's stream with the run's one schedule; a killed stage resumes to the same
bytes; its features fit a planted signal through the influence model's lm mode."""

from __future__ import annotations

import numpy as np
import pytest
from datamates_testing import tiny_train_cfg

from datamates.accounting import counted
from datamates.config.influence import FitConfig
from datamates.config.run import RunConfig, stage_train_config
from datamates.core.checkpoint import load_model
from datamates.core.lm import build_model, flops_per_token
from datamates.core.reference import load_reference
from datamates.core.train_loop import read_train_log, train
from datamates.errors import ConfigError
from datamates.pipelines import run_mates
from datamates.run_dir import read_json
from datamates.selection.features import LMFeaturizer, head_direction
from datamates.selection.fit import fit
from datamates.selection.proxy import parse_shape, proxy_model_config, train_proxy
from datamates.selection.select import read_selection

from .conftest import IM_ENCODER, scores_one_and_sharded, tiny_run, write_labels

STREAM = [(s, np.arange(s * 100, s * 100 + 96, 3)) for s in (1, 2, 3)]


def _run_cfg() -> RunConfig:
    cfg = RunConfig()
    cfg.train = tiny_train_cfg(schedule="cosine", warmup_steps=2, lr=3e-3, min_lr_ratio=0.1, checkpoint_every=2)
    cfg.mates.stages, cfg.mates.warmup_stages, cfg.mates.stage_steps = 3, 1, 4
    return cfg


def _proxy(tiny_model_cfg):
    return proxy_model_config(tiny_model_cfg, n_layers=1, d_model=16, n_heads=2)


def test_proxy_shape_and_price(tiny_model_cfg, tiny_pool):
    pm = _proxy(tiny_model_cfg)
    big = build_model(tiny_model_cfg, tiny_pool.vocab_size, tiny_pool.eos_id, seed=0)
    small = build_model(pm, tiny_pool.vocab_size, tiny_pool.eos_id, seed=0)
    assert (small.config.num_hidden_layers, small.config.hidden_size, small.config.num_attention_heads,
            small.config.intermediate_size) == (1, 16, 2, 64)
    assert small.config.vocab_size == big.config.vocab_size  # the same tokenizer: the same rows
    assert pm.rotary_pct == tiny_model_cfg.rotary_pct and pm.parallel_residual == tiny_model_cfg.parallel_residual
    T = tiny_pool.seq_len
    assert flops_per_token(small, T) < flops_per_token(big, T)
    assert parse_shape("L2d32h2") == (2, 32, 2) and parse_shape("L1d64") == (1, 64, 1)
    with pytest.raises(ConfigError, match="L<layers>d<width>"):
        parse_shape("2x32")
    with pytest.raises(ConfigError, match="divisible"):
        proxy_model_config(tiny_model_cfg, n_layers=1, d_model=30, n_heads=4)


def test_proxy_follows_the_runs_schedule_and_resumes_to_the_same_bytes(tiny_pool, tiny_model_cfg, tmp_path, one_thread):
    """Three stages on the stream: the same lr per global step as the big model's stages (one cosine
    over the run), each stage continuing the last; killed inside stage 2, rerun: the same bytes."""
    cfg, pm = _run_cfg(), _proxy(tiny_model_cfg)
    full = train_proxy(cfg, pm, tiny_pool, STREAM, tmp_path / "full")
    assert [p.parent.name for p in full] == ["stage_01", "stage_02", "stage_03"]
    ckpt, big_lrs = None, []  # the big model's stages, as pipelines.selection trains them
    for s, ids in STREAM:
        ckpt = train(stage_train_config(cfg, s), tiny_model_cfg, tiny_pool, ids, tmp_path / f"big_{s}", init=ckpt)
        big_lrs += [r["lr"] for r in read_train_log(ckpt)]
    assert [r["lr"] for p in full for r in read_train_log(p)] == big_lrs
    assert [r["global_step"] for r in read_train_log(full[-1])] == [9, 10, 11, 12]
    assert load_model(full[-1]).config.hidden_size == 16

    class Kill(Exception):
        pass

    def die(step, rec):
        if rec["global_step"] == 6:
            raise Kill

    with pytest.raises(Kill):
        train_proxy(cfg, pm, tiny_pool, STREAM, tmp_path / "cut", callback=die)
    assert (tmp_path / "cut" / "stage_01" / "checkpoint").exists()
    assert not (tmp_path / "cut" / "stage_02" / "checkpoint").exists()
    cut = train_proxy(cfg, pm, tiny_pool, STREAM, tmp_path / "cut")
    for a, b in zip(full, cut, strict=True):
        for n in ("model.safetensors", "optimizer.safetensors", "rng.safetensors"):
            assert (a / n).read_bytes() == (b / n).read_bytes(), (a, n)


def test_proxy_features_fit_a_planted_signal(tiny_pool, tiny_model_cfg, tmp_path, one_thread):
    """The influence model's lm mode on the proxy's checkpoint: a label planted in the proxy's own
    stats + hidden + fo is recovered (fit's `checkpoint` is the LM whose features it uses)."""
    cfg, pm = _run_cfg(), _proxy(tiny_model_cfg)
    proxy = train_proxy(cfg, pm, tiny_pool, STREAM[:2], tmp_path / "proxy")[-1]
    ref = load_reference("lambada_openai", tiny_pool.tokenizer(), size=16, seed=0)
    ids = np.arange(1, len(tiny_pool), 97)[:120]
    D = head_direction(proxy, ref, pad_id=tiny_pool.eos_id)
    f = LMFeaturizer(proxy, direction=D, batch_size=16).features(tiny_pool.tokens(ids), ["stats", "hidden", "fo"])
    X = np.concatenate([f[k] for k in ("stats", "hidden", "fo")], axis=1)
    assert X.shape[1] == 6 + 16 + 1  # the proxy's width, not the big model's
    rng = np.random.default_rng(0)
    Xs = (X - X.mean(0)) / (X.std(0) + 1e-12)
    y = Xs @ rng.standard_normal(X.shape[1])
    y = 1e-3 * (y + 0.05 * y.std() * rng.standard_normal(len(y)))
    labels = write_labels(tmp_path / "probe", ids, y, tiny_pool.pool_id)
    fcfg = FitConfig(mode="lm", features=["stats", "hidden", "fo"], val_fraction=0.25, device="cpu",
                     lm_batch_size=16, encoder=IM_ENCODER)
    out = fit(fcfg, [labels], tiny_pool, tmp_path / "im", checkpoint=proxy, reference=ref)
    assert read_json(out / "metrics.json")["val_spearman"] > 0.9
    assert read_json(out / "meta.json")["checkpoint"] == str(proxy.resolve())
    # scoring the pool with the proxy's influence model: the same scores with one shard and shards of 7
    cand = np.arange(5, len(tiny_pool), 173)[:40]
    runs = scores_one_and_sharded(out, tiny_pool, cand, tmp_path)
    np.testing.assert_array_equal(runs["one"], runs["shards"])
    assert np.isfinite(runs["one"]).all() and runs["one"].std() > 0


def test_mates_proxy_in_a_run(tiny_pool, tmp_path, one_thread):
    """`mates-proxy` in a tiny run: its influence model uses the branch's proxy LM (half the blocks, a
    quarter of the width), trained on exactly the warmup's then the branch's selections (checked against
    train_proxy by hand, byte for byte); accounting charges the proxy's training to the branch's fit; a
    second run reuses everything."""
    c, rd = tiny_run(tiny_pool, tmp_path, "px", {
        "selectors": ["random", "mates-proxy"], "stages": 3, "warmup_stages": 1, "stage_steps": 2,
        "heldout_per_domain": 4, "decay_steps": 0, "curve_reference_size": 8,
        "probe": {"mode": "first_order", "n_probes": 32, "reference_size": 16, "chunk_size": 8},
        "fit": {"min_labels": 8}}, limit=4)
    m = run_mates(c, rd)
    br = rd.branch("mates-proxy")
    proxies = [br.base / "proxy" / f"stage_{t:02d}" / "checkpoint" for t in (1, 2)]
    for s, ck in ((2, proxies[0]), (3, proxies[1])):
        meta = read_json(br.influence_model(s) / "meta.json")
        assert meta["checkpoint"] == str(ck.resolve()) and meta["config"]["features"] == ["stats", "hidden", "fo"]
    small = load_model(proxies[1]).config
    assert (small.num_hidden_layers, small.hidden_size) == (1, 16)  # the LM: 2 x 32
    pm = proxy_model_config(c.model, n_layers=1, d_model=16, n_heads=1)
    stream = [(1, read_selection(rd.branch("warmup").selected(1))), (2, read_selection(br.selected(2)))]
    by_hand = train_proxy(c, pm, tiny_pool, stream, tmp_path / "by_hand")
    for a, b in zip(proxies, by_hand, strict=True):
        assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    acc = m["selectors"]["mates-proxy"]["accounting"]
    fit_flops = sum(counted(br.influence_model(s))["flops"] for s in (2, 3))
    proxy_flops = sum(counted(p)["flops"] for p in proxies)
    assert proxy_flops > 0 and acc["flops"]["fit"] == pytest.approx(fit_flops + proxy_flops, rel=1e-12)
    assert m["selectors"]["random"]["accounting"]["flops"]["fit"] == 0
    before = [(br.selected(s) / "ids.npy").read_bytes() for s in (2, 3)]
    run_mates(c, rd)
    assert [(br.selected(s) / "ids.npy").read_bytes() for s in (2, 3)] == before
