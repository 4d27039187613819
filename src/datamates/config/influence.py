"""Configs of the data influence model: fit, score, select (MATES §4, §2.4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from datamates.config.base import knob


@dataclass(kw_only=True)
class FitConfig:
    mode: Literal["finetune", "frozen"] = knob(
        "finetune", "finetune: the whole encoder (MATES); frozen: cached embeddings + a small head"
    )
    backbone: str = knob("minilm", "encoder: 'minilm' (offline, bundled), a local path, or a hub name")
    max_tokens: int = knob(1024, "encoder tokens per sequence (split into chunks)", ge=8)
    chunk_len: int = knob(512, "encoder tokens per chunk", ge=8)
    lr: float = knob(5e-5, "learning rate", gt=0)
    weight_decay: float = knob(0.01, "weight decay", ge=0)
    epochs: int = knob(5, "passes over the training labels", ge=1)
    batch_size: int = knob(32, "sequences per step", ge=1)
    val_fraction: float = knob(0.1, "share of labels held out for validation", gt=0, lt=1)
    split_seed: int = knob(1234, "seed of the train/validation split")
    eval_every: int = knob(20, "validate every this many steps; keep the best Spearman", ge=1)
    dropout: float = knob(0.1, "dropout before the linear head", ge=0, lt=1)
    min_labels: int = knob(16, "refuse to fit on fewer labels", ge=2)
    device: str = knob("auto", "auto, cpu, cuda, cuda:N")


@dataclass(kw_only=True)
class ScoreConfig:
    batch_size: int = knob(64, "sequences per forward pass", ge=1)
    shard_size: int = knob(4096, "sequences per score shard (the unit of resume)", ge=1)
    workers: int = knob(1, "parallel scoring workers", ge=1)
    backend: Literal["local", "ray"] = knob("local", "where workers run")
    device: str = knob("auto", "auto, cpu, cuda, cuda:N")


@dataclass(kw_only=True)
class SelectConfig:
    fraction: float = knob(0.2, "share of the candidate block kept (MATES: 0.2)", gt=0, le=1)
    temperature: float = knob(0.5, "Gumbel-top-k temperature tau; 0 is exact top-k (MATES code: 0.5)", ge=0)
    seed: int = knob(0, "seed of the Gumbel noise (keyed by sequence id)")
    write_documents: bool = knob(False, "also write the selected documents in the input format")
