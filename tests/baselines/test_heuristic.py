"""The heuristic quality filter (baselines/heuristic.py), the worked example of adding a scorer
through the registry: its rules against a reference computation written out by hand, and the
scorer run through `datamates score-with` and a run's stage."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from datamates.baselines.heuristic import features, heuristic_scores
from datamates.cli import main
from datamates.config.baselines import HeuristicConfig
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
