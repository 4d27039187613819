"""Counted FLOPs (accounting.py) of a tiny MATES run equal a hand count: tokens from the config
(steps x batch x seq_len, probes x seq_len, reference rows, candidates x seq_len) times FLOPs per
token computed here from the model's shape (6 N + 6 L T d; a forward is a third; the encoder's
forward 2 N + 2 L T d)."""

from __future__ import annotations

import shutil

import pytest
import yaml

from datamates.config import load_config
from datamates.pipelines import run_mates
from datamates.run_dir import RunDir, read_json

SEQ, MICRO, STEPS, DECAY, N_PROBES, N_REF = 64, 4, 4, 2, 32, 16


def _hand_fpt(model, T: int) -> float:
    """6 x (parameters without the input embedding) + 6 x layers x T x width, by hand."""
    n = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    return 6.0 * n + 6.0 * model.config.num_hidden_layers * T * model.config.hidden_size


@pytest.fixture(scope="module")
def tiny_run(tiny_pool, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("acct")
    pool_dir = tmp / "pool"  # a copy without the session's encoder cache: every embedding is computed here
    shutil.copytree(tiny_pool.path, pool_dir, ignore=shutil.ignore_patterns("encoder_cache"))
    cfg = {
        "name": "acct", "runs_root": str(tmp / "runs"), "pool_dir": str(pool_dir),
        "pool": {"seq_len": SEQ, "tokenizer": {"vocab_size": 512}},
        "model": {"preset": "tiny", "n_layers": 2, "d_model": 32, "n_heads": 2, "context": 128},
        "train": {"micro_batch_size": MICRO, "lr": 3.0e-3, "warmup_steps": 2, "device": "cpu", "log_every": 100,
                  "checkpoint_every": 100},
        "eval": {"tasks": ["arc_easy"], "limit": 4, "batch_size": 16},
        "mates": {
            "selectors": ["random", "mates", "loss"], "stages": 2, "stage_steps": STEPS, "heldout_per_domain": 4,
            "decay_steps": DECAY, "decay_half_life": 1.0, "curve_reference_size": 8,
            # a pool reference: every example is one 64-token sequence, 63 input tokens
            "probe": {"mode": "first_order", "n_probes": N_PROBES, "reference": str(pool_dir),
                      "reference_size": N_REF, "chunk_size": 16},
            "fit": {"mode": "frozen", "encoder": {"max_tokens": 64, "chunk_len": 64}, "min_labels": 8},
            "select": {"temperature": 0.1},
        },
    }
    f = tmp / "acct.yaml"
    f.write_text(yaml.safe_dump(cfg))
    c = load_config(str(f))
    rd = RunDir(c.run_dir)
    run_mates(c, rd)
    return rd


@pytest.mark.slow
def test_counted_flops_equal_a_hand_count(tiny_run):
    from datamates.core.checkpoint import load_model
    from datamates.selection.influence_model import load_influence_model

    rd = tiny_run
    lm = load_model(rd.branch("warmup").checkpoint(1))
    f_train = _hand_fpt(lm, SEQ)
    m = read_json(rd.metrics)["selectors"]

    # training: warmup stage + own stage (4 steps x 4 x 64 tokens each) + the decay (2 steps)
    train_tokens = 2 * STEPS * MICRO * SEQ + DECAY * MICRO * SEQ
    for sel in ("random", "mates", "loss"):
        acc = m[sel]["accounting"]
        assert acc["tokens"]["train"] == {"lm_train": train_tokens}, sel
        assert acc["flops"]["train"] == pytest.approx(train_tokens * f_train, rel=1e-12), sel
    assert m["random"]["accounting"]["flops"]["selection"] == 0

    # probe, first order with the momentum anchor: 32 candidate gradients of 64 tokens and one
    # reference gradient (train cost); L_ref(before) and L_ref(theta0) forwards; R = 16 x 63
    R = N_REF * (SEQ - 1)
    probe = m["mates"]["accounting"]
    assert probe["tokens"]["probe"] == {"lm_train": N_PROBES * SEQ + R, "lm_forward": 2 * R}
    assert probe["flops"]["probe"] == pytest.approx((N_PROBES * SEQ + R) * f_train + 2 * R * f_train / 3, rel=1e-12)

    # the loss selector: one forward of every candidate
    n_cand = read_json(rd.branch("loss").scores(2) / "meta.json")["n"]
    loss = m["loss"]["accounting"]
    assert loss["tokens"]["score"] == {"lm_forward": n_cand * SEQ}
    assert loss["flops"]["score"] == pytest.approx(n_cand * SEQ * f_train / 3, rel=1e-12)
    assert loss["flops"]["selection"] == loss["flops"]["score"] and loss["flops"]["probe"] == 0

    # the influence model's encoder: a fresh cache, so every label and every candidate is embedded once
    enc = load_influence_model(rd.branch("mates").influence_model(2)).model.encoder
    n_enc = sum(p.numel() for p in enc.parameters()) - enc.get_input_embeddings().weight.numel()
    f_enc = 2.0 * n_enc + 2.0 * enc.config.num_hidden_layers * 64 * enc.config.hidden_size
    fit_tok = probe["tokens"]["fit"]["encoder_forward"]
    score_tok = probe["tokens"]["score"]["encoder_forward"]
    # each sequence is 1 chunk of at most 64 encoder tokens (max_tokens 64), at least [CLS] x [SEP]
    assert 3 * N_PROBES <= fit_tok <= 64 * N_PROBES
    assert 3 * n_cand <= score_tok <= 64 * n_cand
    assert probe["flops"]["fit"] == pytest.approx(fit_tok * f_enc, rel=1e-12)
    assert probe["flops"]["score"] == pytest.approx(score_tok * f_enc, rel=1e-12)
    assert probe["flops"]["selection"] == pytest.approx(
        probe["flops"]["probe"] + probe["flops"]["fit"] + probe["flops"]["score"], rel=1e-12)

    # evaluation: the curve point and the final evaluation, one forward per input token
    f_eval = _hand_fpt(lm, lm.config.max_position_embeddings) / 3
    ev = read_json(rd.branch("mates").final_eval / "eval.json")
    heldout = ev["perplexity"]["heldout"]["all"]["n_sequences"] * SEQ
    assert ev["n_input_tokens"] == heldout + sum(t["n_input_tokens"] for t in ev["tasks"].values()) + sum(
        t["n_input_tokens"] for t in ev["reference"].values())
    curve = read_json(rd.branch("mates").eval(2) / "eval.json")["n_input_tokens"]
    warm_curve = read_json(rd.branch("warmup").eval(1) / "eval.json")["n_input_tokens"]
    assert probe["flops"]["eval"] == pytest.approx((ev["n_input_tokens"] + curve + warm_curve) * f_eval, rel=1e-12)


def test_counted_reads_token_records_and_refuses_missing_ones(tmp_path):
    import json

    from datamates.accounting import counted
    from datamates.errors import ArtifactMissing

    def art(name, meta, done=True):
        d = tmp_path / name
        d.mkdir()
        (d / "meta.json").write_text(json.dumps(meta))
        if done:
            (d / "DONE").write_text("")
        return d

    a = art("a", {"tokens": {"lm_train": 10, "lm_forward": 30}, "flops_per_token": {"lm_train": 6.0, "lm_forward": 2.0}})
    assert counted(a)["flops"] == 10 * 6.0 + 30 * 2.0
    # the LM-feature influence model's first-order head term is counted next to its forward (was refused: NaN)
    f = art("fo", {"tokens": {"lm_forward": 30, "fo_head": 30}, "flops_per_token": {"lm_forward": 2.0, "fo_head": 4.0}})
    assert counted(f)["flops"] == 30 * 2.0 + 30 * 4.0
    assert counted(art("none", {"tokens": {}}))["flops"] == 0  # no model ran
    assert counted(art("unfinished", {}, done=False)) is None
    with pytest.raises(ArtifactMissing, match="old.*meta.json: no counted tokens"):
        counted(art("old", {"n_probes": 32, "reference": {"n_target_tokens": 100}}))
    with pytest.raises(ArtifactMissing, match="no flops_per_token.encoder_forward"):
        counted(art("nofpt", {"tokens": {"encoder_forward": 5}, "flops_per_token": {}}))
    # the baselines' record: tokens_processed and the FLOPs computed from them
    b = counted(art("dsir", {"tokens_processed": {"encoder": 7, "lm": 0, "text": 99}, "flops": 28.0}))
    assert b["flops"] == 28.0 and b["tokens"] == {"encoder_forward": 7, "lm_forward": 0}


def test_stage_seconds_are_the_artifacts_own_and_the_timed_components(tiny_run):
    """Probe, fit, score and select are timed by produce (their meta.json `seconds`), training
    around its call (timings.json); a stage's seconds hold both, and the run's accounting sums them."""
    from datamates.accounting import stage_seconds

    rd = tiny_run
    sd = rd.branch("mates").stage(2)
    secs = stage_seconds(sd)
    for comp, art in (("probe", "probe"), ("fit", "influence_model"), ("score", "scores"), ("select", "selected")):
        assert secs[comp] == round(read_json(sd / art / "meta.json")["seconds"], 3), comp
        assert comp not in read_json(sd / "timings.json")  # measured once, by produce
    assert secs["train"] > 0
    acc = read_json(rd.metrics)["selectors"]["mates"]["accounting"]["seconds"]
    assert acc["selection"] == pytest.approx(sum(secs[c] for c in ("probe", "fit", "score", "select")), abs=0.01)
