"""The probe stage's machinery: training state, closed-form AdamW step, naive / exact labels, the
chunked, resumable, atomic stage (`probe`), and reading labels. The formulas are in the package
docstring (`datamates.selection.probe`)."""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from datamates import executor
from datamates.artifacts import Output, finished, produce
from datamates.config.base import config_hash, from_dict, to_dict
from datamates.config.core import TrainConfig
from datamates.config.probe import ProbeConfig
from datamates.core.checkpoint import (
    check_checkpoint,
    checkpoint_hash,
    has_optimizer_state,
    load_model,
    load_optimizer_state,
    trainer_state,
)
from datamates.core.lm import autocast, flops_per_token, resolve_device
from datamates.core.loss import TargetExample
from datamates.core.pool import Pool
from datamates.core.reference import ReferenceBatches, ReferenceSet, load_reference
from datamates.core.train_loop import lm_loss, lr_at, make_optimizer
from datamates.errors import (
    ArtifactMissing,
    ConfigError,
    IncompatibleArtifacts,
    InputError,
    NumericalError,
)
from datamates.identity import hash_ids
from datamates.log import get_logger
from datamates.run_dir import (
    atomic_write_bytes,
    is_done,
    meta_record,
)
from datamates.selection.probe.first_order import FirstOrderProber, first_order_constants

log = get_logger(__name__)

SIGN = ("ref_loss_delta = L_ref(after one AdamW step on the sequence) - L_ref(before); "
        "lower is better; selectors keep the lowest")
LABELS_FILE = "labels.parquet"
MODES = ("exact", "first_order", "naive")


# ----------------------------------------------------------------------------- training state


@dataclass
class AdamWHyper:
    """The probe step's optimizer settings (from the checkpoint's train_config and trainer_state)."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    grad_clip: float | None
    lr_source: str

    def describe(self) -> dict[str, Any]:
        return {"lr": self.lr, "lr_source": self.lr_source, "beta1": self.beta1, "beta2": self.beta2,
                "eps": self.eps, "grad_clip": self.grad_clip}


def adamw_update_(
    out: torch.Tensor,
    theta: torch.Tensor,
    grad: torch.Tensor | None,
    m: torch.Tensor,
    v: torch.Tensor,
    *,
    step: float,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    buf_m: torch.Tensor,
    buf_v: torch.Tensor,
) -> torch.Tensor:
    """theta' of one AdamW step written into `out`; theta, m, v stay untouched.

    The float operations are those of `torch.optim.AdamW(foreach=False)` (`_single_tensor_adam`),
    in the same order, so `out` is bit-identical to the parameter after `optimizer.step()`:
        out = theta * (1 - lr wd);  m' = lerp(m, g, 1 - b1);  v' = v b2 + (1 - b2) g g
        out += -(lr / (1 - b1^s)) m' / (sqrt(v') / sqrt(1 - b2^s) + eps),   s = step + 1
    A parameter without a gradient is not updated at all (as torch skips it)."""
    if grad is None:
        return out.copy_(theta)
    s = float(step) + 1.0
    if weight_decay != 0:
        torch.mul(theta, 1 - lr * weight_decay, out=out)
    else:
        out.copy_(theta)
    torch.lerp(m, grad, 1 - beta1, out=buf_m)
    torch.mul(v, beta2, out=buf_v).addcmul_(grad, grad, value=1 - beta2)
    bias_correction1 = 1 - beta1**s
    bias_correction2 = 1 - beta2**s
    step_size = lr / bias_correction1
    buf_v.sqrt_().div_(bias_correction2**0.5).add_(eps)  # denom
    return out.addcdiv_(buf_m, buf_v, value=-step_size)


def next_step_lr(train_cfg: TrainConfig, state: dict[str, Any]) -> float:
    """The learning rate of the step the probe simulates: the training schedule's rate at global step
    t = `global_step` (0-based index of the step after the checkpoint), not the rate of the last step
    taken (t - 1): MATES (Yu et al., NeurIPS 2024, §3.2) probes the update the next step of training would make.

    The step continues the checkpoint's `train` call (its start step: exp_decay counts from it; its end
    step: the horizon of a cosine / wsd schedule without `train.total_steps`)."""
    t = int(state.get("global_step", 0))
    call = state.get("call") or {}
    start = int(call.get("start_step", 0))
    end = max(start + int(call.get("steps", 0)), t)  # past the end of a decayed schedule: its floor
    return float(lr_at(train_cfg, t, start, end))


class ProbeState:
    """A checkpoint's full training state in memory, and the one-step update out of place.

    `model` holds theta (trainable parameters in `params`, with AdamW `m`, `v`, per-parameter step
    counts `steps` and weight decay `wds`); `work` is a second model that receives theta'(x)."""

    def __init__(self, model: torch.nn.Module, train_cfg: TrainConfig, hyper: AdamWHyper,
                 m: list[torch.Tensor], v: list[torch.Tensor], steps: list[float], wds: list[float],
                 device: torch.device, precision: str, global_step: int):
        self.model = model
        self.train_cfg = train_cfg
        self.hyper = hyper
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.m, self.v, self.steps, self.wds = m, v, steps, wds
        self.device = device
        self.precision = precision
        self.global_step = global_step
        self._work: torch.nn.Module | None = None
        self._bufs: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, *, lr: float | None = None, device: str | torch.device = "cpu",
                        precision: str = "fp32", dtype: torch.dtype | None = None) -> ProbeState:
        checkpoint = check_checkpoint(checkpoint)
        if not has_optimizer_state(checkpoint):
            raise ArtifactMissing(
                f"{checkpoint}: checkpoint has no optimizer state (optimizer.safetensors); a probe takes one AdamW "
                "step from the full training state, so it needs a checkpoint written by `datamates train`, not an export"
            )
        state = trainer_state(checkpoint)
        try:
            train_cfg = from_dict(TrainConfig, state.get("train_config") or {}, where=f"{checkpoint}/trainer_state.json: train_config.")
        except ConfigError as e:
            raise IncompatibleArtifacts(f"{checkpoint}: cannot read the training config the checkpoint was made with ({e})") from None
        if lr is not None:
            lr_used, source = float(lr), "config"
        else:
            lr_used, source = next_step_lr(train_cfg, state), "schedule at the next step"
        device = torch.device(device)
        model = load_model(checkpoint, device)
        if dtype is not None:
            model.to(dtype)
        model.train()  # as in the training loop (dropout is 0 in datamates models)
        opt = make_optimizer(model, train_cfg)
        load_optimizer_state(checkpoint, model, opt)
        wd_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
        m, v, steps, wds = [], [], [], []
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            st = opt.state.get(p)
            if st is None or "exp_avg" not in st:
                raise IncompatibleArtifacts(f"{checkpoint}: optimizer state has no AdamW moments for '{name}'")
            m.append(st["exp_avg"].to(p.dtype))
            v.append(st["exp_avg_sq"].to(p.dtype))
            steps.append(float(st["step"]))
            wds.append(float(wd_of[id(p)]))
        del opt
        hyper = AdamWHyper(lr_used, train_cfg.beta1, train_cfg.beta2, train_cfg.eps, train_cfg.grad_clip, source)
        return cls(model, train_cfg, hyper, m, v, steps, wds, device, precision, int(state.get("global_step", 0)))

    @property
    def work(self) -> torch.nn.Module:
        """The scratch model that receives theta' (allocated on first use)."""
        if self._work is None:
            self._work = copy.deepcopy(self.model)
        return self._work

    @property
    def work_params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.work.parameters() if p.requires_grad]

    def clipped_grad(self, x: torch.Tensor) -> tuple[float, float]:
        """Gradient of lm_loss on the single [T] sequence x, clipped as the training loop clips, left in
        the parameters' `.grad`. Returns (loss, gradient norm before clipping)."""
        self.model.zero_grad(set_to_none=True)
        with autocast(self.device, self.precision):
            loss = lm_loss(self.model, x[None])
        loss.backward()
        clip = self.hyper.grad_clip if self.hyper.grad_clip is not None else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.params, clip)
        return float(loss.detach()), float(norm)

    @torch.no_grad()
    def write_update(self, grads: Sequence[torch.Tensor | None] | None = None, *, zero: bool = False) -> torch.nn.Module:
        """theta' into `work` from `grads` (default: the parameters' `.grad`; zero=True: a zero gradient,
        i.e. the part of the step every candidate shares: momentum and weight decay). Returns `work`."""
        if self._bufs is None:
            self._bufs = [(torch.empty_like(p), torch.empty_like(p)) for p in self.params]
        h = self.hyper
        for i, (p, out) in enumerate(zip(self.params, self.work_params, strict=True)):
            g = torch.zeros_like(p) if zero else (grads[i] if grads is not None else p.grad)
            adamw_update_(out.data, p.data, g, self.m[i], self.v[i], step=self.steps[i], lr=h.lr, beta1=h.beta1,
                          beta2=h.beta2, eps=h.eps, weight_decay=self.wds[i], buf_m=self._bufs[i][0],
                          buf_v=self._bufs[i][1])
        return self.work


# ----------------------------------------------------------------------------- naive (reference procedure)


@torch.inference_mode()
def naive_reference_nll(model: torch.nn.Module, examples: Sequence[TargetExample], *, batch_size: int = 32,
                        max_len: int | None = None, pad_id: int = 0, precision: str = "fp32") -> torch.Tensor:
    """[n] float64 summed target NLL per example, computed the way MATES's probe code evaluates
    LAMBADA (docs/methods.md#one-exact-probe): batches of `batch_size` in set order, right-padded to the longest row,
    logits for every position, context and padding masked out of the loss."""
    device = next(model.parameters()).device
    max_len = max_len or model.config.max_position_embeddings
    out = torch.zeros(len(examples), dtype=torch.float64)
    for lo in range(0, len(examples), batch_size):
        chunk = examples[lo : lo + batch_size]
        fulls = [(e.context + e.target)[-(max_len + 1):] for e in chunk]
        T = max(len(f) for f in fulls) - 1
        x = torch.full((len(chunk), T), pad_id, dtype=torch.long)
        y = torch.full((len(chunk), T), -100, dtype=torch.long)
        for j, (e, f) in enumerate(zip(chunk, fulls, strict=True)):
            k = min(len(e.target), len(f) - 1)
            x[j, : len(f) - 1] = torch.tensor(f[:-1])
            y[j, len(f) - 1 - k : len(f) - 1] = torch.tensor(f[len(f) - k :])
        with autocast(device, precision):
            logits = model(input_ids=x.to(device)).logits  # [B, T, V]
        logits = logits if logits.dtype == torch.float64 else logits.float()
        nll = F.cross_entropy(logits.transpose(1, 2), y.to(device), reduction="none", ignore_index=-100)
        out[lo : lo + len(chunk)] = nll.double().sum(1).cpu()
    return out


def naive_probe(state: ProbeState, x: torch.Tensor, examples: Sequence[TargetExample], batch_size: int,
                pad_id: int) -> tuple[torch.Tensor, float, float]:
    """The reference procedure for one candidate: copy model and optimizer, `AdamW.step()` on x,
    evaluate. Returns (per-example NLL after the step [n] float64, loss, gradient norm)."""
    model = copy.deepcopy(state.model)
    model.zero_grad(set_to_none=True)
    model.train()
    opt = make_optimizer(model, state.train_cfg)
    for g in opt.param_groups:
        g["lr"] = state.hyper.lr
    params = [p for p in model.parameters() if p.requires_grad]
    for p, m, v, s in zip(params, state.m, state.v, state.steps, strict=True):
        opt.state[p] = {"step": torch.tensor(s, dtype=torch.float32), "exp_avg": m.clone(), "exp_avg_sq": v.clone()}
    with autocast(state.device, state.precision):
        loss = lm_loss(model, x[None])
    loss.backward()
    clip = state.hyper.grad_clip if state.hyper.grad_clip is not None else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()
    nll = naive_reference_nll(model, examples, batch_size=batch_size, pad_id=pad_id, precision=state.precision)
    return nll, float(loss.detach()), float(norm)


# ----------------------------------------------------------------------------- per-chunk work


@dataclass
class WorkSpec:
    """Everything a worker needs to label chunks of candidates (picklable: paths, arrays, tensors)."""

    checkpoint: str
    pool: str
    cfg: dict[str, Any]
    lr: float
    examples: list[TargetExample]
    groups: np.ndarray  # [G, n_ref] 0/1 weights: row 0 the whole set, then the halves, then the parts
    before: np.ndarray  # [G] L_ref(theta) per group (in the mode's own evaluation)
    pad_id: int
    first_order: Any = None  # FirstOrderConstants (first_order mode)
    dtype: str | None = None  # tests: "float64"
    threads: int = 0


class ProbeWorker:
    """Labels chunks of candidate ids; one per process / Ray actor, or the coordinator itself."""

    def __init__(self, spec: WorkSpec, device: str | torch.device | None = None, *, state: ProbeState | None = None,
                 ref: ReferenceBatches | None = None):
        if spec.threads > 0:
            torch.set_num_threads(spec.threads)
        self.spec = spec
        self.cfg = from_dict(ProbeConfig, spec.cfg)
        self.pool = Pool(spec.pool)
        dtype = getattr(torch, spec.dtype) if spec.dtype else None
        self.state = state or ProbeState.from_checkpoint(
            spec.checkpoint, lr=spec.lr, device=device or resolve_device(self.cfg.device),
            precision=self.cfg.precision, dtype=dtype)
        self.groups = torch.as_tensor(spec.groups, dtype=torch.float64)  # [G, n_ref]
        self.ref = ref
        if self.cfg.mode == "exact" and self.ref is None:
            self.ref = reference_batches(self.cfg, spec.examples, self.state, spec.pad_id)
        self._fo = None
        if self.cfg.mode == "first_order":
            self._fo = FirstOrderProber(self.state, spec.first_order, candidate_batch=self.cfg.candidate_batch,
                                        memory_budget_gb=self.cfg.memory_budget_gb)

    def _group_losses(self, nll: torch.Tensor, n_tokens: np.ndarray) -> np.ndarray:
        tok = self.groups @ torch.as_tensor(n_tokens, dtype=torch.float64)
        return (self.groups @ nll / tok).numpy()  # [G]

    def run(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """{seq_id [n], delta [n, G], after [n, G] (exact / naive), loss [n], grad_norm [n]}."""
        ids = np.asarray(ids, dtype=np.int64)
        X = torch.from_numpy(self.pool.tokens(ids)).to(self.state.device)
        n, G = len(ids), len(self.groups)
        out = {"seq_id": ids, "loss": np.zeros(n), "grad_norm": np.zeros(n)}
        if self.cfg.mode == "first_order":
            delta, loss, gnorm = [], [], []
            for lo in range(0, n, self.cfg.candidate_batch):
                d, lo_, gn = self._fo.labels(X[lo : lo + self.cfg.candidate_batch])
                delta.append(d)
                loss.append(lo_)
                gnorm.append(gn)
            out.update(delta=np.concatenate(delta), loss=np.concatenate(loss), grad_norm=np.concatenate(gnorm))
            return out
        after = np.zeros((n, G))
        naive = self.cfg.mode == "naive"
        n_tok = _naive_tokens(self.spec.examples, self.state.model) if naive else self.ref.n_tokens
        for k in range(n):
            if naive:
                nll, loss, gnorm = naive_probe(self.state, X[k], self.spec.examples, self.cfg.batch_size, self.spec.pad_id)
            else:
                loss, gnorm = self.state.clipped_grad(X[k])
                nll = self.ref.nll(self.state.write_update(), self.cfg.precision)
            after[k] = self._group_losses(nll, n_tok)
            out["loss"][k], out["grad_norm"][k] = loss, gnorm
        out["after"] = after
        out["delta"] = after - self.spec.before[None, :]
        return out


@executor.worker
class ProbeTask:
    """The probe stage's shards for the executor (datamates.executor): shard i = candidates
    ids[i x chunk : (i + 1) x chunk]; `task(slot)` builds one ProbeWorker per worker on the slot's
    device (picklable: the spec and the ids), `shards()` reuses the coordinator's loaded state."""

    def __init__(self, spec: WorkSpec, ids: np.ndarray, chunk: int, *, state: ProbeState | None = None,
                 ref: ReferenceBatches | None = None):
        self.spec, self.ids, self.chunk = spec, ids, chunk
        self._state, self._ref = state, ref

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec, "ids": self.ids, "chunk": self.chunk, "_state": None, "_ref": None}

    def __call__(self, slot) -> Any:
        return self._run(ProbeWorker(self.spec, device=slot.device))

    def shards(self) -> Any:
        return self._run(ProbeWorker(self.spec, state=self._state, ref=self._ref))

    def _run(self, worker: ProbeWorker):
        def fn(i: int) -> dict[str, np.ndarray]:
            res = worker.run(self.ids[i * self.chunk : (i + 1) * self.chunk])
            _check_finite(res)
            return res

        return fn


def _naive_tokens(examples: Sequence[TargetExample], model: torch.nn.Module) -> np.ndarray:
    max_len = model.config.max_position_embeddings
    return np.array([min(len(e.target), len((e.context + e.target)[-(max_len + 1):]) - 1) for e in examples])


def reference_batches(cfg: ProbeConfig, examples: Sequence[TargetExample], state: ProbeState,
                      pad_id: int) -> ReferenceBatches:
    return ReferenceBatches(examples, max_len=state.model.config.max_position_embeddings, batch_size=cfg.batch_size,
                            max_tokens=cfg.max_batch_tokens, pad_id=pad_id, device=state.device)


# ----------------------------------------------------------------------------- probe sets


def sample_probe_set(pool: Pool | int, n: int, *, seed: int = 1337, exclude: np.ndarray | None = None,
                     stage: int | None = None, resample_each_stage: bool = False) -> np.ndarray:
    """MATES's probe set (docs/methods.md#reference-sets): `n` held-out sequence ids, disjoint from `exclude`
    (every stage's training candidates), sorted. The same `seed` gives the same set at every stage
    (MATES re-probes the same sequences); with `resample_each_stage` the seed is `seed + stage`."""
    n_total = pool if isinstance(pool, int) else len(pool)
    avail = np.arange(n_total, dtype=np.int64)
    if exclude is not None and len(exclude):
        avail = np.setdiff1d(avail, np.asarray(exclude, dtype=np.int64))
    if n > len(avail):
        raise InputError(f"asked for {n} probe sequences but only {len(avail)} pool sequences are outside the "
                         "excluded (training) ids; lower probe.n_probes")
    s = seed + (stage or 0) if resample_each_stage else seed
    return np.sort(avail[np.random.default_rng(s).permutation(len(avail))[:n]])


def check_candidates(ids: Sequence[int] | np.ndarray, pool: Pool, source: str = "candidates") -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or len(ids) == 0:
        raise InputError(f"{source}: the candidate list is empty; nothing to probe")
    if not np.issubdtype(ids.dtype, np.integer):
        raise InputError(f"{source}: sequence ids must be integers, got {ids.dtype}")
    ids = ids.astype(np.int64)
    bad = ids[(ids < 0) | (ids >= len(pool))]
    if len(bad):
        raise InputError(f"{source}: sequence id {int(bad[0])} is not in the pool {pool.path} (ids 0..{len(pool) - 1}); "
                         f"{len(bad)} of {len(ids)} ids are out of range")
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise InputError(f"{source}: sequence id {int(uniq[counts > 1][0])} is listed {int(counts.max())} times; "
                         "candidates must be unique")
    return ids


# ----------------------------------------------------------------------------- the stage


def _label_config(cfg: ProbeConfig) -> dict[str, Any]:
    """The knobs a label depends on (not the ones that only decide where and how fast it runs)."""
    d = to_dict(cfg)
    for k in ("executor", "device", "n_probes", "probe_seed",
              "resample_each_stage", "memory_budget_gb"):
        d.pop(k)
    return d


@executor.worker
def _write_chunk(path: Path, res: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **res)
    atomic_write_bytes(path, buf.getvalue())


def _read_chunk(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _check_finite(res: dict[str, np.ndarray]) -> None:
    d = res["delta"]
    bad = ~np.isfinite(d).all(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        raise NumericalError(
            f"probe label of candidate sequence {int(res['seq_id'][i])} is {d[i, 0]} (its loss {res['loss'][i]:.4g}, "
            f"gradient norm {res['grad_norm'][i]:.4g}); lower probe.lr or check the checkpoint; nothing was written"
        )


def _check_inputs(cfg: ProbeConfig, checkpoint: str | Path, pool: Pool, ids: np.ndarray,
                  reference: ReferenceSet | None) -> tuple[Path, ReferenceSet]:
    """The checkpoint (with its optimizer state, of the pool's tokenizer) and the reference set
    (cfg.reference* unless given; sharing no sequence with the candidates), or a one-line error."""
    checkpoint = check_checkpoint(checkpoint)
    if not has_optimizer_state(checkpoint):
        raise ArtifactMissing(
            f"{checkpoint}: checkpoint has no optimizer state (optimizer.safetensors); a probe takes one AdamW step "
            "from the full training state, so it needs a checkpoint written by `datamates train`, not an export"
        )
    ts = trainer_state(checkpoint)
    if ts.get("tokenizer_hash") not in (None, pool.tokenizer_hash):
        raise IncompatibleArtifacts(f"{checkpoint}: trained with tokenizer {ts.get('tokenizer_hash')}, the pool "
                                    f"{pool.path} uses {pool.tokenizer_hash}")
    if reference is None:
        reference = load_reference(cfg.reference, pool.tokenizer(), size=cfg.reference_size, seed=cfg.reference_seed,
                                   exclude=ids if Path(cfg.reference).resolve() == pool.path.resolve() else None,
                                   tokenizer_hash=pool.tokenizer_hash)
    if reference.pool_ids is not None and Path(reference.source).resolve() == pool.path.resolve():
        overlap = np.intersect1d(reference.pool_ids, ids)
        if len(overlap):
            raise InputError(f"reference set and candidates share {len(overlap)} pool sequences (e.g. {int(overlap[0])}); "
                             "a candidate must not be part of the reference set")
    return checkpoint, reference


def _write_labels(res: dict[str, np.ndarray], halves: bool, path: Path,
                  part_names: Sequence[str] | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """labels.parquet: seq_id, ref_loss_delta (+ ref_loss_after, the halves' deltas, each part's delta
    `ref_loss_delta_<part>`), loss, grad_norm. With several references (`part_names`) the label is
    `combine_part_deltas` of the parts' deltas. Returns (label, {column: a part's deltas})."""
    label = res["delta"][:, 0]
    part_cols: dict[str, np.ndarray] = {}
    if part_names:  # several references: the mean of each one's delta / its sd
        first = 3 if halves else 1
        part_cols = {f"ref_loss_delta_{n}": res["delta"][:, first + i] for i, n in enumerate(part_names)}
        label = combine_part_deltas(np.stack(list(part_cols.values()), axis=1))
    cols = {"seq_id": pa.array(res["seq_id"], pa.int64()), "ref_loss_delta": pa.array(label, pa.float64())}
    if "after" in res and not part_names:
        cols["ref_loss_after"] = pa.array(res["after"][:, 0], pa.float64())
    if halves:
        cols["ref_loss_delta_a"] = pa.array(res["delta"][:, 1], pa.float64())
        cols["ref_loss_delta_b"] = pa.array(res["delta"][:, 2], pa.float64())
    for name, v in part_cols.items():
        cols[name] = pa.array(v, pa.float64())
    cols["loss"] = pa.array(res["loss"], pa.float64())
    cols["grad_norm"] = pa.array(res["grad_norm"], pa.float64())
    pq.write_table(pa.table(cols), path)
    return label, part_cols


def probe(
    cfg: ProbeConfig,
    checkpoint: str | Path,
    pool: Pool | str | Path,
    candidate_ids: Sequence[int] | np.ndarray,
    out: str | Path,
    *,
    reference: ReferenceSet | None = None,
) -> Path:
    """Label every candidate with ref_loss_delta (see the module docstring) and write `out/`
    (labels.parquet + meta.json + DONE). `reference` overrides `cfg.reference*`. Returns `out`;
    a complete `out` with the same inputs is kept as it is, a killed run resumes by chunk."""
    out = Path(out)
    pool = pool if isinstance(pool, Pool) else Pool(pool)
    ids = check_candidates(candidate_ids, pool)
    checkpoint, reference = _check_inputs(cfg, checkpoint, pool, ids, reference)
    ckpt_hash = checkpoint_hash(checkpoint)
    plan = {"checkpoint_hash": ckpt_hash, "candidates_hash": hash_ids(ids), "n_probes": int(len(ids)),
            "pool_id": pool.pool_id, "reference": reference.fingerprint, "config": _label_config(cfg)}
    plan_hash = config_hash(plan)
    output = Output(out, "probe", {"plan": plan}, inputs=(checkpoint, pool.path))
    if finished(output):  # before loading anything
        return out

    def build(tmp: Path) -> dict[str, Any]:
        chunk_dir = tmp / "chunks"  # resumed chunk by chunk (produce checks the partial's fingerprint)
        chunk_dir.mkdir(exist_ok=True)
        threads_before = torch.get_num_threads()
        if cfg.executor.threads > 0:  # also for the per-checkpoint work shipped to workers: same threads, same float sums
            torch.set_num_threads(cfg.executor.threads)
        try:
            spec, state, ref = _prepare(cfg, checkpoint, pool, reference)
            chunks = [(i, ids[lo : lo + cfg.chunk_size]) for i, lo in enumerate(range(0, len(ids), cfg.chunk_size))]
            done = {i for i, _ in chunks if (chunk_dir / f"{i:06d}.npz").exists()}
            todo = [(i, c) for i, c in chunks if i not in done]
            if done:
                log.info("resuming: %d of %d chunks already probed", len(done), len(chunks))
            log.info("probe %s: %d candidates, reference %s (%d examples, %d target tokens), lr %.3g (%s), "
                     "%d worker(s) [%s]", cfg.mode, len(ids), reference.name, len(reference),
                     reference.n_target_tokens, spec.lr, state.hyper.lr_source, cfg.executor.workers,
                     cfg.executor.backend)
            t0 = time.time()
            job = executor.Job("probe", [chunk_dir / f"{i:06d}.npz" for i, _ in chunks], ProbeTask(spec, ids, cfg.chunk_size),
                               save=_write_chunk, sizes=[len(c) for _, c in chunks], unit="probe")
            ex = cfg.executor
            gpus = 1.0 if cfg.device in ("auto", "cuda") and torch.cuda.is_available() else 0.0
            executor.run(job, replace(ex, threads=spec.threads, ray_gpus=gpus if ex.ray_gpus is None else ex.ray_gpus),
                         device=cfg.device, local_worker=ProbeTask(spec, ids, cfg.chunk_size, state=state, ref=ref).shards,
                         progress=f"probe {cfg.mode}")
            seconds = time.time() - t0
        finally:
            torch.set_num_threads(threads_before)
        parts = [_read_chunk(chunk_dir / f"{i:06d}.npz") for i, _ in chunks]
        res = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        if not np.array_equal(res["seq_id"], ids):
            raise InputError(f"{tmp}: chunk files do not match the candidate list; delete {tmp} and re-run")
        label, part_cols = _write_labels(res, cfg.reference_halves, tmp / LABELS_FILE,
                                         reference.part_names if reference.parts is not None else None)
        shutil.rmtree(chunk_dir)
        d = label
        n_new = sum(len(c) for _, c in todo)
        log.info("probe %s: %d labels -> %s (mean %.3g, std %.3g, %.0f%% lower the reference loss)", cfg.mode,
                 len(ids), out, d.mean(), d.std(), 100 * (d < 0).mean())
        return meta_record(
            "probe", sign=SIGN, mode=cfg.mode, checkpoint=str(checkpoint), checkpoint_hash=ckpt_hash,
            global_step=state.global_step, pool=str(pool.path), pool_id=pool.pool_id,
            reference={**reference.describe(), "ref_loss_before": float(spec.before[0])},
            ref_loss_before=float(spec.before[0]), lr=spec.lr, optimizer=state.hyper.describe(),
            n_probes=int(len(ids)), candidates_hash=plan["candidates_hash"], plan_hash=plan_hash,
            config=to_dict(cfg), config_hash=config_hash(cfg),
            first_order=(spec.first_order.describe() if spec.first_order is not None else None),
            halves=({"ref_loss_before_a": float(spec.before[1]), "ref_loss_before_b": float(spec.before[2])}
                    if cfg.reference_halves else None),
            parts=({n: {"ref_loss_before": float(spec.before[(3 if cfg.reference_halves else 1) + i]),
                        "delta_sd": float(np.std(v))} for i, (n, v) in enumerate(zip(reference.part_names or [],
                                                                                     part_cols.values()))}
                   if part_cols else None),
            stats={"mean": float(d.mean()), "std": float(d.std()), "min": float(d.min()), "max": float(d.max()),
                   "fraction_negative": float((d < 0).mean())},
            # probe_seconds: the probing alone (the executor's run), the throughput's clock; produce adds
            # `seconds`, the whole build (loading, reference pass, probing, write-out)
            probe_seconds=round(seconds, 3), probes_this_run=n_new, probes_per_s=n_new / max(seconds, 1e-9),
            tokens=probe_tokens(cfg, reference.examples, len(ids), pool.seq_len,
                                state.model.config.max_position_embeddings, n_groups=len(spec.groups)),
            flops_per_token={"lm_train": (f := flops_per_token(state.model, pool.seq_len)), "lm_forward": f / 3},
        )

    return produce(output, build, resume=True)


def combine_part_deltas(deltas: np.ndarray) -> np.ndarray:
    """[n] label of several references from their deltas [n, P]: mean over the parts of delta_r / sd_r,
    sd_r the (population) sd of part r's deltas over these n candidates (a part with sd 0 adds 0).
    Lower is still better; the unit is "sds of the parts' deltas", no longer nats."""
    deltas = np.asarray(deltas, dtype=np.float64)
    sd = deltas.std(axis=0)
    z = np.divide(deltas, sd[None, :], out=np.zeros_like(deltas), where=sd[None, :] > 0)
    return z.mean(axis=1)


def probe_tokens(cfg: ProbeConfig, examples: Sequence[TargetExample], n_probes: int, seq_len: int,
                 max_len: int, n_groups: int | None = None) -> dict[str, int]:
    """Tokens the probe stage runs through the LM (counted FLOPs, accounting.py). R = reference
    input tokens ((context + target)[-(max_len + 1):][:-1] per example), G = 1 (3 with halves):
    exact / naive: lm_train = n x seq_len (the steps), lm_forward = (1 + n) x R (before, after each);
    first order:   lm_train = n x seq_len + G x R (candidate and reference gradients),
                   lm_forward = R (before; 2 R with the momentum anchor's L_ref(theta0)).
    With several references (parts), G counts the whole set, the halves and every part (`n_groups`);
    each group's gradient is a backward over the whole set with 0/1 weights."""
    R = int(sum(len((e.context + e.target)[-(max_len + 1):]) - 1 for e in examples))
    if cfg.mode == "first_order":
        G = n_groups if n_groups is not None else (3 if cfg.reference_halves else 1)
        return {"lm_train": n_probes * seq_len + G * R, "lm_forward": R * (2 if cfg.anchor == "momentum" else 1)}
    return {"lm_train": n_probes * seq_len, "lm_forward": (1 + n_probes) * R}


def _prepare(cfg: ProbeConfig, checkpoint: Path, pool: Pool, reference: ReferenceSet):
    """Coordinator: load the state once, compute L_ref(before) per group (and the first-order
    constants), and build the spec the workers get."""
    device = resolve_device(cfg.device)
    state = ProbeState.from_checkpoint(checkpoint, lr=cfg.lr, device=device, precision=cfg.precision)
    if state.model.config.max_position_embeddings < pool.seq_len:
        raise IncompatibleArtifacts(f"{checkpoint}: model context {state.model.config.max_position_embeddings} is "
                                    f"shorter than the pool's {pool.seq_len}-token sequences")
    n_ref = len(reference)
    groups = [np.ones(n_ref)]
    if cfg.reference_halves:
        if n_ref < 2:
            raise InputError("probe.reference_halves needs a reference set of at least 2 examples")
        h = reference.halves()
        groups += [(h == 0).astype(np.float64), (h == 1).astype(np.float64)]
    if reference.parts is not None:
        groups += [(reference.parts == i).astype(np.float64) for i in range(len(reference.part_names or []))]
    groups_arr = np.stack(groups)
    pad_id = pool.eos_id
    ref = None
    fo = None
    if cfg.mode == "naive":
        nll = naive_reference_nll(state.model, reference.examples, batch_size=cfg.batch_size, pad_id=pad_id,
                                  precision=cfg.precision)
        n_tok = _naive_tokens(reference.examples, state.model)
    else:
        ref = reference_batches(cfg, reference.examples, state, pad_id)
        nll = ref.nll(state.model, cfg.precision)
        n_tok = ref.n_tokens
    before = (groups_arr @ nll.numpy()) / (groups_arr @ n_tok.astype(np.float64))
    if cfg.mode == "first_order":
        fo = first_order_constants(state, ref, groups_arr, before, cfg.anchor, cfg.precision)
    if not np.isfinite(before).all():
        raise NumericalError(f"{checkpoint}: reference loss before the step is {before[0]}; the checkpoint is broken")
    ex = cfg.executor
    threads = ex.threads or (0 if ex.workers == 1 else max(1, (os.cpu_count() or 1) // ex.workers))
    if fo is not None and (ex.workers > 1 or ex.backend == "ray" or executor.world_size() > 1):
        fo = fo.to_cpu()  # tensors cross process boundaries (and torchrun ranks) on CPU
    spec = WorkSpec(str(checkpoint), str(pool.path), to_dict(cfg), state.hyper.lr, list(reference.examples),
                    groups_arr, before, pad_id, fo, threads=threads)
    return spec, state, ref


# ----------------------------------------------------------------------------- reading


def read_labels(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(seq_id [n] int64, ref_loss_delta [n] float64) of a probe folder (or its labels.parquet)."""
    t = read_labels_table(path)
    return (t.column("seq_id").to_numpy().astype(np.int64), t.column("ref_loss_delta").to_numpy().astype(np.float64))


def read_labels_table(path: str | Path) -> pa.Table:
    p = Path(path)
    f = p if p.suffix == ".parquet" else p / LABELS_FILE
    if not f.exists() or (p.suffix != ".parquet" and not is_done(p)):
        raise ArtifactMissing(f"{p}: no complete probe labels here; run `datamates probe` first")
    return pq.read_table(f)


def read_meta(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    return json.loads((p / "meta.json").read_text())


