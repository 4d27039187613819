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
