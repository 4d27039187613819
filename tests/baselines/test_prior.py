"""`mates+fasttext` (baselines/prior.py, selectors.score_mates_prior; issue 30 item 3): MATES's
influence and the fastText quality prior, each standardised over the block as `select` does, then
z(mates) + w z(fasttext). On a tiny real stage: the combined scores equal a hand computation from the
two component score folders; w = 0 (under --force, the components reused) is mates's ranking and
selection exactly; a bad weight is one line, exit 2, nothing written."""

from __future__ import annotations

import contextlib
import io
from dataclasses import replace

import numpy as np
import pytest
from datamates_testing import TINY_YAML

from datamates.artifacts import read_marker, set_force
from datamates.baselines.classifier import ClassifierConfig
from datamates.baselines.prior import PriorConfig
from datamates.config.influence import FitConfig
from datamates.config.mates import MatesConfig
from datamates.config.probe import ProbeConfig
from datamates.core.reference import load_reference
from datamates.run_dir import RunDir, read_json
from datamates.selection.scores_io import read_scores
from datamates.selection.select import read_selection, select
from datamates.selectors import REGISTRY, SELECTORS, StageInputs, resolve_selectors

NAME = "mates+fasttext"


def test_registered_named_not_in_all():
    from datamates.selectors import score_mates_prior

    for name in (NAME, "mates+heuristic"):
        assert name in SELECTORS and REGISTRY[name].section == "prior"
        assert REGISTRY[name].score.func is score_mates_prior  # one scorer, an instance per prior
        assert name not in resolve_selectors(["all"]) and resolve_selectors([name]) == [name]
    assert REGISTRY[NAME].section_config(MatesConfig().baselines).weight == 1.0


def _mates(weight: float) -> MatesConfig:
    m = MatesConfig(warmup_stages=1, stages=3)
    b = replace(m.baselines, scorers={"classifier": ClassifierConfig(positives=40, epoch=2, bucket=1000, dim=8),
                                      "prior": PriorConfig(weight=weight)})
    return replace(m, probe=ProbeConfig(mode="first_order", n_probes=24, reference_size=16, chunk_size=64,
                                        device="cpu"),
                   fit=FitConfig(mode="lm", features=["stats", "fo"], val_fraction=0.25, device="cpu", min_labels=8),
                   baselines=b)


def _z(folder):
    """Hand standardisation over the block: (s - mean) / population sd, float64, sorted by id."""
    ids, s = read_scores(folder)
    o = np.argsort(ids)
    s = s[o].astype(np.float64)
    return ids[o], (s - s.mean()) / s.std()


def _sorted(folder):
    ids, s = read_scores(folder)
    o = np.argsort(ids)
    return ids[o], s[o]


@pytest.mark.usefixtures("one_thread")
def test_combined_scores_are_the_hand_computation_and_w0_is_mates(tiny_pool, tiny_ckpt, tmp_path):
    ref = load_reference("lambada_openai", tiny_pool.tokenizer(), size=16, seed=0)
    rd = RunDir(tmp_path / "run")
    block = np.arange(1401, 1401 + 240, 2)

    def inputs(w: float) -> StageInputs:
        return StageInputs(mates=_mates(w), rd=rd, pool=tiny_pool, stage=2, checkpoint=tiny_ckpt, candidates=block,
                           probe_ids=np.arange(1, 48, 2), k=24, cache_dir=tmp_path / "cache", reference=ref)

    sel = read_selection(SELECTORS[NAME](inputs(1.0)))
    assert len(sel) == 24 and np.isin(sel, block).all()
    sd = rd.stage(2)
    mates_folder, prior_folder, combined = rd.scores(2), sd / "prior", sd / "combined"
    ids, zm = _z(mates_folder)
    ids_p, zp = _z(prior_folder)
    got_ids, got = _sorted(combined)
    np.testing.assert_array_equal(ids, block)
    np.testing.assert_array_equal(ids_p, block)
    np.testing.assert_array_equal(got_ids, block)
    np.testing.assert_allclose(got, zm + zp, rtol=1e-6, atol=1e-6)
    assert np.std(zp) > 0.1 and not np.allclose(got, zm, atol=1e-3)  # the prior moved the scores
    meta = read_json(combined / "meta.json")
    assert meta["weight"] == 1.0 and meta["components"]["prior"]["scores"] == str(prior_folder)
    assert read_json(rd.selected(2) / "meta.json")["scores"] == str(combined)
    assert read_json(prior_folder / "meta.json")["method"] == "classifier"

    # w = 0 in the same run, with --force: the components are reused (their DONE untouched), the
    # combination is redone and is mates's ranking; the selection is the one `mates` makes from its scores
    done = {f: (f / "DONE").read_bytes() for f in (mates_folder, prior_folder, rd.probe(2), rd.influence_model(2))}
    mtimes = {f: (f / "DONE").stat().st_mtime_ns for f in done}
    set_force(True)
    try:
        sel0 = read_selection(SELECTORS[NAME](inputs(0.0)))
    finally:
        set_force(False)
    assert all((f / "DONE").read_bytes() == b and (f / "DONE").stat().st_mtime_ns == mtimes[f] for f, b in done.items())
    assert read_marker(combined) is not None and read_json(combined / "meta.json")["weight"] == 0.0
    _, got0 = _sorted(combined)
    _, raw = _sorted(mates_folder)
    np.testing.assert_array_equal(np.argsort(got0, kind="stable"), np.argsort(raw, kind="stable"))
    np.testing.assert_allclose(got0, zm, rtol=1e-6, atol=1e-6)
    alone = read_selection(select(inputs(0.0).mates.select, mates_folder, tiny_pool, tmp_path / "mates_alone", k=24))
    np.testing.assert_array_equal(sel0, alone)

    # the heuristic prior (another instance), w = 2, on its own branch: the same hand computation
    rd2 = RunDir(tmp_path / "run", "mates+heuristic")
    x = replace(inputs(2.0), rd=rd2)
    SELECTORS["mates+heuristic"](x)
    _, zm2 = _z(rd2.scores(2))
    _, zh = _z(rd2.stage(2) / "prior")
    np.testing.assert_allclose(_sorted(rd2.stage(2) / "combined")[1], zm2 + 2.0 * zh, rtol=1e-6, atol=1e-6)
    assert read_json(rd2.stage(2) / "prior" / "meta.json")["method"] == "heuristic" and np.std(zh) > 0.1


def _cli(*argv) -> tuple[int, str]:
    from datamates.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 2
    return rc, err.getvalue()


@pytest.mark.parametrize(("value", "says"), [("-1", ">= 0"), (".inf", "finite"), (".nan", ">= 0"), ("heavy", "float")])
def test_a_bad_weight_is_one_line_exit_2_and_nothing_written(tmp_path, value, says):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY_YAML + f"runs_root: {tmp_path / 'runs'}\n")
    key = f"mates.baselines.prior.weight={value}"
    for argv in (["config", "show", "-c", cfg, "--set", key],
                 ["run", "-c", cfg, "--set", f"mates.selectors=[random,{NAME}]", "--set", key,
                  "--run-dir", tmp_path / "run"]):
        rc, err = _cli(*argv)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert rc == 2 and len(lines) == 1, err
        assert f"--set {key}" in lines[0] and "mates.baselines.prior.weight" in lines[0] and says in lines[0], lines[0]
        assert "Traceback" not in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()
