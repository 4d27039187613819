"""Selectors: one interface for every way a stage's data is chosen (MATES §3, baselines).

A selector gets the stage's inputs (the model before the stage, the candidate block, the probe set,
how many to keep) and returns the folder of its selection (`selected/ids.npy`). Each composes the
stage modules in data-flow order; every step skips itself when its artifact is complete.

    random              uniform k of the block (MATES's baseline and warmup stages)
    mates               probe the probe set -> fit the influence model -> score the block -> Gumbel-top-k
    mates-first-order   the same, with first-order probe labels
    mates-parity        MATES's own recipe: exact labels, the fine-tuned encoder on text
    mates-static        the influence model fitted once, at the first selection stage, scores every
                        later stage (MATES's ablation)
                        (mates.parity / mates.static_influence: deprecated aliases of these two,
                        read by `mates` only, with a one-line warning)
    mates-full          mates with the full LM-feature influence model (stats + hidden + fo of the whole
                        candidate, every block: the default before issue 28), whatever the run's prefix
                        and early exit (docs/influence_model.md#cheaper-features)
    mates-prefix        mates with issue 28's paper-scale pick whatever the run's fit: embed + stats + hidden +
                        fo of the first seq_len/16 tokens through the embedding and head only (exit_layer 0;
                        configs/arena_gpu.yaml, paper_410m.yaml), so CPU arenas can run it beside `mates`
    mates-proxy         mates with the full LM-feature model of a small proxy LM trained on the branch's own
                        stream (mates.baselines.proxy: its shape; selection/proxy.py) instead of the LM's
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
    mates+fasttext      MATES x a quality prior: z(mates) + w z(fasttext), both standardised over the
                        block as `select` does (w: baselines.prior.weight, default 1; 0 is mates's
                        ranking) (baselines/prior.py). Not listed by `all` (it repeats mates's probe
                        and fit on its own branch): name it
    mates+heuristic     the same with the heuristic rules as the prior (model-free)
    NAME@REF            selector NAME probing the reference REF instead of mates.probe.reference
                        (e.g. mates@lambada_openai, oracle@clean; plan.selector_reference)
    group:NAME          any scoring selector NAME (mates, oracle, loss, dsir, dsdm ...), then group-level
                        selection: per-cluster quotas and a greedy diversity bonus on the protocol's
                        noisy keys (baselines.group; selection/group.py). Not listed by `all`

One protocol (docs/methods.md#selection-protocol): every selector but `random` hands `select` raw
scores, lower is better, and `select` standardises them all the same way (`mates.select.scale`,
block statistics by default) before Gumbel-top-k with the same tau and the same noise keyed by
(seed, id). No selector overrides the scale or picks ids itself (`mates+PRIOR` standardises its two
components over the block the same way before adding them, then hands the sum to `select`).

The registry is the literal list `SCORERS` (mergekit's registry.py is the model): one `Scorer` per
name, the MATES variants as instances of one scorer with arguments. `datamates run` (mates.selectors,
`all`), `datamates score-with` (the scorers with a `standalone` function) and the docs' tables
(tests/baselines/test_selectors.py checks docs/baselines.md) read it. Adding a scorer: its module
(a function writing a scores folder, baselines/_common.write_scores, and its config dataclass) and
one line here naming both (docs/extending.md walks through one). `config=` declares the scorer's
section, mates.baselines.<section>: the config loader keeps it raw (config/ cannot import a scorer)
and `resolve_config` checks it against the dataclass when a verb starts, before any work. `group:NAME` composes:
NAME's scores, then the group selection. Older names (rater, classifier) are accepted as aliases.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from datamates.accounting import PROXY_DIR, timed
from datamates.baselines._common import embedding_tokens, encoder_embeddings
from datamates.baselines.classifier import ClassifierConfig
from datamates.baselines.dsir import DSIRConfig, dsir
from datamates.baselines.heuristic import HeuristicConfig
from datamates.baselines.perplexity import PerplexityConfig, perplexity_filter
from datamates.baselines.prior import PriorConfig, combine
from datamates.baselines.quality import BUNDLE_LABELS, RaterConfig, rate
from datamates.baselines.rholoss import RhoLossConfig, irreducible_model, reducible_loss
from datamates.baselines.semdedup import SemDeDupConfig, semdedup
from datamates.baselines.trak import DsDmConfig, dsdm
from datamates.config.base import data_dir, deprecated, resolve_owned
from datamates.config.mates import MatesConfig
from datamates.config.run import RunConfig
from datamates.core.pool import Pool
from datamates.core.reference import ReferenceSet, load_reference
from datamates.errors import ConfigError
from datamates.integrations.attributes import write_attributes
from datamates.log import get_logger
from datamates.run_dir import WARMUP, RunDir, read_json
from datamates.selection.fit import fit
from datamates.selection.group import GroupConfig, group_order
from datamates.selection.probe import probe, read_labels, sample_probe_set
from datamates.selection.proxy import ProxyConfig, proxy_model_config, proxy_shape, train_proxy
from datamates.selection.score import score, score_by_loss
from datamates.selection.select import read_selection, select, standardised_keys

log = get_logger(__name__)


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
    group: GroupConfig | None = None  # set:: `_select` does group-level selection (group:NAME)
    run: RunConfig | None = None  # the whole run (`mates-proxy` trains its proxy LM with its model and train sections)


def _select(x: StageInputs, candidates, **kw) -> Path:
    """The one way a selection is made: `select` with the run's select config (no overrides);
    candidates None: uniform random over the block."""
    if candidates is None:
        candidates, kw = x.candidates, {**kw, "method": "random"}
    out = x.rd.selected(x.stage)  # its seconds: produce's, in its meta.json (accounting.stage_seconds)
    if x.group is not None:
        return _select_group(x, candidates, out)
    return select(x.mates.select, candidates, x.pool, out, k=x.k, attributes=write_attributes, **kw)


def _select_group(x: StageInputs, candidates, out: Path) -> Path:
    """Group-level selection (selection/group.py) on the protocol's keys, written by `select`."""

    g, scfg = x.group, x.mates.select
    ids, z, keys, info = standardised_keys(scfg, candidates, x.pool)
    emb, _, n_enc = encoder_embeddings(x.pool, x.mates.fit.encoder, ids, cache_dir=x.cache_dir,
                                            batch_size=g.batch_size, device=g.device)
    tokens = embedding_tokens(x.pool, x.mates.fit.encoder, ids, cache_dir=x.cache_dir)  # cached or not
    topk = info["method"] == "topk" or scfg.temperature == 0
    rank, ginfo = group_order(ids, z, keys, emb, x.k, g, temperature=scfg.temperature, topk=topk)
    ginfo.update({"protocol": {k: info[k] for k in ("method", "scale", "z_mean", "z_std")},
                  "temperature": scfg.temperature, "gumbel": scfg.gumbel, "seed": scfg.seed,
                  "encoder_tokens": int(tokens), "encoder_flops": 2.0 * n_enc * tokens})
    return select(scfg, (ids, rank), x.pool, out, method="group", k=x.k, group=ginfo, attributes=write_attributes)


# ----------------------------------------------------------------------------- the scorers
#
# A scorer is the stage glue of one way to score a block: it returns scores (a scores folder or an
# (ids, values) pair, lower is better), or None for uniform random; `run_selector` hands them to the
# one selection protocol. Its knobs live in one config section (mates.* or mates.baselines.<section>),
# and a run never overrides a knob the user set: a knob whose value is `null` / `auto` says "the run's".


def score_random(x: StageInputs) -> None:
    return None


def mates_probe_ids(x: StageInputs, pcfg) -> np.ndarray:
    """The stage's probe set: the plan's, plus (label_multiplier - 1) x as many more first-order
    probes drawn (seed probe_seed + 1) from the pool outside this block, the plan's probe set and
    its held-out documents (plan/heldout.npy, guard.npy)."""

    mult = x.mates.label_multiplier if pcfg.mode == "first_order" else 1
    if mult <= 1:
        return x.probe_ids
    keep_out = [x.probe_ids, x.candidates] + [np.load(x.rd.plan / f) for f in ("heldout.npy", "guard.npy")
                                              if (x.rd.plan / f).exists()]
    extra = sample_probe_set(x.pool, (mult - 1) * len(x.probe_ids), seed=pcfg.probe_seed + 1,
                             exclude=np.concatenate(keep_out).astype(np.int64))
    return np.sort(np.concatenate([x.probe_ids, extra]))


def mates_configs(x: StageInputs, mode: str | None = None, parity: bool = False):
    """(probe config, fit config) of the `mates` scorers: parity (`mates-parity`) is MATES's own recipe (exact labels of the plan's probe set, the fine-tuned encoder
    on text, no label history)."""
    if parity:
        return replace(x.mates.probe, mode="exact"), replace(x.mates.fit, mode="finetune")
    return replace(x.mates.probe, mode=mode or x.mates.probe.mode), x.mates.fit


def full_lm_fit(fcfg):
    """`mates-full`: the LM-feature influence model of issue 14 (stats + hidden + fo of the whole
    candidate through every block, ridge), whatever prefix / early exit the run's `mates` uses."""
    return replace(fcfg, mode="lm", features=["stats", "hidden", "fo"], head="ridge", prefix_tokens=None,
                   exit_layer=None)


def prefix_lm_fit(fcfg, seq_len: int):
    """`mates-prefix`: issue 28's pick (experiments/influence_bench, docs/influence_model.md#cheaper-features):
    embed + stats + hidden + fo of the first seq_len/16 tokens (16 of 256, 64 of 1,024) through the input
    embedding and the head only (exit_layer 0), ridge, whatever the run's own fit."""
    return replace(fcfg, mode="lm", features=["embed", "stats", "hidden", "fo"], head="ridge",
                   prefix_tokens=max(2, seq_len // 16), exit_layer=0)


def _deprecated(flag: str, selector: str) -> None:
    deprecated(f"mates.{flag}", f"it is an alias of the {selector} selector (put {selector} in mates.selectors)")


def score_mates(x: StageInputs, *, mode: str | None = None, parity: bool = False, static: bool = False,
                full: bool = False, prefix: bool = False, proxy: bool = False, aliases: bool = False) -> Path:
    """probe -> fit -> score. `static` (`mates-static`): the influence
    model of the first selection stage scores every later stage (MATES's ablation, Fig. 5);
    mates.label_history: the fit also uses the last stages' labels, weighted label_history_decay^(stages back);
    `full` (`mates-full`): the full-forward LM-feature model (full_lm_fit); `prefix` (`mates-prefix`):
    issue 28's cheap pick (prefix_lm_fit); `proxy` (`mates-proxy`): the full-forward model's features of the
    branch's proxy LM (selection/proxy.py) instead of the LM's."""
    if aliases:  # `mates` only: the config flags mates.parity / mates.static_influence, deprecated aliases
        for flag, selector in (("parity", "mates-parity"), ("static_influence", "mates-static")):
            if getattr(x.mates, flag):
                _deprecated(flag, selector)
        parity, static = x.mates.parity, x.mates.static_influence
    pcfg, fcfg = mates_configs(x, mode, parity)
    if full and not parity:
        fcfg = full_lm_fit(fcfg)
    if prefix and not parity:
        fcfg = prefix_lm_fit(fcfg, x.pool.seq_len)
    lm = x.checkpoint  # the LM whose features the influence model uses
    if proxy and not parity:
        if x.run is None:
            raise ConfigError("mates-proxy needs the run's config (StageInputs.run): run it through `datamates run`")
        # its training's seconds: the stage's `proxy` (accounting counts them into the selection's seconds)
        with timed(x.rd.stage(x.stage), "proxy", x.rd.base / PROXY_DIR / f"stage_{x.stage - 1:02d}" / "checkpoint"):
            fcfg, lm = full_lm_fit(fcfg), branch_proxy(x.run, _section(x, "proxy"), x.rd, x.pool, x.stage)
    first = x.mates.warmup_stages + 1
    if static and x.stage > first:
        model = x.rd.influence_model(first)  # fitted once, at the branch's first selection stage
        if not (model / "DONE").exists():
            raise ConfigError(f"mates.static_influence: {model} (the stage-{first} influence model) is missing; "
                              "re-run the branch from its first selection stage")
    else:
        probe_ids = mates_probe_ids(x, pcfg) if not parity else x.probe_ids
        labels = probe(pcfg, x.checkpoint, x.pool, probe_ids, x.rd.probe(x.stage), reference=x.reference)
        history = []
        if not parity and fcfg.mode == "lm":
            for back in range(1, x.mates.label_history + 1):
                if x.stage - back >= first and (x.rd.probe(x.stage - back) / "DONE").exists():
                    history.append((x.rd.probe(x.stage - back), x.mates.label_history_decay ** back))
        model = fit(fcfg, [labels], x.pool, x.rd.influence_model(x.stage), cache_dir=x.cache_dir,
                    checkpoint=lm, reference=x.reference, history=history)
    # probe, fit and score are timed by produce (their meta.json `seconds`; accounting.stage_seconds)
    return score(x.mates.score, model, x.pool, x.candidates, x.rd.scores(x.stage), cache_dir=x.cache_dir)


def branch_proxy(run: RunConfig, cfg: ProxyConfig, rd: RunDir, pool: Pool, stage: int) -> Path:
    """The branch's proxy LM before `stage`: trained on what the branch's LM trained on at stages
    1..stage-1 (the warmup's selections, then the branch's own), in `<branch>/proxy/stage_XX/checkpoint`
    (finished stages kept, a killed one resumed)."""
    if stage < 2:
        raise ConfigError(f"mates-proxy at stage {stage}: the proxy needs at least one trained stage before it "
                          "(mates.warmup_stages >= 1)")
    n_layers, d_model, n_heads = proxy_shape(cfg, run.model)
    pm = proxy_model_config(run.model, n_layers=n_layers, d_model=d_model, n_heads=n_heads)
    warm = rd.branch(WARMUP)
    stream = [(t, read_selection((warm if t <= run.mates.warmup_stages else rd).selected(t))) for t in range(1, stage)]
    return train_proxy(run, pm, pool, stream, rd.base / PROXY_DIR)[-1]


def score_oracle(x: StageInputs):
    pcfg = replace(x.mates.probe, mode=x.mates.oracle_mode)
    labels = probe(pcfg, x.checkpoint, x.pool, x.candidates, x.rd.probe(x.stage), reference=x.reference)
    return read_labels(labels)  # the labels are the scores


def score_loss(x: StageInputs) -> Path:
    return score_by_loss(x.checkpoint, x.pool, x.candidates, x.rd.scores(x.stage), device=x.mates.score.device)


def _baselines(x: StageInputs):
    """The baselines' knobs: `mates.baselines`."""
    return x.mates.baselines


def _section(x: StageInputs, name: str) -> Any:
    """The run's section mates.baselines.<name> (`section`)."""
    return section(x.mates.baselines, name)


def _device(x: StageInputs, device: str) -> str:
    """A baseline's `device` knob; `auto` is the run's scoring device (mates.score.device)."""
    return x.mates.score.device if device == "auto" else device


def _reference_texts(x: StageInputs) -> list[str] | None:
    """The plan's reference part as text (what DSIR targets), None when the run gives none."""
    if x.reference is None or not len(x.reference):
        return None
    tok = x.pool.tokenizer()
    return [tok.decode(list(e.context) + list(e.target)) for e in x.reference.examples]


def _stage_reference(x: StageInputs) -> ReferenceSet:
    """The plan's reference part; without one, `mates.probe.reference` loaded as the probe stage does."""
    if x.reference is not None:
        return x.reference

    p = x.mates.probe
    own = Path(p.reference).exists() and Path(p.reference).resolve() == x.pool.path.resolve()
    return load_reference(p.reference, x.pool.tokenizer(), size=p.reference_size, seed=p.reference_seed,
                          exclude=x.candidates if own else None, tokenizer_hash=x.pool.tokenizer_hash)


def _scored(x: StageInputs, fn: Callable[..., Path], cfg, *args, **kw) -> Path:
    """A static baseline's scores of the block, timed as the stage's `score` component."""
    with timed(x.rd.stage(x.stage), "score", x.rd.scores(x.stage)):
        return fn(cfg, x.pool, x.candidates, x.rd.scores(x.stage), *args, **kw)


def score_dsir(x: StageInputs) -> Path:

    return _scored(x, dsir, _section(x, "dsir"), target=_reference_texts(x))


def _run_encoder(x: StageInputs, cfg):
    """A baseline's `encoder` knob; null is the run's encoder (mates.fit.encoder: a shared embedding cache)."""
    return replace(cfg, encoder=cfg.encoder or x.mates.fit.encoder)


def score_semdedup(x: StageInputs) -> Path:

    return _scored(x, semdedup, _run_encoder(x, _section(x, "semdedup")), cache_dir=x.cache_dir)


def score_qurating(x: StageInputs) -> Path:

    cfg = _run_encoder(x, _section(x, "rater"))
    cfg = replace(cfg, labels=cfg.labels or str(data_dir() / BUNDLE_LABELS))
    return _scored(x, rate, cfg, cache_dir=x.cache_dir)


def score_perplexity(x: StageInputs) -> Path:

    cfg = _section(x, "perplexity")
    cfg = replace(cfg, model=cfg.model or str(x.checkpoint), device=_device(x, cfg.device))
    return _scored(x, perplexity_filter, cfg)


def score_dsdm(x: StageInputs) -> Path:

    cfg = _section(x, "dsdm")
    cfg = replace(cfg, device=_device(x, cfg.device))
    with timed(x.rd.stage(x.stage), "score", x.rd.scores(x.stage)):
        return dsdm(cfg, cfg.checkpoints or [x.checkpoint], x.pool, x.candidates, x.rd.scores(x.stage),
                    reference=_stage_reference(x))


def score_rholoss(x: StageInputs) -> Path:

    cfg = _section(x, "rholoss")
    sd = x.rd.stage(x.stage)
    with timed(sd, "score", x.rd.scores(x.stage)):
        il = irreducible_model(cfg, x.pool, _stage_reference(x) if not cfg.model else None, x.checkpoint,
                               x.rd.irreducible_model, device=x.mates.score.device, stage=x.stage)
        charge = not cfg.model and read_json(il / "meta.json").get("stage") == x.stage
        return reducible_loss(cfg, x.checkpoint, il, x.pool, x.candidates, x.rd.scores(x.stage),
                              work=sd / "rholoss", device=x.mates.score.device, charge_training=charge)


def score_mates_prior(x: StageInputs, *, prior: str) -> Path:
    """`mates+PRIOR` (mates+fasttext, mates+heuristic): the `mates` steps (probe -> fit -> score into stage_NN/scores), the prior, a
    standalone scorer of the registry with its own section (fastText: mates.baselines.classifier), on
    the same block into stage_NN/prior, then z(mates) + w z(prior) over the block into
    stage_NN/combined (baselines/prior.py; w: mates.baselines.prior.weight). Each step skips itself
    when its artifact is complete."""
    influence = score_mates(x)
    sd, p = x.rd.stage(x.stage), REGISTRY[prior]
    with timed(sd, "score", sd / "prior"):
        prior_scores = p.scoring_function()(p.section_config(_baselines(x)), x.pool, x.candidates, sd / "prior")
    with timed(sd, "score", sd / "combined"):
        return combine(REGISTRY[f"mates+{prior}"].section_config(_baselines(x)), x.pool, x.candidates, sd / "combined", influence=influence,
                       prior=prior_scores)


# ----------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Scorer:
    """One entry of the registry: `datamates run` (mates.selectors), `datamates score-with` and the
    docs' tables read it. `section`: its knobs, mates.baselines.<section> (None: mates.* or none);
    `config`: the dataclass of that section, declared in the scorer's module (one scorer's line
    names it; scorers sharing a section name the same one);
    `standalone`: the scoring function `score-with` calls as fn(section config, pool, ids, out, **kw)
    (None: the scorer needs a run's stage); `flags`: the score-with flags that set a knob of its
    section; `aliases`: older names still accepted; `in_all`: listed by `selectors: [all]`."""

    name: str
    score: Callable[[StageInputs], Any] | None  # None: the standalone function on the block, timed
    summary: str
    section: str | None = None
    standalone: str | None = None  # "module:function" under datamates.baselines
    flags: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    cache: bool = False  # score-with passes --cache-dir (encoder embeddings)
    in_all: bool = True
    config: type | None = None  # the section's dataclass, declared in the scorer's module

    def stage_scores(self, x: StageInputs) -> Any:
        """The scores of stage x's block: the scorer's own glue, or its standalone function called
        with its config section (mates.baselines.<section>) on the block."""
        if self.score is not None:
            return self.score(x)
        return _scored(x, self.scoring_function(), self.section_config(_baselines(x)))

    def section_config(self, baselines: Any, prefix: str = "mates.baselines.") -> Any:
        """This scorer's config section of `baselines` (a BaselinesConfig; `section`)."""
        return section(baselines, self.section or "", prefix)

    def scoring_function(self) -> Callable[..., Path]:
        import importlib

        module, fn = (self.standalone or "").split(":")
        return getattr(importlib.import_module(f"datamates.baselines.{module}"), fn)


def _mates(name: str, summary: str, **kw: Any) -> Scorer:
    """MATES and its variants: one scorer, instances with arguments (mode, parity, static)."""
    return Scorer(name, functools.partial(score_mates, **kw), summary)


def _prior(prior: str) -> Scorer:
    """MATES x a quality prior: one scorer, instances per prior (any standalone scorer of the registry)."""
    return Scorer(f"mates+{prior}", functools.partial(score_mates_prior, prior=prior),
                  f"z(mates) + w z({prior}) over the block: the influence times a quality prior", "prior", in_all=False,
                  config=PriorConfig)


SCORERS: list[Scorer] = [
    Scorer("random", score_random, "uniform k of the block (MATES's baseline and warmup stages)"),
    _mates("mates", "probe the probe set -> fit the influence model -> score the block -> Gumbel-top-k",
           aliases=True),
    _mates("mates-first-order", "the same, with first-order probe labels", mode="first_order"),
    _mates("mates-parity", "MATES's own recipe: exact labels, the fine-tuned encoder on text", parity=True),
    _mates("mates-static", "the influence model fitted once, at the first selection stage, scores every later "
                           "stage (MATES's ablation)", static=True),
    _mates("mates-full", "mates with the full-forward LM-feature influence model (stats + hidden + fo of the whole "
                         "candidate, every block), whatever the run's prefix and exit", full=True),
    _mates("mates-prefix", "mates with issue 28's cheap pick (embed + stats + hidden + fo of a seq_len/16-token "
                           "prefix, embedding and head only), whatever the run's fit", prefix=True),
    Scorer("mates-proxy", functools.partial(score_mates, proxy=True),
           "mates with the features of a small proxy LM trained on the branch's own stream", "proxy",
           config=ProxyConfig),
    Scorer("oracle", score_oracle, "probe labels on the block itself (the upper bound)"),
    Scorer("loss", score_loss, "the current model's loss on each candidate, highest first"),
    Scorer("dsir", score_dsir, "DSIR importance weights against the plan's reference part", "dsir",
           "dsir:dsir", ("reference",), config=DSIRConfig),
    Scorer("semdedup", score_semdedup, "SemDeDup's keep order on encoder embeddings", "semdedup",
           "semdedup:semdedup", ("eps",), cache=True, config=SemDeDupConfig),
    Scorer("qurating", score_qurating, "a quality rater fitted on judgements (QuRating)", "rater",
           "quality:rate", ("labels",), aliases=("rater",), cache=True, config=RaterConfig),
    Scorer("fasttext", None, "a fastText classifier, reference positives vs pool negatives (DCLM)",
           "classifier", "classifier:classify", ("reference", "model"), aliases=("classifier",),
           config=ClassifierConfig),
    Scorer("perplexity", score_perplexity, "a reference LM's perplexity, low first (CCNet)", "perplexity",
           "perplexity:perplexity_filter", ("model",), config=PerplexityConfig),
    Scorer("heuristic", None, "Gopher / C4-style rules failed (word length, symbols, compression)",
           "heuristic", "heuristic:heuristic", config=HeuristicConfig),
    Scorer("dsdm", score_dsdm, "DsDm: TRAK datamodel scores on the reference loss", "dsdm", config=DsDmConfig),
    Scorer("rholoss", score_rholoss, "reducible loss: current loss - an irreducible model's loss", "rholoss",
           config=RhoLossConfig),
    _prior("fasttext"),
    _prior("heuristic"),
]
REGISTRY: dict[str, Scorer] = {s.name: s for s in SCORERS}
ALIASES: dict[str, str] = {a: s.name for s in SCORERS for a in s.aliases}
# mates.baselines.<name> -> the dataclass a scorer's module declares for it (Scorer.config), and
# group-level selection's (group:NAME composes any scorer; selection/group.py declares its section)
SECTIONS: dict[str, type] = {**{s.section: s.config for s in SCORERS if s.config is not None and s.section},
                             "group": GroupConfig}


def section(baselines: Any, name: str, prefix: str = "mates.baselines.") -> Any:
    """Section `name` of `baselines` (a BaselinesConfig), checked and filled in first if no verb
    did (resolve_config): the one way code reads a baseline's knobs."""
    resolve_owned(baselines, SECTIONS, prefix=prefix)
    return baselines.scorers[name]


def resolve_config(cfg: Any) -> Any:
    """A RunConfig's scorer-owned sections (mates.baselines.<name>, Scorer.config) checked against
    their dataclasses (a bad key: the loader's one-line ConfigError) and filled with their defaults,
    in place; idempotent. Every verb calls it right after loading (commands/_common.setup, config
    show), `run_mates` before any work, `score-with` on its `baselines.*` section."""
    resolve_owned(cfg.mates.baselines, SECTIONS, prefix="mates.baselines.")
    return cfg


def canonical(name: str) -> str:
    """A scorer's name; an older alias (rater, classifier) is accepted with a note."""
    if name in ALIASES:
        log.debug("selector %r is now called %r (the old name still works)", name, ALIASES[name])
        return ALIASES[name]
    return name


def run_selector(x: StageInputs, name: str) -> Path:
    """Score the block with scorer `name` and select k of it: the one way a stage's data is chosen."""
    return _select(x, REGISTRY[name].stage_scores(x))


def select_group(inner: str) -> Callable[[StageInputs], Path]:
    """`group:NAME`: NAME's scoring, then group-level selection (selection/group.py)."""
    def run(x: StageInputs) -> Path:
        return _select(replace(x, group=_section(x, "group")), REGISTRY[inner].stage_scores(x))

    return run


# name -> x -> the selection folder (the registry seen as selectors)
SELECTORS: dict[str, Callable[[StageInputs], Path]] = {
    s.name: functools.partial(run_selector, name=s.name) for s in SCORERS}
GROUP = "group:"


def _check_name(n: str, what: str) -> str:
    """The canonical name of selector `n` (an alias resolved), or a ConfigError listing the names.
    `NAME@REF` (NAME probing the reference REF, plan.selector_reference) keeps its `@REF`."""
    n, at, ref = n.partition("@")
    return _check_base(n, what) + at + ref


def _check_base(n: str, what: str) -> str:
    if n.startswith(GROUP):
        inner = canonical(n[len(GROUP):])
        if inner not in REGISTRY or inner == "random":
            scorers = ", ".join(s for s in REGISTRY if s != "random")
            raise ConfigError(f"{what}: {n!r}: group:NAME needs a scoring selector NAME; available: {scorers}")
        return GROUP + inner
    n = canonical(n)
    if n not in REGISTRY:
        raise ConfigError(f"{what}: unknown selector {n!r}; available: all, {', '.join(REGISTRY)}, "
                          "group:<any of them but random>")
    return n


def resolve_selectors(names: list[str]) -> list[str]:
    """`mates.selectors` checked against the registry; 'all' expands to every registered selector
    (in registry order, random first). Unknown names are a ConfigError that lists the available ones."""
    out: list[str] = []
    for name in names:
        for n in ([s.name for s in SCORERS if s.in_all] if name == "all" else [name]):
            n = _check_name(n, "mates.selectors")
            if n not in out:
                out.append(n)
    return out


def get_selector(name: str) -> Callable[[StageInputs], Path]:
    name = _check_name(name, "selector").partition("@")[0]  # the reference is the stage's (StageInputs.reference)
    if name.startswith(GROUP):
        return select_group(name[len(GROUP):])
    return SELECTORS[name]
