"""DsDm: datamodel selection with TRAK influence (Engstrom, Feldmann, Madry, ICML 2024, "DsDm: Model-Aware
Dataset Selection with Datamodels", §3; TRAK: Park et al., ICML 2023, "TRAK: Attributing Model Behavior
at Scale", §3, Eq. 15-17). The MATES paper's DsDm baseline (Yu et al. 2024, Table 6).

For a model theta (the stage's starting checkpoint, or each of `checkpoints`: TRAK's ensemble), the
candidates x_1..x_n of the block and the reference part of the plan (the examples MATES's probes
measure; their loss L_ref is the token-weighted mean target NLL, core/reference.py):

    g_i     = grad_theta lm_loss(x_i)                 [N]   per-example gradient of the mean next-token CE
                                                            (selection/probe/first_order.py: PerSampleGrads,
                                                            the project's one per-sample-gradient code)
    phi_i   = P^T g_i                                 [d]   random projection, P [N, d] (below)
    Phi     = [phi_1; ...; phi_n]                     [n, d] the TRAK "train" features: the candidates
    r       = P^T grad_theta L_ref                    [d]   = sum over reference examples of their projected
                                                            gradients, weighted by their target tokens
    lambda  = damping * mean_i ||phi_i||^2
    s_i     = phi_i^T (Phi^T Phi + lambda I)^-1 r           the TRAK kernel on the candidates' own features
            = [(Phi Phi^T + lambda I)^-1 Phi r]_i           (push-through identity; the n x n form is solved
                                                            when n <= d, the d x d one otherwise)
    score_i = -mean over checkpoints of s_i                 lower is better

Sign: a step of training on x_i with the kernel as preconditioner moves theta by -eta K^-1 g_i and
changes the reference loss by ~ -eta s_i, so score_i is the datamodel's estimated change of the
reference loss (up to the positive eta), the repository's `ref_loss_delta` convention: `select`
keeps the lowest. TRAK's output-to-loss factor Q is 1 here: the model output is the loss itself.

Projection P (knob `projection`), each a JL map with E[P P^T] = I, so <phi_i, phi_j> is unbiased for
<g_i, g_j>; none materialises P [N, d]:

    countsketch (default)  every coordinate j of every parameter goes to one hashed column h(j) with a
                           sign s(j) in {-1, +1} (Charikar et al. 2002; a sparse Rademacher JL map): O(N)
                           per example, 12 bytes per parameter for (h, s). Its inner-product variance is
                           at most the Gaussian map's.
    rademacher, gaussian   dense entries +-1/sqrt(d) or N(0, 1/d), generated on the fly from
                           (seed, parameter, row block) with a counter-seeded generator in blocks of
                           <= 2^23 entries, kept for later batches only while they fit in 1 GiB: O(N d)
                           per example (TRAK's BasicProjector regenerates per column block)
    identity               P = I, d = N: the exact gradients (tests on tiny models)

The input embedding's per-example gradient has only the rows of the example's tokens; those rows
are projected alone (their rows of P are generated or looked up), never the whole [V, h] matrix.

Why not the PyPI package `traker` (0.3.2, checked on this CPU machine): its fast projector
(`CudaProjector`, fast_jl) refuses any non-CUDA device; its `BasicProjector` runs on CPU but takes
the vectorised *dense* gradient [K, N] (the embedding's few rows cannot be exploited) and
materialises [N, 100]-column blocks of P (1.2 GB per block for the 3M-parameter tiny LM, 2048 / 100
blocks regenerated per batch); and its per-example gradients come from torch.func, a second
per-sample-gradient implementation, which the project has one of. The formulas above are TRAK's;
tests check them against a brute-force loop of `loss.backward()` and a dense projection matrix
(tests/baselines/test_dsdm.py), benchmarks/trak.py times the two.

Counted compute (accounting.py): every candidate's and every reference row's forward + backward
is one training pass, `lm_train` tokens x the checkpoint's training FLOPs per token (forward at
1x, backward at 2x), per checkpoint of the ensemble. The projection and the kernel are not model
FLOPs and are not counted (meta.json records their sizes).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from datamates.baselines._common import check_ids, counts, digest, write_scores
from datamates.config.base import config_hash, knob, to_dict, validate
from datamates.core.checkpoint import checkpoint_hash, load_model
from datamates.core.lm import flops_per_token, named_trainable, resolve_device
from datamates.core.pool import Pool
from datamates.core.reference import ReferenceBatches, ReferenceSet
from datamates.errors import ConfigError, InputError
from datamates.identity import hash_ids
from datamates.log import get_logger, progress_bar
from datamates.selection.probe.first_order import PerSampleGrads
from datamates.selection.scores_io import finished_scores

log = get_logger(__name__)


@dataclass(kw_only=True)
class DsDmConfig:
    """DsDm (Engstrom et al. 2024): TRAK datamodel scores of the candidates on the reference loss."""

    dim: int = knob(2048, "d, dimensions of the random projection of per-example gradients (TRAK/DsDm: 2048)", ge=1)
    projection: Literal["countsketch", "rademacher", "gaussian", "identity"] = knob(
        "countsketch", "random projection P [n_params, d]: countsketch (one +-1 per parameter in a hashed column: "
                       "O(n_params) per example, the CPU default), rademacher or gaussian (dense, entries +-1/sqrt(d) "
                       "or N(0, 1/d), generated from the seed in row blocks, never stored), identity (no projection: "
                       "d = n_params, tiny models and tests only)")
    damping: float = knob(0.01, "lambda of the kernel (Phi^T Phi + lambda I)^-1, relative to the mean squared norm of a "
                                "candidate's projected gradient", gt=0)
    checkpoints: list[str] = knob([], "models the scores are averaged over (TRAK's ensemble); empty: the stage's "
                                      "starting checkpoint")
    batch_size: int = knob(16, "candidates per batched per-example-gradient pass", ge=1)
    precision: str = knob("fp32", "precision of the gradient passes (fp32, bf16)", choices=("fp32", "bf16", "auto"))
    seed: int = knob(0, "seed of the projection")
    device: str = knob("auto", "auto, cpu, cuda, cuda:N; auto in a run: the run's mates.score.device")


SHARD = 65536
_BLOCK = 1 << 23  # entries of P generated at a time (dense kinds)
CACHE_BYTES = 1 << 30  # generated blocks of P kept for the next batches while they fit in this


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1, np.uint64)[0] >> 1)


class Projection:
    """P [N, d] over the trainable parameters (shapes in order), applied without storing it.

    Parameter i is seen as rows x width (rows = shape[0], width = the rest; 1-d: one row); dense
    kinds generate P's rows of parameter i in blocks of `rows_per_block` parameter rows, each from
    its own seed (seed, i, block), so any subset of rows is reproducible alone."""

    def __init__(self, shapes: list[tuple[int, ...]], dim: int, kind: str = "countsketch", seed: int = 0,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        if kind not in ("countsketch", "rademacher", "gaussian", "identity"):
            raise ConfigError(f"baselines.dsdm.projection = {kind!r}: allowed values are countsketch, rademacher, "
                              "gaussian, identity")
        self.kind, self.seed = kind, int(seed)
        self.device, self.dtype = torch.device(device), dtype
        self.shapes = [tuple(int(s) for s in sh) for sh in shapes]
        self.numel = [math.prod(sh) for sh in self.shapes]
        self.width = [math.prod(sh[1:]) if len(sh) > 1 else max(1, math.prod(sh)) for sh in self.shapes]
        self.offsets = np.concatenate([[0], np.cumsum(self.numel)]).astype(np.int64)
        self.n_params = int(self.offsets[-1])
        self.d = self.n_params if kind == "identity" else int(dim)
        self.rows_per_block = [max(1, _BLOCK // (w * self.d)) for w in self.width]
        self._hash: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._cache: dict[tuple[int, int], torch.Tensor] = {}
        self._cached_bytes = 0
        if kind == "countsketch":
            for i, n in enumerate(self.numel):
                g = torch.Generator().manual_seed(_seed(self.seed, i, 1))
                bucket = torch.randint(0, self.d, (n,), generator=g)
                sign = torch.randint(0, 2, (n,), generator=g).to(dtype) * 2 - 1
                self._hash[i] = (bucket.to(self.device), sign.to(self.device))

    def _block(self, i: int, b: int) -> torch.Tensor:
        """Rows [b * R, (b + 1) * R) of parameter i, flattened: [R * width, d] (dense kinds). Kept for
        later batches while all kept blocks fit in CACHE_BYTES (the same values either way)."""
        hit = self._cache.get((i, b))
        if hit is not None:
            return hit
        R, w = self.rows_per_block[i], self.width[i]
        rows = self.numel[i] // w
        n = (min(rows, (b + 1) * R) - b * R) * w
        g = torch.Generator().manual_seed(_seed(self.seed, i, b, 2))
        if self.kind == "gaussian":
            m = torch.randn(n, self.d, generator=g, dtype=torch.float32)
        else:
            m = torch.randint(0, 2, (n, self.d), generator=g, dtype=torch.int8).to(torch.float32) * 2 - 1
        m = (m / math.sqrt(self.d)).to(device=self.device, dtype=self.dtype)
        size = m.numel() * m.element_size()
        if self._cached_bytes + size <= CACHE_BYTES:
            self._cache[(i, b)] = m
            self._cached_bytes += size
        return m

    def dense(self, i: int, g: torch.Tensor) -> torch.Tensor:
        """P_i^T g for K flattened gradients of parameter i: g [K, numel_i] -> [K, d]."""
        K = g.shape[0]
        g = g.to(self.dtype)
        if self.kind == "identity":
            out = torch.zeros(K, self.d, device=g.device, dtype=self.dtype)
            out[:, self.offsets[i] : self.offsets[i + 1]] = g
            return out
        if self.kind == "countsketch":
            bucket, sign = self._hash[i]
            return torch.zeros(K, self.d, device=g.device, dtype=self.dtype).index_add_(1, bucket, g * sign)
        out = torch.zeros(K, self.d, device=g.device, dtype=self.dtype)
        step = self.rows_per_block[i] * self.width[i]
        for b, lo in enumerate(range(0, self.numel[i], step)):
            out += g[:, lo : lo + step] @ self._block(i, b)
        return out

    def rows(self, i: int, rows: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
        """P_i^T of a gradient that is zero outside `rows` [u] of parameter i (values [u, width]) -> [d]."""
        w = self.width[i]
        vals = vals.to(self.dtype)
        coords = (rows.to(self.device)[:, None] * w + torch.arange(w, device=self.device)).reshape(-1)
        if self.kind == "identity":
            out = torch.zeros(self.d, device=vals.device, dtype=self.dtype)
            return out.index_add_(0, coords + int(self.offsets[i]), vals.reshape(-1))
        if self.kind == "countsketch":
            bucket, sign = self._hash[i]
            out = torch.zeros(self.d, device=vals.device, dtype=self.dtype)
            return out.index_add_(0, bucket[coords], vals.reshape(-1) * sign[coords])
        R = self.rows_per_block[i]
        out = torch.zeros(self.d, device=vals.device, dtype=self.dtype)
        blocks = rows // R
        for b in torch.unique(blocks).tolist():
            sel = blocks == b
            P = self._block(i, b).view(-1, w, self.d)  # [rows in block, width, d]
            local = rows[sel] - b * R
            out += torch.einsum("uw,uwd->d", vals[sel], P[local])
        return out

    def rows_many(self, i: int, per: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """`rows` for K gradients at once [K, d]; dense kinds generate each needed block of P once."""
        if self.kind in ("identity", "countsketch"):
            return torch.stack([self.rows(i, r, v) for r, v in per])
        R, w = self.rows_per_block[i], self.width[i]
        out = torch.zeros(len(per), self.d, device=self.device, dtype=self.dtype)
        for b in torch.unique(torch.cat([r // R for r, _ in per])).tolist():
            P = self._block(i, b).view(-1, w, self.d)  # [rows in block, width, d]
            for k, (rows, vals) in enumerate(per):
                sel = (rows // R) == b
                if bool(sel.any()):
                    out[k] += torch.einsum("uw,uwd->d", vals[sel].to(self.dtype), P[rows[sel] - b * R])
        return out

    def matrix(self) -> torch.Tensor:
        """P [N, d] materialised (tests and the brute-force benchmark only)."""
        if self.kind == "identity":
            return torch.eye(self.n_params, dtype=self.dtype, device=self.device)
        parts = []
        for i, n in enumerate(self.numel):
            if self.kind == "countsketch":
                bucket, sign = self._hash[i]
                P = torch.zeros(n, self.d, dtype=self.dtype, device=self.device)
                P[torch.arange(n, device=self.device), bucket] = sign
                parts.append(P)
            else:
                parts.append(torch.cat([self._block(i, b) for b in range(-(-(n // self.width[i]) // self.rows_per_block[i]))]))
        return torch.cat(parts)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "d": self.d, "n_params": self.n_params, "seed": self.seed}


def trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for _, p in named_trainable(model)]


def featurize(model: torch.nn.Module, tokens: np.ndarray, proj: Projection, *, batch_size: int = 16,
              precision: str = "fp32", desc: str = "TRAK features") -> np.ndarray:
    """phi_i = P^T grad lm_loss(x_i) of every [T]-token row: [n, d] (float64 for a float64 model)."""
    params = trainable(model)
    psg = PerSampleGrads(model, params)
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    out = np.empty((len(tokens), proj.d), dtype=np.float64 if proj.dtype == torch.float64 else np.float32)
    bar = progress_bar(desc, total=len(tokens), unit="seq")
    try:
        for s in range(0, len(tokens), batch_size):
            X = torch.as_tensor(np.asarray(tokens[s : s + batch_size]), dtype=torch.long, device=device)
            K = X.shape[0]
            _, dense, sparse = psg(X, precision)
            f = torch.zeros(K, proj.d, device=device, dtype=proj.dtype)
            for i, g in dense.items():
                f += proj.dense(i, g.reshape(K, -1))
            for i, per in sparse.items():
                f += proj.rows_many(i, per)
            out[s : s + K] = f.cpu().numpy()
            del dense, sparse
            bar.update(K)
    finally:
        bar.close()
        model.train(was)
    return out


def reference_feature(model: torch.nn.Module, ref: ReferenceBatches, proj: Projection, precision: str = "fp32"
                      ) -> tuple[np.ndarray, float]:
    """r = P^T grad L_ref (one backward over the reference set) [d], and L_ref."""
    params = trainable(model)
    emb = model.get_input_embeddings().weight
    was = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    loss = ref.backward(model, precision)
    r = torch.zeros(proj.d, dtype=proj.dtype, device=next(model.parameters()).device)
    for i, p in enumerate(params):
        if p.grad is None:
            continue
        g = p.grad.detach()
        if p is emb:  # only the rows of the reference's tokens
            nz = torch.nonzero(g.abs().sum(1) > 0)[:, 0]
            r += proj.rows(i, nz, g[nz].reshape(len(nz), -1))
        else:
            r += proj.dense(i, g.reshape(1, -1))[0]
    model.zero_grad(set_to_none=True)
    model.train(was)
    return r.cpu().double().numpy(), float(loss)


def kernel_scores(phi: np.ndarray, r: np.ndarray, damping: float) -> tuple[np.ndarray, float]:
    """s = Phi (Phi^T Phi + lambda I)^-1 r with lambda = damping * mean_i ||phi_i||^2 (float64);
    returns (s [n], lambda). Solves the n x n form (Phi Phi^T + lambda I) s = Phi r when n <= d."""
    phi = np.asarray(phi, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    n, d = phi.shape
    lam = float(damping) * float((phi * phi).sum(1).mean())
    if lam <= 0:
        raise InputError("DsDm: every candidate's projected gradient is zero; nothing to score")
    if n <= d:
        s = np.linalg.solve(phi @ phi.T + lam * np.eye(n), phi @ r)
    else:
        s = phi @ np.linalg.solve(phi.T @ phi + lam * np.eye(d), r)
    return s, lam


def dsdm(cfg: DsDmConfig, checkpoints: list[str | Path], pool: Pool, ids: np.ndarray | None, out: str | Path, *,
         reference: ReferenceSet) -> Path:
    """DsDm scores (module docstring) of candidates `ids` (None: the whole pool) against `reference`,
    averaged over `checkpoints`, written to `out` (the common scores format). A finished `out` for the
    same checkpoints, reference, candidates and knobs is returned as it is."""
    validate(cfg)
    if not checkpoints:
        raise ConfigError("DsDm: no model; give baselines.dsdm.checkpoints or run it as a selector")
    if reference is None or not len(reference):
        raise ConfigError("DsDm needs a text reference set (mates.probe.reference) to take the gradient of")
    missing = next((c for c in checkpoints if not (Path(c) / "model.safetensors").exists()), None)
    if missing is not None:
        raise ConfigError(f"baselines.dsdm.checkpoints: {missing} is not a datamates checkpoint (no "
                          "model.safetensors); give checkpoint folders, or [] for the stage's model")
    ids = check_ids(ids, pool)
    out = Path(out)
    knobs = {k: v for k, v in to_dict(cfg).items() if k not in ("batch_size", "device", "checkpoints")}
    hashes = [checkpoint_hash(c) for c in checkpoints]
    plan = {"pool_id": pool.pool_id, "method": "dsdm", "model_hash": digest("dsdm", *hashes, reference.fingerprint,
                                                                          config_hash(knobs))}
    if finished_scores(out, {**plan, "ids_hash": hash_ids(ids), "n": int(len(ids)), "shard_size": SHARD}):
        return out
    device = resolve_device(cfg.device)
    t0 = time.time()
    tokens = pool.tokens(ids)
    total = np.zeros(len(ids), dtype=np.float64)
    per_model: list[dict[str, Any]] = []
    n_tokens, fpt = 0, 0.0
    for c, h in zip(checkpoints, hashes, strict=True):
        model = load_model(c, device=device)
        proj = Projection([tuple(p.shape) for p in trainable(model)], cfg.dim, cfg.projection, cfg.seed, device)
        phi = featurize(model, tokens, proj, batch_size=cfg.batch_size, precision=cfg.precision,
                        desc=f"TRAK features ({Path(c).name})")
        ref = ReferenceBatches(reference.examples, max_len=model.config.max_position_embeddings,
                               batch_size=cfg.batch_size, pad_id=pool.eos_id, device=device)
        r, l_ref = reference_feature(model, ref, proj, cfg.precision)
        s, lam = kernel_scores(phi, r, cfg.damping)
        total += s
        n_tokens += int(tokens.size) + ref.padded_tokens
        fpt = flops_per_token(model, pool.seq_len)
        per_model.append({"checkpoint": str(c), "checkpoint_hash": h, "lambda": lam, "reference_loss": l_ref,
                          "mean_s": float(s.mean()), "sd_s": float(s.std())})
        del model, phi
    score = -total / len(checkpoints)
    pos = {int(i): j for j, i in enumerate(ids)}

    def meta() -> dict[str, Any]:
        return {"method": "dsdm", "label_mean": 0.0, "label_std": 1.0, "config": to_dict(cfg),
                "reference": reference.describe(), "projection": proj.describe(), "ensemble": per_model,
                "select_hint": {"method": "topk", "temperature": 0.0, "scale": "none"},
                "seconds_featurise": round(time.time() - t0, 2), **counts("lm_train", n_tokens, fpt)}

    write_scores(out, pool, ids, plan, SHARD, lambda part: score[[pos[int(i)] for i in part]], meta,
                 desc="DsDm scores")
    log.info("DsDm: %d candidates scored on %d reference examples with %d model(s), d = %d (%s) -> %s", len(ids),
             len(reference), len(checkpoints), proj.d, proj.kind, out)
    return out
