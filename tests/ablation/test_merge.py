"""Parameter averaging: streaming merge to disk against hand-computed averages, and the refusals."""

from __future__ import annotations

import json

import pytest
import torch
from ablation_helpers import TINY, make_checkpoint
from safetensors import safe_open

from datamates.ablation.merge import merge
from datamates.cli import main
from datamates.config.core import ModelConfig
from datamates.core.checkpoint import load_model
from datamates.errors import IncompatibleArtifacts, InputError


def params(path) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in load_model(path).named_parameters()}


def test_uniform_merge_of_identical_models_is_the_model(seed_and_units, tmp_path):
    _, units = seed_and_units
    for k in (1, 2, 3, 5):
        out = merge([units[0]] * k, tmp_path / f"m{k}")
        a, b = params(units[0]), params(out)
        assert a.keys() == b.keys()
        for n in a:
            assert torch.equal(a[n], b[n]), (k, n)


def test_weighted_merge_equals_hand_computed_average(seed_and_units, tmp_path):
    _, units = seed_and_units
    w = [1.0, 2.0, 3.0, 0.5]
    out = merge(units, tmp_path / "w", method="weighted", weights=w)
    ps = [params(u) for u in units]
    got = params(out)
    for n in got:
        hand = sum(wi * p[n].double() for wi, p in zip(w, ps)) / sum(w)
        torch.testing.assert_close(got[n], hand.float(), rtol=0, atol=1e-7)
    # 'tokens': weights from each unit's recorded token count (meta.json unit_tokens)
    out_t = merge(units, tmp_path / "t", method="weighted", weights="tokens")
    toks = [1000.0, 2000.0, 3000.0, 4000.0]
    got_t = params(out_t)
    for n in got_t:
        hand = sum(wi * p[n].double() for wi, p in zip(toks, ps)) / sum(toks)
        torch.testing.assert_close(got_t[n], hand.float(), rtol=0, atol=1e-7)
    assert json.loads((out_t / "merge.json").read_text())["weights"] == toks


def test_uniform_merge_equals_mean_and_loads_with_from_pretrained(seed_and_units, tmp_path):
    from transformers import AutoModelForCausalLM

    _, units = seed_and_units
    out = merge(units[:3], tmp_path / "u")
    ps = [params(u) for u in units[:3]]
    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    ref = load_model(units[0])
    with torch.no_grad():
        for n, p in ref.named_parameters():
            p.copy_(sum(q[n].double() for q in ps).div(3).float())
    x = torch.randint(0, 100, (2, 16))
    torch.testing.assert_close(hf(input_ids=x).logits, ref(input_ids=x).logits, rtol=0, atol=1e-6)
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["tokenizer_hash"] == "tok-a" and state["global_step"] == 10


def test_task_arithmetic_is_seed_plus_lambda_mean_delta(seed_and_units, tmp_path):
    seed, units = seed_and_units
    lam = 2.5
    out = merge(units[:2], tmp_path / "ta", method="task_arithmetic", seed=seed, lam=lam)
    s, a, b, got = params(seed), params(units[0]), params(units[1]), params(out)
    for n in got:
        hand = s[n].double() + lam * ((a[n].double() + b[n].double()) / 2 - s[n].double())
        torch.testing.assert_close(got[n], hand.float(), rtol=0, atol=1e-6)


def test_bfloat16_output(seed_and_units, tmp_path):
    _, units = seed_and_units
    out = merge(units[:2], tmp_path / "bf", out_dtype="bfloat16")
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    a, b, got = params(units[0]), params(units[1]), params(out)
    for n in got:
        torch.testing.assert_close(got[n], ((a[n].double() + b[n].double()) / 2).bfloat16().float(), rtol=0, atol=0)


def test_mismatched_checkpoints_are_refused(seed_and_units, tmp_path):
    seed, units = seed_and_units
    other_arch = make_checkpoint(tmp_path / "arch", model_cfg=ModelConfig(preset="t", n_layers=3, d_model=32,
                                                                          n_heads=2, context=128))
    with pytest.raises(IncompatibleArtifacts, match="num_hidden_layers"):
        merge([units[0], other_arch], tmp_path / "x1")
    other_vocab = make_checkpoint(tmp_path / "vocab", vocab=300)
    with pytest.raises(IncompatibleArtifacts, match="vocab_size"):
        merge([units[0], other_vocab], tmp_path / "x2")
    other_tok = make_checkpoint(tmp_path / "tok", base=seed, seed=7, tokenizer_hash="tok-b")
    with pytest.raises(IncompatibleArtifacts, match="tokenizer"):
        merge([units[0], other_tok], tmp_path / "x3")
    s1 = make_checkpoint(tmp_path / "s1", base=seed, seed=8, meta={"seed_sha": "aaaa"})
    s2 = make_checkpoint(tmp_path / "s2", base=seed, seed=9, meta={"seed_sha": "bbbb"})
    with pytest.raises(IncompatibleArtifacts, match="different seed"):
        merge([s1, s2], tmp_path / "x4")
    assert not (tmp_path / "x1").exists() and not (tmp_path / "x1.partial").exists()


def test_bad_weights_are_refused(seed_and_units, tmp_path):
    _, units = seed_and_units
    with pytest.raises(InputError, match="positive"):
        merge(units[:2], tmp_path / "z", method="weighted", weights=[0.0, 0.0])
    with pytest.raises(InputError, match="negative"):
        merge(units[:2], tmp_path / "z", method="weighted", weights=[1.0, -0.5])
    with pytest.raises(InputError, match="3 weights for 2"):
        merge(units[:2], tmp_path / "z", method="weighted", weights=[1.0, 1.0, 1.0])
    with pytest.raises(InputError, match="seed"):
        merge(units[:2], tmp_path / "z", method="task_arithmetic")


def test_cli_merge_and_one_line_errors(seed_and_units, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _, units = seed_and_units
    assert main(["merge", str(units[0]), str(units[1]), "--out", "m", "--method", "weighted", "--weights", "1,3"]) == 0
    a, b, got = params(units[0]), params(units[1]), params(tmp_path / "m")
    n = next(iter(got))
    torch.testing.assert_close(got[n], ((a[n].double() + 3 * b[n].double()) / 4).float(), rtol=0, atol=1e-7)
    capsys.readouterr()
    other = make_checkpoint(tmp_path / "arch", model_cfg=ModelConfig(preset="t", n_layers=1, d_model=32, n_heads=2,
                                                                     context=128))
    assert main(["merge", str(units[0]), str(other), "--out", "bad"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "different architecture" in err
    assert main(["merge", str(units[0]), str(units[1]), "--out", "bad", "--method", "weighted", "--weights", "0,0"]) == 2
    assert "positive" in capsys.readouterr().err
    assert main(["merge", str(units[0]), str(units[1]), "--out", "bad", "--method", "weighted", "--weights", "a,b"]) == 2
    assert TINY.n_layers == 2


def test_macro_merge_with_token_weights_equals_the_flat_weighted_average(seed_and_units, tmp_path):
    """Macro-merging (issue 17): merging pre-merged groups with token weights on both levels is the
    flat token-weighted mean sum t_i theta_i / sum t_i, for any grouping, and a merged group can be
    merged again; uniform on both levels is the mean of group means (= flat mean only for equal groups)."""
    from datamates.ablation.merge import macro_merge

    _, units = seed_and_units
    t = [1000.0 * (i + 1) for i in range(4)]  # the fixture's unit_tokens
    ps = [params(u) for u in units]
    flat_w = {n: sum(ti * p[n].double() for ti, p in zip(t, ps)) / sum(t) for n in ps[0]}
    for groups in ([[0, 1], [2, 3]], [[0], [1, 2, 3]], [[0, 2], [1], [3]]):
        out = macro_merge([[units[i] for i in g] for g in groups], tmp_path / f"w{len(groups)}{groups[0]}",
                          group_dir=tmp_path / "groups")
        got = params(out)
        for n in got:
            torch.testing.assert_close(got[n].double(), flat_w[n], rtol=1e-6, atol=1e-7)
    # a pre-merged group inside a group (two levels of macro-merging)
    g01 = merge(units[:2], tmp_path / "g01", method="weighted", weights="tokens")
    out = macro_merge([[g01, units[2]], [units[3]]], tmp_path / "nested", group_dir=tmp_path / "groups")
    for n, v in params(out).items():
        torch.testing.assert_close(v.double(), flat_w[n], rtol=1e-6, atol=1e-7)
    # uniform within and across
    uni = macro_merge([[units[0]], units[1:]], tmp_path / "u", group_dir=tmp_path / "groups", within="uniform",
                      across="uniform")
    differs = 0
    for n, v in params(uni).items():
        hand = 0.5 * ps[0][n].double() + 0.5 * sum(p[n].double() for p in ps[1:]) / 3
        torch.testing.assert_close(v.double(), hand, rtol=1e-6, atol=1e-7)
        differs += not torch.allclose(v.double(), sum(p[n].double() for p in ps) / 4, rtol=1e-5, atol=1e-6)
    assert differs > 0  # unequal groups: not the flat uniform mean
    with pytest.raises(InputError, match="at least one checkpoint"):
        macro_merge([[units[0]], []], tmp_path / "bad", group_dir=tmp_path / "groups")


def test_a_merge_is_reused_with_the_same_inputs_and_refused_with_others(seed_and_units, tmp_path):
    """artifacts.produce owns the merged checkpoint: the same inputs return it untouched, other
    inputs at the same folder are a one-line refusal (the old writer silently replaced it)."""
    _, units = seed_and_units
    out = merge(units[:2], tmp_path / "m")
    done = (out / "DONE").read_bytes()
    assert merge(units[:2], out) == out and (out / "DONE").read_bytes() == done
    with pytest.raises(IncompatibleArtifacts, match="made from other inputs"):
        merge(units[1:3], out)
    with pytest.raises(IncompatibleArtifacts, match="made from other inputs"):
        merge(units[:2], out, method="weighted", weights=[1.0, 3.0])
