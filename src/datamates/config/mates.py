"""Config of the MATES loop (docs/methods.md#mates-the-loop): stages of training, each after the first preceded
by probe -> fit -> score -> select. Defaults are MATES's schedule scaled by `stage_steps`."""

from __future__ import annotations

from dataclasses import dataclass

from datamates.config.base import knob
from datamates.config.baselines import BaselinesConfig
from datamates.config.influence import FitConfig, ScoreConfig, SelectConfig
from datamates.config.probe import ProbeConfig
from datamates.errors import ConfigError


@dataclass(kw_only=True)
class MatesConfig:
    selectors: list[str] = knob(
        ["random", "mates"],
        "selectors compared in this run, each on its own branch after the shared warmup stages: names "
        "of the registry `datamates.selectors.SELECTORS` (random, mates, mates-first-order, oracle, loss, "
        "and the baselines), or 'all' for every registered selector; checked against the registry when "
        "the run starts",
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
        64, "sequences per domain held out of every block and probe set, for held-out perplexity, drawn "
        "by whole documents (at most a tenth of a domain)", ge=0
    )
    heldout_max_per_doc: int = knob(
        4, "at most this many held-out sequences from one document; the document's other sequences are "
        "kept out of every block, probe set and training set (whole documents are held out)", ge=1,
    )
    reference_eval_fraction: float = knob(
        0.5, "share of every text reference set (probe.reference, eval.reference) kept for the final "
        "evaluation; the rest is the reference part that probes, labels and the per-stage curve use "
        "(disjoint, fixed by the plan)", gt=0, lt=1,
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
        500, "examples of the reference part of eval.reference scored at every stage boundary for the "
        "reference-loss curve", ge=1
    )
    label_multiplier: int = knob(
        1, "with probe.mode first_order: label this many times the plan's probe set (the extra probes drawn "
        "once from the pool outside the stage's block); a first-order probe costs 1/12-1/40 of an exact one "
        "(experiments/probe_fidelity), so 10 first-order labels cost less than one exact label", ge=1,
    )
    label_history: int = knob(
        0, "fit.mode lm: also fit on the labels of this many earlier selection stages of the branch "
        "(features from the current model), weighted label_history_decay^(stages back)", ge=0,
    )
    label_history_decay: float = knob(0.5, "weight per stage back of earlier stages' labels", gt=0, le=1)
    static_influence: bool = knob(
        False, "fit the influence model once, at the first selection stage, and score every later stage "
        "with it (MATES's static ablation). Deprecated: an alias of the `mates-static` selector, read by `mates` only",
    )
    parity: bool = knob(
        False, "MATES's own recipe: exact probe labels of the plan's probe set and the fine-tuned encoder "
        "(fit.mode finetune on fit.encoder), no label multiplier or history (docs/influence_model.md). Deprecated: an alias of "
        "the `mates-parity` selector, read by `mates` only",
    )
    probe: ProbeConfig = knob(ProbeConfig(), "oracle probing")
    fit: FitConfig = knob(FitConfig(), "influence-model fit")
    score: ScoreConfig = knob(ScoreConfig(), "pool scoring")
    select: SelectConfig = knob(SelectConfig(), "selection")
    baselines: BaselinesConfig = knob(
        BaselinesConfig(), "knobs of the baseline selectors (dsir, semdedup, qurating, fasttext, perplexity, dsdm, "
        "rholoss, group:NAME; docs/baselines.md)",
    )

    def check(self) -> None:
        if not self.selectors:
            raise ConfigError("selectors = []: name at least one selector")
        dup = sorted({s for s in self.selectors if self.selectors.count(s) > 1})
        if dup:
            raise ConfigError(f"selectors: {dup[0]!r} is named twice")
        if self.warmup_stages > self.stages:
            raise ConfigError(f"warmup_stages = {self.warmup_stages}: must be <= stages = {self.stages}")
