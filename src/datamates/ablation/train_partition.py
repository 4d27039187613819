"""The seed model, one model per unit, and gold models (Na et al. 2024, §3; docs/methods.md#seed-model, docs/methods.md#unit-and-gold-training).

Every model goes through `core.train_loop.train`, so all share one optimizer loop, one data-order
seed and one checkpoint format.

    seed   pretraining from scratch on the seed mixture (default: the partition's rest, disjoint
           from every unit) with the seed schedule (default: warmup + cosine to 10%).
    unit   continued pretraining from the *full* seed state (weights, AdamW moments, step count)
           on one unit for `branch.steps` steps at a constant learning rate (default: the seed's
           final one), no warmup: the paper's 500 steps at 6e-5 after a cosine that ends at 6e-5.
    gold   the same recipe on the union of a mixture's k units for k x `branch.steps` steps. With
           gold_balance 'upsample' each unit's ids are repeated m_i = floor(max_j n_j / n_i) times
           (n = sequences; max over all units of the partition, as the paper does), so every unit
           weighs about the same, like the uniform merge; with token-balanced units m_i = 1.

Each model is an atomic checkpoint folder (`<run>/units/<unit>`, `<run>/gold/<mixture>`): a
finished one is skipped, a killed one resumes from its `.partial` folder. Jobs are the shards of
datamates.executor (docs/executor.md): serial, `branch.executor.workers` local processes
(`branch.executor.threads` torch threads each), or Ray actors.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from datamates import executor
from datamates.ablation import mixture_key, weights_sha
from datamates.config.ablation import BranchConfig, SeedConfig
from datamates.config.core import ModelConfig, TrainConfig
from datamates.core.checkpoint import check_checkpoint, has_optimizer_state, trainer_state
from datamates.core.pool import Pool
from datamates.core.train_loop import ids_hash, train
from datamates.errors import ArtifactMissing, DatamatesError, IncompatibleArtifacts, InputError
from datamates.identity import hash_text
from datamates.log import get_logger, setup_logging
from datamates.run_dir import is_done

log = get_logger(__name__)


# ----------------------------------------------------------------------------- recipes


def seed_train_config(train: TrainConfig, seed: SeedConfig) -> TrainConfig:
    """The run's training recipe with the seed's schedule."""
    return replace(train, steps=seed.steps, lr=seed.lr, schedule=seed.schedule, warmup_steps=seed.warmup_steps,
                   min_lr_ratio=seed.min_lr_ratio, total_steps=seed.steps)  # the seed is one call from step 0


def branch_train_config(train: TrainConfig, branch: BranchConfig, seed: str | Path, steps: int) -> TrainConfig:
    """Continued pretraining: constant lr (the seed's final one unless branch.lr), no warmup."""
    lr = branch.lr
    if lr is None:
        lr = trainer_state(seed).get("lr")
        if lr is None:
            raise InputError(
                f"{seed}: the seed checkpoint records no learning rate; set ablation.branch.lr"
            )
    return replace(train, steps=steps, lr=float(lr), schedule="constant", warmup_steps=0, total_steps=None,
                   init_optimizer=branch.init_optimizer)


# ----------------------------------------------------------------------------- jobs


@dataclass
class BranchJob:
    """One model to train from the seed: `parts` are (ids .npy file, repeats) concatenated."""

    name: str
    out: Path
    parts: list[tuple[str, int]]
    steps: int
    meta: dict[str, Any] = field(default_factory=dict)

    def ids(self) -> np.ndarray:
        return np.concatenate([np.tile(np.load(f), r) for f, r in self.parts]).astype(np.int64)


def _run_job(job: BranchJob, train_cfg: TrainConfig, model_cfg: ModelConfig, pool_path: str, init: str,
             threads: int | None, log_dir: str | None, slot: int) -> tuple[str, float]:
    """Train one job (in this process or a worker). Returns (out, seconds)."""
    import torch

    threads_before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    if log_dir is not None:
        setup_logging(Path(log_dir) / f"train-{job.name}.log")
    if train_cfg.device == "auto" and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        train_cfg = replace(train_cfg, device=f"cuda:{slot % torch.cuda.device_count()}")
    t0 = time.time()
    try:
        train(replace(train_cfg, steps=job.steps), model_cfg, Pool(pool_path), job.ids(), job.out, init=init,
              meta=job.meta)
    finally:
        torch.set_num_threads(threads_before)  # in-process jobs must not change the caller's setting
    return str(job.out), time.time() - t0


def run_jobs(jobs: list[BranchJob], train_cfg: TrainConfig, model_cfg: ModelConfig, pool_path: str | Path,
             init: str | Path, branch: BranchConfig, log_dir: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Train every job not yet done; returns {name: {"out", "seconds", "skipped"}}."""
    results: dict[str, dict[str, Any]] = {}
    todo = []
    for job in jobs:
        if is_done(job.out):
            call = trainer_state(job.out).get("call", {})
            if call.get("ids_hash") != ids_hash(job.ids()) or call.get("init") != str(init):
                raise IncompatibleArtifacts(
                    f"{job.out}: this model was trained on other sequences or from another seed (the partition "
                    "or seed changed since); delete the folder to retrain it"
                )
            results[job.name] = {"out": str(job.out), "seconds": 0.0, "skipped": True}
        else:
            todo.append(job)
    if len(todo) < len(jobs):
        log.info("%d of %d models already trained; skipping them", len(jobs) - len(todo), len(jobs))
    if not todo:
        return results
    ex = branch.executor
    workers = min(ex.workers, len(todo))
    serial = workers == 1 and ex.backend == "local"
    threads = ex.threads if (ex.threads or serial) else 1
    args = (train_cfg, model_cfg, str(pool_path), str(init), threads, None if serial or not log_dir else str(log_dir))
    log.info("training %d models (%s, %d worker%s x %s threads)", len(todo), "serial" if serial else ex.backend,
             workers, "s" if workers > 1 else "", threads or "default")
    job = executor.Job("train", [j.out for j in todo], _TrainTask(todo, args), save=None)
    out = executor.run(job, replace(ex, workers=workers, threads=threads or 0), device=train_cfg.device,
                       progress=False)  # Ray: threads CPUs (at least 1) and ray_gpus (default 0) per task
    for i, job_ in enumerate(todo):
        o, sec = out.get(i, (str(job_.out), 0.0))
        results[job_.name] = {"out": o, "seconds": sec, "skipped": False}
    return results


@executor.worker
class _TrainTask:
    """The models to train as executor shards (datamates.executor): shard i trains `jobs[i]` into
    its checkpoint folder (atomic: finished when it holds DONE) and returns (out, seconds)."""

    def __init__(self, jobs: list[BranchJob], args: tuple):
        self.jobs, self.args = jobs, args

    def __call__(self, slot: executor.Slot):
        def fn(i: int) -> tuple[str, float]:
            job = self.jobs[i]
            log.info("[%d/%d] %s: %d steps on %d sequences", i + 1, len(self.jobs), job.name, job.steps, len(job.ids()))
            try:
                out, sec = _run_job(job, *self.args, slot.index)
            except DatamatesError as e:
                raise type(e)(f"{job.name}: {e}") from None
            log.info("%s: trained in %.0f s", job.name, sec)
            return out, sec

        return fn


# ----------------------------------------------------------------------------- stages


def resolve_seed(seed_cfg: SeedConfig, default: Path) -> Path:
    return Path(seed_cfg.checkpoint) if seed_cfg.checkpoint else default


def train_seed(manifest, pool, seed_cfg: SeedConfig, train_cfg: TrainConfig, model_cfg: ModelConfig,
               out: str | Path) -> Path:
    """Train the seed on the seed mixture (or check the given checkpoint). Returns its path."""
    if seed_cfg.checkpoint:
        path = check_checkpoint(seed_cfg.checkpoint)
        tok = trainer_state(path).get("tokenizer_hash")
        if tok not in (None, pool.tokenizer_hash):
            raise IncompatibleArtifacts(
                f"{path}: seed checkpoint uses tokenizer {tok}, the pool {pool.path} {pool.tokenizer_hash}"
            )
        if not has_optimizer_state(path):
            log.warning("%s has no AdamW state: units will start with fresh moments (set ablation.branch."
                        "init_optimizer: false to silence)", path)
        return path
    ids = manifest.rest_ids() if seed_cfg.data == "rest" else manifest.train_ids()
    if len(ids) == 0:
        raise InputError(
            "the seed mixture is empty: every training sequence is in a unit; set ablation.seed.data: all, "
            "use token_balanced units, or give ablation.seed.checkpoint"
        )
    cfg = seed_train_config(train_cfg, seed_cfg)
    log.info("seed: %d steps on %d sequences (%s)", cfg.steps, len(ids), seed_cfg.data)
    return train(cfg, model_cfg, pool, ids, out, meta={"kind": "seed", "seed_data": seed_cfg.data,
                                                        "partition": str(manifest.path)})


def _check_seed(seed: str | Path, branch: BranchConfig) -> Path:
    seed = Path(seed)
    if not is_done(seed) and not (seed / "model.safetensors").exists():
        raise ArtifactMissing(f"{seed}: no seed checkpoint; run `datamates train-partitions` (it trains the seed) "
                              "or set ablation.seed.checkpoint")
    seed = check_checkpoint(seed)
    if branch.init_optimizer and not has_optimizer_state(seed):
        raise IncompatibleArtifacts(
            f"{seed}: seed has no AdamW state; set ablation.branch.init_optimizer: false to branch with fresh moments"
        )
    return seed


def train_partitions(manifest, pool, seed: str | Path, out_root: str | Path, train_cfg: TrainConfig,
                     model_cfg: ModelConfig, branch: BranchConfig, *, units: list[str] | None = None,
                     log_dir: str | Path | None = None) -> dict[str, Path]:
    """One model per unit, continued from `seed` with the same recipe and budget
    (`branch.steps` steps each). Returns {unit: checkpoint}."""
    manifest.check_pool(pool)
    seed = _check_seed(seed, branch)
    names = manifest.check_names(units, "--units: ") if units else manifest.units
    cfg = branch_train_config(train_cfg, branch, seed, branch.steps)
    sha = weights_sha(seed)
    G = cfg.micro_batch_size * cfg.grad_accum * int(os.environ.get("WORLD_SIZE", "1"))
    jobs = []
    for name in names:
        u = manifest.unit(name)
        if u["sequences"] == 0:
            raise InputError(f"unit '{name}' is empty")
        epochs = branch.steps * G / u["sequences"]
        jobs.append(BranchJob(name, Path(out_root) / name, [(str(manifest.path / u["ids"]), 1)], branch.steps,
                              {"kind": "unit", "unit": name, "unit_sequences": u["sequences"], "unit_tokens": u["tokens"],
                               "epochs": round(epochs, 4), "seed": str(seed), "seed_sha": sha,
                               "partition": str(manifest.path), "lr": cfg.lr}))
    epochs = sorted({j.meta["epochs"] for j in jobs})
    log.info("units: %d steps x %d sequences at constant lr %.3g from %s (%.2f-%.2f epochs per unit)",
             branch.steps, G, cfg.lr, seed, epochs[0], epochs[-1])
    if epochs[-1] > 1.5 * epochs[0]:
        log.warning("units differ in size: the same steps are %.2f-%.2f epochs; consider partition.token_balanced",
                    epochs[0], epochs[-1])
    res = run_jobs(jobs, cfg, model_cfg, pool.path, seed, branch, log_dir)
    return {n: Path(res[n]["out"]) for n in names}


def gold_multipliers(manifest, balance: str) -> dict[str, int]:
    """Per-unit repeat counts of gold data: floor(max_j n_j / n_i) ('upsample'), or 1 ('natural')."""
    sizes = {u["name"]: u["sequences"] for u in manifest.data["units"]}
    if balance == "natural":
        return {n: 1 for n in sizes}
    top = max(sizes.values())
    return {n: max(1, top // s) for n, s in sizes.items()}


def train_gold(manifest, pool, seed: str | Path, out_root: str | Path, mixtures: list[list[str]],
               train_cfg: TrainConfig, model_cfg: ModelConfig, branch: BranchConfig, *, balance: str = "upsample",
               log_dir: str | Path | None = None) -> dict[str, Path]:
    """Gold models: continued pretraining on the union of each mixture's units for k x branch.steps
    steps (same recipe as the units). Returns {mixture key: checkpoint}."""
    manifest.check_pool(pool)
    seed = _check_seed(seed, branch)
    mult = gold_multipliers(manifest, balance)
    sha = weights_sha(seed)
    jobs = []
    for mix in mixtures:
        names = manifest.check_names(list(mix), "gold mixture: ")
        key = mixture_key(names)
        parts = [(str(manifest.path / manifest.unit(n)["ids"]), mult[n]) for n in names]
        steps = branch.steps * len(names)
        jobs.append(BranchJob(key, Path(out_root) / _dir_name(key), parts, steps,
                              {"kind": "gold", "mixture": names, "multipliers": {n: mult[n] for n in names},
                               "seed": str(seed), "seed_sha": sha, "partition": str(manifest.path)}))
    cfg = branch_train_config(train_cfg, branch, seed, branch.steps)
    res = run_jobs(jobs, cfg, model_cfg, pool.path, seed, branch, log_dir)
    return {j.name: Path(res[j.name]["out"]) for j in jobs}


def _dir_name(key: str) -> str:
    """A folder name for a mixture key (long keys are shortened with a hash)."""
    if len(key) <= 120:
        return key
    return key[:80] + "~" + hash_text(key, digits=12)


def gold_dir(out_root: str | Path, names: list[str]) -> Path:
    return Path(out_root) / _dir_name(mixture_key(names))

