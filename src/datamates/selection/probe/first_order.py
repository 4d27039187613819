"""First-order probe labels: the reference-loss change of one AdamW step, linearised
(docs/scaling.md; MATES, Yu et al. NeurIPS 2024, §3.2 for the step being linearised).

With theta'(x) the exact AdamW step on candidate x (clipping, the second-moment update and bias
corrections included; the probe package docstring) and theta0 = theta'(g = 0) the part of the step
every candidate shares (momentum and weight decay only), per parameter p

    theta'(x)_p - theta0_p = -s_p (u_p(x) - u0_p),   s_p = lr / (1 - b1^(t_p + 1))
    u_p(x) = (b1 m + (1 - b1) c(x) g_x) / (sqrt(b2 v + (1 - b2) c(x)^2 g_x^2) / sqrt(1 - b2^(t_p + 1)) + eps)
    c(x)   = min(1, clip / (||g_x|| + 1e-6)),  u0_p = u_p at g_x = 0

and the label is estimated by a Taylor expansion around an anchor point a:

    anchor "checkpoint" (a = theta):   ref_loss_delta ~ <r, theta'(x) - theta>
                                                    = <r, theta0 - theta> - sum_p <s_p r_p, u_p(x) - u0_p>
    anchor "momentum"   (a = theta0):  ref_loss_delta ~ [L_ref(theta0) - L_ref(theta)] + <r0, theta'(x) - theta0>
                                                    = [L_ref(theta0) - L_ref(theta)] - sum_p <s_p r0_p, u_p(x) - u0_p>

with r = grad L_ref at the anchor. Both cost the same: one reference forward + backward per
checkpoint, then per candidate only its own gradient. The momentum anchor moves the expansion
point to where ~90% of every step already lands (the x-dependent part of m' is (1 - b1) = 10%), so
the neglected second-order term is O(||theta'(x) - theta0||^2) instead of O(||theta'(x) - theta||^2).

Per-sample gradients come from ONE batched forward and ONE backward to the input embeddings per
micro-batch of K candidates (Opacus-style hooks keep each layer's input A_x [T, in] and output
gradient G_x [T, out]; weight gradients are never summed over the batch):

    Linear      dW_x = G_x^T A_x  [out, in],  db_x = sum_t G_x[t]
    LayerNorm   dw_x = sum_t xhat_x[t] * G_x[t],  db_x = sum_t G_x[t],   xhat = (a - mean) / sqrt(var + eps)
    RMSNorm     dw_x = sum_t xhat_x[t] * G_x[t],                          xhat = a / sqrt(mean(a^2) + eps)
                (LlamaRMSNorm and its copies: weight only, xhat in float32 as the module computes it;
                torch.nn.RMSNorm)
    Embedding   the rows of the tokens in x: a scatter of dL/dE_x (only those rows differ from the anchor)
    tied head   the head's G_x^T A_x plus the embedding rows, one dense gradient

Layer streaming (`FirstOrderProber.labels`). The label is not linear in g_x (the second moment
and the clip), so a ghost dot <rho, G^T A> cannot replace the per-sample gradient; but it is a sum
over parameters, so each parameter's [k, numel] per-sample gradient is materialised for k <= K
candidates at a time, used and dropped. The clip coefficient c(x) needs ||g_x|| over ALL
parameters first, so there are two passes over the parameters:

    pass 1 (norms)   ||dW_x||_F^2 per layer: by the ghost norm ||G_x^T A_x||_F^2 = <A_x A_x^T, G_x G_x^T>
                     (cost 2 T^2 (in + out) per sample) where that is cheaper than materialising
                     (2 T in out), i.e. T (in + out) < in out, decided by shape alone; otherwise
                     materialised, and kept for pass 2 while they fit in half the workspace.
    pass 2 (labels)  c(x) g_x, then u - u0 and its dot with rho_p in cache-sized column blocks; the
                     x-independent b1 m, b2 v / bc2 and u0 are recomputed per block from m and v
                     (the same float operations, so the same numbers, and no parameter-sized copies).

Memory (`plan_micro_batch`; bytes, b = 4 for fp32 activations / gradients, n = trainable parameters):

    resident     n x (bytes of theta + m + v) + n x G x 4 (rho, G = 1 or 3 reference groups)
    per sample   T x b x [ sum_layers (in + out)       (the hooked A and G; A shared with autograd)
                         + c_body x L x d              (other saved activations: attention, MLP, residual)
                         + c_head x V                  (logits, their float32 copy, log-softmax, its gradient)
                         + 2 d ]                       (the input embeddings and their gradient)
    workspace    >= max(b x largest numel, 2 b T^2)    (one sample's gradient of the largest parameter,
                                                       or the ghost norm's two Gram matrices)
                 + 2 n under CUDA bf16 autocast        (autocast's cached bf16 weight copies)
    micro-batch  K = min(candidate_batch, floor((budget - workspace_min) / per_sample))

with c_body = 8 and c_head = 4 (`BODY_FACTOR`, `HEAD_FACTOR`): on purpose on the safe side; on CPU
in fp32 the measured working set was 0.60x the estimate with a 50k-row head (pythia-14m shape, T =
128) and 0.77x with a 512-row head (pythia-70m shape, T = 256); benchmarks/probe_memory.py
measures it, also on CUDA), the budget `probe.memory_budget_gb` or, by default, the free
memory when the prober starts (CUDA: `torch.cuda.mem_get_info` plus the allocator's cached free
blocks; CPU: MemAvailable of /proc/meminfo) times `MEMORY_FRACTION`. The per-sample gradients
never exist for all parameters at once: memory no longer grows with K x n. `candidate_batch` is an
upper bound that the chooser only lowers (with a warning), so a machine with enough memory always
runs the configured batch and a resumed run gives the same bytes (memory decides K and the chunk
sizes, which move labels only at float rounding, ~1e-7 relative; a fixed `memory_budget_gb` makes
them reproducible on any machine). When not even one candidate fits,
`plan_micro_batch` raises a ConfigError naming `probe.memory_budget_gb`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from datamates.core.lm import autocast
from datamates.core.reference import ReferenceBatches
from datamates.errors import ConfigError
from datamates.log import get_logger

log = get_logger(__name__)

BODY_FACTOR = 8.0  # saved activations per token and layer besides the hooked A / G, in units of d
HEAD_FACTOR = 4.0  # [T, V]-sized tensors per token at the head: logits, float32 copy, log-softmax, gradient
MEMORY_FRACTION = 0.8  # of the free memory, when no budget is given
GiB = 1024**3


def _acc(t: torch.Tensor) -> torch.Tensor:
    """Arithmetic dtype: float64 stays (tests), anything else becomes float32."""
    return t if t.dtype == torch.float64 else t.float()


@dataclass
class FirstOrderConstants:
    """What every worker needs besides the training state: rho_p = s_p * grad L_ref (one column per
    reference group) and the per-group constant term."""

    anchor: str
    rho: list[torch.Tensor]  # per trainable parameter: [numel, G] float32
    const: np.ndarray  # [G]
    anchor_loss: np.ndarray | None  # [G] L_ref(theta0) (momentum anchor)

    def to_cpu(self) -> FirstOrderConstants:
        return FirstOrderConstants(self.anchor, [r.cpu() for r in self.rho], self.const, self.anchor_loss)

    def describe(self) -> dict[str, Any]:
        return {"anchor": self.anchor, "const": float(self.const[0]),
                "anchor_loss": None if self.anchor_loss is None else float(self.anchor_loss[0])}


def step_sizes(state) -> list[float]:
    h = state.hyper
    return [h.lr / (1 - h.beta1 ** (s + 1.0)) for s in state.steps]


def first_order_constants(state, ref: ReferenceBatches, groups: np.ndarray, before: np.ndarray, anchor: str,
                          precision: str = "fp32") -> FirstOrderConstants:
    """rho and the constant term for `groups` [G, n_ref] (0/1 weights over reference examples).

    The scratch model that held theta0 (and its two update buffers: three parameter-sized tensors)
    is released afterwards; the prober never needs it (ProbeState re-creates it on demand)."""
    groups = np.asarray(groups, dtype=np.float64)
    work = state.write_update(zero=True)  # theta0
    work_params = state.work_params
    anchor_loss = None
    if anchor == "momentum":
        nll = ref.nll(work, precision).numpy()
        anchor_loss = (groups @ nll) / (groups @ ref.n_tokens.astype(np.float64))
        const = anchor_loss - before
        model, params = work, work_params
    elif anchor == "checkpoint":
        model, params = state.model, state.params
        const = np.zeros(len(groups))
    else:
        raise ValueError(f"unknown anchor {anchor!r}; available: momentum, checkpoint")
    s = step_sizes(state)
    cols: list[list[torch.Tensor]] = [[] for _ in params]
    for gi in range(len(groups)):
        model.zero_grad(set_to_none=True)
        ref.backward(model, precision, weights=groups[gi])
        for i, p in enumerate(params):
            r = _acc(p.grad.detach()) if p.grad is not None else _acc(torch.zeros_like(p))
            if anchor == "checkpoint":
                const[gi] += float((r.double() * (work_params[i].detach().double() - state.params[i].detach().double())).sum())
            cols[i].append((r * s[i]).reshape(-1))
    model.zero_grad(set_to_none=True)
    rho = [torch.stack(c, dim=1).contiguous() for c in cols]  # [numel, G]
    del work, work_params, model, params
    state._work = state._bufs = None  # theta0's scratch model: not needed from here on
    return FirstOrderConstants(anchor, rho, np.asarray(const, dtype=np.float64), anchor_loss)


# ----------------------------------------------------------------------------- layers


def _is_rmsnorm(mod: nn.Module) -> bool:
    return (hasattr(nn, "RMSNorm") and isinstance(mod, nn.RMSNorm)) or type(mod).__name__.endswith("RMSNorm")


def _rms_hat(mod: nn.Module, a: torch.Tensor) -> torch.Tensor:
    """x / rms(x) exactly as the module computes it before the weight: torch.nn.RMSNorm in the input
    dtype; LlamaRMSNorm (and its copies: Mistral, Qwen2, ...) in float32, cast back to the input dtype."""
    if hasattr(nn, "RMSNorm") and isinstance(mod, nn.RMSNorm):
        return F.rms_norm(a, mod.normalized_shape, eps=mod.eps)
    eps = getattr(mod, "variance_epsilon", getattr(mod, "eps", None))
    h = a.to(torch.float32)
    return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + float(eps))).to(a.dtype)


def _check_rmsnorm(mod: nn.Module, name: str) -> None:
    """Refuse an RMSNorm variant whose output is not weight * x / rms(x) (Gemma's (1 + weight), a
    bias, a missing epsilon): its per-sample gradient would be wrong, not just slow."""
    w = getattr(mod, "weight", None)
    own = [n for n, p in mod.named_parameters(recurse=False) if p.requires_grad]
    eps = getattr(mod, "variance_epsilon", getattr(mod, "eps", None))
    ok = w is not None and own == ["weight"] and (eps is not None or isinstance(mod, getattr(nn, "RMSNorm", ())))
    if ok and w.device.type != "meta":
        gen = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(3, w.shape[-1], generator=gen, dtype=torch.float64).to(device=w.device, dtype=w.dtype)
        with torch.no_grad():
            ok = torch.allclose(mod(x), w * _rms_hat(mod, x), rtol=1e-4, atol=1e-6)
    if not ok:
        raise NotImplementedError(
            f"first_order probing: '{name}' ({type(mod).__name__}) is not weight * x / rms(x); its per-sample "
            "gradient is not implemented; use probe.mode = exact"
        )


@dataclass
class Captured:
    """One batched forward/backward: what the per-sample gradients of a [K, T] batch are built from."""

    X: torch.Tensor  # [K, T]
    losses: torch.Tensor  # [K]
    gE: torch.Tensor  # [K, T, d] dL_x / dE_x
    recs: dict[nn.Module, dict[str, torch.Tensor]]  # layer -> {"A": input, "G": output gradient}
    rows: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per sample: (token ids, embedding-row gradients)

    @property
    def K(self) -> int:
        return self.X.shape[0]


class PerSampleGrads:
    """Per-sample gradients of `lm_loss` (mean next-token CE of each row) for a [K, T] batch, from one
    batched forward and one backward to the input embeddings (weight gradients are never summed).

    `psg(X, precision) -> (losses, dense, sparse)` materialises all of them; `capture` + `grad` +
    `sq_norms` give them one parameter and a few samples at a time (FirstOrderProber's streaming)."""

    def __init__(self, model: nn.Module, params: list[nn.Parameter]):
        self.model = model
        self.params = list(params)
        self.index = {id(p): i for i, p in enumerate(params)}
        self.emb = model.get_input_embeddings()
        self.layers: list[tuple[nn.Module, str]] = []
        # parameter index -> its per-sample gradient's terms: (kind, layer)
        self.parts: dict[int, list[tuple[str, nn.Module]]] = {}
        for name, mod in model.named_modules():
            own = [p for p in mod.parameters(recurse=False) if p.requires_grad]
            if not own:
                continue
            if mod is self.emb:
                kind = "embedding"
            elif isinstance(mod, nn.Linear):
                kind = "linear"
            elif isinstance(mod, nn.LayerNorm):
                kind = "layernorm"
            elif _is_rmsnorm(mod):
                _check_rmsnorm(mod, name)
                kind = "rmsnorm"
            else:
                raise NotImplementedError(
                    f"first_order probing: per-sample gradients of {type(mod).__name__} ('{name}') are not implemented; "
                    "use probe.mode = exact"
                )
            self.layers.append((mod, kind))
            terms = {"embedding": [("weight", "rows")], "linear": [("weight", "linear_w"), ("bias", "bias")],
                     "layernorm": [("weight", "ln_w"), ("bias", "bias")], "rmsnorm": [("weight", "rms_w")]}[kind]
            for attr, term in terms:
                p = getattr(mod, attr, None)
                if p is not None and p.requires_grad and id(p) in self.index:
                    self.parts.setdefault(self.index[id(p)], []).append((term, mod))
        missing = [i for i in range(len(self.params)) if i not in self.parts]
        if missing:
            raise NotImplementedError(f"first_order probing: {len(missing)} parameters are not in a supported layer")
        # a parameter whose only term is the embedding rows stays sparse (untied input embedding)
        self.sparse_ids = [i for i, t in self.parts.items() if [k for k, _ in t] == ["rows"]]
        self.dense_ids = [i for i in range(len(self.params)) if i not in self.sparse_ids]

    # --------------------------------------------------------------------- one batched pass

    def capture(self, X: torch.Tensor, precision: str = "fp32") -> Captured:
        """One forward and one backward (to the input embeddings) of X [K, T]; the layers' inputs and
        output gradients are kept, nothing is summed over the batch."""
        store: dict[nn.Module, dict[str, torch.Tensor]] = {}

        def hook(mod, inp, out):
            rec = store.setdefault(mod, {})
            if "A" in rec:
                raise NotImplementedError("first_order probing: a layer is applied twice per forward")
            rec["A"] = inp[0].detach()
            out.register_hook(lambda g: rec.__setitem__("G", g.detach()))

        handles = [mod.register_forward_hook(hook) for mod, kind in self.layers if kind != "embedding"]
        device = X.device
        try:
            E = self.emb(X).detach().requires_grad_(True)  # [K, T, d]
            with autocast(device, precision):
                logits = self.model(inputs_embeds=E).logits  # [K, T, V]
            K, T, V = logits.shape
            # every position scored, the last one masked (no [:, :-1] copy of the [K, T, V] logits)
            labels = torch.cat([X[:, 1:], torch.full_like(X[:, :1], -100)], dim=1).reshape(-1)
            ce = F.cross_entropy(_acc(logits).reshape(-1, V), labels, reduction="none", ignore_index=-100)
            losses = ce.view(K, T)[:, :-1].mean(1)  # [K] = lm_loss of each row
            del logits, ce
            (gE,) = torch.autograd.grad(losses.sum(), [E])
        finally:
            for h in handles:
                h.remove()
        return Captured(X, losses.detach(), gE, store)

    def rows(self, cap: Captured) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per sample: the unique token ids of x and the input-embedding gradient's rows there."""
        if cap.rows is None:
            out = []
            for k in range(cap.K):
                uniq, inv = torch.unique(cap.X[k], return_inverse=True)
                gk = _acc(cap.gE[k])
                vals = torch.zeros(len(uniq), gk.shape[1], device=gk.device, dtype=gk.dtype).index_add_(0, inv, gk)
                if self.emb.padding_idx is not None:
                    vals[uniq == self.emb.padding_idx] = 0
                out.append((uniq, vals))
            cap.rows = out
        return cap.rows

    def _AG(self, cap: Captured, mod: nn.Module, ks: slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rec = cap.recs[mod]
        raw = rec["A"][ks]
        k = raw.shape[0]
        A = _acc(raw).reshape(k, -1, raw.shape[-1])  # [k, T, in]
        G = _acc(rec["G"][ks]).reshape(k, -1, rec["G"].shape[-1])  # [k, T, out]
        return raw, A, G

    def grad(self, cap: Captured, i: int, ks: slice = slice(None)) -> torch.Tensor:
        """The dense per-sample gradient of parameter i for samples `ks`: [k, *shape] (a fresh buffer)."""
        out = None
        for term, mod in self.parts[i]:
            if term == "rows":
                continue
            raw, A, G = self._AG(cap, mod, ks)
            if term == "linear_w":
                g = torch.bmm(G.transpose(1, 2), A)  # [k, out, in]
            elif term == "bias":
                g = G.sum(1)  # [k, out]
            elif term == "ln_w":
                g = (F.layer_norm(A, mod.normalized_shape, eps=mod.eps) * G).sum(1)
            else:  # rms_w
                g = (_acc(_rms_hat(mod, raw)).reshape(A.shape) * G).sum(1)
            out = g if out is None else out.add_(g)
        if any(term == "rows" for term, _ in self.parts[i]):  # tied input/output embeddings
            for k, (uniq, vals) in enumerate(self.rows(cap)[ks]):
                out[k].index_add_(0, uniq, vals)
        return out

    def linear_only(self, i: int) -> nn.Linear | None:
        """The Linear layer when parameter i's gradient is exactly one G^T A term (ghost norm applies)."""
        t = self.parts[i]
        return t[0][1] if len(t) == 1 and t[0][0] == "linear_w" else None

    def ghost_sq_norms(self, cap: Captured, mod: nn.Module, ks: slice) -> torch.Tensor:
        """||G_x^T A_x||_F^2 = <A_x A_x^T, G_x G_x^T> for samples `ks`, without the [out, in] gradient: [k] float64."""
        _, A, G = self._AG(cap, mod, ks)
        return (torch.bmm(A, A.transpose(1, 2)) * torch.bmm(G, G.transpose(1, 2))).sum((1, 2)).double()

    def __call__(self, X: torch.Tensor, precision: str = "fp32"):
        """X [K, T] -> (losses [K], dense {param index: [K, *shape]}, sparse {param index: [(rows, values)] * K})."""
        cap = self.capture(X, precision)
        dense = {i: self.grad(cap, i) for i in self.dense_ids}
        sparse = {i: self.rows(cap) for i in self.sparse_ids}
        return cap.losses, dense, sparse


# ----------------------------------------------------------------------------- memory


def free_memory(device: torch.device | str) -> tuple[int, str]:
    """(bytes free now, where the number comes from). CUDA: mem_get_info plus the blocks the caching
    allocator holds but does not use; CPU: MemAvailable of /proc/meminfo (else the free pages)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached), "torch.cuda.mem_get_info"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "/proc/meminfo MemAvailable"
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")), "sysconf free pages"


@dataclass
class MemoryPlan:
    """The first-order probe's memory at one sequence length (module docstring, "Memory"); bytes."""

    micro_batch: int  # K: candidates per batched forward/backward
    seq_len: int
    budget: int  # bytes the micro-batches may use (beyond the resident state)
    budget_source: str
    per_sample: int  # activations and hooked A / G of one candidate
    workspace_min: int  # one sample's gradient of the largest parameter (or its ghost-norm Gram matrices)
    resident: int  # theta, m, v, rho (already allocated when the prober starts)
    n_params: int
    breakdown: dict[str, int] = field(default_factory=dict)  # per-sample terms

    @property
    def workspace(self) -> int:
        """Bytes left for streamed per-sample gradients once the K candidates' activations are placed."""
        return max(self.budget - self.micro_batch * self.per_sample, self.workspace_min)

    @property
    def least_peak(self) -> int:
        """Resident + K x per-sample + the minimum workspace: the peak when the budget is just enough."""
        return self.resident + self.micro_batch * self.per_sample + self.workspace_min

    @property
    def peak(self) -> int:
        """Estimated peak: resident + K x per-sample + the streamed gradients' workspace (<= budget)."""
        return self.resident + self.micro_batch * self.per_sample + self.workspace

    def describe(self) -> dict[str, Any]:
        return {"micro_batch": self.micro_batch, "seq_len": self.seq_len, "budget_gb": self.budget / GiB,
                "budget_source": self.budget_source, "per_sample_gb": self.per_sample / GiB,
                "workspace_min_gb": self.workspace_min / GiB, "resident_gb": self.resident / GiB,
                "peak_gb": self.peak / GiB, "least_peak_gb": self.least_peak / GiB, "n_params": self.n_params,
                "per_sample_terms_gb": {k: v / GiB for k, v in self.breakdown.items()}}


def _shapes(model: nn.Module) -> tuple[int, int, int]:
    """(layers L, width d, vocabulary V) of a causal LM."""
    V, d = model.get_input_embeddings().weight.shape
    L = int(getattr(model.config, "num_hidden_layers", 0) or 1)
    return L, int(d), int(V)


def memory_terms(model: nn.Module, params: list[nn.Parameter], seq_len: int, n_groups: int = 1,
                 bf16_autocast: bool = False) -> dict[str, int]:
    """Per-sample bytes by term, the minimum workspace (plus, under CUDA bf16 autocast, the cached
    bf16 copies of the weights: 2 bytes per parameter) and the resident bytes (module docstring)."""
    L, d, V = _shapes(model)
    b = 8 if params[0].dtype == torch.float64 else 4
    hooked = 0
    for mod in model.modules():
        if isinstance(mod, nn.Linear):
            hooked += mod.in_features + mod.out_features
        elif isinstance(mod, nn.LayerNorm) or _is_rmsnorm(mod):
            hooked += 2 * int(mod.weight.shape[-1]) if getattr(mod, "weight", None) is not None else 0
    T = int(seq_len)
    terms = {"hooked A and G": T * b * hooked, "body activations": int(T * b * BODY_FACTOR * L * d),
             "head (logits)": int(T * b * HEAD_FACTOR * V), "input embeddings": T * b * 2 * d}
    largest = max(p.numel() for p in params)
    resident = sum(p.numel() * (p.element_size() + 2 * p.element_size() + b * n_groups) for p in params)
    cache = 2 * sum(p.numel() for p in params) if bf16_autocast else 0
    return {**terms, "workspace_min": max(b * largest, 2 * b * T * T) + cache, "resident": resident}


def _size(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= 0.1 * GiB else f"{n / 1024**2:.2f} MiB"


def plan_micro_batch(model: nn.Module, params: list[nn.Parameter], seq_len: int, *, candidate_batch: int,
                     budget_bytes: int | None = None, n_groups: int = 1, device: torch.device | str | None = None,
                     precision: str = "fp32", knob: str = "probe.memory_budget_gb") -> MemoryPlan:
    """K = min(candidate_batch, floor((budget - workspace_min) / per_sample)) (module docstring).
    `budget_bytes` None: MEMORY_FRACTION of the free memory of `device` now. Raises ConfigError,
    naming `knob`, when not even one candidate fits."""
    dev = torch.device(device) if device is not None else params[0].device
    t = memory_terms(model, params, seq_len, n_groups, bf16_autocast=dev.type == "cuda" and precision in ("auto", "bf16"))
    per_sample = sum(v for k, v in t.items() if k not in ("workspace_min", "resident"))
    if budget_bytes is None:
        free, source = free_memory(dev)
        budget, source = int(free * MEMORY_FRACTION), f"{MEMORY_FRACTION:.0%} of {source}"
    else:
        budget, source = int(budget_bytes), knob
    fit = (budget - t["workspace_min"]) // per_sample
    n = sum(p.numel() for p in params)
    if fit < 1:
        need = per_sample + t["workspace_min"]
        raise ConfigError(
            f"{knob}: one {seq_len}-token candidate needs ~{_size(need)} for first-order per-sample gradients "
            f"of this {n / 1e6:.3g}M-parameter model but {_size(budget)} ({source}) is available; raise "
            f"{knob} or free memory, shorten pool.seq_len, or use probe.mode = exact"
        )
    K = int(min(candidate_batch, fit))
    return MemoryPlan(K, int(seq_len), budget, source, per_sample, t["workspace_min"], t["resident"], n,
                      {k: v for k, v in t.items() if k not in ("workspace_min", "resident")})


# ----------------------------------------------------------------------------- labels


class FirstOrderProber:
    """Labels batches of candidates with the first-order estimate (module docstring). Per candidate

        u(x) = (b1 m + (1 - b1) g) / (sqrt(b2 v / bc2 + (1 - b2) / bc2 * g^2) + eps),  g = c(x) g_x

    in cache-sized column blocks, one parameter (and at most the workspace's worth of samples) at a
    time. `candidate_batch`: the most candidates per batched pass (default: as many as `labels` is
    given); `memory_budget_gb`: the bytes those passes may use (default: the free memory now);
    the micro-batch actually run is `plan(seq_len).micro_batch`."""

    block = 8192  # columns per elementwise block: K x block floats stay in cache

    def __init__(self, state, consts: FirstOrderConstants, *, candidate_batch: int | None = None,
                 memory_budget_gb: float | None = None):
        self.state = state
        self.consts = consts
        h = state.hyper
        self.psg = PerSampleGrads(state.model, state.params)
        self.bc2 = [1 - h.beta2 ** (s + 1.0) for s in state.steps]
        self.a2 = [(1 - h.beta2) / bc2 for bc2 in self.bc2]
        self.rho = [r.to(state.device) for r in consts.rho]  # shipped on CPU to other processes
        self.const = torch.as_tensor(consts.const, dtype=torch.float64)
        self.candidate_batch = candidate_batch
        self.budget = None if memory_budget_gb is None else int(memory_budget_gb * GiB)
        self._plans: dict[tuple[int, int], MemoryPlan] = {}

    def plan(self, seq_len: int, n: int | None = None) -> MemoryPlan:
        """The memory plan for `seq_len`-token candidates, batches of at most `n` (cached per shape)."""
        cap = self.candidate_batch or n or 1
        key = (int(seq_len), int(cap))
        if key not in self._plans:
            p = plan_micro_batch(self.state.model, self.state.params, seq_len, candidate_batch=cap,
                                 budget_bytes=self.budget, n_groups=self.const.numel(), device=self.state.device,
                                 precision=self.state.precision)
            if p.micro_batch < cap:
                log.warning("first_order probe: %d candidates per batched pass instead of %d (%.2f GiB each, "
                            "%.2f GiB available: %s)", p.micro_batch, cap, p.per_sample / GiB, p.budget / GiB,
                            p.budget_source)
            self._plans[key] = p
        return self._plans[key]

    def _u_minus_u0(self, i: int, g: torch.Tensor, sel: slice | torch.Tensor) -> torch.Tensor:
        """u(x) - u0 of parameter i's elements `sel` from the clipped gradients g [k, len(sel)]; b1 m,
        b2 v / bc2 and u0 are recomputed from m and v here (no parameter-sized copies kept)."""
        h = self.state.hyper
        b1m = _acc(self.state.m[i].reshape(-1)[sel]) * h.beta1  # select, then widen: no full-size copy
        b2v = _acc(self.state.v[i].reshape(-1)[sel]) * (h.beta2 / self.bc2[i])  # b2 v / bc2
        u0 = b1m / (b2v.sqrt() + h.eps)
        num = torch.add(b1m, g, alpha=1 - h.beta1)  # m'
        den = torch.addcmul(b2v, g, g, value=self.a2[i]).sqrt_().add_(h.eps)  # sqrt(v'/bc2) + eps
        return num.div_(den).sub_(u0)

    def labels(self, X: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """X [n, T] -> (ref_loss_delta estimates [n, G], loss [n], gradient norm before clipping [n]),
        in micro-batches of `plan(T).micro_batch` candidates."""
        plan = self.plan(X.shape[1], X.shape[0])
        K = plan.micro_batch
        parts = [self._labels(X[lo : lo + K], plan) for lo in range(0, X.shape[0], K)]
        return tuple(np.concatenate([p[j] for p in parts]) for j in range(3))  # type: ignore[return-value]

    def _dot(self, i: int, g: torch.Tensor, coef: torch.Tensor, acc: torch.Tensor, lo: int) -> None:
        """acc[lo:lo+k] += <rho_i, u_i(c g) - u0_i> for the unclipped per-sample gradients g [k, numel]."""
        k = g.shape[0]
        g.mul_(coef[lo : lo + k, None])  # clipped, in place (the buffer is ours)
        rho = self.rho[i]
        for c in range(0, g.shape[1], self.block):
            sel = slice(c, c + self.block)
            acc[lo : lo + k] += (self._u_minus_u0(i, g[:, sel], sel) @ rho[sel]).double()

    @torch.no_grad()
    def _labels(self, X: torch.Tensor, plan: MemoryPlan) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        state, psg = self.state, self.psg
        with torch.enable_grad():
            cap = psg.capture(X, state.precision)
        K, T = X.shape
        b = 8 if state.params[0].dtype == torch.float64 else 4
        workspace = max(plan.budget - K * plan.per_sample, plan.workspace_min)
        kept: dict[int, torch.Tensor] = {}  # materialised in pass 1, reused in pass 2 (at most half the workspace)
        kept_bytes = 0

        def step(i: int) -> int:  # samples per materialised chunk of parameter i (a chunk and a temporary)
            return int(min(K, max(1, (workspace - kept_bytes) // 2 // (state.params[i].numel() * b))))

        # pass 1: per-sample squared norms over all parameters
        sq = torch.zeros(K, dtype=torch.float64, device=X.device)
        for i in psg.dense_ids:
            numel = state.params[i].numel()
            lin = psg.linear_only(i)
            if lin is not None and T * (lin.in_features + lin.out_features) < lin.in_features * lin.out_features:
                # by shape alone, never by memory: the norm's float rounding must not depend on the budget
                k = int(min(K, max(1, workspace // (2 * b * T * T))))
                for lo in range(0, K, k):
                    sq[lo : lo + k] += psg.ghost_sq_norms(cap, lin, slice(lo, lo + k))
            elif kept_bytes + K * numel * b <= workspace // 2:
                g = psg.grad(cap, i).reshape(K, -1)
                sq += torch.bmm(g.unsqueeze(1), g.unsqueeze(2)).reshape(K).double()
                kept[i] = g
                kept_bytes += K * numel * b
            else:
                k = step(i)
                for lo in range(0, K, k):
                    g = psg.grad(cap, i, slice(lo, lo + k)).reshape(-1, numel)
                    sq[lo : lo + k] += torch.bmm(g.unsqueeze(1), g.unsqueeze(2)).reshape(-1).double()
                    del g
        for _ in psg.sparse_ids:  # the untied input embedding: its rows
            for k, (_, vals) in enumerate(psg.rows(cap)):
                sq[k] += vals.double().square().sum()
        gnorm = sq.sqrt()
        clip = state.hyper.grad_clip
        coef = (clip / (gnorm + 1e-6)).clamp(max=1.0) if clip is not None else torch.ones_like(gnorm)
        coef = coef.to(_acc(state.params[0]).dtype)

        # pass 2: sum_p <rho_p, u_p(x) - u0_p> for every candidate and reference group
        G = self.const.numel()
        acc = torch.zeros(K, G, dtype=torch.float64, device=X.device)
        for i in psg.dense_ids:
            if i in kept:
                g = kept.pop(i)
                kept_bytes -= g.numel() * b
                self._dot(i, g, coef, acc, 0)
                del g
                continue
            numel = state.params[i].numel()
            k = step(i)
            for lo in range(0, K, k):
                g = psg.grad(cap, i, slice(lo, lo + k)).reshape(-1, numel)
                self._dot(i, g, coef, acc, lo)
                del g
        for i in psg.sparse_ids:
            d = state.params[i].shape[1]
            rho = self.rho[i].view(-1, d, G)
            for k, (uniq, vals) in enumerate(psg.rows(cap)):
                sel = (uniq[:, None] * d + torch.arange(d, device=uniq.device)).reshape(-1)
                u = self._u_minus_u0(i, (vals * coef[k]).reshape(1, -1), sel)  # [1, n_rows * d]
                acc[k] += (u @ rho[uniq].reshape(-1, G))[0].double()
        delta = self.const.to(acc.device)[None, :] - acc
        return delta.cpu().numpy(), cap.losses.double().cpu().numpy(), gnorm.cpu().numpy()
