"""Cheaper evaluation (issue 17, item 6): a fixed token budget per set with the SE of log PPL, and
the early stop of a proxy's evaluation once it is separated from the best mixture."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ablation_helpers import make_checkpoint

from datamates.config.ablation import AblationEvalConfig
from datamates.core.checkpoint import load_model
from datamates.core.loss import sequence_nll
from datamates.pipelines.ablation import EvalSets, build_eval_sets, ratio_se


def test_token_budget_takes_a_fixed_subsample_and_reports_the_se(tiny_study, tiny_pool):
    man = tiny_study["manifest"]
    L = tiny_pool.seq_len
    cfg = AblationEvalConfig(lambada=None, tokens_per_set=3 * (L - 1))
    evs = build_eval_sets(man, tiny_pool, cfg, "fp32")
    full = build_eval_sets(man, tiny_pool, AblationEvalConfig(lambada=None), "fp32")
    assert evs.ident != full.ident  # a budgeted evaluation is never mixed with a full one in the cache
    for dom, ids in evs.heldout_ids.items():
        assert len(ids) == 3 and set(ids.tolist()) <= set(full.heldout_ids[dom].tolist())
    assert {d: t.tolist() for d, t in build_eval_sets(man, tiny_pool, cfg, "fp32").heldout_ids.items()} == \
        {d: t.tolist() for d, t in evs.heldout_ids.items()}  # the same subsample every time
    model = load_model(tiny_study["seed"])
    res = evs.evaluate(model)
    dom = next(iter(evs.heldout_ids))
    seq = sequence_nll(model, tiny_pool.tokens(evs.heldout_ids[dom]), batch_size=16)
    r = res[f"heldout/{dom}"]
    assert r["n"] == 3 and r["tokens"] == 3 * (L - 1)
    assert r["se"] == pytest.approx(ratio_se(seq, np.full(3, L - 1.0)))
    assert r["se"] == pytest.approx(np.std(seq / (L - 1), ddof=1) / math.sqrt(3))


def test_early_stop_cuts_a_separated_mixture_and_keeps_the_best_exact(tmp_path, tiny_pool):
    torch.manual_seed(0)
    V = tiny_pool.vocab_size
    base = make_checkpoint(tmp_path / "a", seed=0, vocab=V)
    worse = make_checkpoint(tmp_path / "b", seed=1, base=base, scale=0.5)  # far from the best: clearly worse
    near = make_checkpoint(tmp_path / "c", seed=2, base=base, scale=1e-6)
    ids = np.sort(np.random.default_rng(0).choice(len(tiny_pool), 64, replace=False))
    evs = EvalSets(tiny_pool, {"x": ids}, {"x": 1000.0}, [], 16, "fp32", "t", early_stop_z=2.0, early_stop_chunk=8)
    best = evs.evaluate(load_model(base), race=True)["heldout/x"]
    assert best["n"] == 64 and not best["stopped_early"]
    bad = evs.evaluate(load_model(worse), race=True)["heldout/x"]
    full_bad = evs.evaluate(load_model(worse))["heldout/x"]  # race=False: the full budget
    assert bad["stopped_early"] and bad["n"] < 64 and full_bad["n"] == 64
    assert full_bad["logppl"] > best["logppl"] + 2 * full_bad["se"]
    close = evs.evaluate(load_model(near), race=True)["heldout/x"]
    assert close["n"] == 64  # not separated from the best: evaluated in full
    off = EvalSets(tiny_pool, {"x": ids}, {"x": 1000.0}, [], 16, "fp32", "t")
    off.evaluate(load_model(base), race=True)
    assert off.evaluate(load_model(worse), race=True)["heldout/x"]["n"] == 64  # the knob is off by default


def test_heldout_sets_are_scored_by_evaluate_pool_bit_for_bit(tiny_study, tiny_pool):
    """One evaluation path (issue 27): the study's held-out log PPL is evaluate.evaluate_pool's, and
    equal to the bytes of core.loss.sequence_nll on the same rows (the scorer the study used before)."""
    from datamates.evaluate import evaluate_pool

    evs = build_eval_sets(tiny_study["manifest"], tiny_pool, AblationEvalConfig(lambada=None, batch_size=4), "fp32")
    model = load_model(tiny_study["seed"])
    res = evs.evaluate(model)
    for dom, ids in evs.heldout_ids.items():
        ep = evaluate_pool(model, tiny_pool, ids, batch_size=4, precision="fp32", per_sequence=True)
        r = res[f"heldout/{dom}"]
        assert r["seq_nll"] == ep["seq_nll"]
        assert r["seq_nll"] == sequence_nll(model, tiny_pool.tokens(ids), batch_size=4, precision="fp32").tolist()
        assert r["logppl"] == ep["all"]["loss"] and r["tokens"] == ep["all"]["n_tokens"]
