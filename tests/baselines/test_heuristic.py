"""The heuristic quality filter (baselines/heuristic.py), the worked example of adding a scorer
through the registry: its rules against a reference computation written out by hand, and the
scorer run through `datamates score-with` and a run's stage."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from datamates.baselines.heuristic import HeuristicConfig, features, heuristic_scores
from datamates.cli import main
from datamates.selection.scores_io import read_scores


def _reference(text: str) -> float:
    words = text.split()
    n = max(len(words), 1)
    mean_len = sum(map(len, words)) / n
    symbols = (text.count("#") + text.count("...") + text.count("…")) / n
    alpha = sum(any(c.isalpha() for c in w) for w in words) / n
    ratio = len(gzip.compress(text.encode(), compresslevel=6, mtime=0)) / max(len(text.encode()), 1)
    failed = int(not 3 <= mean_len <= 10) + int(symbols > 0.1) + int(alpha < 0.8) + int(ratio < 0.3)
    return failed + (1 - min(ratio, 1.0)) / 2


TEXTS = [
    "The committee published its annual report on regional water quality, noting modest improvements.",
    "buy buy buy buy buy buy buy buy buy buy buy buy buy buy buy buy buy buy buy buy buy buy buy buy",
    "# # # ... ### ... # 12 34 56 78 90 ... # #",
    "a b c d e f g h i j k l m n o p",
    "",
]


def test_rules_match_a_reference_computation():
    got = heuristic_scores(HeuristicConfig(), TEXTS)
    np.testing.assert_allclose(got, [_reference(t) for t in TEXTS], rtol=0, atol=1e-12)
    assert got[0] < 1 <= got[1]  # clean prose passes every rule; the spam fails compression
    assert got[2] >= 2 and got[3] >= 1  # symbols and digits; one-letter words
    assert features(TEXTS[0])[2] == 1.0


def test_score_with_and_a_stage_use_the_registry(tiny_pool, tmp_path):
    from datamates.selectors import REGISTRY, resolve_selectors

    assert REGISTRY["heuristic"].section == "heuristic" and "heuristic" in resolve_selectors(["all"])
    ids = np.arange(0, len(tiny_pool), 97)[:60]
    np.save(tmp_path / "ids.npy", ids)
    out = tmp_path / "h"
    rc = main(["score-with", "heuristic", "--pool", str(tiny_pool.path), "--ids", str(tmp_path / "ids.npy"),
               "--out", str(out), "--run-dir", str(tmp_path / "run")])
    assert rc == 0
    got_ids, got = read_scores(out)
    from datamates.baselines._common import sequence_texts

    want = heuristic_scores(HeuristicConfig(), sequence_texts(tiny_pool, got_ids))
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_allclose(got, want.astype(np.float32))


@pytest.mark.parametrize("bad", ["heuristic --eps 0.1"])
def test_a_flag_of_another_scorer_is_refused(bad, tiny_pool, tmp_path, capsys):
    argv = bad.split() + ["--pool", str(tiny_pool.path), "--out", str(tmp_path / "x"), "--run-dir", str(tmp_path / "r")]
    assert main(["score-with", *argv]) == 2
    assert "--eps does not apply to heuristic" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_its_config_section_lives_in_its_module():
    """The registry line names the section's dataclass (`config=`); config/baselines.py does not know it,
    yet a run reads it at mates.baselines.heuristic, checked when the verb starts."""
    import dataclasses

    from datamates.config import load_config
    from datamates.config.base import to_dict
    from datamates.config.baselines import BaselinesConfig
    from datamates.selectors import REGISTRY, resolve_config

    assert REGISTRY["heuristic"].config is HeuristicConfig
    assert HeuristicConfig.__module__ == "datamates.baselines.heuristic"
    assert "heuristic" not in {f.name for f in dataclasses.fields(BaselinesConfig)}
    cfg = resolve_config(load_config("tiny_cpu", ["mates.baselines.heuristic.min_compression_ratio=0.5"]))
    got = REGISTRY["heuristic"].section_config(cfg.mates.baselines)
    assert got == HeuristicConfig(min_compression_ratio=0.5)
    assert to_dict(cfg)["mates"]["baselines"]["heuristic"] == dataclasses.asdict(got)  # config.yaml, config_hash


def test_config_show_prints_its_defaults(capsys):
    assert main(["config", "show", "-c", "tiny_cpu"]) == 0
    out = capsys.readouterr().out
    assert "\n    heuristic:\n      min_word_length: 3.0  # a document's mean word length" in out


@pytest.mark.parametrize("verb,key,want", [
    ("run", "mates.baselines.heuristic.bogus=1",
     "--set mates.baselines.heuristic.bogus=1: unknown key 'mates.baselines.heuristic.bogus'; allowed keys here: "
     "max_symbol_ratio, max_word_length, min_alpha_words, min_compression_ratio, min_word_length, shard_size"),
    ("run", "mates.baselines.heuristic.min_word_length=-1",
     "--set mates.baselines.heuristic.min_word_length=-1: mates.baselines.heuristic.min_word_length = -1.0: must be >= 0"),
    ("config", "mates.baselines.heuristic.max_word_length=0",
     "--set mates.baselines.heuristic.max_word_length=0: mates.baselines.heuristic.max_word_length = 0.0: must be > 0"),
    ("score-with", "baselines.heuristic.min_alpha_words=2",
     "baselines.heuristic.min_alpha_words = 2.0: must be <= 1"),
])
def test_a_bad_knob_of_its_section_is_one_line_and_exit_2(verb, key, want, tiny_pool, tmp_path, capsys):
    argv = {"run": ["run", "-c", "tiny_cpu", "--run-dir", str(tmp_path / "run")],
            "config": ["config", "show", "-c", "tiny_cpu"],
            "score-with": ["score-with", "heuristic", "--pool", str(tiny_pool.path), "--out", str(tmp_path / "x"),
                           "--run-dir", str(tmp_path / "run")]}[verb]
    assert main([*argv, "--set", key]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(want) and "Traceback" not in "".join(err)
    assert not (tmp_path / "x").exists()
    if verb == "run":
        assert not (tmp_path / "run").exists()  # refused before any work: nothing written
