"""Precision and device paths: bf16 autocast (runs on CPU too), and CUDA against CPU (marked `gpu`,
skipped without CUDA: `pytest -m gpu` on a GPU machine)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datamates_testing import tiny_train_cfg

from datamates.config.evaluate import EvalConfig
from datamates.core.checkpoint import load_model
from datamates.core.train_loop import read_train_log, train
from datamates.evaluate import evaluate

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
IDS = np.arange(0, 400, 2)


def _losses(out) -> np.ndarray:
    return np.array([r["loss"] for r in read_train_log(out)])


def test_bf16_autocast_training_tracks_fp32(tiny_pool, tiny_model_cfg, tmp_path, one_thread):
    """The bf16 autocast path (CPU here, CUDA in production) follows the fp32 loss curve within
    bf16's precision and keeps fp32 master weights."""
    kw = dict(steps=12, log_every=1, checkpoint_every=100)
    fp32 = train(tiny_train_cfg(precision="fp32", **kw), tiny_model_cfg, tiny_pool, IDS, tmp_path / "fp32")
    bf16 = train(tiny_train_cfg(precision="bf16", **kw), tiny_model_cfg, tiny_pool, IDS, tmp_path / "bf16")
    a, b = _losses(fp32), _losses(bf16)
    assert len(a) == len(b) == 12
    np.testing.assert_allclose(b, a, rtol=0.02)
    assert not np.array_equal(a, b)  # autocast really ran in bf16
    assert b[-1] < b[0] - 0.1
    assert all(p.dtype == torch.float32 for p in load_model(bf16).parameters())


@pytest.mark.gpu
@needs_cuda
def test_cuda_fp32_training_matches_cpu(tiny_pool, tiny_model_cfg, tmp_path):
    kw = dict(steps=6, precision="fp32", checkpoint_every=100)
    cpu = train(tiny_train_cfg(device="cpu", **kw), tiny_model_cfg, tiny_pool, IDS, tmp_path / "cpu")
    gpu = train(tiny_train_cfg(device="cuda", **kw), tiny_model_cfg, tiny_pool, IDS, tmp_path / "gpu")
    for p, q in zip(load_model(cpu).parameters(), load_model(gpu).parameters()):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_evaluation_matches_cpu(tiny_ckpt, precision):
    """Task log-likelihoods on CUDA (SDPA; bf16 autocast or fp32) against the CPU fp32 numbers."""
    cfg = dict(tasks=["arc_easy", "piqa"], limit=64)
    cpu = evaluate(EvalConfig(device="cpu", precision="fp32", **cfg), tiny_ckpt, None)
    gpu = evaluate(EvalConfig(device="cuda", precision=precision, **cfg), tiny_ckpt, None)
    tol = 1e-4 if precision == "fp32" else 2e-2
    for name, r in cpu["tasks"].items():
        g = gpu["tasks"][name]
        assert abs(r["acc"] - g["acc"]) <= (0 if precision == "fp32" else 0.05), name
    ref_cpu, ref_gpu = cpu["reference"]["lambada_openai"]["loss"], gpu["reference"]["lambada_openai"]["loss"]
    assert abs(ref_cpu - ref_gpu) <= tol * max(1.0, abs(ref_cpu))
