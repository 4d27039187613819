"""Model-aware features of the data influence model: what the current LM says about a candidate, from
ONE forward of that LM per candidate (issue 14; docs/influence_model.md).

For a candidate x = (x_1..x_T) and the LM at the stage's checkpoint theta, one forward gives the
logits z_t, the next-token distribution p_t = softmax(z_t) and the head's input h_t (the last hidden
state, after the final norm). From them, per candidate:

  stats   mean loss (1/(T-1)) sum_t l_t with l_t = -log p_t(x_{t+1}); the 10/50/90% quantiles and the
          standard deviation of l_t; the mean predictive entropy H_t = -sum_v p_tv log p_tv      [6]
  hidden  the mean-pooled last hidden state (1/T) sum_t h_t (no second encoder: the LM itself)  [H]
  fo      the first-order term restricted to the output head W [V, H]: the reference-loss change of
          the (linearised) AdamW step on x alone through W,

              fo(x) = <D, grad_W lm_loss(x)>,   D = (1 - b1) s r_W / (sqrt(b2 v_W / bc2) + eps)

          with r_W = grad_W L_ref(theta) (one reference backward per checkpoint), s = lr / (1 - b1^(t+1)),
          bc2 = 1 - b2^(t+1), v_W the AdamW second moment: linearising MATES's probe label (Eq. 12;
          selection/probe/first_order.py) in g around 0 gives ref_loss_delta(x) ~ const - c(x) <D_all, g_x>
          over all parameters; `fo` keeps the head's block, which needs no backward at all:
          grad_W l_t = (p_t - e_{x_{t+1}}) h_t^T, so <D, grad_W l_t> = <p_t, D h_t> - (D h_t)_{x_{t+1}},
          one extra [T, H] x [H, V] product (the head's own forward cost). The clip factor c(x) is left to
          the fitted head (it is a function of the gradient norm, which the stats track).  [1]

Cost per candidate of T tokens (N non-embedding LM parameters, V the vocabulary, H the width):
forward 2 N T + 2 T H V (the LM's own forward, charged as `lm_forward` tokens), plus 2 T H V for `fo`.
A first-order probe costs ~3x the forward plus per-sample gradient products over every parameter.

`LMFeaturizer(checkpoint).features(tokens)` -> {kind: [n, d] float64}; `forwards` counts LM forwards.
The direction D is computed once per checkpoint (`head_direction`) and stored with a fitted influence
model, so scoring needs no reference set.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from datamates.errors import ConfigError

FEATURE_KINDS = ("stats", "hidden", "fo")
STAT_NAMES = ("mean_loss", "loss_q10", "loss_q50", "loss_q90", "loss_std", "mean_entropy")


def check_kinds(kinds: Sequence[str]) -> list[str]:
    bad = [k for k in kinds if k not in FEATURE_KINDS + ("encoder",)]
    if bad or not kinds:
        raise ConfigError(f"fit.features: unknown feature {bad[0] if bad else '(none)'!r}; available: "
                          f"{', '.join(FEATURE_KINDS + ('encoder',))}")
    return list(kinds)


def next_step_lr_of(checkpoint: str | Path):
    """(train config, lr) of the step after `checkpoint`: the schedule's rate at the next global step
    (the step a probe simulates; the rule of selection/probe/oracle.next_step_lr)."""
    from datamates.config.base import from_dict
    from datamates.config.core import TrainConfig
    from datamates.core.checkpoint import trainer_state
    from datamates.core.train_loop import lr_at

    state = trainer_state(checkpoint)
    tcfg = from_dict(TrainConfig, state.get("train_config") or {})
    t = int(state.get("global_step", 0))
    call = state.get("call") or {}
    start = int(call.get("start_step", 0))
    return tcfg, float(lr_at(tcfg, t, start, max(start + int(call.get("steps", 0)), t)))


def head_direction(checkpoint: str | Path, reference, *, batch_size: int = 32, max_batch_tokens: int | None = 16384,
                   device: str | torch.device = "cpu", pad_id: int = 0) -> torch.Tensor:
    """D [V, H] float32 (module docstring): the linearised AdamW step direction of the output head
    per unit of candidate gradient, weighted by the reference gradient. One reference forward +
    backward of the checkpoint; `reference` a core.reference.ReferenceSet. lr is the schedule's rate
    at the next global step, the step a probe simulates (as selection/probe/oracle.next_step_lr)."""
    from datamates.core.checkpoint import load_model, load_optimizer_state
    from datamates.core.reference import ReferenceBatches
    from datamates.core.train_loop import make_optimizer
    from datamates.errors import ArtifactMissing

    if not (Path(checkpoint) / "optimizer.safetensors").exists():
        raise ArtifactMissing(f"{checkpoint}: no optimizer state (optimizer.safetensors); the 'fo' feature needs the "
                              "AdamW moments of a checkpoint written by `datamates train`, not an export")
    tcfg, lr = next_step_lr_of(checkpoint)
    model = load_model(checkpoint, torch.device(device))
    opt = make_optimizer(model, tcfg)
    load_optimizer_state(checkpoint, model, opt)
    W = model.get_output_embeddings().weight
    st = opt.state[W]
    v, step = st["exp_avg_sq"].float(), float(st["step"])
    del opt
    ref = ReferenceBatches(reference.examples, max_len=model.config.max_position_embeddings, batch_size=batch_size,
                           max_tokens=max_batch_tokens, pad_id=pad_id, device=torch.device(device))
    model.zero_grad(set_to_none=True)
    ref.backward(model)
    b1, b2, eps = tcfg.beta1, tcfg.beta2, tcfg.eps
    s = lr / (1 - b1 ** (step + 1.0))
    bc2 = 1 - b2 ** (step + 1.0)
    D = (1 - b1) * s * W.grad.detach().float() / ((b2 * v / bc2).sqrt() + eps)
    return D.cpu().contiguous()


class LMFeaturizer:
    """The LM at a checkpoint, ready to featurise token rows with one forward per row."""

    def __init__(self, checkpoint: str | Path, *, device: str | torch.device = "cpu", direction: torch.Tensor | None = None,
                 batch_size: int = 16):
        from datamates.core.checkpoint import load_model

        self.device = torch.device(device)
        self.model = load_model(checkpoint, device=self.device)
        self.model.eval()
        self.head = self.model.get_output_embeddings()
        self.direction = None if direction is None else direction.to(self.device, torch.float32)
        self.batch_size = batch_size
        self.forwards = 0  # LM forward passes (batches) run, for the one-forward test
        self.rows = 0  # token rows featurised

    @property
    def hidden_size(self) -> int:
        return int(self.head.weight.shape[1])

    @torch.inference_mode()
    def _batch(self, X: torch.Tensor, kinds: Sequence[str]) -> dict[str, torch.Tensor]:
        box: dict[str, torch.Tensor] = {}
        handle = self.head.register_forward_hook(lambda mod, inp, out: box.__setitem__("h", inp[0]))
        try:
            logits = self.model(input_ids=X).logits.float()  # [K, T, V]
        finally:
            handle.remove()
        self.forwards += 1
        self.rows += X.shape[0]
        h = box["h"].float()  # [K, T, H] the head's input
        out: dict[str, torch.Tensor] = {}
        tgt = X[:, 1:]
        z = logits[:, :-1]  # [K, T-1, V] predicts x_2..x_T
        need_p = "fo" in kinds or "stats" in kinds
        if need_p:
            lse = torch.logsumexp(z, dim=-1)  # [K, T-1]
            p = torch.exp(z - lse[..., None])  # softmax, one pass
        if "stats" in kinds:
            tok = lse - z.gather(-1, tgt[..., None])[..., 0]  # l_t = -log p_t(x_{t+1})
            ent = lse - (p * z).sum(-1)  # H_t = log sum exp z - sum_v p_v z_v
            q = torch.quantile(tok, torch.tensor([0.1, 0.5, 0.9], device=tok.device), dim=1).T  # [K, 3]
            out["stats"] = torch.cat([tok.mean(1, keepdim=True), q, tok.std(1, keepdim=True),
                                      ent.mean(1, keepdim=True)], dim=1)
        if "hidden" in kinds:
            out["hidden"] = h.mean(1)
        if "fo" in kinds:
            if self.direction is None:
                raise ConfigError("fit.features has 'fo' but the influence model has no head direction")
            D = self.direction
            ht = h[:, :-1]  # [K, T-1, H]
            # <D, (p_t - e_y) h_t^T> = h_t . (D^T p_t) - h_t . D_y
            per_tok = ((p @ D) * ht).sum(-1) - (D[tgt] * ht).sum(-1)
            out["fo"] = per_tok.mean(1, keepdim=True)
        return out

    def features(self, tokens: np.ndarray, kinds: Sequence[str]) -> dict[str, np.ndarray]:
        """tokens [n, T] int -> {kind: [n, d] float64} for the LM kinds in `kinds`."""
        kinds = [k for k in kinds if k in FEATURE_KINDS]
        parts: dict[str, list[np.ndarray]] = {k: [] for k in kinds}
        for s in range(0, len(tokens), self.batch_size):
            X = torch.as_tensor(np.asarray(tokens[s : s + self.batch_size], dtype=np.int64), device=self.device)
            for k, v in self._batch(X, kinds).items():
                parts[k].append(v.double().cpu().numpy())
        return {k: np.concatenate(v) if v else np.zeros((0, 0)) for k, v in parts.items()}


def stack_features(feats: dict[str, np.ndarray], kinds: Sequence[str]) -> np.ndarray:
    """The design matrix [n, sum d_k] in the order of `kinds`."""
    return np.concatenate([np.asarray(feats[k], dtype=np.float64) for k in kinds], axis=1)


__all__ = ["FEATURE_KINDS", "STAT_NAMES", "LMFeaturizer", "check_kinds", "head_direction", "next_step_lr_of",
           "stack_features"]
