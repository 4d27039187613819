"""Helpers shared by the test folders (import as `datamates_testing`; conftest modules cannot be
imported by name when several folders have one)."""

from datamates.config.core import PoolConfig, TokenizerConfig, TrainConfig


def tiny_pool_config(inputs: list[str], seq_len: int = 64, vocab: int = 512) -> PoolConfig:
    return PoolConfig(inputs=inputs, seq_len=seq_len, shard_sequences=4096,
                      tokenizer=TokenizerConfig(vocab_size=vocab))


def tiny_train_cfg(**kw) -> TrainConfig:
    base = dict(steps=8, micro_batch_size=4, lr=3e-3, warmup_steps=2, checkpoint_every=4, log_every=4,
                device="cpu", seed=0)
    base.update(kw)
    return TrainConfig(**base)


# one tiny run configuration for the CLI's bad-input and replaceability cases: a 1-layer, 16-wide
# GPT-NeoX on 32-token sequences
TINY_YAML = """\
name: tiny
pool:
  seq_len: 32
  tokenizer:
    vocab_size: 300
model:
  n_layers: 1
  d_model: 16
  n_heads: 2
  context: 32
train:
  steps: 2
  micro_batch_size: 2
  lr: 0.003
  warmup_steps: 0
  checkpoint_every: 1
  log_every: 1
  device: cpu
eval:
  device: cpu
  batch_size: 4
"""
