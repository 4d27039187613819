"""The one optimizer loop: every LM training in datamates goes through `train`.

AdamW with decoupled weight decay, a learning-rate schedule that is a pure function of the global
step, global-norm clipping, gradient accumulation, and torchrun DDP (gloo on CPU, NCCL on GPU).
The data order is a deterministic function of (seed, list of sequence ids): epoch e visits
`permutation(seed, e)`, and a cursor counts the sequences consumed. A global batch of
G = micro_batch_size x grad_accum x world_size sequences is cut from the cursor; rank r, micro-step
a takes rows [(a * world + r) * micro, ... + micro), so 1 process x 2 accumulation steps and
2 processes x 1 see the same global batch.

Checkpoints carry weights, AdamW moments, step counts, RNG and the cursor, so a killed run resumes
from `<out>.partial/step_XXXXXXXX` and ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from datamates import tracking
from datamates.artifacts import check_not_input
from datamates.config.base import to_dict
from datamates.config.core import ModelConfig, TrainConfig
from datamates.core.checkpoint import (
    check_checkpoint,
    checkpoint_hash,
    has_optimizer_state,
    load_model,
    load_optimizer_state,
    save_checkpoint,
    trainer_state,
)
from datamates.core.lm import autocast, build_model, flops_per_token, resolve_device
from datamates.core.pool import Pool
from datamates.errors import ConfigError, DatamatesError, IncompatibleArtifacts, InputError
from datamates.identity import hash_ids
from datamates.log import get_logger, is_main, progress_bar
from datamates.run_dir import (
    Lock,
    atomic_write_json,
    begin_partial,
    drop_fresh_partial,
    fingerprint,
    is_done,
    meta_record,
    partial_path,
    replace_dir,
    reuse,
    train_summary,
    write_done,
)

log = get_logger(__name__)


# ----------------------------------------------------------------------------- schedule & data


def lr_at(cfg: TrainConfig, step: int, start_step: int, end_step: int) -> float:
    """Learning rate for the optimizer step with 0-based global index `step`.

    warmup (linear, global steps 0..warmup-1) then
      constant : lr
      cosine   : min + (lr - min) * (1 + cos(pi * p)) / 2, p = (step - warmup) / (total - warmup)
      wsd      : lr until total - decay_steps, then linear to min over decay_steps
      exp_decay: lr * 0.5^((step - start_step) / half_life)  (MATES's 200-step pre-eval decay)
    `total` is cfg.total_steps: the horizon of the whole run, not of this call, so that the
    stages of a MATES run (one `train` call each) follow one cosine rather than one per stage
    (check_schedule refuses a decaying schedule without it). `end_step` is only a fallback for
    callers of this pure function that have no total."""
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "exp_decay":
        return peak * 0.5 ** ((step - start_step) / cfg.decay_half_life)
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    total = cfg.total_steps or end_step
    if cfg.schedule == "constant":
        return peak
    if cfg.schedule == "cosine":
        p = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
        return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * p))
    decay_start = total - cfg.decay_steps
    if step < decay_start:
        return peak
    p = min(1.0, (step - decay_start + 1) / cfg.decay_steps)
    return peak + (floor - peak) * p


class DataOrder:
    """Sequence ids in a reproducible order: epoch e is a permutation drawn from (seed, e)."""

    def __init__(self, ids: np.ndarray, seed: int):
        self.ids = np.asarray(ids, dtype=np.int64)
        if len(self.ids) == 0:
            raise InputError("no training sequences: the list of sequence ids is empty")
        self.seed = seed
        self._cache: dict[int, np.ndarray] = {}

    def _epoch(self, e: int) -> np.ndarray:
        if e not in self._cache:
            self._cache = {e: self.ids[np.random.default_rng([self.seed, e]).permutation(len(self.ids))]}
        return self._cache[e]

    def take(self, cursor: int, n: int) -> np.ndarray:
        out = []
        while n:
            e, i = divmod(cursor, len(self.ids))
            chunk = self._epoch(e)[i : i + n]
            out.append(chunk)
            n -= len(chunk)
            cursor += len(chunk)
        return np.concatenate(out)


def check_schedule(cfg: TrainConfig) -> None:
    """A decaying schedule needs the run's horizon: without it each call would decay to its own
    end (one cosine per MATES stage)."""
    if cfg.schedule in ("cosine", "wsd") and cfg.total_steps is None:
        raise ConfigError(
            f"train.total_steps is not set: the {cfg.schedule} schedule decays over the whole run, so it needs "
            "the run's total optimizer steps (set train.total_steps, or use schedule: constant)"
        )


ids_hash = hash_ids  # the training data's identity (identity.py)


# ----------------------------------------------------------------------------- distributed


def dist_setup(device_spec: str, timeout_minutes: float | None = None) -> tuple[int, int, torch.device]:
    """(rank, world size, device). Initialises the process group under torchrun, with a timeout of
    `timeout_minutes` (default: $DATAMATES_DIST_TIMEOUT_MINUTES, else 30; the run config's
    distributed.timeout_minutes). Long serial steps on rank 0 are waited for on files
    (datamates.executor.lead), never inside a collective, so the timeout bounds only training's."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_spec)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        minutes = timeout_minutes if timeout_minutes is not None else float(
            os.environ.get("DATAMATES_DIST_TIMEOUT_MINUTES", "30"))
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=minutes))
    return rank, world, device


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


# ----------------------------------------------------------------------------- the loop


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on all parameters (MATES) unless decay_norm_and_bias is false."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.decay_norm_and_bias:
        groups = [{"params": params, "weight_decay": cfg.weight_decay}]
    else:
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, foreach=False)


def lm_loss(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over all positions of the [B, T] rows (T - 1 targets each)."""
    logits = model(input_ids=x).logits  # [B, T, V]
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(), x[:, 1:].reshape(-1))


# knobs that do not change a single weight: a resume or a reuse with other values is fine
_NOT_IDENTITY = ("log_every", "checkpoint_every")


def train_fingerprint(cfg: TrainConfig, model_cfg: ModelConfig, pool: Pool, ids: np.ndarray,
                      init: str | Path | None) -> dict[str, str]:
    """Everything that determines a checkpoint's bytes: the train section, the model section (when
    training from scratch), the pool, the sequence ids and the init checkpoint's content hash."""
    section = {k: v for k, v in to_dict(cfg).items() if k not in _NOT_IDENTITY}
    return fingerprint(train=section, model=None if init is not None else to_dict(model_cfg),
                       pool_id=pool.pool_id, ids=f"{len(ids)} ids, sha256 {ids_hash(ids)}",
                       init=checkpoint_hash(check_checkpoint(init)) if init is not None else None)


def _agree(err: DatamatesError | None, world: int) -> None:
    """Raise rank 0's user error on every rank (instead of leaving the others at a barrier)."""
    if world > 1:
        box = [None if err is None else (type(err), str(err))]
        dist.broadcast_object_list(box, src=0)
        if box[0] is not None:
            raise box[0][0](box[0][1])
    elif err is not None:
        raise err


def _rng_states(device: torch.device, world: int) -> dict[str, torch.Tensor]:
    """Every rank's generator states, `rank<r>.torch_cpu` / `rank<r>.cuda` (dropout draws differ
    per rank), gathered to be saved by rank 0; `torch_cpu` is rank 0's, for older readers."""
    mine = {"torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        mine["cuda"] = torch.cuda.get_rng_state(device)
    every = [mine]
    if world > 1:
        every = [None] * world
        dist.all_gather_object(every, mine)
    out = {f"rank{r}.{k}": v.cpu() for r, st in enumerate(every) for k, v in st.items()}
    out["torch_cpu"] = every[0]["torch_cpu"].clone()
    return out


def _restore_rng(step_dir: Path, rank: int, device: torch.device) -> None:
    """This rank's generator states from a checkpoint; a checkpoint written before per-rank
    states (rank 0's only) restores rank 0 and leaves the other ranks as seeded."""
    from safetensors.torch import load_file

    f = step_dir / "rng.safetensors"
    if not f.exists():
        return
    rng = load_file(str(f))
    cpu = rng.get(f"rank{rank}.torch_cpu", rng.get("torch_cpu") if rank == 0 else None)
    if cpu is not None:
        torch.set_rng_state(cpu)
    if device.type == "cuda" and f"rank{rank}.cuda" in rng:
        torch.cuda.set_rng_state(rng[f"rank{rank}.cuda"], device)


def _latest_step_dir(work: Path) -> Path | None:
    steps = sorted(p for p in work.glob("step_*") if is_done(p))
    return steps[-1] if steps else None


def train(
    cfg: TrainConfig,
    model_cfg: ModelConfig,
    pool: Pool,
    ids: np.ndarray,
    out: str | Path,
    *,
    init: str | Path | None = None,
    meta: dict[str, Any] | None = None,
    callback: Callable[[int, dict[str, Any]], None] | None = None,
    force: bool | None = None,
) -> Path:
    """Train for `cfg.steps` optimizer steps on `ids` (sequence ids of `pool`) and write the
    final checkpoint to `out`. Starts from `init` (a checkpoint; its AdamW state and global step
    too if cfg.init_optimizer) or from a fresh model; resumes from `<out>.partial` if a killed run
    left one; returns at once if `out` is already complete. A finished or partial `out` made from
    another config, pool, ids or init (train_fingerprint) is a one-line error naming the key,
    unless `force` (--force): then it is redone. `callback(step, record)` runs after every step
    (tests use it to interrupt a run)."""
    out = Path(out)
    check_schedule(cfg)
    ids = np.asarray(ids, dtype=np.int64)
    fp = train_fingerprint(cfg, model_cfg, pool, ids, init)
    # produce()'s steps, spelled out: every rank of a torchrun world trains into the one partial
    check_not_input(out, [pool.path, *([init] if init else [])])
    if reuse(out, "checkpoint", fp, force=force):
        log.info("%s is already trained; skipping", out)
        return out
    rank, world, device = dist_setup(cfg.device)
    work = partial_path(out)
    lock, err, fresh = None, None, False
    if is_main():
        try:
            lock = Lock(out).acquire()
            work, fresh = begin_partial(out, "checkpoint", fp, resume=True, force=force)
        except DatamatesError as e:
            err = e
            if lock is not None:
                lock.release()
    _agree(err, world)
    _barrier(world)
    try:
        return _train(cfg, model_cfg, pool, ids, out, work, fp, rank, world, device, init, meta, callback)
    except DatamatesError:
        if is_main():
            drop_fresh_partial(work, fresh)
        raise
    finally:
        if lock is not None:
            lock.release()


def _model_and_state(cfg, model_cfg, pool, ids, init, resume, rank, device):
    """The model, its AdamW and the trainer state: from the killed run's last step folder (`resume`),
    from `init` (its weights, and its optimizer state with train.init_optimizer), or new; the
    generators seeded (or, resumed, restored where the killed run left them)."""
    if resume is not None:
        model = load_model(resume, device)
        state = trainer_state(resume)
        log.info("resuming from %s (step %d of %d)", resume.name, state["call"]["done"], cfg.steps)
    else:
        start_step = 0
        if init is not None:
            model = load_model(init, device)
            init_state = trainer_state(init)
            if init_state.get("tokenizer_hash") not in (None, pool.tokenizer_hash):
                raise IncompatibleArtifacts(
                    f"{init}: checkpoint was trained with tokenizer {init_state.get('tokenizer_hash')}, "
                    f"the pool {pool.path} uses {pool.tokenizer_hash}"
                )
            if cfg.init_optimizer:
                start_step = int(init_state.get("global_step", 0))
        else:
            model = build_model(model_cfg, pool.vocab_size, pool.eos_id, cfg.seed).to(device)
        state = {
            "global_step": start_step,
            "tokens_seen": 0,
            "pool_id": pool.pool_id,
            "tokenizer_hash": pool.tokenizer_hash,
            "seq_len": pool.seq_len,
            "call": {"start_step": start_step, "steps": cfg.steps, "done": 0, "cursor": 0, "seed": cfg.seed,
                     "n_ids": int(len(ids)), "ids_hash": ids_hash(ids), "init": str(init) if init else None},
            "train_config": to_dict(cfg),
        }
    if model.config.vocab_size < pool.vocab_size:
        raise IncompatibleArtifacts(
            f"model has {model.config.vocab_size} embedding rows, the pool's tokenizer {pool.vocab_size} tokens"
        )
    model.train()
    optimizer = make_optimizer(model, cfg)
    if resume is not None:
        load_optimizer_state(resume, model, optimizer)
    elif init is not None and cfg.init_optimizer:
        if not has_optimizer_state(init):
            raise IncompatibleArtifacts(
                f"{init}: checkpoint has no optimizer state; set train.init_optimizer: false to start "
                "from its weights with fresh AdamW moments"
            )
        load_optimizer_state(init, model, optimizer)
    torch.manual_seed(cfg.seed + rank)
    if resume is not None:  # after seeding: the generators continue where the killed run left them
        _restore_rng(resume, rank, device)
    return model, optimizer, state


def _train(cfg, model_cfg, pool, ids, out, work, fp, rank, world, device, init, meta, callback) -> Path:
    resume = _latest_step_dir(work)

    model, optimizer, state = _model_and_state(cfg, model_cfg, pool, ids, init, resume, rank, device)

    net: torch.nn.Module = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    fwd = torch.compile(net) if cfg.compile else net

    call = state["call"]
    order = DataOrder(ids, call["seed"])
    micro, accum = cfg.micro_batch_size, cfg.grad_accum
    G = micro * accum * world
    end_step = call["start_step"] + cfg.steps
    fpt = flops_per_token(model, pool.seq_len)
    log_path = work / "train_log.jsonl"
    records = _read_log(log_path, call["done"]) if resume is not None else []
    if is_main():
        _write_log(log_path, records)
    tracking.start(work, resume_step=call["start_step"] + call["done"] if resume is not None else None,
                   config=state["train_config"])  # metrics.jsonl (+ TensorBoard / wandb on request)
    params = [p for p in model.parameters() if p.requires_grad]

    t0, window_t, window_tokens = time.time(), time.time(), 0
    bar = progress_bar(f"train {out.parent.name}/{out.name}", total=cfg.steps, unit="step")
    bar.update(call["done"])
    while call["done"] < cfg.steps:
        gstep = call["start_step"] + call["done"]
        lr = lr_at(cfg, gstep, call["start_step"], end_step)
        for g in optimizer.param_groups:
            g["lr"] = lr
        batch = order.take(call["cursor"], G)
        loss_sum = torch.zeros((), device=device)
        for a in range(accum):
            lo = (a * world + rank) * micro
            x = torch.from_numpy(pool.tokens(batch[lo : lo + micro])).to(device, non_blocking=True)
            sync = contextlib.nullcontext() if (world == 1 or a == accum - 1) else net.no_sync()
            with sync:
                with autocast(device, cfg.precision):
                    loss = lm_loss(fwd, x)
                (loss / accum).backward()
            loss_sum += loss.detach()
        if cfg.grad_clip is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        else:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_mean = loss_sum / accum
        if world > 1:
            dist.all_reduce(loss_mean.div_(world))  # mean as SUM of loss / world: gloo has no AVG in older torch
        call["done"] += 1
        call["cursor"] += G
        state["global_step"] = gstep + 1
        state["tokens_seen"] += G * pool.seq_len
        window_tokens += G * pool.seq_len
        rec = {"step": call["done"], "global_step": gstep + 1, "loss": float(loss_mean), "lr": lr,
               "grad_norm": float(grad_norm), "tokens": state["tokens_seen"],
               "elapsed_s": round(time.time() - t0, 3)}
        if not math.isfinite(rec["loss"]):
            raise FloatingPointError(f"loss is {rec['loss']} at step {call['done']}; lower train.lr")
        records.append(rec)
        if is_main():
            with open(log_path, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
        tracking.log_metrics(gstep + 1, {f"train/{k}": rec[k] for k in ("loss", "lr", "grad_norm", "tokens")},
                             folder=work)
        bar.update(1)
        if call["done"] % cfg.log_every == 0 or call["done"] == cfg.steps:
            dt = time.time() - window_t
            log.info("step %5d/%d  loss %.4f  lr %.2e  grad_norm %.3f  %s tok/s", call["done"], cfg.steps,
                     rec["loss"], lr, rec["grad_norm"], f"{window_tokens / max(dt, 1e-9):,.0f}")
            window_t, window_tokens = time.time(), 0
        state["lr"] = lr
        if call["done"] % cfg.checkpoint_every == 0 and call["done"] < cfg.steps:
            rng = _rng_states(device, world)
            if is_main():
                step_dir = work / f"step_{call['done']:08d}"
                save_checkpoint(step_dir, model, optimizer, state, rng=rng)
                for old in work.glob("step_*"):
                    if old != step_dir:
                        shutil.rmtree(old, ignore_errors=True)
            _barrier(world)
        if callback is not None:
            callback(call["done"], rec)
    bar.close()

    seconds = time.time() - t0
    summary = {"steps": cfg.steps, "global_step": state["global_step"], "tokens": cfg.steps * G * pool.seq_len,
               "flops": fpt * cfg.steps * G * pool.seq_len, "flops_per_token": fpt, "seconds_this_process": seconds,
               "final_loss": records[-1]["loss"] if records else None}
    state["summary"] = summary
    rng = _rng_states(device, world)
    if is_main():
        _write_final(out, work, model, optimizer, state, pool, meta or {}, records, fp, rng)
    _barrier(world)
    return out


def _write_final(out: Path, work: Path, model, optimizer, state, pool: Pool, meta: dict, records: list,
                 fp: dict[str, str], rng: dict[str, torch.Tensor]) -> None:
    tmp_final = work / "final"
    save_checkpoint(
        tmp_final, model, optimizer, state, tokenizer_dir=pool.path,
        meta=meta_record("train", pool_id=pool.pool_id, **meta), rng=rng,
    )
    _write_log(tmp_final / "train_log.jsonl", records)
    tracking.close(work)
    if (work / "metrics.jsonl").exists():
        shutil.copyfile(work / "metrics.jsonl", tmp_final / "metrics.jsonl")
    atomic_write_json(train_summary(tmp_final), state["summary"])
    write_done(tmp_final, "checkpoint", fp)  # certifies every file, the log and summary too
    replace_dir(tmp_final, out, "checkpoint")
    shutil.rmtree(work, ignore_errors=True)


def _read_log(path: Path, upto: int) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in recs if r["step"] <= upto]


def _write_log(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def read_train_log(checkpoint: str | Path) -> list[dict[str, Any]]:
    p = Path(checkpoint) / "train_log.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []


