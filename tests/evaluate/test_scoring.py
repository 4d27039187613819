"""Our scores against hand computations: summed continuation log-probs, acc_norm in characters,
lm-eval's tokenization and truncation, packing, and the foundation's reference loss."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datamates.core.loss import TargetExample, encode_pair, score_targets
from datamates.evaluate import encode_pairs, evaluate_task, load_spec, score_groups

from .conftest import write_task

QUESTIONS = [
    {"q": "The capital of France is", "choices": ["Paris", "a small green apple", "Berlin"], "gold": 0},
    {"q": "Water freezes at zero degrees ", "choices": ["Celsius.", "Fahrenheit, usually", "Kelvin"], "gold": 1},
    {"q": "Two plus two equals", "choices": ["four", "four", "five and a half"], "gold": 2},
]


def _hand_ll(model, tok, context: str, continuation: str) -> float:
    """lm-eval by hand: move the context's trailing spaces, encode whole and context, feed
    (ctx + cont)[-(max_len + 1):][:-1] alone, sum the log-probs of the continuation tokens."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    whole = tok.encode(context + continuation, add_special_tokens=False).ids
    ctx = tok.encode(context, add_special_tokens=False).ids
    cont = whole[len(ctx):]
    L = model.config.max_position_embeddings
    inp = (ctx + cont)[-(L + 1):][:-1]
    with torch.no_grad():
        logp = F.log_softmax(model(input_ids=torch.tensor([inp])).logits[0].double(), -1)
    return sum(logp[len(inp) - len(cont) + j, t].item() for j, t in enumerate(cont))


def test_scores_match_hand_computation(tiny_model, tiny_tok, tmp_path):
    spec = write_task(tmp_path, QUESTIONS, {"doc_to_text": "Q: {{q}}\nA:", "doc_to_choice": "choices", "doc_to_target": "gold"})
    res = evaluate_task(tiny_model, tiny_tok, spec, batch_size=2)
    acc, acc_norm = [], []
    for q, s in zip(QUESTIONS, res["samples"]):
        lls = [_hand_ll(tiny_model, tiny_tok, f"Q: {q['q']}\nA:", " " + c) for c in q["choices"]]
        np.testing.assert_allclose(s["lls"], lls, rtol=0, atol=2e-5)
        # duplicates score the same, so the first of them wins (numpy argmax, as lm-eval)
        acc.append(float(int(np.argmax(lls)) == q["gold"]))
        norm = [ll / len(c) for ll, c in zip(lls, q["choices"])]  # characters of the choice, no delimiter
        acc_norm.append(float(int(np.argmax(norm)) == q["gold"]))
        assert s["acc"] == acc[-1] and s["acc_norm"] == acc_norm[-1]
    assert res["samples"][2]["lls"][0] == res["samples"][2]["lls"][1]
    assert res["acc"] == pytest.approx(np.mean(acc)) and res["acc_norm"] == pytest.approx(np.mean(acc_norm))
    se = np.std(acc_norm, ddof=1) / math.sqrt(len(acc_norm))
    assert res["acc_norm_stderr"] == pytest.approx(se)


def test_gold_logprob_and_prob_match_hand_computation(tiny_model, tiny_tok, tmp_path):
    """The continuous metrics (DataDecide): the gold continuation's log-likelihood per UTF-8 byte
    of the continuation (its delimiter included), and its probability mass among the choices."""
    qs = QUESTIONS + [{"q": "Café au", "choices": ["lait", "thé noir"], "gold": 1}]  # multi-byte characters
    spec = write_task(tmp_path, qs, {"doc_to_text": "Q: {{q}}\nA:", "doc_to_choice": "choices", "doc_to_target": "gold"})
    res = evaluate_task(tiny_model, tiny_tok, spec, batch_size=2)
    lp, pm = [], []
    for q in qs:
        conts = [" " + c for c in q["choices"]]
        lls = [_hand_ll(tiny_model, tiny_tok, f"Q: {q['q']}\nA:", c) for c in conts]
        g = q["gold"]
        lp.append(lls[g] / len(conts[g].encode("utf-8")))
        pm.append(math.exp(lls[g]) / sum(math.exp(x) for x in lls))
    assert len(" thé noir".encode()) == 10  # bytes, not the 9 characters
    for s, a, b in zip(res["samples"], lp, pm):
        assert s["gold_logprob"] == pytest.approx(a, abs=1e-5) and s["gold_prob"] == pytest.approx(b, abs=1e-5)
    assert res["gold_logprob"] == pytest.approx(np.mean(lp), abs=1e-5)
    assert res["gold_prob"] == pytest.approx(np.mean(pm), abs=1e-5)
    assert res["gold_prob_stderr"] == pytest.approx(np.std(pm, ddof=1) / math.sqrt(len(pm)), abs=1e-5)
    # duplicate choices split the mass: "four" twice, gold the third
    assert res["samples"][2]["gold_prob"] < 1 - 2 * math.exp(res["samples"][2]["lls"][0]) / sum(
        math.exp(x) for x in res["samples"][2]["lls"]) + 1e-9


def test_acc_norm_flips_on_length(tiny_model, tiny_tok, tmp_path):
    """A long choice loses acc (summed LL) but its per-character LL can win acc_norm."""
    rec = {"q": "She opened the door and", "choices": ["x", "walked slowly into the quiet old house"], "gold": 1}
    spec = write_task(tmp_path, [rec], {"doc_to_text": "q", "doc_to_choice": "choices", "doc_to_target": "gold"})
    s = evaluate_task(tiny_model, tiny_tok, spec)["samples"][0]
    lls = np.array(s["lls"])
    assert s["acc"] == float(np.argmax(lls) == 1)
    assert s["acc_norm"] == float(np.argmax(lls / np.array([1, len(rec["choices"][1])])) == 1)


def test_packed_scoring_equals_one_sequence_per_choice(tiny_model, tiny_tok):
    """Shared-prefix packing (with its block mask and restarted positions) changes no score;
    boolq passages exceed the tiny model's 128 positions, so truncation is covered too."""
    for name in ("hellaswag", "winogrande", "boolq"):
        a = evaluate_task(tiny_model, tiny_tok, _shipped(name), limit=4, batch_size=3)
        b = evaluate_task(tiny_model, tiny_tok, _shipped(name), limit=4, batch_size=8, share_context=False)
        for x, y in zip(a["samples"], b["samples"]):
            np.testing.assert_allclose(x["lls"], y["lls"], rtol=0, atol=2e-5)
        if name in ("boolq", "winogrande"):
            doc = a["samples"][0]
            assert len(doc["lls"]) == 2


def _shipped(name):
    from datamates.evaluate import TASKS_DIR

    return load_spec(TASKS_DIR / f"{name}.yaml")


def test_truncation_matches_lm_eval(tiny_model, tiny_tok):
    """A context longer than the model's positions is cut from the left ((c + t)[-(L+1):][:-1])."""
    ctx = " ".join(["the river ran past the old mill and the town"] * 40)
    conts = [" and the sea", " yes"]
    reqs = encode_pairs(tiny_tok, [(ctx, c) for c in conts])
    assert len(reqs[0][0]) > tiny_model.config.max_position_embeddings
    s = score_groups(tiny_model, [reqs])[0]
    np.testing.assert_allclose(s.ll, [_hand_ll(tiny_model, tiny_tok, ctx, c) for c in conts], atol=2e-5)


def test_encode_pairs_matches_encode_pair(tiny_tok):
    pairs = [("Question: why?\nAnswer:", " because"), ("ends with space ", "x"), ("a\n\n", "b c"), ("ctx", " ctx")]
    assert encode_pairs(tiny_tok, pairs) == [encode_pair(tiny_tok, c, t) for c, t in pairs]


def test_reference_set_equals_foundation_reference_loss(tiny_model, tiny_tok, lambada_path):
    """LAMBADA through the task spec = core.loss.score_targets on load_lambada's examples."""
    res = evaluate_task(tiny_model, tiny_tok, _shipped("lambada_openai"), limit=40, batch_size=8)
    recs = [json.loads(line) for line in lambada_path.read_text().splitlines()[:40]]
    ex = [TargetExample(*map(tuple, encode_pair(tiny_tok, r["context"], " " + r["continuation"]))) for r in recs]
    ref = score_targets(tiny_model, ex, batch_size=8)
    assert res["loss"] == pytest.approx(ref.mean_token_loss(), abs=1e-6)
    assert res["acc"] == pytest.approx(ref.greedy.mean())
    assert res["n_tokens"] == ref.n_tokens.sum()
    assert res["ppl"] == pytest.approx(math.exp(ref.nll.mean()), rel=1e-6)


def test_eager_attention_gives_the_same_scores(tiny_ckpt, tiny_tok, tiny_model):
    from datamates.core.checkpoint import load_model

    eager = load_model(tiny_ckpt)
    eager.config._attn_implementation = "eager"
    for m in eager.modules():
        if hasattr(m, "config"):
            m.config._attn_implementation = "eager"
    a = evaluate_task(tiny_model, tiny_tok, _shipped("hellaswag"), limit=4)
    b = evaluate_task(eager, tiny_tok, _shipped("hellaswag"), limit=4)
    for x, y in zip(a["samples"], b["samples"]):
        np.testing.assert_allclose(x["lls"], y["lls"], atol=2e-5)


def test_fewshot_prefix_is_seeded_and_excludes_the_example(tiny_tok):
    from datamates.evaluate.spec import fewshot_prefixes, load_docs

    spec = _shipped("arc_easy")
    docs = load_docs(spec)
    a = fewshot_prefixes(spec, docs, 20, 3, 1234)
    assert a == fewshot_prefixes(spec, docs, 20, 3, 1234)
    assert a != fewshot_prefixes(spec, docs, 20, 3, 1)
    for i, pre in enumerate(a):
        shots = pre.split("\n\n")[:-1]
        assert len(shots) == 3 and docs[i].shot.removesuffix("\n\n") not in shots
        assert all(s.startswith("Question: ") and "\nAnswer: " in s for s in shots)
