"""Checkpoints load in plain Hugging Face tools with identical logits."""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from datamates.core.checkpoint import export_hf, load_model
from datamates.errors import ArtifactMissing


def test_export_loads_with_automodel_and_gives_same_logits(tiny_ckpt, tiny_pool, tmp_path):
    ours = load_model(tiny_ckpt).eval()
    out = export_hf(tiny_ckpt, tmp_path / "hf")
    assert not (out / "optimizer.safetensors").exists()
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    x = torch.from_numpy(tiny_pool.tokens([1, 3, 5]))
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=x).logits, hf(input_ids=x).logits, rtol=0, atol=0)
    tok = AutoTokenizer.from_pretrained(out)
    text = "The cat sat on the mat."
    assert tok(text)["input_ids"] == tiny_pool.tokenizer().encode(text).ids
    # the checkpoint folder itself also loads directly
    direct = AutoModelForCausalLM.from_pretrained(tiny_ckpt, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=x).logits, direct(input_ids=x).logits, rtol=0, atol=0)


def test_not_a_checkpoint(tmp_path):
    import pytest

    with pytest.raises(ArtifactMissing, match="not a checkpoint"):
        load_model(tmp_path)
