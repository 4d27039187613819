"""Config of where a stage's shards run (datamates.executor, docs/executor.md): one section with the
same keys under every stage that runs sharded work: `mates.probe.executor`, `mates.score.executor`
and `ablation.branch.executor`, e.g.

    mates:
      probe:
        executor: {workers: 2, threads: 1, backend: local}

Under torchrun (`datamates run` launched by torchrun) every sharded job is split over the torchrun
world whatever `backend` says; there is no third value to set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from datamates.config.base import knob


@dataclass(kw_only=True)
class ExecutorConfig:
    workers: int = knob(1, "parallel workers: local processes, or Ray actors", ge=1)
    threads: int = knob(
        0, "torch CPU threads per worker; 0: the stage's default (one worker: this process's setting; several: "
        "probe and score: CPUs / workers, ablation branches: 1)", ge=0,
    )
    backend: Literal["local", "ray"] = knob(
        "local", "where workers run: local processes (one per GPU on CUDA), or Ray actors (pip install datamates[ray])"
    )
    ray_address: str | None = knob(
        None, "Ray cluster address for backend ray; null: connect to a running Ray or start a local one"
    )
    ray_cpus: float | None = knob(
        None, "CPUs each Ray actor claims; null: the stage's default (probe, ablation branches: the worker's torch "
        "threads, at least 1; score: 1, leaving CPUs for Ray's read tasks)", gt=0,
    )
    ray_gpus: float | None = knob(
        None, "GPUs each Ray actor claims; null: the stage's default (probe: 1 when it runs on CUDA; score, "
        "ablation branches: 0; set 1 on a GPU cluster)", ge=0,
    )
