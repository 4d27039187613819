"""decode_documents: a token row split at EOS into its documents, each decoded (the encoder cache's and
the baselines' one way to turn a pool sequence into text)."""

from __future__ import annotations

import numpy as np

from datamates.core.tokenizer import decode_documents


def test_decode_documents_by_hand(tiny_pool):
    tok, eos = tiny_pool.tokenizer(), tiny_pool.eos_id
    a, b = tok.encode("the cat sat").ids, tok.encode("on a mat").ids
    n = len(a) + len(b) + 4
    rows = np.array([[*a, eos, eos, *b, eos, eos],  # two documents; the empty piece between two EOS left out
                     [eos] * n,  # nothing but EOS
                     [*b, eos, *a, eos, *b[:2]]], dtype=np.int64)  # no final EOS: the last piece is kept
    text = lambda ids: tok.decode(list(ids), skip_special_tokens=True)  # noqa: E731
    assert decode_documents(tok, rows, eos) == [[text(a), text(b)], [], [text(b), text(a), text(b[:2])]]
