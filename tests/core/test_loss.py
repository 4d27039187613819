"""Target-token losses against a naive per-example loop."""

import math

import numpy as np
import torch
import torch.nn.functional as F

from datamates.core.checkpoint import load_model
from datamates.core.loss import (
    TargetExample,
    encode_pair,
    load_lambada,
    perplexity_and_bpb,
    reference_loss,
    score_targets,
    sequence_nll,
)


def _naive(model, ex: TargetExample) -> tuple[float, bool]:
    """One example at a time, contexts cut from the left to the model's 128 positions."""
    full = list(ex.context + ex.target)[-129:][:-1] + [ex.target[-1]]
    x = torch.tensor([full[:-1]])
    with torch.no_grad():
        lp = F.log_softmax(model(input_ids=x).logits[0].float(), -1)
    n = len(full) - len(ex.target)
    nll = -sum(lp[n - 1 + j, t].item() for j, t in enumerate(ex.target))
    greedy = all(lp[n - 1 + j].argmax().item() == t for j, t in enumerate(ex.target))
    return nll, greedy


def test_score_targets_matches_naive_loop(tiny_ckpt, tiny_pool, lambada_path):
    model = load_model(tiny_ckpt)
    ex = load_lambada(lambada_path, tiny_pool.tokenizer(), n=24, seed=0)
    s = score_targets(model, ex, batch_size=5)
    for i, e in enumerate(ex):
        nll, greedy = _naive(model, e)
        assert math.isclose(s.nll[i], nll, rel_tol=1e-5), i
        assert s.n_tokens[i] == len(e.target) and s.greedy[i] == greedy
    assert reference_loss(model, ex, batch_size=24) == s.nll.sum() / s.n_tokens.sum()


def test_lambada_subsample_is_seeded(tiny_pool, lambada_path):
    tok = tiny_pool.tokenizer()
    a = load_lambada(lambada_path, tok, n=10, seed=1234)
    assert a == load_lambada(lambada_path, tok, n=10, seed=1234)
    assert a != load_lambada(lambada_path, tok, n=10, seed=1)
    assert len(load_lambada(lambada_path, tok)) == 5153


def test_encode_pair_moves_trailing_space(tiny_pool):
    tok = tiny_pool.tokenizer()
    c1, t1 = encode_pair(tok, "The answer is ", "yes")
    c2, t2 = encode_pair(tok, "The answer is", " yes")
    assert (c1, t1) == (c2, t2)
    assert c1 + t1 == tok.encode("The answer is yes").ids


def test_sequence_nll_and_bpb(tiny_ckpt, tiny_pool):
    model = load_model(tiny_ckpt)
    x = tiny_pool.tokens([2, 4, 6])
    got = sequence_nll(model, x, batch_size=2)
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(x)).logits
    lp = F.log_softmax(logits.float(), -1)
    want = [-lp[i, np.arange(63), x[i, 1:]].sum().item() for i in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    ppl, bpb = perplexity_and_bpb(10.0, 5, 8.0)
    assert math.isclose(ppl, math.exp(2.0)) and math.isclose(bpb, 10.0 / math.log(2) / 8.0)
