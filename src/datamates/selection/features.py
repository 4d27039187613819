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
  embed   the LM's input embedding of every token of the WHOLE candidate through its final norm,
          mean-pooled, (1/T) sum_t norm(E[x_t]) (no block runs; the same as `hidden` at exit 0 on the
          whole candidate, whatever prefix_tokens says): a bag of words in the LM's own space  [H]

Cost per candidate of T tokens (N non-embedding LM parameters, V the vocabulary, H the width):
forward 2 N T + 2 T H V (the LM's own forward, charged as `lm_forward` tokens), plus 2 T H V for `fo`.
A first-order probe costs ~3x the forward plus per-sample gradient products over every parameter.

`LMFeaturizer(checkpoint).features(tokens)` -> {kind: [n, d] float64}; `forwards` counts LM forwards.
The direction D is computed once per checkpoint (`head_direction`) and stored with a fitted influence
model, so scoring needs no reference set.

Cheaper views of the same LM (issue 28; docs/influence_model.md#cheaper-features), each a knob of
`fit` and counted by `LMFeaturizer.flops_per_token`:

  prefix_tokens P   the features of the first P tokens x_1..x_P only (the forward runs on P tokens;
                    causal attention: the first P positions of the full forward, exactly)
  exit_layer k      early exit / logit lens: the LM's first k blocks only, then its final norm and
                    output head on the block-k residual stream, h_t^(k) = norm(r_t^(k)); stats and fo
                    use the logit-lens distribution softmax(W h_t^(k)), hidden the mean of h_t^(k).
                    k = 0 is the input embedding (a bigram model through the head).

Counted forward FLOPs per token at context P, exit k (L blocks of P_b parameters, width d):
2 (k P_b + P_norm) + 2 k P d, + 2 H V for the head when `stats` or `fo` is asked, + 2 H V for `fo`
(the `fo_head` kind). With k = L, P = T and the head this is `core.lm.flops_per_token(model, T) / 3`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from datamates.config.base import from_dict
from datamates.config.core import TrainConfig
from datamates.core.checkpoint import load_model, load_optimizer_state, trainer_state
from datamates.core.lm import flops_per_token
from datamates.core.reference import ReferenceBatches
from datamates.core.train_loop import lr_at, make_optimizer
from datamates.errors import ArtifactMissing, ConfigError

FEATURE_KINDS = ("stats", "hidden", "fo", "embed")
FORWARD_KINDS = ("stats", "hidden", "fo")  # the kinds of the (prefix, early-exit) forward
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


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The ModuleList of transformer blocks of a causal LM (GPT-NeoX: gpt_neox.layers; Llama: model.layers)."""
    layers = getattr(model.base_model, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ConfigError(f"fit.exit_layer: cannot find the transformer blocks of {type(model).__name__} "
                          "(base_model.layers); leave fit.exit_layer null")
    return layers


def final_norm(model: torch.nn.Module) -> torch.nn.Module:
    """The norm between the last block and the output head (GPT-NeoX: final_layer_norm; Llama: norm)."""
    for name in ("final_layer_norm", "norm", "ln_f"):
        mod = getattr(model.base_model, name, None)
        if isinstance(mod, torch.nn.Module):
            return mod
    raise ConfigError(f"fit.exit_layer: cannot find the final norm of {type(model).__name__}; leave fit.exit_layer null")


def truncate_layers(model: torch.nn.Module, k: int) -> torch.nn.Module:
    """`model` with only its first k blocks (in place): the forward then runs blocks 1..k, the final
    norm and the head, the logit lens of block k. k = 0 keeps the embedding only."""
    layers = decoder_layers(model)
    L = len(layers)
    if not 0 <= k <= L:
        raise ConfigError(f"fit.exit_layer = {k}: the LM has {L} blocks; use 0..{L} or null (all)")
    if k < L:
        model.base_model.layers = torch.nn.ModuleList(list(layers)[:k])
        model.config.num_hidden_layers = k
    return model


def forward_flops_per_token(model: torch.nn.Module, context: int, *, head: bool = True) -> float:
    """Counted forward FLOPs per token of `model` as it is (truncated or not) at `context` tokens:
    2 N + 2 L T d as `core.lm.flops_per_token` / 3, with N the parameters the forward multiplies by
    (the input embedding is a lookup; the output head only when `head`)."""
    f = flops_per_token(model, context) / 3
    if not head:
        f -= 2.0 * model.get_output_embeddings().weight.numel()
    return f


def feature_flops_per_token(model: torch.nn.Module, kinds: Sequence[str], context: int) -> dict[str, float]:
    """{accounting kind: counted FLOPs per token} of the LM features `kinds` from `model` as it is
    (truncate_layers for an early exit) on `context` tokens: `lm_forward` (the blocks, the head when
    stats or fo needs the distribution) and `fo_head` (fo's extra [H] x [H, V] product). The one
    price of the features, for fit, score and benchmarks/scaling_plan.py (a meta-device model)."""
    need_head = "stats" in kinds or "fo" in kinds
    out = {}
    if any(k in FORWARD_KINDS for k in kinds):
        out["lm_forward"] = forward_flops_per_token(model, context, head=need_head)
    if "fo" in kinds:
        out["fo_head"] = 2.0 * float(model.get_output_embeddings().weight.numel())
    if "embed" in kinds:  # per token of the WHOLE candidate (not the prefix): the final norm's multiplies
        out["lm_embed"] = 2.0 * float(sum(p.numel() for p in final_norm(model).parameters()))
    return out


def feature_flops_per_candidate(model: torch.nn.Module, kinds: Sequence[str], seq_len: int,
                                prefix_tokens: int | None) -> float:
    """Counted FLOPs of one candidate's features: `lm_embed` per token of the whole candidate, the
    others per token of the prefix (feature_flops_per_token)."""
    P = int(min(seq_len, prefix_tokens or seq_len))
    return sum(f * (seq_len if k == "lm_embed" else P) for k, f in feature_flops_per_token(model, kinds, P).items())


class LMFeaturizer:
    """The LM at a checkpoint, ready to featurise token rows with one forward per row; optionally only
    the first `prefix_tokens` tokens of a row and the first `exit_layer` blocks (module docstring)."""

    def __init__(self, checkpoint: str | Path, *, device: str | torch.device = "cpu", direction: torch.Tensor | None = None,
                 batch_size: int = 16, prefix_tokens: int | None = None, exit_layer: int | None = None):
        self.device = torch.device(device)
        self.model = load_model(checkpoint, device=self.device)
        self.model.eval()
        self.n_layers = int(self.model.config.num_hidden_layers)
        self.exit_layer = exit_layer
        if exit_layer is not None:
            truncate_layers(self.model, int(exit_layer))
        if prefix_tokens is not None and prefix_tokens < 2:
            raise ConfigError(f"fit.prefix_tokens = {prefix_tokens}: need at least 2 tokens (one next-token loss)")
        self.prefix_tokens = prefix_tokens
        self.head = self.model.get_output_embeddings()
        self.direction = None if direction is None else direction.to(self.device, torch.float32)
        self.batch_size = batch_size
        self.forwards = 0  # LM forward passes (batches) run, for the one-forward test
        self.rows = 0  # token rows featurised

    @property
    def hidden_size(self) -> int:
        return int(self.head.weight.shape[1])

    def tokens_per_row(self, seq_len: int) -> int:
        """Tokens of a row the forward runs on (the prefix, or the whole row; `embed` reads every token)."""
        return int(min(seq_len, self.prefix_tokens or seq_len))

    def flops_per_token(self, kinds: Sequence[str], seq_len: int) -> dict[str, float]:
        """{accounting kind: counted FLOPs per token} of featurising `kinds` on rows of `seq_len`
        tokens (accounting.py): `lm_forward` (blocks up to the exit, the head when a kind needs the
        distribution) and `fo_head` (the `fo` term's extra [H] x [H, V] product)."""
        return feature_flops_per_token(self.model, kinds, self.tokens_per_row(seq_len))

    @torch.inference_mode()
    def _batch(self, X: torch.Tensor, kinds: Sequence[str]) -> dict[str, torch.Tensor]:
        extra: dict[str, torch.Tensor] = {}
        if "embed" in kinds:  # the whole candidate's normalised input embedding, mean-pooled: no block runs
            extra["embed"] = final_norm(self.model)(self.model.get_input_embeddings()(X).float()).mean(1)
            kinds = [k for k in kinds if k != "embed"]
            if not kinds:
                return extra
        if self.prefix_tokens is not None:
            X = X[:, : self.prefix_tokens]
        return {**self._forward(X, kinds), **extra}

    def _forward(self, X: torch.Tensor, kinds: Sequence[str]) -> dict[str, torch.Tensor]:
        self.forwards += 1
        self.rows += X.shape[0]
        if "stats" not in kinds and "fo" not in kinds:  # no distribution needed: the head is not run (nor counted)
            h = self.model.base_model(input_ids=X).last_hidden_state.float()  # after the final norm
            return features_of(h[..., :1], h, X, kinds, self.direction)
        box: dict[str, torch.Tensor] = {}
        handle = self.head.register_forward_hook(lambda mod, inp, out: box.__setitem__("h", inp[0]))
        try:
            logits = self.model(input_ids=X).logits.float()  # [K, T, V]
        finally:
            handle.remove()
        return features_of(logits, box["h"].float(), X, kinds, self.direction)

    def features(self, tokens: np.ndarray, kinds: Sequence[str]) -> dict[str, np.ndarray]:
        """tokens [n, T] int -> {kind: [n, d] float64} for the LM kinds in `kinds`."""
        kinds = [k for k in kinds if k in FEATURE_KINDS]
        parts: dict[str, list[np.ndarray]] = {k: [] for k in kinds}
        for s in range(0, len(tokens), self.batch_size):
            X = torch.as_tensor(np.asarray(tokens[s : s + self.batch_size], dtype=np.int64), device=self.device)
            for k, v in self._batch(X, kinds).items():
                parts[k].append(v.double().cpu().numpy())
        return {k: np.concatenate(v) if v else np.zeros((0, 0)) for k, v in parts.items()}


def features_of(logits: torch.Tensor, h: torch.Tensor, X: torch.Tensor, kinds: Sequence[str],
                direction: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The features of a batch from its logits [K, T, V] and head inputs h [K, T, H] (module docstring)."""
    out: dict[str, torch.Tensor] = {}
    tgt = X[:, 1:]
    z = logits[:, :-1]  # [K, T-1, V] predicts x_2..x_T
    if "fo" in kinds or "stats" in kinds:
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
        if direction is None:
            raise ConfigError("fit.features has 'fo' but the influence model has no head direction")
        D = direction
        ht = h[:, :-1]  # [K, T-1, H]
        # <D, (p_t - e_y) h_t^T> = h_t . (D^T p_t) - h_t . D_y
        per_tok = ((p @ D) * ht).sum(-1) - (D[tgt] * ht).sum(-1)
        out["fo"] = per_tok.mean(1, keepdim=True)
    return out


@torch.inference_mode()
def feature_grid(checkpoint: str | Path, tokens: np.ndarray, views: dict[tuple[int | None, int | None], Sequence[str]], *,
                 direction: torch.Tensor | None = None, batch_size: int = 16,
                 device: str | torch.device = "cpu") -> dict[tuple[int | None, int | None], dict[str, np.ndarray]]:
    """{(prefix, exit): {kind: [n, d]}} for every view (prefix P or None, exit k or None) -> kinds, from
    ONE full forward per batch (the benchmark's shortcut, experiments/influence_bench): the block outputs
    are hooked, and a prefix of a causal LM's forward is the forward of the prefix; the head runs only
    for views whose kinds need the distribution. Equal to `LMFeaturizer(prefix_tokens=P,
    exit_layer=k).features` (tests/selection/test_features.py)."""
    device = torch.device(device)
    model = load_model(checkpoint, device=device)
    model.eval()
    layers, norm, head = decoder_layers(model), final_norm(model), model.get_output_embeddings()
    L = len(layers)
    D = None if direction is None else direction.to(device, torch.float32)
    box: dict[int, torch.Tensor] = {}
    hooks = [model.base_model.get_input_embeddings().register_forward_hook(
        lambda m, i, o: box.__setitem__(0, o))]
    for j, layer in enumerate(layers):
        hooks.append(layer.register_forward_hook(
            lambda m, i, o, j=j: box.__setitem__(j + 1, o[0] if isinstance(o, tuple) else o)))
    views = {v: [k for k in kinds if k in FEATURE_KINDS] for v, kinds in views.items()}
    parts: dict[tuple, dict[str, list[np.ndarray]]] = {v: {k: [] for k in kinds} for v, kinds in views.items()}
    try:
        for s in range(0, len(tokens), batch_size):
            X = torch.as_tensor(np.asarray(tokens[s : s + batch_size], dtype=np.int64), device=device)
            model.base_model(input_ids=X)  # the blocks only: each view runs its own head below
            for (p, e), kinds in views.items():
                P = X.shape[1] if p is None else min(p, X.shape[1])
                h = norm(box[L if e is None else e][:, :P].float())  # the head's input at block e
                logits = head(h).float() if ("stats" in kinds or "fo" in kinds) else h[..., :1]
                for k, v in features_of(logits, h, X[:, :P], kinds, D).items():
                    parts[(p, e)][k].append(v.double().cpu().numpy())
    finally:
        for hk in hooks:
            hk.remove()
    return {key: {k: np.concatenate(v) for k, v in d.items()} for key, d in parts.items()}


def parse_view(spec: str) -> tuple[int | None, int | None, list[str]]:
    """The benchmarks' view notation '[pP][eK]:kind+kind' (or 'kind+kind') -> (prefix_tokens, exit_layer,
    kinds): 'p16e0:embed+stats' is fit.prefix_tokens 16, fit.exit_layer 0, features [embed, stats]."""
    p = e = None
    if ":" in spec:
        view, spec = spec.split(":")
        if "e" in view:
            view, k = view.split("e")
            e = int(k)
        p = int(view[1:]) if view.startswith("p") else None
    return p, e, spec.split("+")


def stack_features(feats: dict[str, np.ndarray], kinds: Sequence[str]) -> np.ndarray:
    """The design matrix [n, sum d_k] in the order of `kinds`."""
    return np.concatenate([np.asarray(feats[k], dtype=np.float64) for k in kinds], axis=1)


__all__ = ["FEATURE_KINDS", "FORWARD_KINDS", "STAT_NAMES", "LMFeaturizer", "check_kinds", "decoder_layers",
           "feature_flops_per_candidate", "feature_flops_per_token", "feature_grid", "features_of", "final_norm",
           "forward_flops_per_token", "head_direction", "next_step_lr_of", "parse_view", "stack_features",
           "truncate_layers"]
