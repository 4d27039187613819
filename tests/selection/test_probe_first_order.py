"""First-order probe labels: per-sample gradients against autograd, the linearised label against
central finite differences of the reference loss along the exact AdamW update (float64), with and
without active clipping, for both anchors; and agreement with exact labels on the tiny model."""

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr

from datamates.config.probe import ProbeConfig
from datamates.core.reference import ReferenceBatches, load_reference
from datamates.core.train_loop import lm_loss
from datamates.selection.probe import (
    FirstOrderProber,
    PerSampleGrads,
    ProbeState,
    probe,
    read_labels,
    read_labels_table,
)
from datamates.selection.probe.first_order import first_order_constants

CANDIDATES = np.array([1, 3, 5, 777, 2001, 4093, 8191, 9999])


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ref(tiny_pool, lambada_path):
    return load_reference(str(lambada_path), tiny_pool.tokenizer(), size=10, seed=0)


def test_per_sample_grads_match_autograd(tiny_ckpt, tiny_pool):
    state = ProbeState.from_checkpoint(tiny_ckpt)
    X = torch.from_numpy(tiny_pool.tokens(CANDIDATES[:3]))
    losses, dense, sparse = PerSampleGrads(state.model, state.params)(X)
    assert set(dense) | set(sparse) == set(range(len(state.params)))
    for k in range(3):
        state.model.zero_grad()
        loss = lm_loss(state.model, X[k : k + 1])
        loss.backward()
        assert float(losses[k]) == pytest.approx(float(loss.detach()), rel=1e-6)
        for i, p in enumerate(state.params):
            if i in dense:
                g = dense[i][k]
            else:
                rows, vals = sparse[i][k]
                g = torch.zeros_like(p).index_add_(0, rows, vals)
            torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-8, msg=state.names[i])


@pytest.mark.parametrize("anchor", ["checkpoint", "momentum"])
@pytest.mark.parametrize("clip", [None, 0.05])
def test_first_order_matches_finite_differences(tiny_ckpt, tiny_pool, ref, anchor, clip):
    """checkpoint anchor: label = <grad L_ref(theta), theta'(x) - theta>; momentum anchor: label - const =
    <grad L_ref(theta0), theta'(x) - theta0>. Checked by [L(a + eps D) - L(a - eps D)] / 2 eps with
    D = theta'(x) - a from the exact (torch-equivalent) update; clip 0.05 is far below the candidates'
    gradient norms (~0.5), so clipping is active."""
    state = ProbeState.from_checkpoint(tiny_ckpt, dtype=torch.float64)
    state.hyper.grad_clip = clip
    rb = ReferenceBatches(ref.examples, max_len=128, batch_size=4)
    groups = np.ones((1, len(ref)))
    before = np.array([rb.loss(state.model)])
    consts = first_order_constants(state, rb, groups, before, anchor)
    X = torch.from_numpy(tiny_pool.tokens(CANDIDATES[:3]))
    delta, _, gnorm = FirstOrderProber(state, consts).labels(X)
    if clip is not None:
        assert (gnorm > 4 * clip).all()
    anchor_params = [p.detach().clone() for p in (state.params if anchor == "checkpoint" else state.write_update(zero=True).parameters())]
    if anchor == "momentum":
        assert consts.const[0] == pytest.approx(rb.loss(state.work) - before[0], rel=1e-12)
    probe_model = state.work
    for k in range(3):
        state.clipped_grad(X[k])
        updated = [p.detach().clone() for p in state.write_update().parameters()]
        D = [u - a for u, a in zip(updated, anchor_params)]
        eps = 1e-2

        def loss_at(t, D=D):
            with torch.no_grad():
                for p, a, d in zip(probe_model.parameters(), anchor_params, D):
                    p.copy_(a + t * d)
            return rb.loss(probe_model)

        fd = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
        linear = delta[k, 0] - (consts.const[0] if anchor == "momentum" else 0.0)
        assert linear == pytest.approx(fd, rel=2e-4), (k, linear, fd)


def test_first_order_tracks_exact(tiny_ckpt, tiny_pool, ref, tmp_path):
    kw = dict(device="cpu", chunk_size=4, candidate_batch=3, reference_halves=True)
    exact = read_labels(probe(ProbeConfig(mode="exact", **kw), tiny_ckpt, tiny_pool, CANDIDATES, tmp_path / "e",
                              reference=ref))[1]
    fo = read_labels_table(probe(ProbeConfig(mode="first_order", **kw), tiny_ckpt, tiny_pool, CANDIDATES,
                                 tmp_path / "f", reference=ref))
    approx = fo.column("ref_loss_delta").to_numpy()
    assert "ref_loss_after" not in fo.column_names and "ref_loss_delta_a" in fo.column_names
    assert spearmanr(approx, exact)[0] > 0.9 and pearsonr(approx, exact)[0] > 0.95
    assert np.abs(approx - exact).max() < 0.05 * np.abs(exact).max()  # the second-order rest is small
