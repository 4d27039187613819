"""Selectors: one interface for every way a stage's data is chosen (MATES §3, baselines).

A selector gets the stage's inputs (the model before the stage, the candidate block, the probe set,
how many to keep) and returns the folder of its selection (`selected/ids.npy`). Each composes the
stage modules in data-flow order; every step skips itself when its artifact is complete.

    random              uniform k of the block (MATES's baseline and warmup stages)
    mates               probe the probe set -> fit the influence model -> score the block -> Gumbel-top-k
    mates-first-order   the same, with first-order probe labels
    oracle              probe labels on the block itself, Gumbel-top-k on them (the upper bound)
    loss                the current model's loss on each candidate, highest first (a model-aware
                        baseline without probes: one LM forward per candidate)
    dsir                DSIR importance weights against the plan's reference part (baselines/dsir.py)
    semdedup            SemDeDup's keep order on the run's encoder embeddings (baselines/semdedup.py)
    qurating            a quality rater fitted on judgements (baselines.rater.labels; default: the
                        bundle's DCLM quality labels) (baselines/quality.py)
    fasttext            a fastText classifier, reference positives vs pool negatives (baselines/classifier.py)
    perplexity          a reference LM's perplexity (baselines.perplexity.model; default: the stage's
                        starting checkpoint), low first (baselines/perplexity.py)

One protocol (DESIGN.md, "Selection protocol"): every selector but `random` hands `select` raw
scores, lower is better, and `select` standardises them all the same way (`mates.select.scale`,
block statistics by default) before Gumbel-top-k with the same tau and the same noise keyed by
(seed, id). No selector overrides the scale or picks ids itself.

Adding a selector is one edit: write `def select_<name>(x: StageInputs) -> Path` that ends in
`_select(x, scores)` (scores: a scores folder or an (ids, values) pair, lower is better) and add
it to `SELECTORS`. The config (`mates.selectors`) is checked against this dict when a run starts
(`resolve_selectors`), and `selectors: [all]` runs every registered one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from datamates.accounting import timed
from datamates.config.mates import MatesConfig
from datamates.core.pool import Pool
from datamates.core.reference import ReferenceSet
from datamates.errors import ConfigError
from datamates.run_dir import RunDir
from datamates.selection.fit import fit
from datamates.selection.probe import probe, read_labels
from datamates.selection.score import score, score_by_loss
from datamates.selection.select import select


@dataclass
class StageInputs:
    mates: MatesConfig
    rd: RunDir  # the selector's branch
    pool: Pool
    stage: int
    checkpoint: Path | None  # the model the stage starts from
    candidates: np.ndarray  # this stage's block
    probe_ids: np.ndarray
    k: int
    cache_dir: Path
    reference: ReferenceSet | None = None  # the plan's reference part (probes); None: probe.reference*


def _select(x: StageInputs, candidates, **kw) -> Path:
    """The one way a selection is made: `select` with the run's select config (no overrides)."""
    out = x.rd.selected(x.stage)
    with timed(x.rd.stage(x.stage), "select", out):
        return select(x.mates.select, candidates, x.pool, out, k=x.k, **kw)


def select_random(x: StageInputs) -> Path:
    return _select(x, x.candidates, method="random")


def select_mates(x: StageInputs, mode: str | None = None) -> Path:
    sd = x.rd.stage(x.stage)
    pcfg = replace(x.mates.probe, mode=mode or x.mates.probe.mode)
    with timed(sd, "probe", x.rd.probe(x.stage)):
        labels = probe(pcfg, x.checkpoint, x.pool, x.probe_ids, x.rd.probe(x.stage), reference=x.reference)
    with timed(sd, "fit", x.rd.influence_model(x.stage)):
        model = fit(x.mates.fit, [labels], x.pool, x.rd.influence_model(x.stage), cache_dir=x.cache_dir)
    with timed(sd, "score", x.rd.scores(x.stage)):
        scores = score(x.mates.score, model, x.pool, x.candidates, x.rd.scores(x.stage), cache_dir=x.cache_dir)
    return _select(x, scores)


def select_oracle(x: StageInputs) -> Path:
    sd = x.rd.stage(x.stage)
    pcfg = replace(x.mates.probe, mode=x.mates.oracle_mode)
    with timed(sd, "probe", x.rd.probe(x.stage)):
        labels = probe(pcfg, x.checkpoint, x.pool, x.candidates, x.rd.probe(x.stage), reference=x.reference)
    return _select(x, read_labels(labels))  # the labels are the scores


def select_loss(x: StageInputs) -> Path:
    with timed(x.rd.stage(x.stage), "score", x.rd.scores(x.stage)):
        scores = score_by_loss(x.checkpoint, x.pool, x.candidates, x.rd.scores(x.stage), device=x.mates.score.device)
    return _select(x, scores)


def _baselines(x: StageInputs):
    """The baselines' knobs: `mates.baselines` when the run config has them, else the defaults."""
    from datamates.config.baselines import BaselinesConfig

    return getattr(x.mates, "baselines", None) or BaselinesConfig()


def _reference_texts(x: StageInputs) -> list[str] | None:
    """The plan's reference part as text (what DSIR targets), None when the run gives none."""
    if x.reference is None or not len(x.reference):
        return None
    tok = x.pool.tokenizer()
    return [tok.decode(list(e.context) + list(e.target)) for e in x.reference.examples]


def select_dsir(x: StageInputs) -> Path:
    from datamates.baselines.dsir import dsir

    with timed(x.rd.stage(x.stage), "score", x.rd.scores(x.stage)):
        scores = dsir(_baselines(x).dsir, x.pool, x.candidates, x.rd.scores(x.stage), target=_reference_texts(x))
    return _select(x, scores)


def select_semdedup(x: StageInputs) -> Path:
    from datamates.baselines.semdedup import semdedup

    cfg = replace(_baselines(x).semdedup, encoder=x.mates.fit.encoder)  # the run's encoder: shared embedding cache
    with timed(x.rd.stage(x.stage), "score", x.rd.scores(x.stage)):
        scores = semdedup(cfg, x.pool, x.candidates, x.rd.scores(x.stage), cache_dir=x.cache_dir)
    return _select(x, scores)


def select_qurating(x: StageInputs) -> Path:
    from datamates.baselines.quality import BUNDLE_LABELS, rate
    from datamates.config.base import data_dir

    cfg = _baselines(x).rater
    cfg = replace(cfg, encoder=x.mates.fit.encoder, labels=cfg.labels or str(data_dir() / BUNDLE_LABELS))
    with timed(x.rd.stage(x.stage), "score", x.rd.scores(x.stage)):
        scores = rate(cfg, x.pool, x.candidates, x.rd.scores(x.stage), cache_dir=x.cache_dir)
    return _select(x, scores)


def select_fasttext(x: StageInputs) -> Path:
    from datamates.baselines.classifier import classify

    with timed(x.rd.stage(x.stage), "score", x.rd.scores(x.stage)):
        scores = classify(_baselines(x).classifier, x.pool, x.candidates, x.rd.scores(x.stage))
    return _select(x, scores)


def select_perplexity(x: StageInputs) -> Path:
    from datamates.baselines.perplexity import perplexity_filter

    cfg = _baselines(x).perplexity
    cfg = replace(cfg, model=cfg.model or str(x.checkpoint), device=x.mates.score.device)
    with timed(x.rd.stage(x.stage), "score", x.rd.scores(x.stage)):
        scores = perplexity_filter(cfg, x.pool, x.candidates, x.rd.scores(x.stage))
    return _select(x, scores)


SELECTORS: dict[str, Callable[[StageInputs], Path]] = {
    "random": select_random,
    "mates": select_mates,
    "mates-first-order": lambda x: select_mates(x, mode="first_order"),
    "oracle": select_oracle,
    "loss": select_loss,
    "dsir": select_dsir,
    "semdedup": select_semdedup,
    "qurating": select_qurating,
    "fasttext": select_fasttext,
    "perplexity": select_perplexity,
}


def resolve_selectors(names: list[str]) -> list[str]:
    """`mates.selectors` checked against the registry; 'all' expands to every registered selector
    (in registry order, random first). Unknown names are a ConfigError that lists the available ones."""
    out: list[str] = []
    for name in names:
        for n in (list(SELECTORS) if name == "all" else [name]):
            if n not in SELECTORS:
                raise ConfigError(f"mates.selectors: unknown selector {n!r}; available: all, {', '.join(SELECTORS)}")
            if n not in out:
                out.append(n)
    return out


def get_selector(name: str) -> Callable[[StageInputs], Path]:
    if name not in SELECTORS:
        raise ConfigError(f"selector '{name}': unknown; available: {', '.join(SELECTORS)}")
    return SELECTORS[name]
