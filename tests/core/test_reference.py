"""Reference sets: sources, the FLAN context/target split, pool references, and the batched
evaluator against the foundation's `reference_loss` and a plain autograd sum."""

import gzip
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datamates.core.checkpoint import load_model
from datamates.core.loss import TargetExample, load_lambada, reference_loss
from datamates.core.reference import ReferenceBatches, load_reference, read_pairs, record_pair
from datamates.errors import ConfigError, IncompatibleArtifacts, InputError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_lambada_by_name_is_load_lambada(tiny_pool, lambada_path, monkeypatch):
    monkeypatch.setenv("DATAMATES_DATA", str(lambada_path.parents[1]))
    tok = tiny_pool.tokenizer()
    ref = load_reference("lambada_openai", tok, size=16, seed=1234)
    assert ref.examples == load_lambada(lambada_path, tok, n=16, seed=1234)
    assert len(ref) == 16 and ref.n_available == 5153 and ref.kind == "lambada"
    assert ref.fingerprint == load_reference(str(lambada_path), tok, size=16, seed=1234).fingerprint
    assert ref.fingerprint != load_reference(str(lambada_path), tok, size=16, seed=1).fingerprint
    d = ref.describe()
    assert d["size"] == 16 and d["seed"] == 1234 and d["n_target_tokens"] == ref.n_target_tokens


def test_flan_split_is_input_then_rationale_and_answer(tiny_pool, data, tmp_path):
    lines = []
    with gzip.open(data / "reference" / "flan_v2_cot_train.jsonl.gz", "rt") as fh:
        for _ in range(5):
            lines.append(fh.readline())
    f = tmp_path / "flan.jsonl.gz"
    with gzip.open(f, "wt") as fh:
        fh.writelines(lines)
    tok = tiny_pool.tokenizer()
    ref = load_reference(str(f), tok, size=None)
    assert len(ref) == 5
    for line, ex in zip(lines, ref.examples):
        r = json.loads(line)
        ctx, tgt = record_pair(r)
        assert ctx + tgt == r["text"]  # context + target is the record's text
        assert tgt.startswith("\n") and tgt.endswith(f"So the answer is: {r['target']}")
        assert tok.decode(list(ex.context + ex.target)) == r["text"]
        assert tok.decode(list(ex.context)) == r["input"]


def test_record_shapes():
    assert record_pair({"context": "a b", "continuation": "c"}) == ("a b", " c")
    assert record_pair({"context": "a b ", "continuation": "c"}) == ("a b ", "c")
    assert record_pair({"input": "q", "target": "(A)"}) == ("q", "\n(A)")
    assert record_pair({"prompt": "p", "response": "r"}) == ("p", "r")
    assert record_pair({"query": "q", "choices": ["x", "y"], "gold": 1}) == ("q", " y")
    assert record_pair({"text": "t"}) == ("", "t")
    assert record_pair({"foo": 1}) is None


def test_bad_reference_files_are_one_line_errors(tmp_path, tiny_pool):
    f = tmp_path / "r.jsonl"
    f.write_text('{"prompt": "a", "response": "b"}\n{not json\n')
    with pytest.raises(InputError, match=r"r.jsonl:2: malformed JSON"):
        read_pairs(f)
    f.write_text('{"prompt": "a", "response": "b"}\n{"question": "x"}\n')
    with pytest.raises(InputError, match=r"r.jsonl:2: cannot tell context from target"):
        read_pairs(f)
    f.write_text("\n")
    with pytest.raises(InputError, match="no examples"):
        read_pairs(f)
    with pytest.raises(ConfigError, match="lambada_openai"):
        load_reference("no_such_set", tiny_pool.tokenizer())


def test_pool_reference_whole_sequences(tiny_pool, tmp_path):
    exclude = np.arange(0, len(tiny_pool), 2)
    ref = load_reference(str(tiny_pool.path), size=8, seed=3, exclude=exclude, tokenizer_hash=tiny_pool.tokenizer_hash)
    assert len(ref) == 8 and ref.kind == "pool"
    assert np.all(ref.pool_ids % 2 == 1)  # disjoint from the excluded ids
    rows = tiny_pool.tokens(ref.pool_ids)
    for ex, row in zip(ref.examples, rows):
        assert ex.context == () and ex.target == tuple(row.tolist())
    again = load_reference(str(tiny_pool.path), size=8, seed=3, exclude=exclude)
    assert np.array_equal(again.pool_ids, ref.pool_ids)
    chosen = load_reference(str(tiny_pool.path), ids=np.array([5, 7]))
    assert list(chosen.pool_ids) == [5, 7]
    with pytest.raises(IncompatibleArtifacts, match="tokenizer"):
        load_reference(str(tiny_pool.path), size=2, tokenizer_hash="other")
    with pytest.raises(InputError, match="built pool"):
        load_reference(str(tmp_path))


def test_halves_are_disjoint_and_cover(tiny_pool, lambada_path):
    ref = load_reference(str(lambada_path), tiny_pool.tokenizer(), size=11, seed=0)
    h = ref.halves()
    assert sorted(np.bincount(h)) == [5, 6]
    assert np.array_equal(h, ref.halves())


@pytest.mark.parametrize("batch_size,max_tokens", [(32, None), (3, None), (32, 300)])
def test_batches_equal_reference_loss(tiny_ckpt, tiny_pool, lambada_path, batch_size, max_tokens):
    model = load_model(tiny_ckpt)
    ex = load_lambada(lambada_path, tiny_pool.tokenizer(), n=20, seed=0)
    ex.append(TargetExample((), tuple(tiny_pool.tokens([1])[0].tolist())))  # no context: whole sequence
    rb = ReferenceBatches(ex, max_len=128, batch_size=batch_size, max_tokens=max_tokens)
    assert math.isclose(rb.loss(model), reference_loss(model, ex, batch_size=7), rel_tol=1e-6)
    assert rb.n_tokens[-1] == 63 and rb.real_tokens <= rb.padded_tokens


def test_batches_backward_is_the_gradient(tiny_ckpt, tiny_pool, lambada_path):
    model = load_model(tiny_ckpt)
    ex = load_lambada(lambada_path, tiny_pool.tokenizer(), n=6, seed=0)
    w = np.array([1, 0, 1, 1, 0, 1])
    rb = ReferenceBatches(ex, max_len=128, batch_size=4)
    model.zero_grad()
    loss = rb.backward(model, weights=w)
    got = [p.grad.clone() for p in model.parameters()]
    # plain autograd over the kept examples, one at a time
    model.zero_grad()
    total, n_tok = 0.0, sum(len(e.target) for e, k in zip(ex, w) if k)
    for e, k in zip(ex, w):
        if not k:
            continue
        full = list(e.context + e.target)[-129:]
        x = torch.tensor([full[:-1]])
        lp = F.log_softmax(model(input_ids=x).logits[0].float(), -1)
        T = len(full) - 1
        nll = -sum(lp[T - len(e.target) + j, t] for j, t in enumerate(e.target))
        (nll / n_tok).backward()
        total += float(nll.detach()) / n_tok
    assert math.isclose(loss, total, rel_tol=1e-5)
    for g, p in zip(got, model.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-7)
