"""Data ablations by modular training and merging (Na et al., EMNLP 2024; docs/methods.md, docs/ablation.md).

    partition.py        pool -> units, held-out evaluation ids per domain, the seed's rest
    train_partition.py  seed model; one model per unit from the seed; gold models on unions
    merge.py            parameter averaging: streaming to disk, and Gray-code running sums in memory
    ablate/             the study: a proxy for every mixture, gold models for a sample,
                        proxy-vs-gold correlations, plots, report (split by concern: the box in
                        __init__.py, sets.py evaluation sets and cache, mixtures.py, study.py
                        one method per step, analysis.py)

The stage functions the pipeline calls:

    partition.partition(pool, PartitionConfig, out) -> Manifest            (partition.read_manifest(path))
    train_partition.train_seed(manifest, pool, SeedConfig, TrainConfig, ModelConfig, out) -> Path
    train_partition.train_partitions(manifest, pool, seed, out_root, TrainConfig, ModelConfig, BranchConfig,
                                     units=None, log_dir=None) -> {unit: Path}
    train_partition.train_gold(manifest, pool, seed, out_root, mixtures, TrainConfig, ModelConfig,
                               BranchConfig, balance="upsample") -> {mixture: Path}
    merge.merge(paths, out, weights=None|[w]|"tokens", method="uniform", seed=None, lam=1.0,
                lam_scale="constant", out_dtype="float32") -> Path
    ablate.ablate(AblationConfig, TrainConfig, ModelConfig, rd: RunDir, pool, subsets=None, gold=None) -> dict
    datamates.pipelines.run_ablation(cfg: RunConfig, rd: RunDir) -> dict   (all of the above, in order)

Shared helpers below are tiny and dependency-free so the stage modules need not import each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from datamates.identity import hash_file

MIXTURE_SEP = "+"


def mixture_key(names: Sequence[str]) -> str:
    """The name of a mixture: its unit names joined by '+', in the given (manifest) order."""
    return MIXTURE_SEP.join(names)


def weights_sha(checkpoint: str | Path) -> str:
    """Identity of a checkpoint's weights: sha256 of its model.safetensors (16 hex digits)."""
    return hash_file(Path(checkpoint) / "model.safetensors")
