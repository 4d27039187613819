"""Config of the MATES loop (mates.md §2, §10): stages of training, each after the first preceded
by probe -> fit -> score -> select. Defaults are MATES's schedule scaled by `stage_steps`."""

from __future__ import annotations

from dataclasses import dataclass

from datamates.config.base import knob
from datamates.config.influence import FitConfig, ScoreConfig, SelectConfig
from datamates.config.probe import ProbeConfig
from datamates.errors import ConfigError

SELECTOR_NAMES = ("random", "mates", "oracle", "mates-first-order", "loss")


@dataclass(kw_only=True)
class MatesConfig:
    selectors: list[str] = knob(
        ["random", "mates"],
        "selectors compared in this run, each on its own branch after the shared warmup stages: "
        "random, mates (influence model on probe labels), oracle (probe labels on the candidates "
        "themselves: the upper bound), mates-first-order (influence model on first-order labels), "
        "loss (the current model's loss on each candidate, highest first)",
    )
    stages: int = knob(5, "training stages in all (MATES: 5 x 10k steps)", ge=1)
    warmup_stages: int = knob(1, "leading stages trained on random data, shared by every selector (MATES: 1)", ge=1)
    stage_steps: int = knob(100, "optimizer steps per stage (MATES: 10,000)", ge=1)
    candidates_per_stage: int | None = knob(
        None,
        "candidate block scored per stage; null: stage_steps x global batch / select.fraction, so the "
        "kept sequences are each seen once per stage (MATES: 5x what a stage trains on)", ge=1,
    )
    heldout_per_domain: int = knob(
        64, "sequences per domain held out of every block and probe set, for held-out perplexity", ge=0
    )
    plan_seed: int = knob(0, "seed of the split of the pool into probe set, held-out set and stage blocks")
    oracle_mode: str = knob(
        "first_order", "probe mode of the oracle selector, which labels every candidate (exact, first_order)",
        choices=("exact", "first_order", "naive"),
    )
    decay_steps: int = knob(
        200, "steps of the pre-evaluation decay on the last stage's data (MATES: 200); 0: none", ge=0
    )
    decay_half_life: float = knob(50.0, "decay: steps per halving of the learning rate (MATES: 50)", gt=0)
    curve_reference_size: int = knob(
        500, "LAMBADA examples scored at every stage boundary for the reference-loss curve", ge=1
    )
    probe: ProbeConfig = knob(ProbeConfig(), "oracle probing")
    fit: FitConfig = knob(FitConfig(), "influence-model fit")
    score: ScoreConfig = knob(ScoreConfig(), "pool scoring")
    select: SelectConfig = knob(SelectConfig(), "selection")

    def check(self) -> None:
        bad = [s for s in self.selectors if s not in SELECTOR_NAMES]
        if bad:
            raise ConfigError(f"selectors: unknown selector {bad[0]!r}; available: {', '.join(SELECTOR_NAMES)}")
        if not self.selectors:
            raise ConfigError("selectors = []: name at least one selector")
        if self.warmup_stages > self.stages:
            raise ConfigError(f"warmup_stages = {self.warmup_stages}: must be <= stages = {self.stages}")
