"""The selection method as its paper's algorithm box: the stage order and nothing else.

run_mates (Yu et al. 2024, Alg. 1; docs/methods.md#mates-the-loop):
    pool <- tokenize the corpus;  plan <- held-out documents, probe set, one candidate block per
            stage, every reference set split into a reference part and an evaluation part
    for the warmup stages:  train on a random k of the block                  (shared by all selectors)
    for each selector, for each later stage s:
        selected <- selector(model, block_s)      probe -> fit -> score -> Gumbel-top-k for MATES
        model    <- train(model, selected)        AdamW state carried across stages
    final <- a short learning-rate decay on the last stage's data
    evaluate(final) on the held-out documents and the evaluation part of the reference sets only
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from datamates import run_progress
from datamates.accounting import timed
from datamates.config.evaluate import EvalConfig
from datamates.config.run import RunConfig, stage_train_config
from datamates.core.pool import Pool
from datamates.core.reference import (
    CLEAN,
    clean_reference,
    combine_references,
    load_reference,
    reference_parts,
)
from datamates.core.train_loop import dist_setup, train
from datamates.errors import ConfigError
from datamates.evaluate import evaluate
from datamates.executor import on_rank0, set_world
from datamates.junk import junk_kind, junk_report
from datamates.log import get_logger
from datamates.pipelines.pool import run_pool
from datamates.plan import make_plan, selector_reference
from datamates.report import summarize_run
from datamates.run_dir import WARMUP, RunDir, encoder_cache_dir
from datamates.selection.select import read_selection
from datamates.selectors import StageInputs, get_selector, resolve_config, resolve_selectors

log = get_logger(__name__)


def run_mates(cfg: RunConfig, rd: RunDir) -> dict[str, Any]:
    selectors = resolve_selectors(cfg.mates.selectors)  # an unknown name fails before any work
    resolve_config(cfg)  # a scorer's own section (mates.baselines.<name>) too
    # under torchrun: training is DDP; a selector runs on rank 0 and shares its probe and score
    # shards with every rank (executor.lead); its serial steps (fit, select) stay on rank 0
    dist_setup(cfg.train.device, timeout_minutes=cfg.distributed.timeout_minutes)
    set_world(rd.logs / "ranks", heartbeat_s=cfg.distributed.heartbeat_seconds,
              timeout_s=60 * cfg.distributed.timeout_minutes)
    pool = Pool(on_rank0(run_pool, cfg, rd))
    plan = on_rank0(make_plan, cfg, pool, rd.plan)
    m = cfg.mates
    final_examples = plan.examples("evaluation")
    ckpt, ids = None, None
    for s in range(1, m.warmup_stages + 1):
        ckpt, ids = _stage(cfg, rd.branch(WARMUP), pool, plan, s, ckpt, "random")
    for name in selectors:
        br, c, last = rd.branch(name), ckpt, ids
        for s in range(m.warmup_stages + 1, m.stages + 1):
            c, last = _stage(cfg, br, pool, plan, s, c, name)
        run_progress.final(name)
        final = _decay(cfg, br, pool, c, last)
        with timed(br.base, "eval", br.final_eval):
            on_rank0(evaluate, cfg.eval, final, br.final_eval, examples=final_examples,
                     heldout_pools={"heldout": (pool, plan.heldout)})
    kinds = [k for k in map(junk_kind, pool.domains) if k]
    if kinds:  # planted junk (datamates.junk): <run>/noise.json
        on_rank0(junk_report, rd.root, kinds)
    return on_rank0(summarize_run, rd)


def _stage(cfg: RunConfig, br: RunDir, pool: Pool, plan, s: int, ckpt: Path | None, selector: str):
    """Select stage s's data, train on it, score the reference loss for the curve."""
    log.info("== %s: stage %d of %d (%s)", br.branch_name, s, cfg.mates.stages, selector)
    run_progress.stage(s, selector, warmup=br.branch_name == WARMUP)
    x = StageInputs(cfg.mates, br, pool, s, ckpt, plan.block(s), plan.probe, plan.k, encoder_cache_dir(pool.path),
                    reference=_probe_reference(cfg, pool, plan, selector_reference(cfg, selector)), run=cfg)
    ids = read_selection(on_rank0(get_selector(selector), x))
    tcfg = stage_train_config(cfg, s)
    with timed(br.stage(s), "train", br.checkpoint(s)):
        out = train(tcfg, cfg.model, pool, ids, br.checkpoint(s), init=ckpt, meta={"stage": s, "selector": selector})
    on_rank0(_curve_point, cfg, br.eval(s), out, plan)
    return out, ids


def _decay(cfg: RunConfig, br: RunDir, pool: Pool, ckpt: Path, ids) -> Path:
    """MATES evaluates a checkpoint after 200 steps with lr = peak x 0.5^(i / 50) on the current data."""
    if cfg.mates.decay_steps == 0:
        return ckpt
    tcfg = replace(cfg.train, steps=cfg.mates.decay_steps, schedule="exp_decay", warmup_steps=0,
                   decay_half_life=cfg.mates.decay_half_life, seed=cfg.train.seed + 1000)
    with timed(br.base, "decay", br.final):
        return train(tcfg, cfg.model, pool, ids, br.final, init=ckpt, meta={"stage": "decay"})


def _probe_reference(cfg: RunConfig, pool: Pool, plan, spec: str | None = None):
    """The probes' reference set: every part of `spec` (default `probe.reference`; "a+b": several,
    combined) from the plan: a text set's reference part, `clean` the plan's held-out clean
    sequences. None: a single pool reference, which the probe stage draws from sequences outside
    the candidates."""
    p = cfg.mates.probe
    parts = reference_parts(spec or p.reference)
    sets = []
    for part in parts:
        if part == CLEAN:
            if plan.clean is None:
                raise ConfigError(f"{pool.path}: the plan has no clean reference; use a new run name")
            sets.append(clean_reference(pool.path, plan.clean, tokenizer_hash=pool.tokenizer_hash))
            continue
        split = plan.split_of(part)
        if split is None and len(parts) == 1:
            return None
        if split is None:
            raise ConfigError(f"reference {spec or p.reference!r}: {part!r} is not a text reference set; "
                              "several references combine text sets and `clean` only")
        sets.append(load_reference(part, pool.tokenizer(), size=p.reference_size, seed=p.reference_seed,
                                   index=split.reference, tokenizer_hash=pool.tokenizer_hash))
    return sets[0] if len(sets) == 1 else combine_references(sets, parts)


def _curve_point(cfg: RunConfig, out: Path, ckpt: Path, plan) -> None:
    """The per-stage reference-loss curve, on the reference part (never the final evaluation's)."""
    ecfg = EvalConfig(tasks=[], reference=cfg.eval.reference, limit=cfg.mates.curve_reference_size,
                      batch_size=cfg.eval.batch_size, device=cfg.eval.device)
    evaluate(ecfg, ckpt, out, examples=plan.examples("reference"))
