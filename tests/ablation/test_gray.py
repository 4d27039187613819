"""Gray-code running sums: every mixture's in-memory proxy equals the direct average."""

from __future__ import annotations

import pytest
import torch

from datamates.ablation.merge import (
    RunningMerge,
    UnitStore,
    direct_average,
    gray_code_masks,
    gray_rank,
    mask_of,
    members,
    walk_order,
)
from datamates.core.checkpoint import load_model


def test_gray_code_visits_every_subset_once_changing_one_unit():
    for k in range(1, 8):
        masks = gray_code_masks(k)
        assert sorted(masks) == list(range(1, 1 << k))
        for a, b in zip(masks, masks[1:]):
            assert bin(a ^ b).count("1") == 1
        assert [gray_rank(m) for m in masks] == list(range(1, 1 << k))
    assert walk_order(list(range(1, 16))) == gray_code_masks(4)
    assert members(mask_of([0, 2, 5])) == [0, 2, 5]


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("weights", [None, [1.0, 2.0, 0.5, 4.0]])
def test_running_sums_equal_direct_averages(seed_and_units, cache, weights):
    _, units = seed_and_units
    model = load_model(units[0])
    store = UnitStore(units, model, cache=cache)
    rm = RunningMerge(store, weights, dtype=torch.float32, recompute_every=1000)  # no recompute: worst drift
    for mask in walk_order(range(1, 16)):
        rm.set(mask)
        rm.load_into(model)
        ref = direct_average(store, members(mask), weights)
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.detach().double(), ref[n], rtol=0, atol=2e-6)
    assert rm.unit_reads < 4 * 15  # fewer model passes than re-reading every unit per mixture


def test_float64_sums_and_arbitrary_order(seed_and_units):
    _, units = seed_and_units
    model = load_model(units[0])
    store = UnitStore(units, model)
    rm = RunningMerge(store, dtype=torch.float64, recompute_every=3)
    for mask in [15, 1, 6, 9, 3, 12, 5]:  # not a Gray walk: several units change at once
        rm.set(mask)
        ref = direct_average(store, members(mask))
        for n, t in rm.sum.items():
            torch.testing.assert_close(t / len(members(mask)), ref[n], rtol=0, atol=1e-12)


def test_task_arithmetic_in_memory(seed_and_units):
    seed, units = seed_and_units
    model = load_model(seed)
    seed_params = {n: p.detach().clone() for n, p in model.named_parameters()}
    store = UnitStore(units, model)
    rm = RunningMerge(store)
    rm.set(mask_of([1, 3]))
    rm.load_into(model, method="task_arithmetic", lam=3.0, seed=seed_params)
    ref = direct_average(store, [1, 3])
    for n, p in model.named_parameters():
        hand = seed_params[n].double() + 3.0 * (ref[n] - seed_params[n].double())
        torch.testing.assert_close(p.detach().double(), hand, rtol=0, atol=1e-6)
