"""The data plan of a MATES run: which sequences are held out, probed, and offered at each stage.

    heldout   `heldout_per_domain` sequences of every domain: never trained on or probed
              (held-out perplexity per domain)
    probe     `probe.n_probes` sequences, disjoint from every block (MATES probes held-out shards),
              the same set at every stage
    block_NN  stage NN's candidates, disjoint across stages (MATES: a fresh 1/5 of the pool per stage)

Written once to `<run>/plan/` (ids as .npy, sizes in meta.json) and reused by every selector.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datamates.config.run import RunConfig
from datamates.core.pool import Pool
from datamates.errors import ConfigError
from datamates.run_dir import atomic_dir, is_done, meta_record, read_json


@dataclass
class Plan:
    heldout: np.ndarray
    probe: np.ndarray
    blocks: list[np.ndarray]  # blocks[s - 1] is stage s's
    k: int  # sequences kept per stage = stage_steps x global batch

    def block(self, stage: int) -> np.ndarray:
        return self.blocks[stage - 1]


def global_batch(cfg: RunConfig) -> int:
    """Sequences per optimizer step: micro batch x accumulation x processes (torchrun)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return cfg.train.micro_batch_size * cfg.train.grad_accum * world


def make_plan(cfg: RunConfig, pool: Pool, out: Path) -> Plan:
    m = cfg.mates
    k = m.stage_steps * global_batch(cfg)
    block = m.candidates_per_stage or int(np.ceil(k / m.select.fraction))
    if block < k:
        raise ConfigError(f"mates.candidates_per_stage = {block}: smaller than the {k} sequences a stage trains on "
                          f"(stage_steps x global batch)")
    if not is_done(out):
        rng = np.random.default_rng(m.plan_seed)
        dom = np.asarray(pool.seq_domain)
        heldout = []
        for d in range(len(pool.domains)):
            ids = np.nonzero(dom == d)[0]
            n = min(m.heldout_per_domain, len(ids) // 10)
            heldout.append(np.sort(rng.choice(ids, n, replace=False)))
        held = np.concatenate(heldout) if heldout else np.zeros(0, np.int64)
        rest = np.setdiff1d(np.arange(len(pool)), held)
        need = m.probe.n_probes + m.stages * block
        if need > len(rest):
            raise ConfigError(
                f"the pool has {len(rest):,} sequences outside the held-out set, the plan needs {need:,} "
                f"(probe.n_probes {m.probe.n_probes} + stages {m.stages} x block {block}); lower mates.stage_steps, "
                "mates.stages or mates.probe.n_probes, or raise select.fraction"
            )
        perm = rest[rng.permutation(len(rest))]
        probe = np.sort(perm[: m.probe.n_probes])
        blocks = [np.sort(perm[m.probe.n_probes + i * block : m.probe.n_probes + (i + 1) * block]) for i in range(m.stages)]
        meta = meta_record("plan", seed=m.plan_seed, heldout=len(held), probe=len(probe), block=block, k=k,
                           stages=m.stages, pool_id=pool.pool_id)
        with atomic_dir(out, meta) as tmp:
            np.save(tmp / "heldout.npy", held)
            np.save(tmp / "probe.npy", probe)
            for i, b in enumerate(blocks, start=1):
                np.save(tmp / f"block_{i:02d}.npy", b)
    meta = read_json(out / "meta.json")
    if meta["pool_id"] != pool.pool_id or meta["k"] != k or meta["block"] != block:
        raise ConfigError(f"{out}: the plan was made for another pool or stage size; use a new run name")
    return Plan(
        heldout=np.load(out / "heldout.npy"),
        probe=np.load(out / "probe.npy"),
        blocks=[np.load(out / f"block_{i:02d}.npy") for i in range(1, m.stages + 1)],
        k=k,
    )
