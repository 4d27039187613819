"""Reducible loss (baselines/rholoss.py): the scores are the hand difference of two models' per-candidate
losses; the irreducible model is fine-tuned once per branch on the reference part and reused by later
stages; its training is charged to the stage that trained it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datamates.baselines.rholoss import RhoLossConfig, irreducible_model, reducible_loss
from datamates.config.mates import MatesConfig
from datamates.core.checkpoint import load_model
from datamates.core.reference import load_reference
from datamates.run_dir import RunDir, read_json
from datamates.selection.scores_io import iter_scores
from datamates.selectors import SELECTORS, StageInputs

pytestmark = pytest.mark.usefixtures("one_thread")
CAND = np.arange(5, 5 + 30 * 101, 101)


def _hand_loss(ckpt, tokens: np.ndarray) -> np.ndarray:
    """Mean next-token CE of each row, one row at a time."""
    model = load_model(ckpt).eval()
    out = []
    with torch.no_grad():
        for row in tokens:
            x = torch.as_tensor(row[None], dtype=torch.long)
            out.append(float(F.cross_entropy(model(input_ids=x).logits[0, :-1].double(), x[0, 1:])))
    return np.asarray(out)


@pytest.fixture(scope="module")
def ref(tiny_pool, lambada_path):
    return load_reference(str(lambada_path), tiny_pool.tokenizer(), size=24, seed=0)


def test_reducible_loss_is_the_hand_difference(tiny_pool, tiny_ckpt, ref, tmp_path):
    cfg = RhoLossConfig(steps=3, lr=1e-3, micro_batch_size=4)
    il = irreducible_model(cfg, tiny_pool, ref, tiny_ckpt, tmp_path / "il", device="cpu", stage=2)
    assert read_json(il / "meta.json")["stage"] == 2 and (il / "train_summary.json").exists()
    out = reducible_loss(cfg, tiny_ckpt, il, tiny_pool, CAND, tmp_path / "scores", work=tmp_path / "work",
                         device="cpu")
    got: dict[int, float] = {}
    for i, s in iter_scores(out):
        got.update(zip(i.tolist(), s.tolist()))
    toks = tiny_pool.tokens(CAND)
    want = _hand_loss(il, toks) - _hand_loss(tiny_ckpt, toks)  # score = -(L_current - L_irreducible)
    np.testing.assert_allclose([got[int(i)] for i in CAND], want, rtol=1e-4, atol=1e-5)
    assert np.std(want) > 0
    meta = read_json(out / "meta.json")
    assert meta["tokens"] == {"lm_forward": 2 * len(CAND) * tiny_pool.seq_len}
    assert meta["mean_reducible_loss"] == pytest.approx(-float(np.mean(want)), rel=1e-4)


def test_irreducible_model_trained_once_per_branch(tiny_pool, tiny_ckpt, ref, tmp_path):
    from dataclasses import replace

    from datamates_testing import tiny_train_cfg

    from datamates.core.train_loop import train

    later = train(tiny_train_cfg(steps=2, checkpoint_every=100), None, tiny_pool, np.arange(0, 64),
                  tmp_path / "later", init=tiny_ckpt)
    rd = RunDir(tmp_path / "run").branch("rholoss")
    mates = replace(MatesConfig(), score=replace(MatesConfig().score, device="cpu"))
    from datamates.config.baselines import BaselinesConfig

    small = BaselinesConfig(scorers={"rholoss": RhoLossConfig(steps=3, micro_batch_size=4)})
    mates.baselines = small  # the selector reads mates.baselines when the run config has it
    x = StageInputs(mates=mates, rd=rd, pool=tiny_pool, stage=2, checkpoint=tiny_ckpt, candidates=CAND,
                    probe_ids=np.zeros(0, np.int64), k=10, cache_dir=tmp_path / "cache", reference=ref)
    SELECTORS["rholoss"](x)
    il = rd.base / "irreducible_model"
    stamp = (il / "model.safetensors").stat().st_mtime_ns
    m2 = read_json(rd.scores(2) / "meta.json")
    assert m2["irreducible_trained_here"] and m2["tokens"]["lm_train"] == 3 * 4 * tiny_pool.seq_len
    SELECTORS["rholoss"](replace(x, stage=3, checkpoint=later))  # the next stage: same irreducible model
    assert (il / "model.safetensors").stat().st_mtime_ns == stamp
    m3 = read_json(rd.scores(3) / "meta.json")
    assert not m3["irreducible_trained_here"] and "lm_train" not in m3["tokens"]
    assert m3["irreducible_model"] == str(il) and m3["checkpoint"] == str(later)
    assert len(np.load(rd.selected(3) / "ids.npy")) == 10
    from datamates.errors import IncompatibleArtifacts

    with pytest.raises(IncompatibleArtifacts, match="baselines.rholoss.steps = 3, the run now says 5"):
        irreducible_model(RhoLossConfig(steps=5, micro_batch_size=4), tiny_pool, ref, later, il)
