"""The perplexity filter: its log-perplexity equals a hand computation with the model's logits,
the three keep rules order the candidates as stated, a pool-tokenizer checkpoint is scored on the
pool's tokens, and a path that is no LM is one clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamates.baselines.perplexity import PerplexityConfig, perplexity_filter
from datamates.core.checkpoint import load_model
from datamates.errors import ConfigError, InputError
from datamates.selection.scores_io import read_scores, scores_meta


@pytest.mark.usefixtures("one_thread")
def test_log_perplexity_and_keep_rules(tiny_pool, tiny_ckpt, tmp_path):
    ids = np.arange(1, len(tiny_pool), 401)[:40]
    out = perplexity_filter(PerplexityConfig(model=str(tiny_ckpt), keep="low", shard_size=16), tiny_pool, ids,
                            tmp_path / "low")
    got, s = read_scores(out)
    meta = scores_meta(out)
    assert np.array_equal(got, ids) and meta["same_tokenizer"] is True
    assert meta["tokens"]["lm_forward"] == len(ids) * tiny_pool.seq_len and meta["flops_per_token"]["lm_forward"] > 0
    # hand: mean next-token NLL from the logits
    model = load_model(tiny_ckpt).eval()
    x = torch.as_tensor(tiny_pool.tokens(ids[:5]))
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=x).logits.double(), -1)
    want = -logp[:, :-1].gather(-1, x[:, 1:, None])[..., 0].mean(1).numpy()
    np.testing.assert_allclose(s[:5], want, rtol=1e-5)
    mid = read_scores(perplexity_filter(PerplexityConfig(model=str(tiny_ckpt), keep="middle"), tiny_pool, ids,
                                        tmp_path / "mid"))[1]
    high = read_scores(perplexity_filter(PerplexityConfig(model=str(tiny_ckpt), keep="high"), tiny_pool, ids,
                                         tmp_path / "high"))[1]
    np.testing.assert_allclose(high, -s, rtol=1e-6)
    np.testing.assert_allclose(mid, np.abs(s - np.median(s.astype(np.float64))), rtol=1e-4, atol=1e-5)


def test_not_a_language_model(tiny_pool, tmp_path):
    (tmp_path / "nolm").mkdir()
    with pytest.raises(InputError, match="cannot load a causal language model"):
        perplexity_filter(PerplexityConfig(model=str(tmp_path / "nolm")), tiny_pool, np.arange(4), tmp_path / "x")
    with pytest.raises(ConfigError, match="baselines.perplexity.model"):
        perplexity_filter(PerplexityConfig(), tiny_pool, np.arange(4), tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.usefixtures("one_thread")
def test_retokenized_text_path_agrees(tiny_pool, tiny_ckpt):
    """The path for an LM with another tokenizer (decode the sequence, re-tokenize) gives nearly the
    pool-token path's log-perplexities when the tokenizer is in fact the same."""
    from transformers import AutoTokenizer

    from datamates.baselines.perplexity import load_reference_lm, log_perplexity

    ids = np.arange(5, len(tiny_pool), 613)[:24]
    model, tok, _ = load_reference_lm(str(tiny_ckpt), torch.device("cpu"))
    assert isinstance(tok, type(AutoTokenizer.from_pretrained(str(tiny_ckpt))))
    cfg = PerplexityConfig(model=str(tiny_ckpt))
    a, na = log_perplexity(model, tok, tiny_pool, ids, cfg, same_tok=True)
    b, nb = log_perplexity(model, tok, tiny_pool, ids, cfg, same_tok=False)
    assert na == len(ids) * tiny_pool.seq_len and 0 < nb
    assert np.corrcoef(a, b)[0, 1] > 0.8
