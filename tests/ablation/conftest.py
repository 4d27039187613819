"""Fixtures of the ablation tests: tiny checkpoints that branch from one seed, and a tiny study
(partition -> seed -> units) on the shared tiny pool."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ablation_helpers import TINY, make_checkpoint, study_config, train_cfg


@pytest.fixture(scope="session")
def seed_and_units(tmp_path_factory) -> tuple[Path, list[Path]]:
    """A random seed checkpoint and 4 'unit' checkpoints = seed + independent noise."""
    root = tmp_path_factory.mktemp("merge")
    seed = make_checkpoint(root / "seed", seed=0)
    units = [make_checkpoint(root / f"unit{i}", seed=100 + i, base=seed, meta={"unit_tokens": 1000 * (i + 1)})
             for i in range(4)]
    return seed, units


@pytest.fixture(scope="session")
def tiny_study(tiny_pool, tmp_path_factory):
    """partition (4 domains, token-balanced) -> seed (6 steps) -> 4 unit models (3 steps each)."""
    from datamates.ablation.partition import partition
    from datamates.ablation.train_partition import train_partitions, train_seed
    from datamates.run_dir import RunDir

    rd = RunDir(tmp_path_factory.mktemp("study") / "run")
    cfg = study_config()
    tcfg = train_cfg()
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # see _one_torch_thread; session fixtures are built before it applies
    try:
        manifest = partition(tiny_pool, cfg.partition, rd.partitions)
        seed = train_seed(manifest, tiny_pool, cfg.seed, tcfg, TINY, rd.seed_model)
        units = train_partitions(manifest, tiny_pool, seed, rd.root / "units", tcfg, TINY, cfg.branch)
    finally:
        torch.set_num_threads(n)
    return {"rd": rd, "cfg": cfg, "train": tcfg, "manifest": manifest, "seed": seed, "units": units}


@pytest.fixture(autouse=True, scope="package")
def _one_torch_thread():
    """Tiny models gain nothing from a second thread, and on 2 shared cores OpenMP threads that
    spin-wait for each other make every small op slower; restore the setting afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
