"""The command line: every verb has --help; user mistakes are one line on stderr and exit code 2."""

import os
import subprocess
import sys

import pytest

from datamates.cli import COMMANDS, build_parser, main


def _run(*args, cwd=None):
    env = {**os.environ, "DATAMATES_PROGRESS": "0"}
    return subprocess.run([sys.executable, "-m", "datamates", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


def test_help_lists_every_verb():
    r = _run("--help")
    assert r.returncode == 0
    for verb in COMMANDS:
        assert verb in r.stdout


@pytest.mark.parametrize("verb", list(COMMANDS))
def test_each_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0
    assert "usage: datamates" in capsys.readouterr().out


def test_parser_builds_all_verbs():
    assert build_parser() is not None


def test_bad_config_key_exit_2_one_line(tmp_path):
    r = _run("config", "show", "--set", "train.lrr=1")
    assert r.returncode == 2
    assert r.stderr.strip() == "datamates config: error: --set train.lrr=1: unknown key 'train.lrr'; allowed keys here: " + r.stderr.split(
        "allowed keys here: ")[1].strip()
    assert len(r.stderr.strip().splitlines()) == 1


def test_malformed_jsonl_exit_2_names_file_and_line(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.jsonl").write_text('{"text": "ok"}\n{"text": "ok"}\n{broken\n')
    r = _run("pool", "build", "--input", str(tmp_path / "d"), "--out", str(tmp_path / "p"),
             "--set", "pool.tokenizer.vocab_size=300", "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("datamates pool: error: d/x.jsonl:3: malformed JSON"), r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "p").exists()


def test_missing_pool_is_a_clear_error(tmp_path):
    r = _run("train", "--pool", str(tmp_path / "nope"), "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 2
    assert "no built pool here" in r.stderr and "datamates pool build" in r.stderr
    assert "Traceback" not in r.stderr


def test_config_show_documents_knobs():
    r = _run("config", "show", "-c", "tiny_cpu")
    assert r.returncode == 0
    assert "seq_len: 256  # tokens per training sequence" in r.stdout
