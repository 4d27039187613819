"""Which mixtures a study evaluates: every mixture of the units (or a given list) as a proxy, and
a sample of them as gold models (Na et al. 2024, §4: gold mixtures spanning every size)."""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np

from datamates.ablation.merge import mask_of
from datamates.ablation.partition import Manifest
from datamates.config.ablation import AblationConfig
from datamates.errors import ConfigError


def all_mixtures(units: list[str], min_k: int = 2) -> list[list[str]]:
    """Every mixture of at least `min_k` units (2^K - 1 - K multi-unit mixtures for min_k = 2), by
    size, then in unit order: the gold list of a study that trains every multi-unit mixture."""
    return [list(c) for k in range(min_k, len(units) + 1) for c in combinations(units, k)]


def choose_gold(units: list[str], count: int, seed: int) -> list[list[str]]:
    """`count` multi-unit mixtures spanning sizes 2..K: the full set, then the rest allocated to
    sizes 2..K-1 in proportion to 1/size (largest remainder), drawn at random within a size."""
    K = len(units)
    if K < 2 or count <= 0:
        return []
    chosen: list[list[str]] = [list(units)]
    sizes = list(range(2, K))
    left = count - 1
    if left > 0 and sizes:
        cap = {s: math.comb(K, s) for s in sizes}
        w = np.array([1 / s for s in sizes])
        quota = w / w.sum() * left
        alloc = {s: min(int(q), cap[s]) for s, q in zip(sizes, quota)}
        rem = sorted(zip(sizes, quota - np.floor(quota)), key=lambda t: -t[1])
        while sum(alloc.values()) < min(left, sum(cap.values())):
            for s, _ in rem:
                if sum(alloc.values()) >= left:
                    break
                if alloc[s] < cap[s]:
                    alloc[s] += 1
        rng = np.random.default_rng([seed, 2053])
        for s in sizes:
            combos = list(combinations(range(K), s))
            pick = rng.permutation(len(combos))[: alloc[s]]
            for p in sorted(pick):
                chosen.append([units[i] for i in combos[p]])
    chosen.sort(key=lambda m: (len(m), [units.index(u) for u in m]))
    return chosen


def study_mixtures(cfg: AblationConfig, manifest: Manifest, units: list[str], subsets: list[list[str]] | None,
                   gold: list[list[str]] | None) -> tuple[list[int], list[list[str]], list[list[str]]]:
    """(proxy masks, gold mixtures of 2+ units, gold singletons); every gold mixture gets its proxy."""
    K = len(units)
    subsets = subsets if subsets is not None else cfg.subsets
    if subsets is None:
        if K > cfg.max_all_units:
            raise ConfigError(f"{K} units give {2 ** K - 1:,} mixtures, above ablation.max_all_units = "
                              f"{cfg.max_all_units}; list the mixtures in ablation.subsets")
        masks = list(range(1, 1 << K))
    else:
        masks = [mask_of([units.index(u) for u in manifest.check_names(list(s), f"ablation.subsets[{i}]: ")])
                 for i, s in enumerate(subsets)]
    gold = gold if gold is not None else cfg.gold
    gold_mix = ([manifest.check_names(list(g), f"ablation.gold[{i}]: ") for i, g in enumerate(gold)]
                if gold is not None else choose_gold(units, cfg.gold_count, cfg.gold_seed))
    gold_multi = [g for g in gold_mix if len(g) > 1]
    gold_single = [[u] for u in units] if cfg.gold_singletons else [g for g in gold_mix if len(g) == 1]
    gold_masks = [mask_of([units.index(u) for u in g]) for g in gold_multi + gold_single]
    return sorted(set(masks) | set(gold_masks)), gold_multi, gold_single

