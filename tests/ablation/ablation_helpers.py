"""Helpers of the ablation tests (imported by tests/ablation/*.py and its conftest)."""

from __future__ import annotations

from pathlib import Path

import torch

from datamates.config.ablation import (
    AblationConfig,
    AblationEvalConfig,
    BranchConfig,
    PartitionConfig,
    SeedConfig,
)
from datamates.config.core import ModelConfig, TrainConfig

TINY = ModelConfig(preset="test", n_layers=2, d_model=32, n_heads=2, context=128)


def make_checkpoint(path: Path, *, seed: int = 0, base: Path | None = None, scale: float = 0.01,
                    model_cfg: ModelConfig = TINY, vocab: int = 100, tokenizer_hash: str = "tok-a",
                    meta: dict | None = None) -> Path:
    """A checkpoint: a fresh tiny GPT-NeoX (or `base` plus noise of std `scale`, drawn with `seed`)."""
    from datamates.core.checkpoint import load_model, save_checkpoint
    from datamates.core.lm import build_model

    if base is None:
        model = build_model(model_cfg, vocab, 0, seed)
    else:
        model = load_model(base)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * scale)
    save_checkpoint(path, model, None, {"global_step": 10, "tokenizer_hash": tokenizer_hash}, meta=meta or {})
    return path



def train_cfg(**kw) -> TrainConfig:
    base = dict(steps=8, micro_batch_size=4, lr=3e-3, warmup_steps=2, checkpoint_every=100, log_every=4,
                device="cpu", seed=0)
    base.update(kw)
    return TrainConfig(**base)


def study_config(**kw) -> AblationConfig:
    base = dict(
        partition=PartitionConfig(by="domain", token_balanced=True, heldout_sequences=8, heldout_max_per_doc=4),
        seed=SeedConfig(steps=6, lr=3e-3, warmup_steps=2),
        branch=BranchConfig(steps=3),
        eval=AblationEvalConfig(lambada_n=16, batch_size=16),
        gold_count=2,
    )
    base.update(kw)
    return AblationConfig(**base)
