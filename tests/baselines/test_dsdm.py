"""DsDm / TRAK (baselines/trak.py) against a brute-force computation on the tiny LM: exact per-example
gradients by a loop of `loss.backward()`, the reference gradient by one backward per reference example,
a dense projection matrix, and the kernel by an SVD. Identity projection: equal in float64; a large
countsketch projection: the same ranking (Spearman >= 0.99); every projection kind equals the
materialised matrix; the selector writes counted scores, resumes, and averages its ensemble."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from datamates.baselines.trak import (
    DsDmConfig,
    Projection,
    dsdm,
    featurize,
    kernel_scores,
    reference_feature,
    trainable,
)
from datamates.core.checkpoint import load_model
from datamates.core.reference import ReferenceBatches, load_reference
from datamates.run_dir import read_json
from datamates.selection.scores_io import iter_scores, shard_name

pytestmark = pytest.mark.usefixtures("one_thread")
IDS = np.arange(3, 3 + 24 * 211, 211)


@pytest.fixture(scope="module")
def model64(tiny_ckpt):
    return load_model(tiny_ckpt).double().eval()


@pytest.fixture(scope="module")
def ref(tiny_pool, lambada_path):
    return load_reference(str(lambada_path), tiny_pool.tokenizer(), size=6, seed=0)


def _flat_grads(params) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), dtype=p.dtype)
                      for p in params])


@pytest.fixture(scope="module")
def brute(model64, tiny_pool, ref):
    """(G [n, N] exact per-example gradients, r [N] gradient of L_ref), by loops of backward()."""
    params = trainable(model64)
    G = []
    for row in tiny_pool.tokens(IDS):
        model64.zero_grad(set_to_none=True)
        x = torch.as_tensor(row[None], dtype=torch.long)
        logits = model64(input_ids=x).logits[0]  # float64
        F.cross_entropy(logits[:-1], x[0, 1:]).backward()  # mean next-token CE of the row
        G.append(_flat_grads(params))
    model64.zero_grad(set_to_none=True)
    max_len = model64.config.max_position_embeddings
    total = sum(min(len(e.target), len((e.context + e.target)[-(max_len + 1):]) - 1) for e in ref.examples)
    for e in ref.examples:  # L_ref = sum of target NLL / target tokens, one example at a time
        full = list(e.context + e.target)[-(max_len + 1):]
        t = min(len(e.target), len(full) - 1)
        logits = model64(input_ids=torch.tensor([full[:-1]])).logits[0]
        (F.cross_entropy(logits[-t:], torch.tensor(full[-t:]), reduction="sum") / total).backward()
    r = _flat_grads(params)
    model64.zero_grad(set_to_none=True)
    return torch.stack(G).numpy(), r.numpy()


def _svd_kernel(phi: np.ndarray, r: np.ndarray, damping: float) -> np.ndarray:
    """Phi (Phi^T Phi + lambda I)^-1 r = U diag(s / (s^2 + lambda)) V^T r (Phi = U diag(s) V^T)."""
    lam = damping * float((phi * phi).sum(1).mean())
    U, S, Vt = np.linalg.svd(phi, full_matrices=False)
    return U @ ((S / (S * S + lam)) * (Vt @ r))


def _ours(model, tiny_pool, ref, proj, damping=0.01):
    phi = featurize(model, tiny_pool.tokens(IDS), proj, batch_size=7)  # 7: a ragged last batch
    rb = ReferenceBatches(ref.examples, max_len=model.config.max_position_embeddings, batch_size=4,
                          pad_id=tiny_pool.eos_id)
    r, _ = reference_feature(model, rb, proj)
    return phi, r, kernel_scores(phi, r, damping)[0]


def test_identity_projection_equals_brute_force(model64, tiny_pool, ref, brute):
    G, r = brute
    proj = Projection([tuple(p.shape) for p in trainable(model64)], 0, "identity", dtype=torch.float64)
    phi, r_ours, s = _ours(model64, tiny_pool, ref, proj)
    np.testing.assert_allclose(phi, G, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(r_ours, r, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(s, _svd_kernel(G, r, 0.01), rtol=1e-6, atol=1e-10)


def test_large_projection_ranks_like_the_exact_kernel(model64, tiny_pool, ref, brute):
    G, r = brute
    exact = _svd_kernel(G, r, 0.01)
    proj = Projection([tuple(p.shape) for p in trainable(model64)], 32768, "countsketch", seed=1,
                      dtype=torch.float64)
    _, _, s = _ours(model64, tiny_pool, ref, proj)
    assert spearmanr(s, exact)[0] >= 0.99


@pytest.mark.parametrize("kind", ["countsketch", "rademacher", "gaussian"])
def test_projection_equals_the_materialised_matrix(kind, model64, tiny_pool, ref, brute):
    G, r = brute
    proj = Projection([tuple(p.shape) for p in trainable(model64)], 48, kind, seed=3, dtype=torch.float64)
    P = proj.matrix().numpy()  # [N, d]
    assert P.shape == (G.shape[1], 48)
    if kind != "countsketch":
        assert abs(float((P * P).sum(0).mean()) - G.shape[1] / 48) / (G.shape[1] / 48) < 0.05  # E[P^T P] = N/d I
    phi, r_ours, s = _ours(model64, tiny_pool, ref, proj)
    np.testing.assert_allclose(phi, G @ P, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(r_ours, r @ P, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(s, _svd_kernel(G @ P, r @ P, 0.01), rtol=1e-6, atol=1e-10)


def test_kernel_forms_agree():
    rng = np.random.default_rng(0)
    r = rng.normal(size=6)
    for n in (4, 9):  # n <= d (n x n solve) and n > d (d x d solve)
        phi = rng.normal(size=(n, 6))
        np.testing.assert_allclose(kernel_scores(phi, r, 0.1)[0], _svd_kernel(phi, r, 0.1), rtol=1e-10)


def _scores(folder) -> dict[int, float]:
    out: dict[int, float] = {}
    for i, s in iter_scores(folder):
        out.update(zip(i.tolist(), s.tolist()))
    return out


def test_dsdm_scores_counts_resume_and_ensemble(tiny_pool, tiny_ckpt, tiny_model_cfg, ref, tmp_path):
    from datamates_testing import tiny_train_cfg

    from datamates.core.train_loop import train

    other = train(tiny_train_cfg(steps=2, checkpoint_every=100), tiny_model_cfg, tiny_pool, np.arange(0, 64),
                  tmp_path / "other", init=tiny_ckpt)
    cfg = DsDmConfig(dim=256, device="cpu")
    cand = IDS[:12]
    a = dsdm(cfg, [tiny_ckpt], tiny_pool, cand, tmp_path / "a", reference=ref)
    meta = read_json(a / "meta.json")
    assert meta["sign"] and meta["method"] == "dsdm" and meta["n"] == len(cand)
    ref_tokens = ReferenceBatches(ref.examples, max_len=128, batch_size=cfg.batch_size).padded_tokens
    assert meta["tokens"] == {"lm_train": len(cand) * tiny_pool.seq_len + ref_tokens}
    assert meta["flops"] == pytest.approx(meta["tokens"]["lm_train"] * meta["flops_per_token"]["lm_train"])
    shard = a / shard_name(0)
    stamp = shard.stat().st_mtime_ns
    assert dsdm(cfg, [tiny_ckpt], tiny_pool, cand, a, reference=ref) == a and shard.stat().st_mtime_ns == stamp
    again = dsdm(cfg, [tiny_ckpt], tiny_pool, cand, tmp_path / "again", reference=ref)  # a re-run from scratch
    assert (again / shard_name(0)).read_bytes() == shard.read_bytes()
    b = dsdm(cfg, [other], tiny_pool, cand, tmp_path / "b", reference=ref)
    ab = dsdm(cfg, [tiny_ckpt, other], tiny_pool, cand, tmp_path / "ab", reference=ref)
    sa, sb, sab = _scores(a), _scores(b), _scores(ab)
    for i in cand.tolist():
        assert sab[i] == pytest.approx((sa[i] + sb[i]) / 2, rel=1e-6, abs=1e-9)  # float32 features
    assert read_json(ab / "meta.json")["tokens"]["lm_train"] == 2 * meta["tokens"]["lm_train"]


def test_a_path_that_is_not_a_checkpoint_is_one_line(tiny_pool, ref, tmp_path):
    from datamates.errors import ConfigError

    with pytest.raises(ConfigError, match=r"baselines.dsdm.checkpoints: .*nope is not a datamates checkpoint"):
        dsdm(DsDmConfig(), [tmp_path / "nope"], tiny_pool, IDS[:4], tmp_path / "o", reference=ref)
    assert not (tmp_path / "o").exists()
