"""The probe and the influence-model features on CUDA (marked `gpu`, skipped without CUDA: run with
`pytest -m gpu`, or `bash benchmarks/gpu_check.sh`, on a GPU machine)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamates.config.influence import FitConfig
from datamates.config.probe import ProbeConfig
from datamates.core.reference import load_reference
from datamates.selection.probe import probe, read_labels_table

from .conftest import IM_ENCODER, planted_signal, write_labels

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

CANDIDATES = np.array([1, 3, 5, 777])


def test_cuda_exact_probe_matches_cpu(tiny_ckpt, tiny_pool, lambada_path, tmp_path):
    """fp32 exact labels on CUDA equal the CPU ones up to float summation order."""
    ref = load_reference(str(lambada_path), tiny_pool.tokenizer(), size=12, seed=0)
    got = {}
    for dev in ("cpu", "cuda"):
        cfg = ProbeConfig(mode="exact", device=dev, precision="fp32", chunk_size=2, batch_size=5)
        got[dev] = read_labels_table(probe(cfg, tiny_ckpt, tiny_pool, CANDIDATES, tmp_path / dev, reference=ref))
    a, b = got["cpu"].column("ref_loss_after").to_numpy(), got["cuda"].column("ref_loss_after").to_numpy()
    np.testing.assert_allclose(b, a, rtol=1e-4)
    before = a - got["cpu"].column("ref_loss_delta").to_numpy()
    np.testing.assert_allclose(got["cuda"].column("ref_loss_delta").to_numpy(),
                               got["cpu"].column("ref_loss_delta").to_numpy(), rtol=0, atol=1e-4 * before.max())


def test_cuda_bf16_fit_and_score_features_are_identical(tiny_pool, im_label_ids, tmp_path):
    """On CUDA (bf16 autocast by default) score recomputes, from an empty cache, bit for bit the
    features the frozen head was fitted on (issue 11, defect 5: bf16 weights at score time, fp32
    weights under autocast at fit time)."""
    from datamates.selection.encode import EmbeddingCache
    from datamates.selection.fit import fit
    from datamates.selection.influence_model import read_influence_config
    from datamates.selection.score import InfluenceScorer

    ids = im_label_ids[::4]
    labels = write_labels(tmp_path / "probe", ids, planted_signal(tiny_pool, ids), tiny_pool.pool_id)
    cfg = FitConfig(mode="frozen", encoder=IM_ENCODER, val_fraction=0.25, embed_batch_size=16, device="cuda")
    model = fit(cfg, [labels], tiny_pool, tmp_path / "im", cache_dir=tmp_path / "c_fit")
    icfg = read_influence_config(model)
    assert icfg["embedding_precision"] == "bf16"
    at_fit = EmbeddingCache(tiny_pool, IM_ENCODER, icfg["backbone_hash"], tmp_path / "c_fit", precision="bf16").get(ids)
    scorer = InfluenceScorer(model, tiny_pool, cache_dir=tmp_path / "c_score", batch_size=16, device="cuda")
    np.testing.assert_array_equal(scorer.embeddings(ids), at_fit)
