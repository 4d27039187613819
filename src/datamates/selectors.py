"""Selectors: one interface for every way a stage's data is chosen (MATES §3, baselines).

A selector gets the stage's inputs (the model before the stage, the candidate block, the probe set,
how many to keep) and returns the folder of its selection (`selected/ids.npy`). Each composes the
stage modules in data-flow order; every step skips itself when its artifact is complete.

    random              uniform k of the block (MATES's baseline and warmup stages)
    mates               probe the probe set -> fit the influence model -> score the block -> Gumbel-top-k
    mates-first-order   the same, with first-order probe labels
    mates-parity        MATES's own recipe (mates.parity): exact labels, the fine-tuned encoder on text
    mates-static        the influence model fitted once, at the first selection stage, scores every
                        later stage (mates.static_influence; MATES's ablation)
    mates-full          mates with the full LM-feature influence model (stats + hidden + fo of the whole
                        candidate, every block: the default before issue 28), whatever the run's prefix
                        and early exit (docs/influence_model.md#cheaper-features)
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
    dsdm                DsDm: TRAK datamodel scores, the estimated change of the reference loss from
                        projected per-example gradients and the damped kernel (baselines.dsdm; default
                        model: the stage's starting checkpoint) (baselines/trak.py)
    rholoss             reducible loss: current loss - the loss of an irreducible model fine-tuned once
                        per branch on the plan's reference part, highest first (baselines/rholoss.py)
    group:NAME          any scoring selector NAME (mates, oracle, loss, dsir, dsdm ...), then group-level
                        selection: per-cluster quotas and a greedy diversity bonus on the protocol's
                        noisy keys (baselines.group; selection/group.py). Not listed by `all`

One protocol (docs/methods.md#selection-protocol): every selector but `random` hands `select` raw
scores, lower is better, and `select` standardises them all the same way (`mates.select.scale`,
block statistics by default) before Gumbel-top-k with the same tau and the same noise keyed by
(seed, id). No selector overrides the scale or picks ids itself.

Adding a selector is one edit: write `def select_<name>(x: StageInputs) -> Path` that ends in
`_select(x, scores)` (scores: a scores folder or an (ids, values) pair, lower is better) and add
it to `SELECTORS`. The config (`mates.selectors`) is checked against this dict when a run starts
(`resolve_selectors`), and `selectors: [all]` runs every registered one. `group:NAME` composes: NAME's
selector runs with `StageInputs.group` set, and its `_select` call becomes the group selection.
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
    group: object | None = None  # a GroupConfig: `_select` does group-level selection (group:NAME)


def _select(x: StageInputs, candidates, **kw) -> Path:
    """The one way a selection is made: `select` with the run's select config (no overrides)."""
    out = x.rd.selected(x.stage)
    with timed(x.rd.stage(x.stage), "select", out):
        if x.group is not None:
            return _select_group(x, candidates, out)
        return select(x.mates.select, candidates, x.pool, out, k=x.k, **kw)


def _select_group(x: StageInputs, candidates, out: Path) -> Path:
    """Group-level selection (selection/group.py) on the protocol's keys, written by `select`."""
    from datamates.baselines._common import encoder_embeddings
    from datamates.selection.group import group_order
    from datamates.selection.select import standardised_keys

    g, scfg = x.group, x.mates.select
    ids, z, keys, info = standardised_keys(scfg, candidates, x.pool)
    emb, tokens, n_enc = encoder_embeddings(x.pool, x.mates.fit.encoder, ids, cache_dir=x.cache_dir,
                                            batch_size=g.batch_size, device=g.device)
    topk = info["method"] == "topk" or scfg.temperature == 0
    rank, ginfo = group_order(ids, z, keys, emb, x.k, g, temperature=scfg.temperature, topk=topk)
    ginfo.update({"protocol": {k: info[k] for k in ("method", "scale", "z_mean", "z_std")},
                  "temperature": scfg.temperature, "gumbel": scfg.gumbel, "seed": scfg.seed,
                  "encoder_tokens": int(tokens), "encoder_flops": 2.0 * n_enc * tokens})
    return select(scfg, (ids, rank), x.pool, out, method="group", k=x.k, group=ginfo)


def select_random(x: StageInputs) -> Path:
    return _select(x, x.candidates, method="random")


def mates_probe_ids(x: StageInputs, pcfg) -> np.ndarray:
    """The stage's probe set: the plan's, plus (label_multiplier - 1) x as many more first-order
    probes drawn (seed probe_seed + 1) from the pool outside this block, the plan's probe set and
    its held-out documents (plan/heldout.npy, guard.npy)."""
    from datamates.selection.probe import sample_probe_set

    mult = x.mates.label_multiplier if pcfg.mode == "first_order" else 1
    if mult <= 1:
        return x.probe_ids
    keep_out = [x.probe_ids, x.candidates] + [np.load(x.rd.plan / f) for f in ("heldout.npy", "guard.npy")
                                              if (x.rd.plan / f).exists()]
    extra = sample_probe_set(x.pool, (mult - 1) * len(x.probe_ids), seed=pcfg.probe_seed + 1,
                             exclude=np.concatenate(keep_out).astype(np.int64))
    return np.sort(np.concatenate([x.probe_ids, extra]))


def mates_configs(x: StageInputs, mode: str | None = None):
    """(probe config, fit config) of the `mates` selectors: `mates.parity` is MATES's own recipe
    (exact labels of the plan's probe set, the fine-tuned encoder on text, no label history)."""
    if x.mates.parity:
        return replace(x.mates.probe, mode="exact"), replace(x.mates.fit, mode="finetune")
    return replace(x.mates.probe, mode=mode or x.mates.probe.mode), x.mates.fit


def full_lm_fit(fcfg):
    """`mates-full`: the LM-feature influence model of issue 14 (stats + hidden + fo of the whole
    candidate through every block, ridge), whatever prefix / early exit the run's `mates` uses."""
    return replace(fcfg, mode="lm", features=["stats", "hidden", "fo"], head="ridge", prefix_tokens=None,
                   exit_layer=None)


def select_mates(x: StageInputs, mode: str | None = None) -> Path:
    """probe -> fit -> score -> select. `mates.static_influence`: the influence model of the first
    selection stage scores every later stage (MATES's ablation, Fig. 5); `mates.label_history`: the fit
    also uses the last stages' labels, weighted label_history_decay^(stages back)."""
    sd = x.rd.stage(x.stage)
    pcfg, fcfg = mates_configs(x, mode)
    first = x.mates.warmup_stages + 1
    if x.mates.static_influence and x.stage > first:
        model = x.rd.influence_model(first)  # fitted once, at the branch's first selection stage
        if not (model / "DONE").exists():
            raise ConfigError(f"mates.static_influence: {model} (the stage-{first} influence model) is missing; "
                              "re-run the branch from its first selection stage")
    else:
        probe_ids = mates_probe_ids(x, pcfg) if not x.mates.parity else x.probe_ids
        with timed(sd, "probe", x.rd.probe(x.stage)):
            labels = probe(pcfg, x.checkpoint, x.pool, probe_ids, x.rd.probe(x.stage), reference=x.reference)
        history = []
        if not x.mates.parity and fcfg.mode == "lm":
            for back in range(1, x.mates.label_history + 1):
                if x.stage - back >= first and (x.rd.probe(x.stage - back) / "DONE").exists():
                    history.append((x.rd.probe(x.stage - back), x.mates.label_history_decay ** back))
        with timed(sd, "fit", x.rd.influence_model(x.stage)):
            model = fit(fcfg, [labels], x.pool, x.rd.influence_model(x.stage), cache_dir=x.cache_dir,
                        checkpoint=x.checkpoint, reference=x.reference, history=history)
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


def _stage_reference(x: StageInputs) -> ReferenceSet:
    """The plan's reference part; without one, `mates.probe.reference` loaded as the probe stage does."""
    if x.reference is not None:
        return x.reference
    from datamates.core.reference import load_reference

    p = x.mates.probe
    own = Path(p.reference).exists() and Path(p.reference).resolve() == x.pool.path.resolve()
    return load_reference(p.reference, x.pool.tokenizer(), size=p.reference_size, seed=p.reference_seed,
                          exclude=x.candidates if own else None, tokenizer_hash=x.pool.tokenizer_hash)


def select_dsdm(x: StageInputs) -> Path:
    from datamates.baselines.trak import dsdm

    cfg = _baselines(x).dsdm
    cfg = replace(cfg, device=x.mates.score.device if cfg.device == "auto" else cfg.device)
    with timed(x.rd.stage(x.stage), "score", x.rd.scores(x.stage)):
        scores = dsdm(cfg, cfg.checkpoints or [x.checkpoint], x.pool, x.candidates, x.rd.scores(x.stage),
                      reference=_stage_reference(x))
    return _select(x, scores)


def select_rholoss(x: StageInputs) -> Path:
    from datamates.baselines.rholoss import irreducible_model, reducible_loss
    from datamates.run_dir import read_json

    cfg = _baselines(x).rholoss
    sd = x.rd.stage(x.stage)
    with timed(sd, "score", x.rd.scores(x.stage)):
        il = irreducible_model(cfg, x.pool, _stage_reference(x) if not cfg.model else None, x.checkpoint,
                               x.rd.base / "irreducible_model", device=x.mates.score.device, stage=x.stage)
        charge = not cfg.model and read_json(il / "meta.json").get("stage") == x.stage
        scores = reducible_loss(cfg, x.checkpoint, il, x.pool, x.candidates, x.rd.scores(x.stage),
                                work=sd / "rholoss", device=x.mates.score.device, charge_training=charge)
    return _select(x, scores)


def select_group(inner: str) -> Callable[[StageInputs], Path]:
    """`group:NAME`: NAME's scoring, then group-level selection (selection/group.py)."""
    fn = SELECTORS[inner]

    def run(x: StageInputs) -> Path:
        return fn(replace(x, group=_baselines(x).group))

    return run


SELECTORS: dict[str, Callable[[StageInputs], Path]] = {
    "random": select_random,
    "mates": select_mates,
    "mates-first-order": lambda x: select_mates(x, mode="first_order"),
    "mates-parity": lambda x: select_mates(replace(x, mates=replace(x.mates, parity=True))),
    "mates-static": lambda x: select_mates(replace(x, mates=replace(x.mates, static_influence=True))),
    "mates-full": lambda x: select_mates(replace(x, mates=replace(x.mates, fit=full_lm_fit(x.mates.fit)))),
    "oracle": select_oracle,
    "loss": select_loss,
    "dsir": select_dsir,
    "semdedup": select_semdedup,
    "qurating": select_qurating,
    "fasttext": select_fasttext,
    "perplexity": select_perplexity,
    "dsdm": select_dsdm,
    "rholoss": select_rholoss,
}
GROUP = "group:"


def _check_name(n: str, what: str) -> None:
    if n.startswith(GROUP):
        inner = n[len(GROUP):]
        if inner not in SELECTORS or inner == "random":
            scorers = ", ".join(s for s in SELECTORS if s != "random")
            raise ConfigError(f"{what}: {n!r}: group:NAME needs a scoring selector NAME; available: {scorers}")
        return
    if n not in SELECTORS:
        raise ConfigError(f"{what}: unknown selector {n!r}; available: all, {', '.join(SELECTORS)}, "
                          "group:<any of them but random>")


def resolve_selectors(names: list[str]) -> list[str]:
    """`mates.selectors` checked against the registry; 'all' expands to every registered selector
    (in registry order, random first). Unknown names are a ConfigError that lists the available ones."""
    out: list[str] = []
    for name in names:
        for n in (list(SELECTORS) if name == "all" else [name]):
            _check_name(n, "mates.selectors")
            if n not in out:
                out.append(n)
    return out


def get_selector(name: str) -> Callable[[StageInputs], Path]:
    _check_name(name, "selector")
    if name.startswith(GROUP):
        return select_group(name[len(GROUP):])
    return SELECTORS[name]
