"""Static MATES (issue 13 item 3; selectors.select_mates with mates.static_influence): the influence
model is fitted once per branch, at the first selection stage, and its scores at a later stage equal
scoring that model on the later stage's block. Also: the label multiplier labels N x the probe set,
and the label history adds the earlier stages' labels to the fit."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from datamates.config.influence import FitConfig
from datamates.config.mates import MatesConfig
from datamates.config.probe import ProbeConfig
from datamates.core.reference import load_reference
from datamates.run_dir import RunDir, read_json
from datamates.selection.probe import read_labels
from datamates.selection.score import read_scores, score
from datamates.selectors import SELECTORS, StageInputs, resolve_selectors

pytestmark = pytest.mark.usefixtures("one_thread")


def _mates(**kw) -> MatesConfig:
    m = MatesConfig(warmup_stages=1, stages=4)
    return replace(m, probe=ProbeConfig(mode="first_order", n_probes=24, reference_size=16, chunk_size=64,
                                        device="cpu"),
                   fit=FitConfig(mode="lm", features=["stats", "fo"], val_fraction=0.25, device="cpu",
                                 min_labels=8),
                   **kw)


def _inputs(m, rd, pool, ckpt, stage, ref):
    probe_ids = np.arange(1, 24 * 2, 2)
    block = np.arange(1001 + 200 * stage, 1001 + 200 * stage + 120, 2)
    return StageInputs(mates=m, rd=rd, pool=pool, stage=stage, checkpoint=ckpt, candidates=block,
                       probe_ids=probe_ids, k=20, cache_dir=rd.base / "cache", reference=ref)


def test_registered():
    assert {"mates", "mates-parity", "mates-static"} <= set(resolve_selectors(["all"]))


@pytest.mark.slow  # three stages of probe + fit + score on the tiny model (~10 s on a quiet machine)
def test_static_fits_once_and_reuses_the_first_model(tiny_pool, tiny_ckpt, tmp_path):
    ref = load_reference("lambada_openai", tiny_pool.tokenizer(), size=16, seed=0)
    m = _mates()
    rd = RunDir(tmp_path / "static")
    for stage in (2, 3, 4):
        SELECTORS["mates-static"](_inputs(m, rd, tiny_pool, tiny_ckpt, stage, ref))
    fitted = [s for s in (2, 3, 4) if (rd.influence_model(s) / "DONE").exists()]
    probed = [s for s in (2, 3, 4) if (rd.probe(s) / "DONE").exists()]
    assert fitted == [2] and probed == [2]  # one fit (and one probe) per branch
    for s in (3, 4):
        meta = read_json(rd.scores(s) / "meta.json")
        assert meta["model_dir"] == str(rd.influence_model(2))
        again = score(m.score, rd.influence_model(2), tiny_pool, _inputs(m, rd, tiny_pool, tiny_ckpt, s, ref).candidates,
                      tmp_path / f"again_{s}")
        a, b = read_scores(rd.scores(s)), read_scores(again)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    # the refitting `mates` fits at every stage on the same code path
    rd2 = RunDir(tmp_path / "refit")
    for stage in (2, 3):
        SELECTORS["mates"](_inputs(m, rd2, tiny_pool, tiny_ckpt, stage, ref))
    assert all((rd2.influence_model(s) / "DONE").exists() for s in (2, 3))


def test_label_multiplier_and_history(tiny_pool, tiny_ckpt, tmp_path):
    ref = load_reference("lambada_openai", tiny_pool.tokenizer(), size=16, seed=0)
    m = _mates(label_multiplier=3, label_history=1, label_history_decay=0.5)
    rd = RunDir(tmp_path / "run")
    for stage in (2, 3):
        x = _inputs(m, rd, tiny_pool, tiny_ckpt, stage, ref)
        SELECTORS["mates"](x)
        ids, _ = read_labels(rd.probe(stage))
        assert len(ids) == 3 * len(x.probe_ids) and np.isin(x.probe_ids, ids).all()
        assert not np.isin(ids, x.candidates).any()
    m2 = read_json(rd.influence_model(2) / "metrics.json")
    m3 = read_json(rd.influence_model(3) / "metrics.json")
    assert m2["n_history"] == 0 and m3["n_history"] == 72  # stage 3 also fits on stage 2's 72 labels
    assert read_json(rd.influence_model(3) / "meta.json")["history"] == [[str(rd.probe(2)), 0.5]]
    # exact labels (the parity mode's probes) are not multiplied
    m_exact = replace(m, probe=replace(m.probe, mode="exact"))
    from datamates.selectors import mates_probe_ids

    x = _inputs(m_exact, rd, tiny_pool, tiny_ckpt, 2, ref)
    assert len(mates_probe_ids(x, m_exact.probe)) == 24


def test_the_old_flags_are_deprecated_aliases_read_by_mates_only(tmp_path, monkeypatch):
    """mates.parity / mates.static_influence used to be a second address of every MATES variant
    (mates-first-order with mates.parity: true probed exact labels); now `mates` alone reads them."""
    from datamates import selectors

    class Probed(Exception):
        pass

    seen = []

    def probe_stops(pcfg, *args, **kw):  # the probe config each scorer asks for, then stop
        seen.append(pcfg.mode)
        raise Probed

    monkeypatch.setattr(selectors, "probe", probe_stops)
    m = replace(MatesConfig(label_multiplier=1), parity=True)
    x = StageInputs(m, RunDir(tmp_path / "r"), None, 2, None, np.arange(4), np.arange(2), 1, tmp_path)
    for name in ("mates", "mates-first-order"):
        with pytest.raises(Probed):
            selectors.REGISTRY[name].score(x)
    assert seen == ["exact", "first_order"]
