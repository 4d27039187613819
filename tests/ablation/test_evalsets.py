"""Cheaper evaluation (issue 17, item 6): a fixed token budget per set with the SE of log PPL, and
the early stop of a proxy's evaluation once it is separated from the best mixture."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ablation_helpers import make_checkpoint

from datamates.ablation.ablate import EvalSets, build_eval_sets, ratio_se
from datamates.config.ablation import AblationEvalConfig
from datamates.core.checkpoint import load_model
from datamates.core.loss import sequence_nll


def test_token_budget_takes_a_fixed_subsample_and_reports_the_se(tiny_study, tiny_pool):
    man = tiny_study["manifest"]
    L = tiny_pool.seq_len
    cfg = AblationEvalConfig(lambada=None, tokens_per_set=3 * (L - 1))
    evs = build_eval_sets(man, tiny_pool, cfg, "fp32")
    full = build_eval_sets(man, tiny_pool, AblationEvalConfig(lambada=None), "fp32")
    assert evs.ident != full.ident  # a budgeted evaluation is never mixed with a full one in the cache
    for dom, toks in evs.heldout.items():
        assert len(toks) == 3 and set(map(bytes, toks)) <= set(map(bytes, full.heldout[dom]))
    assert {d: t.tolist() for d, t in build_eval_sets(man, tiny_pool, cfg, "fp32").heldout.items()} == \
        {d: t.tolist() for d, t in evs.heldout.items()}  # the same subsample every time
    model = load_model(tiny_study["seed"])
    res = evs.evaluate(model)
    dom = next(iter(evs.heldout))
    seq = sequence_nll(model, evs.heldout[dom], batch_size=16)
    r = res[f"heldout/{dom}"]
    assert r["n"] == 3 and r["tokens"] == 3 * (L - 1)
    assert r["se"] == pytest.approx(ratio_se(seq, np.full(3, L - 1.0)))
    assert r["se"] == pytest.approx(np.std(seq / (L - 1), ddof=1) / math.sqrt(3))


def test_early_stop_cuts_a_separated_mixture_and_keeps_the_best_exact(tmp_path):
    torch.manual_seed(0)
    base = make_checkpoint(tmp_path / "a", seed=0)
    worse = make_checkpoint(tmp_path / "b", seed=1, base=base, scale=0.5)  # far from the best: clearly worse
    near = make_checkpoint(tmp_path / "c", seed=2, base=base, scale=1e-6)
    rng = np.random.default_rng(0)
    toks = rng.integers(0, 100, (64, 16)).astype(np.int64)
    evs = EvalSets({"x": toks}, {"x": 1000.0}, [], 16, "fp32", "t", early_stop_z=2.0, early_stop_chunk=8)
    best = evs.evaluate(load_model(base), race=True)["heldout/x"]
    assert best["n"] == 64 and not best["stopped_early"]
    bad = evs.evaluate(load_model(worse), race=True)["heldout/x"]
    full_bad = evs.evaluate(load_model(worse))["heldout/x"]  # race=False: the full budget
    assert bad["stopped_early"] and bad["n"] < 64 and full_bad["n"] == 64
    assert full_bad["logppl"] > best["logppl"] + 2 * full_bad["se"]
    close = evs.evaluate(load_model(near), race=True)["heldout/x"]
    assert close["n"] == 64  # not separated from the best: evaluated in full
    off = EvalSets({"x": toks}, {"x": 1000.0}, [], 16, "fp32", "t")
    off.evaluate(load_model(base), race=True)
    assert off.evaluate(load_model(worse), race=True)["heldout/x"]["n"] == 64  # the knob is off by default
