"""Configs of data ablations by modular training and merging (Na et al. 2024)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from datamates.config.base import knob


@dataclass(kw_only=True)
class PartitionConfig:
    by: Literal["domain", "field", "cluster", "random"] = knob("domain", "how the pool is split into units")
    field: str | None = knob(None, "record field for by=field")
    k: int = knob(5, "number of units for by=cluster / by=random", ge=1)
    token_balanced: bool = knob(False, "equalise tokens per unit (paper: equal-token units)")
    seed: int = knob(0, "seed for random / cluster partitions")


@dataclass(kw_only=True)
class MergeConfig:
    method: Literal["uniform", "weighted", "task_arithmetic"] = knob(
        "uniform", "uniform mean (paper), token-weighted mean, or seed + lambda * mean(delta)"
    )
    lam: float = knob(1.0, "task_arithmetic scale lambda", gt=0)


@dataclass(kw_only=True)
class AblationConfig:
    partition: PartitionConfig = knob(PartitionConfig(), "how the pool is split into units")
    merge: MergeConfig = knob(MergeConfig(), "how unit models are combined into a mixture's proxy")
