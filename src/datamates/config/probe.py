"""Config of oracle probing (MATES §3: one AdamW step per candidate, change of reference loss)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from datamates.config.base import knob


@dataclass(kw_only=True)
class ProbeConfig:
    mode: Literal["exact", "first_order", "naive"] = knob(
        "exact", "exact: one real AdamW step per probe; first_order: <grad L_ref, update>; naive: reference procedure"
    )
    n_probes: int = knob(1000, "probe sequences per selection round", ge=1)
    reference: str = knob("lambada_openai", "reference set: a task name, a task spec file, or a pool directory")
    reference_size: int = knob(1024, "examples drawn from the reference set", ge=1)
    reference_seed: int = knob(1234, "seed of the reference subsample")
    probe_seed: int = knob(1337, "seed of the probe-set sample")
    batch_size: int = knob(32, "reference examples per forward pass", ge=1)
    workers: int = knob(1, "parallel probe workers (processes or GPUs)", ge=1)
    backend: Literal["local", "ray"] = knob("local", "where workers run")
    device: str = knob("auto", "auto, cpu, cuda, cuda:N")
