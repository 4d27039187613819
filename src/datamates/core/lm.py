"""The language model: Hugging Face `GPTNeoXForCausalLM` (Pythia) built from a ModelConfig,
no download. MATES's architecture (docs/methods.md#language-model-and-training-recipe): parallel residual, LayerNorm, GELU MLP 4x,
rotary on 25% of head dims, untied embeddings, bias on, N(0, 0.02) init."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from datamates.config.core import ModelConfig
from datamates.errors import ConfigError


def padded_vocab(vocab_size: int, multiple: int = 128) -> int:
    """GPT-NeoX pads its 50,277-token vocabulary to 50,304 rows; same rule here."""
    return ((vocab_size + multiple - 1) // multiple) * multiple


def hf_config(cfg: ModelConfig, tokenizer_vocab: int, eos_id: int) -> GPTNeoXConfig:
    vocab = cfg.vocab_size or padded_vocab(tokenizer_vocab)
    if vocab < tokenizer_vocab:
        raise ConfigError(f"model.vocab_size = {vocab}: smaller than the tokenizer's {tokenizer_vocab} tokens")
    return GPTNeoXConfig(
        vocab_size=vocab,
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        intermediate_size=cfg.d_ff or 4 * cfg.d_model,
        hidden_act="gelu",
        rotary_pct=cfg.rotary_pct,
        rotary_emb_base=10000,
        max_position_embeddings=cfg.context,
        initializer_range=cfg.init_std,
        layer_norm_eps=1e-5,
        use_cache=False,
        use_parallel_residual=cfg.parallel_residual,
        tie_word_embeddings=cfg.tie_embeddings,
        attention_dropout=0.0,
        hidden_dropout=0.0,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        attn_implementation=cfg.attn_implementation,
    )


def build_model(cfg: ModelConfig, tokenizer_vocab: int, eos_id: int, seed: int) -> GPTNeoXForCausalLM:
    """A freshly initialised model; the same seed gives the same weights on every process."""
    config = hf_config(cfg, tokenizer_vocab, eos_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPTNeoXForCausalLM(config)
    return model


def n_params(model: torch.nn.Module, non_embedding: bool = False) -> int:
    total = sum(p.numel() for p in model.parameters())
    if non_embedding:
        for name, p in model.named_parameters():
            if "embed_in" in name or "embed_out" in name or "lm_head" in name:
                total -= p.numel()
    return total


def flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    """Training FLOPs per token: 6N (N = all parameters incl. the output head, excluding the input
    embedding lookup) + 6 * n_layers * seq_len * d_model for attention scores (Chinchilla / PaLM
    appendix). A forward pass alone is a third of this."""
    cfg = model.config
    n = n_params(model) - model.get_input_embeddings().weight.numel()
    return 6.0 * n + 6.0 * cfg.num_hidden_layers * seq_len * cfg.hidden_size


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device = {device!r}: CUDA is not available on this machine; use 'cpu' or 'auto'")
    return torch.device(device)


def autocast(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (precision auto/bf16), fp32 elsewhere."""
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def named_trainable(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Parameter]]:
    for name, p in model.named_parameters():
        if p.requires_grad:
            yield name, p
