"""Parallel probing through the executor (datamates/executor.py): labels are identical (bit for bit)
with 1 worker, 2 local worker processes, and a Ray actor (a local Ray instance with fewer actors
than CPUs: ray-project/ray#44687). Resume by chunk: tests/selection/test_probe.py; the torchrun
world: tests/test_torchrun.py."""

import numpy as np
import pytest

from datamates.config.executor import ExecutorConfig
from datamates.config.probe import ProbeConfig
from datamates.core.reference import load_reference
from datamates.selection.probe import probe, read_labels_table

CANDIDATES = np.array([1, 3, 5, 777, 2001, 4093])
COLUMNS = ("seq_id", "ref_loss_delta", "loss", "grad_norm")


@pytest.fixture(scope="module")
def ref(tiny_pool, lambada_path):
    return load_reference(str(lambada_path), tiny_pool.tokenizer(), size=8, seed=0)


def _labels(path):
    t = read_labels_table(path)
    return {c: t.column(c).to_numpy() for c in COLUMNS}


def _cfg(mode, **kw):
    # threads=1 everywhere: the same torch thread count in every process, so the same float sums
    return ProbeConfig(mode=mode, device="cpu", chunk_size=2, candidate_batch=2, batch_size=3,
                       executor=ExecutorConfig(threads=1, **kw))


def test_two_local_workers_give_identical_labels(tiny_ckpt, tiny_pool, ref, tmp_path):
    """first_order: also checks that the per-checkpoint constants the workers get are the ones a
    single process uses (the Ray test below covers exact mode)."""
    mode = "first_order"
    one = _labels(probe(_cfg(mode), tiny_ckpt, tiny_pool, CANDIDATES, tmp_path / "one", reference=ref))
    two = _labels(probe(_cfg(mode, workers=2), tiny_ckpt, tiny_pool, CANDIDATES, tmp_path / "two", reference=ref))
    for c in COLUMNS:
        np.testing.assert_array_equal(one[c], two[c], err_msg=c)


@pytest.mark.ray
@pytest.mark.slow  # Ray start-up dominates (263 s on the loaded 2-core VM); make test-all runs it
def test_ray_backend_gives_identical_labels(tiny_ckpt, tiny_pool, ref, tmp_path):
    ray = pytest.importorskip("ray")
    local = _labels(probe(_cfg("exact"), tiny_ckpt, tiny_pool, CANDIDATES, tmp_path / "local", reference=ref))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = probe(_cfg("exact", backend="ray", workers=1), tiny_ckpt, tiny_pool, CANDIDATES, tmp_path / "ray",
                    reference=ref)
    finally:
        ray.shutdown()
    got = _labels(out)
    for c in COLUMNS:
        np.testing.assert_array_equal(local[c], got[c], err_msg=c)
