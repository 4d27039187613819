"""Config of metrics tracking (the `log:` section): where training, probing and fitting metrics go
besides the always-written `metrics.jsonl` (datamates.tracking, docs/run_dir.md). Not part of any
artifact's identity: changing it never invalidates a finished stage."""

from __future__ import annotations

from dataclasses import dataclass

from datamates.config.base import knob


@dataclass(kw_only=True)
class LogConfig:
    backend: str = knob(
        "none", "also send metrics to: none, tensorboard (needs the tensorboard package) or wandb "
        "(offline unless WANDB_MODE is set)", choices=("none", "tensorboard", "wandb"))
    dir: str = knob(
        "", "folder of TensorBoard event files / wandb runs; empty: a `tracking/` folder beside each artifact")
    project: str = knob("datamates", "wandb project name")
    every: int = knob(1, "send every N-th step of a loop to the backend (metrics.jsonl gets every step)", ge=1)
