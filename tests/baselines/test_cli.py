"""`datamates score-with METHOD`: writes a scores folder that `datamates select` reads unchanged;
bad input is one line on stderr, exit code 2, nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from datamates.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.fixture
def ids_file(tmp_path):
    f = tmp_path / "ids.npy"
    np.save(f, np.arange(0, 4000, 20))
    return f


def test_score_with_then_select(tiny_pool, tmp_path, ids_file, capsys):
    common = ["--pool", str(tiny_pool.path), "--run-dir", str(tmp_path / "run")]
    code, out, err = _run(capsys, "score-with", "dsir", "--ids", str(ids_file), "--out", str(tmp_path / "s"),
                          "--reference", "flan_cot", "--set", "baselines.dsir.reference_size=200", *common)
    assert code == 0, err
    assert "dsir scores" in out and "--method gumbel --tau 1" in out
    code, out, err = _run(capsys, "select", "--scores", str(tmp_path / "s"), "--out", str(tmp_path / "sel"),
                          "--tau", "1", "--set", "mates.select.scale=none", "-k", "50", *common)
    assert code == 0, err
    assert len(np.load(tmp_path / "sel" / "ids.npy")) == 50


def test_bad_input_is_one_line_exit_2(tiny_pool, tiny_ckpt, tmp_path, ids_file, capsys):
    common = ["--pool", str(tiny_pool.path), "--ids", str(ids_file), "--run-dir", str(tmp_path / "run")]
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"text": "  "}) + "\n")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00junk" * 50)
    one = tmp_path / "one.jsonl"
    one.write_text("".join(json.dumps({"text": f"text {i}", "label": 1}) + "\n" for i in range(20)))
    two = tmp_path / "two.jsonl"
    two.write_text("".join(json.dumps({"text": f"text {i}", "label": i % 2}) + "\n" for i in range(20)))
    cases = [
        (["dsir", "--reference", str(empty)], "empty.jsonl:1: empty target"),
        (["classifier", "--model", str(junk)], "not a fastText model"),
        (["rater", "--labels", str(one)], "two classes"),
        (["rater", "--labels", str(two), "--set", f"baselines.rater.encoder.backbone={tiny_ckpt}"], "not an encoder"),
        (["semdedup", "--eps", "1.5"], "eps"),
        (["semdedup", "--eps", "0"], "eps"),
        (["dsir", "--eps", "0.1"], "--eps does not apply"),
        (["perplexity", "--model", str(tmp_path)], "cannot load a causal language model"),
    ]
    for i, (argv, msg) in enumerate(cases):
        out = tmp_path / f"out{i}"
        code, _, err = _run(capsys, "score-with", *argv, "--out", str(out), *common)
        assert code == 2, (argv, err)
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        assert len(lines) == 1 and msg in lines[0] and "Traceback" not in err, (argv, err)
        assert not out.exists() and not (tmp_path / f"out{i}.partial").exists(), argv
