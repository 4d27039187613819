"""The ablation study: a merged proxy for every mixture, gold models for a sample, and how well
the proxies predict the gold models (Na et al. 2024, §4-5; docs/methods.md#merging, docs/methods.md#proxy-evaluation-and-statistics).

The study composes the other ablation stages (it is the study, not a stage): it reads the
partition manifest, the seed and unit checkpoints, trains the missing gold models through
`train_partition.train_gold`, and merges with `merge.RunningMerge`. Its box, `ablate()`:

    study    <- units, seed, evaluation sets, merge rules           (study.Study.open)
    seed     <- evaluate(seed)                                      (the reference point)
    proxy(S) <- evaluate(mean(theta_i : i in S)), every mixture S   (Gray-code running sums)
    gold(S)  <- evaluate(train(seed, union of S)), a sample of S    (|S| x unit steps)
    results  <- corr(log PPL proxy, log PPL gold) per evaluation set (analysis.analyse)
    write <run>/ablation/

Mixtures (mixtures.py): all 2^K - 1 non-empty subsets unless a list is given; a proxy is the
parameter average of S's unit models (merge.method: uniform, token-weighted, or task arithmetic);
gold(S) is continued pretraining from the seed on the union of S's units for |S| x unit steps
(train_partition.py), for |S| = 1 the unit model itself (gold_singletons).

Evaluation sets (sets.py): the held-out sequences of every domain (token perplexity,
micro-averaged over tokens, and bits per byte), all held-out sequences pooled, and LAMBADA
(perplexity of the target word's tokens, and greedy accuracy). For every evaluation set, across
the gold mixtures (analysis.py):

    Pearson r of log PPL(proxy) vs log PPL(gold); Spearman rho; Kendall tau;
    pairwise agreement = fraction of mixture pairs ordered the same way by proxy and gold.

reported over all gold mixtures and over the multi-unit ones only (singletons' proxies *are* their
gold models). A free baseline proxy is reported next to it: the mean of the unit models' log PPL.

Outputs in `<run>/ablation/`: results.json, proxies.csv, gold.csv, correlations.csv,
scatter.png, ranking.png, report.md, report.html. Evaluations are cached in
`<run>/ablation_cache/evals.jsonl`, so a killed or extended study re-evaluates nothing.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from datamates.ablation import weights_sha
from datamates.ablation.ablate.mixtures import all_mixtures, choose_gold
from datamates.ablation.ablate.sets import HELDOUT_ALL, LAMBADA, EvalCache, EvalSets, build_eval_sets
from datamates.ablation.ablate.study import Study, check_unit_seeds
from datamates.ablation.merge import inspect_checkpoint
from datamates.ablation.partition import add_unit, read_manifest
from datamates.ablation.report import headline, write_outputs
from datamates.ablation.stats import claim_table, correlations, pairwise_agreement, ratio_se
from datamates.ablation.train_partition import resolve_seed, train_partitions
from datamates.artifacts import (
    DONE,
    META,
    PARTIAL,
    Output,
    atomic_dir,
    check_not_input,
    check_replaceable,
    is_done,
    meta_record,
    produce,
    read_json,
)
from datamates.config.ablation import AblationConfig
from datamates.config.base import config_hash
from datamates.config.core import ModelConfig, TrainConfig
from datamates.core.pool import Pool
from datamates.errors import ArtifactMissing, IncompatibleArtifacts
from datamates.log import get_logger
from datamates.run_dir import RunDir

log = get_logger(__name__)
CHECKPOINT = "checkpoint"  # the kind core.train_loop.train gives a unit model


def ablate(cfg: AblationConfig, train_cfg: TrainConfig, model_cfg: ModelConfig, rd: RunDir, pool: Pool, *,
           subsets: list[list[str]] | None = None, gold: list[list[str]] | None = None,
           train_gold_models: bool = True, out: str | Path | None = None,
           this_run: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the study and write `<run>/ablation/` (or `out`). Returns the results dict; its
    `this_run` counts the work of this call (proxy evaluations, gold models trained, plus the
    entries of `this_run`)."""
    t_start = time.time()
    study = Study.open(cfg, train_cfg, rd, pool, this_run, subsets, gold)
    masks, gold_multi, gold_single = study.masks, study.gold_multi, study.gold_single
    log.info("proxies: %d mixtures of %d units x %d merge rule%s (%s)", len(masks), len(study.units),
             len(study.specs), "s" if len(study.specs) > 1 else "", ", ".join(study.spec_names))
    seed_key = study.evaluate_seed()
    timings = study.evaluate_proxies(masks)
    gold_by = {bal: study.evaluate_gold(bal, gold_multi, gold_single, train_cfg, model_cfg, pool, train_gold_models)
               for bal in study.balances}
    results = study.results(masks, gold_by, gold_multi, seed_key, timings)
    results["elapsed_s"] = time.time() - t_start
    out = Path(out) if out else rd.ablation
    # the study's report is re-derived from the evaluation cache on every run (the cache is what
    # resumes), so it is rewritten rather than reused by identity
    with atomic_dir(out, meta=meta_record("ablate", config_hash=config_hash(cfg), partition=str(study.manifest.path),
                                          seed=str(study.seed), units=study.units)) as tmp:
        write_outputs(results, tmp, plots=cfg.plots)
    log.info(headline(results))
    log.info("ablation report: %s", out / "report.md")
    return results


def add_unit_study(cfg: AblationConfig, train_cfg: TrainConfig, model_cfg: ModelConfig, rd: RunDir, pool: Pool,
                   name: str, ids: np.ndarray, source: str, *, model: str | Path | None = None,
                   out: str | Path | None = None) -> dict[str, Any]:
    """An incremental study (Na et al. 2024 §5): add unit `name` (sequence ids of the pool) to the
    study in `rd`, train only its model from the same seed state (or take `model`, which must have
    branched from this seed), and re-run the study: every cached proxy and gold evaluation is
    reused, so only the 2^K mixtures that contain the new unit are merged and evaluated. Without
    `ablation.gold`, the gold mixtures are the previous study's (results.json), so no gold model
    is trained; the new unit model is its own single-unit gold model."""
    manifest = read_manifest(rd.partitions)
    seed = resolve_seed(cfg.seed, rd.seed_model)
    gold = cfg.gold
    prev = rd.ablation / "results.json"
    if gold is None and prev.exists():
        gold = [g["mixture"].split("+") for g in json.loads(prev.read_text())["gold"] if g["k"] > 1]
    if not is_done(seed) and not (seed / "model.safetensors").exists():
        raise ArtifactMissing(f"{seed}: no seed model; an incremental study extends a trained study")
    dest = rd.unit(name)
    if model is not None:  # refused before anything is written
        model = Path(model)
        inspect_checkpoint(model)
        meta = json.loads((model / "meta.json").read_text()) if (model / "meta.json").exists() else {}
        if meta.get("seed_sha") != weights_sha(seed):
            raise IncompatibleArtifacts(
                f"{model}: --model was not trained from this study's seed ({seed}, weights {weights_sha(seed)}; the "
                f"model records {meta.get('seed_sha')}); train the unit from this seed instead (leave out --model)")
        if not is_done(dest):  # what copy_checkpoint's produce() would refuse, before the manifest changes
            check_not_input(dest, [model])
            check_replaceable(dest, CHECKPOINT)
    manifest = add_unit(manifest, pool, name, ids, source)
    trained = 0
    if model is not None:
        if not is_done(dest):
            copy_checkpoint(model, dest)
    elif not is_done(dest):
        train_partitions(manifest, pool, seed, rd.units, train_cfg, model_cfg, cfg.branch, units=[name],
                         log_dir=rd.logs)
        trained = 1
    return ablate(cfg, train_cfg, model_cfg, rd, pool, gold=gold, out=out,
                  this_run={"units_trained": trained, "added_unit": name})


def copy_checkpoint(model: Path, dest: Path) -> Path:
    """`--add-unit --model`: the unit's checkpoint copied to `dest` through artifacts.produce (kind
    checkpoint, identity: its weights), with its meta.json (the seed hash check_unit_seeds reads)."""
    def markers(folder: str, names: list[str]) -> list[str]:  # the source's own DONE / meta.json: produce writes dest's
        return [n for n in names if n in (DONE, PARTIAL, META)] if Path(folder) == model else []

    def build(tmp: Path) -> dict[str, Any] | None:
        shutil.copytree(model, tmp, dirs_exist_ok=True, ignore=markers)
        return read_json(model / META) if (model / META).is_file() else None

    return produce(Output(dest, CHECKPOINT, {"copy_of": weights_sha(model)}, inputs=(model,)), build)


__all__ = ["HELDOUT_ALL", "LAMBADA", "EvalCache", "EvalSets", "Study", "ablate", "add_unit_study", "all_mixtures",
           "build_eval_sets", "check_unit_seeds", "choose_gold", "claim_table", "copy_checkpoint", "correlations", "headline",
           "pairwise_agreement", "ratio_se"]
