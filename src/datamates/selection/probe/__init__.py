"""`datamates probe`: oracle data influence by local probing (MATES §3.2 / Eq. 12; docs/methods.md#oracle-probing, docs/methods.md#first-order-probes, docs/methods.md#reference-sets).

For every candidate sequence x, start from the checkpoint's full training state (weights theta,
AdamW moments m, v, step count t, its clip threshold c, betas, eps and decoupled weight decay
lambda, and lr = the schedule's rate at the NEXT global step, the one the probe simulates:
`oracle.next_step_lr`), take ONE AdamW step on x alone and record

    ref_loss_delta(x) = L_ref(theta'(x)) - L_ref(theta)            (lower is better)

with the step exactly as `core.train_loop.train` takes it (loss = mean next-token CE over x):

    g  = grad lm_loss(theta; x) * min(1, c / (||g|| + 1e-6))        (global-norm clipping)
    m' = b1 m + (1 - b1) g,   v' = b2 v + (1 - b2) g^2,   s = t + 1
    theta'(x) = theta (1 - lr lambda) - (lr / (1 - b1^s)) m' / (sqrt(v' / (1 - b2^s)) + eps)

and L_ref the token-weighted mean target NLL of the reference set (core/reference.py; LAMBADA's
last word by default). MATES stores L_ref(after) alone (docs/methods.md#oracle-probing, issue #5); the delta differs by
a per-checkpoint constant and is what every datamates label and score means (docs/contracts.md).

Modes (`ProbeConfig.mode`); naive and exact give the same label, first_order estimates it:
  naive        the reference procedure, as a baseline: deep copy of model and torch.optim.AdamW with
               the checkpoint's state, `.step()`, then the reference pass MATES's code runs (batches
               in set order, padded, logits over every position, context masked out).
  exact        the same label without copies or optimizer objects: theta'(x) is computed out of
               place into a scratch model with the float operations of torch's AdamW (bit-identical
               weights), and the reference pass uses `ReferenceBatches` (length-sorted batches, only
               target positions through the head). docs/methods.md#exact-probe-speed-ups.
  first_order  <grad L_ref, theta'(x) - anchor> from batched per-sample gradients; no reference pass
               per probe (first_order.py, docs/methods.md#first-order-probes).

Probes are cut into chunks, the shards of datamates.executor (the unit of resume and of parallel work:
local processes, Ray actors, the ranks of a torchrun world; docs/executor.md); labels
do not depend on the number of workers. Output (`<out>/`): labels.parquet (seq_id, ref_loss_delta,
ref_loss_after, loss, grad_norm [, ref_loss_delta_a/_b]) and meta.json, written atomically.
"""

from datamates.selection.probe.first_order import FirstOrderConstants, FirstOrderProber, PerSampleGrads
from datamates.selection.probe.oracle import (
    LABELS_FILE,
    MODES,
    SIGN,
    AdamWHyper,
    ProbeState,
    ProbeWorker,
    WorkSpec,
    adamw_update_,
    check_candidates,
    checkpoint_hash,
    naive_reference_nll,
    next_step_lr,
    probe,
    read_labels,
    read_labels_table,
    read_meta,
    sample_probe_set,
)

__all__ = [
    "LABELS_FILE", "MODES", "SIGN", "AdamWHyper", "FirstOrderConstants", "FirstOrderProber", "PerSampleGrads",
    "ProbeState", "ProbeWorker", "WorkSpec", "adamw_update_", "check_candidates", "checkpoint_hash",
    "naive_reference_nll", "next_step_lr", "probe", "read_labels", "read_labels_table", "read_meta", "sample_probe_set",
]
