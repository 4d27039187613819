"""Every baseline is a selector of the registry: on a candidate block it writes scores in the
common format (with counted compute) and a selection of k of the candidates via the common select."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from datamates.accounting import stage_seconds
from datamates.config.influence import EncoderConfig
from datamates.config.mates import MatesConfig
from datamates.core.reference import load_reference
from datamates.run_dir import RunDir, read_json
from datamates.selection.select import read_selection
from datamates.selectors import SELECTORS, StageInputs, resolve_selectors

BASELINES = ["dsir", "semdedup", "qurating", "fasttext", "perplexity", "heuristic"]


def test_registered():
    assert all(b in SELECTORS for b in BASELINES)
    assert set(BASELINES) <= set(resolve_selectors(["all"]))


def test_one_registry_feeds_run_score_with_and_the_docs():
    """One name per scorer: the older score-with names are aliases of the run's; every registered
    name has a row in docs/baselines.md, methods.md or extending.md; the MATES variants are instances."""
    from pathlib import Path

    from datamates.selectors import REGISTRY, SCORERS, canonical

    assert canonical("rater") == "qurating" and canonical("classifier") == "fasttext"
    assert resolve_selectors(["rater", "group:classifier"]) == ["qurating", "group:fasttext"]
    assert len({s.name for s in SCORERS}) == len(SCORERS)
    docs = "".join((Path(__file__).parents[2] / "docs" / f).read_text() for f in ("baselines.md", "methods.md", "extending.md"))
    missing = [s.name for s in SCORERS if f"`{s.name}`" not in docs]
    assert not missing, f"registered but not documented: {missing}"
    for name in ("mates-parity", "mates-static", "mates-first-order", "mates-full", "mates-prefix"):
        assert REGISTRY[name].score.func is REGISTRY["mates"].score.func  # one scorer, other arguments


@pytest.mark.slow  # MiniLM over the block and the bundle's 499 quality labels; ~1 min on 2 shared cores
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", BASELINES)
def test_baseline_selector_on_a_block(name, tiny_pool, tiny_ckpt, tmp_path, data, monkeypatch):
    if name == "qurating":  # the default judgements (the bundle's 499 DCLM labels), cut to 60 for time
        import gzip

        from datamates.baselines import quality

        src = data / quality.BUNDLE_LABELS
        small = tmp_path / "labels60.jsonl"
        small.write_text("".join(gzip.open(src, "rt").readlines()[:60]))
        monkeypatch.setattr(quality, "BUNDLE_LABELS", str(small))  # an absolute path: data_dir() / it == it
    mates = MatesConfig()
    mates = replace(mates, fit=replace(mates.fit, encoder=EncoderConfig(backbone="minilm", max_tokens=128,
                                                                         chunk_len=64)))
    cand = np.arange(1, len(tiny_pool), 37)[:400]
    ref = load_reference("lambada_openai", tiny_pool.tokenizer(), size=64)
    x = StageInputs(mates=mates, rd=RunDir(tmp_path / "run"), pool=tiny_pool, stage=1, checkpoint=tiny_ckpt,
                    candidates=cand, probe_ids=np.zeros(0, np.int64), k=100, cache_dir=tmp_path / "cache",
                    reference=ref)
    sel = read_selection(SELECTORS[name](x))
    assert len(sel) == 100 and np.isin(sel, cand).all()
    meta = read_json(x.rd.scores(1) / "meta.json")
    assert meta["n"] == len(cand) and "tokens" in meta and "flops_per_token" in meta
    timings = stage_seconds(x.rd.stage(1))  # score: timed around the call; select: produce's seconds
    assert timings["score"] > 0 and "select" in timings


def test_run_config_baselines_section_reaches_the_selectors():
    """`mates.baselines.*` in a run config is what the baseline selectors use (was: defaults only)."""
    from types import SimpleNamespace

    from datamates.config.run import load_config
    from datamates.selectors import _section

    cfg = load_config("tiny_cpu", ["mates.baselines.group.alpha=2.5", "mates.baselines.rholoss.steps=7"])
    x = SimpleNamespace(mates=cfg.mates)
    assert _section(x, "group").alpha == 2.5 and _section(x, "rholoss").steps == 7


def test_a_knob_set_by_the_user_is_not_overridden_in_a_run():
    """baselines.semdedup.encoder / rater.encoder / perplexity.device: the run fills them in only when
    they are left at null / auto (was: always replaced by mates.fit.encoder / mates.score.device)."""
    from types import SimpleNamespace

    from datamates.config.run import load_config
    from datamates.selectors import _device, _run_encoder, section

    cfg = load_config("tiny_cpu", ["mates.baselines.semdedup.encoder.max_tokens=64",
                                   "mates.baselines.semdedup.encoder.chunk_len=64", "mates.score.device=cpu",
                                   "mates.baselines.perplexity.device=cuda:1"])
    x = SimpleNamespace(mates=cfg.mates)
    assert _run_encoder(x, section(cfg.mates.baselines, "semdedup")).encoder.max_tokens == 64
    assert _run_encoder(x, section(cfg.mates.baselines, "rater")).encoder == cfg.mates.fit.encoder
    assert _device(x, section(cfg.mates.baselines, "perplexity").device) == "cuda:1"
    assert _device(x, section(cfg.mates.baselines, "dsdm").device) == "cpu"


OWN_SECTIONS = {"dsir": "baselines.dsir", "semdedup": "baselines.semdedup", "rater": "baselines.quality",
                "classifier": "baselines.classifier", "perplexity": "baselines.perplexity", "dsdm": "baselines.trak",
                "rholoss": "baselines.rholoss", "group": "selection.group", "heuristic": "baselines.heuristic",
                "prior": "baselines.prior", "proxy": "selection.proxy"}


def test_config_baselines_declares_no_method_section():
    """Every baseline's section is declared in its own module and registered through `config=`
    (group-level selection's in selection/group.py); config/baselines.py keeps only the holder."""
    import dataclasses

    from datamates.config.baselines import BaselinesConfig
    from datamates.selectors import SCORERS, SECTIONS

    assert [f.name for f in dataclasses.fields(BaselinesConfig)] == ["scorers"]
    assert {n: c.__module__ for n, c in SECTIONS.items()} == {n: f"datamates.{m}" for n, m in OWN_SECTIONS.items()}
    assert all(s.config is SECTIONS[s.section] for s in SCORERS if s.section)


@pytest.mark.parametrize("name", sorted(OWN_SECTIONS))
def test_every_section_keeps_its_address_and_its_one_line_error(name, capsys):
    """A knob keeps its address (mates.baselines.<name>.<knob>, shown by `config show`); a bad key
    there is the loader's one line naming it, exit 2."""
    import dataclasses

    from datamates.cli import main
    from datamates.config.run import load_config
    from datamates.selectors import SECTIONS, resolve_config, section

    knob = next(f for f in dataclasses.fields(SECTIONS[name])
                if type(f.default) in (int, float) or (f.default is None and str(f.type) == "int | None"))
    value = 0.5 if type(knob.default) is float else 3
    cfg = resolve_config(load_config("tiny_cpu", [f"mates.baselines.{name}.{knob.name}={value}"]))
    assert getattr(section(cfg.mates.baselines, name), knob.name) == value
    assert main(["config", "show", "-c", "tiny_cpu", "--set", f"mates.baselines.{name}.bogus=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"unknown key 'mates.baselines.{name}.bogus'; allowed keys here: " in err[0], err
