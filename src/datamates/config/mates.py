"""Config of the MATES loop (mates.md §2, §10): stages of training, each preceded by selection."""

from __future__ import annotations

from dataclasses import dataclass

from datamates.config.base import knob
from datamates.config.influence import FitConfig, ScoreConfig, SelectConfig
from datamates.config.probe import ProbeConfig


@dataclass(kw_only=True)
class MatesConfig:
    selector: str = knob("mates", "random, mates, oracle, mates-first-order")
    stages: int = knob(5, "training stages; the first trains on random data", ge=1)
    stage_steps: int = knob(100, "optimizer steps per stage", ge=1)
    probe: ProbeConfig = knob(ProbeConfig(), "oracle probing")
    fit: FitConfig = knob(FitConfig(), "influence-model fit")
    score: ScoreConfig = knob(ScoreConfig(), "pool scoring")
    select: SelectConfig = knob(SelectConfig(), "selection")
