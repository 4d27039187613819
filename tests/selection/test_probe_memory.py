"""First-order probing at scale: Llama-style layers (RMSNorm, no biases, untied or tied head) against a
brute-force computation, layer-streamed per-sample gradients (micro-batches, chunks, ghost norms)
against the all-in-memory computation, and the micro-batch chooser's refusal naming its knob.

Brute force: per candidate, a real backward of lm_loss on that row alone, torch's global-norm clip
(ProbeState.clipped_grad), the exact AdamW update theta'(x) (ProbeState.write_update), a real
backward of L_ref at the anchor, and the label <grad L_ref(a), theta'(x) - a> (+ L_ref(theta0) -
L_ref(theta) for the momentum anchor) summed in float64: the linearisation the first-order probe
computes, without any of its per-sample-gradient or u(x) machinery."""

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from datamates.config.core import TrainConfig
from datamates.config.probe import ProbeConfig
from datamates.core.reference import ReferenceBatches, load_reference
from datamates.core.train_loop import lm_loss
from datamates.errors import ConfigError
from datamates.selection.probe import FirstOrderProber, PerSampleGrads, ProbeState, probe
from datamates.selection.probe.first_order import GiB, first_order_constants, plan_micro_batch
from datamates.selection.probe.oracle import AdamWHyper

CANDIDATES = np.array([1, 3, 5, 777, 2001, 4093])
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ref(tiny_pool, lambada_path):
    return load_reference(str(lambada_path), tiny_pool.tokenizer(), size=8, seed=0)


def llama_state(pool, *, tied: bool, clip: float | None, seed: int = 0) -> ProbeState:
    """A tiny random Llama (float64) after 3 real torch AdamW steps, as a ProbeState."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=tied, rms_norm_eps=1e-5, attn_implementation="eager")
    model = LlamaForCausalLM(cfg).to(torch.float64)
    model.train()
    tc = TrainConfig(lr=3e-3, grad_clip=clip, device="cpu")
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=(tc.beta1, tc.beta2), eps=tc.eps,
                            weight_decay=tc.weight_decay, foreach=False)
    for step in range(3):
        opt.zero_grad()
        lm_loss(model, torch.from_numpy(pool.tokens(np.arange(8) * 2 + 100 * step))).backward()
        opt.step()
    params = [p for p in model.parameters() if p.requires_grad]
    m = [opt.state[p]["exp_avg"].clone() for p in params]
    v = [opt.state[p]["exp_avg_sq"].clone() for p in params]
    steps = [float(opt.state[p]["step"]) for p in params]
    hyper = AdamWHyper(2e-3, tc.beta1, tc.beta2, tc.eps, clip, "test")
    return ProbeState(model, tc, hyper, m, v, steps, [tc.weight_decay] * len(params), torch.device("cpu"), "fp32", 3)


def brute_force_labels(state: ProbeState, rb: ReferenceBatches, X: torch.Tensor, anchor: str) -> np.ndarray:
    before = rb.loss(state.model)
    theta = [p.detach().clone() for p in state.params]
    if anchor == "momentum":
        a_model = state.write_update(zero=True)
        const = rb.loss(a_model) - before
    else:
        a_model, const = state.model, 0.0
    a = [p.detach().clone() for p in a_model.parameters()]
    a_model.zero_grad(set_to_none=True)
    rb.backward(a_model)
    r = [p.grad.detach().clone() for p in a_model.parameters()]
    a_model.zero_grad(set_to_none=True)
    out = []
    for k in range(len(X)):
        state.clipped_grad(X[k])  # a real backward on x alone, clipped as training clips
        after = [p.detach().clone() for p in state.write_update().parameters()]
        out.append(const + sum(float((ri.double() * (t - ai).double()).sum()) for ri, t, ai in zip(r, after, a)))
    for p, t in zip(state.params, theta):
        assert torch.equal(p.detach(), t)  # theta untouched
    return np.array(out)


@pytest.mark.parametrize(("tied", "anchor", "clip"), [(False, "checkpoint", None), (False, "momentum", 0.05),
                                                      (True, "momentum", None), (True, "checkpoint", 0.05)])
def test_llama_first_order_matches_brute_force(tiny_pool, ref, tied, anchor, clip):
    state = llama_state(tiny_pool, tied=tied, clip=clip)
    rb = ReferenceBatches(ref.examples, max_len=64, batch_size=4)
    X = torch.from_numpy(tiny_pool.tokens(CANDIDATES))[:, :32]
    expected = brute_force_labels(state, rb, X, anchor)
    before = np.array([rb.loss(state.model)])
    consts = first_order_constants(state, rb, np.ones((1, len(ref))), before, anchor)
    one = plan_micro_batch(state.model, state.params, 32, candidate_batch=1, budget_bytes=100 * GiB)
    for budget in (None, (one.per_sample + one.workspace_min) / GiB):  # all in memory; streamed, 1 per pass
        fo = FirstOrderProber(state, consts, candidate_batch=4, memory_budget_gb=budget)
        assert fo.plan(32).micro_batch == (4 if budget is None else 1)
        delta, loss, gnorm = fo.labels(X)
        if clip is not None:
            assert (gnorm > 2 * clip).all()  # clipping is active
        np.testing.assert_allclose(delta[:, 0], expected, rtol=1e-6, atol=1e-9 * np.abs(expected).max())
        with torch.no_grad():  # lm_loss computes the cross-entropy in float32
            np.testing.assert_allclose(loss, [float(lm_loss(state.model, x[None])) for x in X], rtol=1e-6)


def test_llama_per_sample_grads_match_autograd(tiny_pool):
    state = llama_state(tiny_pool, tied=True, clip=None)
    X = torch.from_numpy(tiny_pool.tokens(CANDIDATES[:3]))[:, :32]
    _, dense, sparse = PerSampleGrads(state.model, state.params)(X)
    assert not sparse and set(dense) == set(range(len(state.params)))  # tied: the embedding is dense
    kinds = {type(m).__name__ for m in state.model.modules()}
    assert "LlamaRMSNorm" in kinds
    for k in range(3):
        state.model.zero_grad()
        lm_loss(state.model, X[k : k + 1]).backward()
        for i, p in enumerate(state.params):
            err = float((dense[i][k] - p.grad).abs().max() / p.grad.abs().max())
            assert err < 1e-6, (state.names[i], err)


def test_streaming_equals_in_memory(tiny_ckpt, tiny_pool, ref):
    """GPT-NeoX (LayerNorm, biases, untied head): micro-batches of 2 out of 4, parameters chunked one
    sample at a time, ghost norms where they are cheaper (T = 16 < in x out / (in + out)) give the
    all-in-memory labels."""
    state = ProbeState.from_checkpoint(tiny_ckpt, dtype=torch.float64)
    state.hyper.grad_clip = 0.05
    rb = ReferenceBatches(ref.examples, max_len=128, batch_size=4)
    consts = first_order_constants(state, rb, np.ones((1, len(ref))), np.array([rb.loss(state.model)]), "momentum")
    X = torch.from_numpy(tiny_pool.tokens(CANDIDATES[:4]))[:, :16]
    full = FirstOrderProber(state, consts).labels(X)
    big = plan_micro_batch(state.model, state.params, 16, candidate_batch=4, budget_bytes=100 * GiB)
    assert big.micro_batch == 4
    budget = 2 * big.per_sample + big.workspace_min  # room for exactly 2 candidates, the least workspace
    fo = FirstOrderProber(state, consts, candidate_batch=4, memory_budget_gb=budget / GiB)
    assert fo.plan(16).micro_batch == 2
    streamed = fo.labels(X)
    for a, b in zip(full, streamed):
        np.testing.assert_allclose(b, a, rtol=1e-10)
    assert (full[2] > 0.05).all()  # clipped


def test_chooser_formula_and_refusal(tiny_ckpt, tiny_pool, ref, tmp_path):
    state = ProbeState.from_checkpoint(tiny_ckpt)
    p = plan_micro_batch(state.model, state.params, 64, candidate_batch=16, budget_bytes=100 * GiB)
    assert p.micro_batch == 16 and p.per_sample == sum(p.breakdown.values())
    budget = p.workspace_min + 5 * p.per_sample + p.per_sample // 2
    assert plan_micro_batch(state.model, state.params, 64, candidate_batch=16, budget_bytes=budget).micro_batch == 5
    with pytest.raises(ConfigError, match=r"^probe\.memory_budget_gb: one 64-token candidate needs"):
        plan_micro_batch(state.model, state.params, 64, candidate_batch=16, budget_bytes=p.per_sample)
    cfg = ProbeConfig(mode="first_order", device="cpu", chunk_size=4, candidate_batch=4, memory_budget_gb=1e-5)
    with pytest.raises(ConfigError, match="probe.memory_budget_gb") as e:
        probe(cfg, tiny_ckpt, tiny_pool, CANDIDATES[:4], tmp_path / "p", reference=ref)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "p").exists()  # nothing half-written under the final name


def test_memory_budget_is_not_part_of_the_labels_identity(tiny_ckpt, tiny_pool, ref, tmp_path):
    """After an out-of-memory stop the user lowers probe.memory_budget_gb and re-runs over the same
    output: that must resume (or find it finished), not be refused as a different configuration."""
    kw = dict(mode="first_order", device="cpu", chunk_size=4, candidate_batch=4)
    out = probe(ProbeConfig(**kw), tiny_ckpt, tiny_pool, CANDIDATES[:4], tmp_path / "p", reference=ref)
    again = probe(ProbeConfig(**kw, memory_budget_gb=50.0), tiny_ckpt, tiny_pool, CANDIDATES[:4], tmp_path / "p",
                  reference=ref)
    assert again == out
