"""First-order probe labels: the reference-loss change of one AdamW step, linearised (mates.md §8.3).

With theta'(x) the exact AdamW step on candidate x (clipping, the second-moment update and bias
corrections included; probe.py's module docstring) and theta0 = theta'(g = 0) the part of the step
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

Per-sample gradients g_x come from ONE batched forward/backward per `candidate_batch` candidates
(Opacus-style hooks): for a Linear layer with input A_x [T, in] and output gradient G_x [T, out]
the per-sample weight gradient is G_x^T A_x, for LayerNorm sum_t (xhat * G_x), and the input
embedding's per-sample gradient is a scatter of dL/dE_x over the tokens of x, kept as rows (only
the rows of tokens in x differ from the anchor, so only they are visited).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from datamates.core.lm import autocast
from datamates.core.reference import ReferenceBatches


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
    """rho and the constant term for `groups` [G, n_ref] (0/1 weights over reference examples)."""
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
    return FirstOrderConstants(anchor, rho, np.asarray(const, dtype=np.float64), anchor_loss)


class PerSampleGrads:
    """Per-sample gradients of `lm_loss` (mean next-token CE of each row) for a [K, T] batch, from one
    batched forward and one backward to the input embeddings (weight gradients are never summed)."""

    def __init__(self, model: nn.Module, params: list[nn.Parameter]):
        self.model = model
        self.index = {id(p): i for i, p in enumerate(params)}
        self.emb = model.get_input_embeddings()
        self.layers: list[tuple[nn.Module, str]] = []
        covered: set[int] = set()
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
            else:
                raise NotImplementedError(
                    f"first_order probing: per-sample gradients of {type(mod).__name__} ('{name}') are not implemented; "
                    "use probe.mode = exact"
                )
            self.layers.append((mod, kind))
            covered.update(id(p) for p in own)
        missing = [i for pid, i in self.index.items() if pid not in covered]
        if missing:
            raise NotImplementedError(f"first_order probing: {len(missing)} parameters are not in a supported layer")

    def __call__(self, X: torch.Tensor, precision: str = "fp32"):
        """X [K, T] -> (losses [K], dense {param index: [K, *shape]}, sparse {param index: [(rows, values)] * K})."""
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
            (gE,) = torch.autograd.grad(losses.sum(), [E])
        finally:
            for h in handles:
                h.remove()
        dense: dict[int, torch.Tensor] = {}

        def add(p: torch.Tensor, g: torch.Tensor) -> None:
            i = self.index[id(p)]
            dense[i] = dense[i] + g if i in dense else g

        for mod, kind in self.layers:
            if kind == "embedding":
                continue
            rec = store[mod]
            A = _acc(rec["A"]).reshape(K, -1, rec["A"].shape[-1])  # [K, T, in]
            G = _acc(rec["G"]).reshape(K, -1, rec["G"].shape[-1])  # [K, T, out]
            if kind == "linear":
                if mod.weight.requires_grad:
                    add(mod.weight, torch.bmm(G.transpose(1, 2), A))  # [K, out, in]
                if mod.bias is not None and mod.bias.requires_grad:
                    add(mod.bias, G.sum(1))
            else:
                xhat = F.layer_norm(A, mod.normalized_shape, eps=mod.eps)
                if mod.weight is not None and mod.weight.requires_grad:
                    add(mod.weight, (xhat * G).sum(1))
                if mod.bias is not None and mod.bias.requires_grad:
                    add(mod.bias, G.sum(1))
        sparse: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        w = self.emb.weight
        if w.requires_grad:
            rows = []
            for k in range(K):
                uniq, inv = torch.unique(X[k], return_inverse=True)
                gk = _acc(gE[k])
                vals = torch.zeros(len(uniq), w.shape[1], device=device, dtype=gk.dtype).index_add_(0, inv, gk)
                if self.emb.padding_idx is not None:
                    vals[uniq == self.emb.padding_idx] = 0
                rows.append((uniq, vals))
            i = self.index[id(w)]
            if i in dense:  # tied input/output embeddings: fold the rows into the dense gradient
                for k, (uniq, vals) in enumerate(rows):
                    dense[i][k].index_add_(0, uniq, vals)
            else:
                sparse[i] = rows
        return losses.detach(), dense, sparse


class FirstOrderProber:
    """Labels batches of candidates with the first-order estimate (module docstring). Per parameter
    the x-independent parts are precomputed, so that per candidate

        u(x) = (b1 m + (1 - b1) g) / (sqrt(b2 v / bc2 + (1 - b2) / bc2 * g^2) + eps),  g = c(x) g_x

    is a handful of fused passes over cache-sized column blocks of the [K, n] per-sample gradients."""

    block = 8192  # columns per elementwise block: K x block floats stay in cache

    def __init__(self, state, consts: FirstOrderConstants):
        self.state = state
        self.consts = consts
        h = state.hyper
        self.psg = PerSampleGrads(state.model, state.params)
        self.b1m, self.b2v, self.u0, self.a2 = [], [], [], []
        with torch.no_grad():
            for m, v, s in zip(state.m, state.v, state.steps, strict=True):
                bc2 = 1 - h.beta2 ** (s + 1.0)
                b1m = (_acc(m) * h.beta1).reshape(-1)
                b2v = (_acc(v) * (h.beta2 / bc2)).reshape(-1)  # b2 v / bc2
                self.b1m.append(b1m)
                self.b2v.append(b2v)
                self.u0.append(b1m / (b2v.sqrt() + h.eps))
                self.a2.append((1 - h.beta2) / bc2)
        self.rho = [r.to(state.device) for r in consts.rho]  # shipped on CPU to other processes
        self.const = torch.as_tensor(consts.const, dtype=torch.float64)

    def _u_minus_u0(self, i: int, g: torch.Tensor, sel: slice | torch.Tensor) -> torch.Tensor:
        """u(x) - u0 of parameter i's elements `sel` from the clipped gradients g [K, len(sel)]."""
        h = self.state.hyper
        num = torch.add(self.b1m[i][sel], g, alpha=1 - h.beta1)  # m'
        den = torch.addcmul(self.b2v[i][sel], g, g, value=self.a2[i]).sqrt_().add_(h.eps)  # sqrt(v'/bc2) + eps
        return num.div_(den).sub_(self.u0[i][sel])

    @torch.no_grad()
    def _dots(self, dense, sparse, coef: torch.Tensor, K: int) -> torch.Tensor:
        """sum_p <rho_p, u_p(x) - u0_p> for every candidate and reference group: [K, G] float64."""
        G = self.const.numel()
        acc = torch.zeros(K, G, dtype=torch.float64, device=coef.device)
        for i, g in dense.items():
            g = g.reshape(K, -1).mul_(coef[:, None])  # clipped, in place (the buffer is ours)
            rho = self.rho[i]
            for lo in range(0, g.shape[1], self.block):
                sel = slice(lo, lo + self.block)
                acc += (self._u_minus_u0(i, g[:, sel], sel) @ rho[sel]).double()
        for i, rows in sparse.items():
            d = self.state.params[i].shape[1]
            rho = self.rho[i].view(-1, d, G)
            for k, (uniq, vals) in enumerate(rows):
                sel = (uniq[:, None] * d + torch.arange(d, device=uniq.device)).reshape(-1)
                u = self._u_minus_u0(i, (vals * coef[k]).reshape(1, -1), sel)  # [1, n_rows * d]
                acc[k] += (u @ rho[uniq].reshape(-1, G))[0].double()
        return acc

    def labels(self, X: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """X [K, T] -> (ref_loss_delta estimates [K, G], loss [K], gradient norm before clipping [K])."""
        state = self.state
        losses, dense, sparse = self.psg(X, state.precision)
        K = X.shape[0]
        sq = torch.zeros(K, dtype=torch.float64, device=X.device)
        for g in dense.values():
            gk = g.reshape(K, -1)
            sq += torch.bmm(gk.unsqueeze(1), gk.unsqueeze(2)).reshape(K).double()  # per-sample squared norms
        for rows in sparse.values():
            for k, (_, vals) in enumerate(rows):
                sq[k] += vals.double().square().sum()
        gnorm = sq.sqrt()
        clip = state.hyper.grad_clip
        coef = (clip / (gnorm + 1e-6)).clamp(max=1.0) if clip is not None else torch.ones_like(gnorm)
        acc = self._dots(dense, sparse, coef.to(_acc(state.params[0]).dtype), K)
        delta = self.const.to(acc.device)[None, :] - acc
        return delta.cpu().numpy(), losses.double().cpu().numpy(), gnorm.cpu().numpy()
