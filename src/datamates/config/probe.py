"""Config of oracle probing (MATES §3: one AdamW step per candidate, change of reference loss)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from datamates.config.base import Alias, knob
from datamates.config.executor import ExecutorConfig


@dataclass(kw_only=True)
class ProbeConfig:
    ALIASES = {k: Alias(f"executor.{k}") for k in ("workers", "threads", "backend", "ray_address")}  # deprecated

    mode: Literal["exact", "first_order", "naive"] = knob(
        "exact",
        "exact: one real AdamW step per probe, weights updated out of place, fast reference pass; "
        "first_order: <grad L_ref, AdamW update(x)> from per-sample gradients, no reference pass per probe; "
        "naive: the reference procedure (deep copy + torch AdamW.step + full-logit reference pass), a baseline",
    )
    n_probes: int = knob(1000, "probe sequences per selection round (when no candidate list is given)", ge=1)
    probe_seed: int = knob(1337, "seed of the probe-set sample (the same probe set at every stage by default)")
    resample_each_stage: bool = knob(
        False, "draw a fresh probe set at every stage (seed probe_seed + stage) instead of MATES's fixed one"
    )
    reference: str = knob(
        "lambada_openai",
        "reference set: a registered name (lambada_openai, lambada_nic: LAMBADA's examples whose target word is "
        "not in the context, lambada_ic: those whose it is, flan_cot, dolly), clean (the plan's held-out clean "
        "pool text, whole documents of every non-junk domain: probe.clean_per_domain each), a JSONL(.gz) file of "
        "context/continuation, input/target(/rationale), prompt/response, query/choices/gold or text records, "
        "or a pool directory (whole sequences as targets); several joined by '+' (e.g. clean+lambada_nic): the "
        "label is the mean over them of each one's delta divided by its sd over the probed candidates "
        "(docs/methods.md#reference-sets)",
    )
    clean_per_domain: int = knob(
        16, "reference `clean`: held-out clean sequences per non-junk domain (whole documents, disjoint from the "
        "plan's held-out evaluation set)", ge=1,
    )
    reference_size: int | None = knob(1024, "examples drawn from the reference set; null: all", ge=1)
    reference_seed: int = knob(1234, "seed of the reference subsample (MATES: 1024 LAMBADA examples, seed 1234)")
    reference_halves: bool = knob(
        False,
        "also record the label on two disjoint random halves of the reference set (columns ref_loss_delta_a/_b): "
        "the label's noise floor from the reference set's size",
    )
    lr: float | None = knob(
        None, "learning rate of the probe step; null: the training schedule's rate at the next step (the one probed)", gt=0
    )
    batch_size: int = knob(32, "reference examples per forward pass", ge=1)
    max_batch_tokens: int | None = knob(
        16384, "exact/first_order: also cap a reference batch at this many (padded) tokens; null: no cap", ge=1
    )
    anchor: Literal["momentum", "checkpoint"] = knob(
        "momentum",
        "first_order: point of the Taylor expansion. checkpoint: <grad L_ref(theta), theta'(x) - theta> (docs/methods.md"
        "#first-order-probes); momentum: [L_ref(theta0) - L_ref(theta)] + <grad L_ref(theta0), theta'(x) - theta0> with theta0 the "
        "step every candidate shares (zero gradient: momentum and weight decay only); same cost, residual halved at a "
        "late tiny checkpoint, equal at an early one (experiments/probe_fidelity)",
    )
    candidate_batch: int = knob(
        16,
        "first_order: most candidates per batched forward/backward (per-sample gradients); lowered, with a warning, "
        "when memory_budget_gb cannot hold them (selection/probe/first_order.py, docs/scaling.md)",
        ge=1,
    )
    memory_budget_gb: float | None = knob(
        None,
        "first_order: GiB the batched passes may use on top of the model and optimizer state (activations of "
        "candidate_batch candidates, streamed per-sample gradients); null: 80% of the free memory when probing starts "
        "(CUDA: torch.cuda.mem_get_info; CPU: /proc/meminfo)",
        gt=0,
    )
    chunk_size: int = knob(64, "probes per unit of work: resume and parallel scheduling happen per chunk", ge=1)
    executor: ExecutorConfig = knob(ExecutorConfig(), "where the probe chunks run (docs/executor.md)")
    precision: Literal["auto", "fp32", "bf16"] = knob("auto", "auto: bf16 autocast on CUDA, fp32 on CPU")
    device: str = knob("auto", "auto, cpu, cuda, cuda:N (local workers use cuda:0..N-1 in turn)")

