"""The influence model's encoder input and pooling, against naive reference computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamates.config.influence import EncoderConfig
from datamates.errors import ConfigError
from datamates.selection.encode import (
    TokenCache,
    check_encoder,
    load_encoder_tokenizer,
    make_chunks,
    resolve_backbone,
)
from datamates.selection.influence_model import InfluenceModel, embed_chunks, load_encoder

pytestmark = pytest.mark.usefixtures("im_one_thread")


@pytest.fixture(scope="module")
def minilm():
    path = resolve_backbone("minilm")
    return path, load_encoder_tokenizer(str(path))


def test_specials_detected(minilm):
    _, tok = minilm
    assert tok.prefix == [101] and tok.suffix == [102] and tok.pad_id == 0  # [CLS] ... [SEP], [PAD]


def test_chunk_layouts(minilm):
    _, tok = minilm
    content = [np.arange(1000, 1030), np.arange(2000, 2005), np.zeros(0, np.int64)]
    # specials: every chunk is [CLS] piece [SEP], pieces of chunk_len - 2 = 14 tokens
    chunks, owner = make_chunks(content, EncoderConfig(max_tokens=48, chunk_len=16), tok)
    assert owner.tolist() == [0, 0, 0, 1, 2]
    assert all(c[0] == 101 and c[-1] == 102 and len(c) <= 16 for c in chunks)
    assert np.concatenate([c[1:-1] for c in chunks[:3]]).tolist() == list(range(1000, 1030))
    assert chunks[4].tolist() == [101, 102]
    # mates: [CLS] text [SEP] cut into chunk_len pieces; the second chunk has no [CLS]
    chunks, owner = make_chunks(content[:2], EncoderConfig(max_tokens=32, chunk_len=16, chunking="mates"), tok)
    assert owner.tolist() == [0, 0, 1]
    assert chunks[0].tolist() == [101, *range(1000, 1015)]
    assert chunks[1].tolist() == [*range(1015, 1030), 102]
    assert chunks[2].tolist() == [101, *range(2000, 2005), 102]


def test_mates_chunks_match_hf_tokenizer_call(minilm, tiny_pool, tmp_path):
    """MATES: tokenizer(text, max_length=1024, truncation, padding=max_length) viewed as 2 x 512;
    ours (cached content + chunking 'mates') gives the same non-pad tokens per chunk."""
    from transformers import AutoTokenizer

    path, tok = minilm
    enc = EncoderConfig(max_tokens=64, chunk_len=32, chunking="mates")
    cache = TokenCache(tiny_pool, enc, tmp_path)
    ids = np.array([3, 500, 9000])
    texts = cache.texts(ids)
    hf = AutoTokenizer.from_pretrained(str(path))
    ref = hf(texts, max_length=64, truncation=True, padding="max_length", return_tensors="np")
    chunks, owner = make_chunks(cache.get(ids), enc, tok)
    for i in range(len(ids)):
        rows = ref["input_ids"][i].reshape(2, 32)
        masks = ref["attention_mask"][i].reshape(2, 32)
        want = [r[m == 1].tolist() for r, m in zip(rows, masks) if m.any()]
        assert [c.tolist() for c in np.array(chunks, dtype=object)[owner == i]] == want


def test_token_cache_reused_and_keyed(tiny_pool, tmp_path):
    enc = EncoderConfig(max_tokens=64, chunk_len=32)
    ids = np.array([5, 17, 4000, 12])
    c1 = TokenCache(tiny_pool, enc, tmp_path)
    assert c1.ensure(ids) == 4
    got = c1.get(ids)
    # a new handle (a later stage) finds everything cached
    c2 = TokenCache(tiny_pool, enc, tmp_path)
    assert c2.ensure(ids) == 0
    assert all(np.array_equal(a, b) for a, b in zip(got, c2.get(ids)))
    # the same as tokenizing the decoded text directly, cut to the content budget (2 x 30)
    for t, g in zip(c1.texts(ids), got):
        assert g.tolist() == c1.tok.backend.encode(t, add_special_tokens=False).ids[:60]
    # another budget is another cache
    assert TokenCache(tiny_pool, EncoderConfig(max_tokens=128, chunk_len=32), tmp_path).root != c1.root


def test_embed_chunks_equals_naive_per_sequence(minilm):
    """Length-sorted, padded batches + per-sequence pooled sums == each chunk encoded alone
    (no padding), hidden states of all chunks concatenated and averaged."""
    path, tok = minilm
    torch.manual_seed(0)
    model = InfluenceModel(load_encoder(path)).eval()
    rng = np.random.default_rng(0)
    content = [rng.integers(1000, 20000, n) for n in (3, 40, 17, 0, 25)]
    chunks, owner = make_chunks(content, EncoderConfig(max_tokens=64, chunk_len=16), tok)
    got = embed_chunks(model, chunks, owner, len(content), batch_size=3, pad_id=tok.pad_id, device=torch.device("cpu"))
    with torch.inference_mode():
        for i in range(len(content)):
            hs = [model.encoder(input_ids=torch.as_tensor(c)[None]).last_hidden_state[0]
                  for c, o in zip(chunks, owner) if o == i]
            want = torch.cat(hs).mean(0).numpy()
            np.testing.assert_allclose(got[i], want, atol=2e-5, rtol=1e-4)


def test_not_an_encoder_is_refused(tiny_model_cfg, tmp_path):
    from datamates.core.lm import build_model

    lm = tmp_path / "gpt_neox"
    build_model(tiny_model_cfg, 512, 0, seed=0).save_pretrained(str(lm))
    with pytest.raises(ConfigError, match="not an encoder"):
        check_encoder(lm)
    with pytest.raises(ConfigError, match="no such folder"):
        resolve_backbone(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="no config.json"):
        check_encoder(tmp_path)
