"""The command line: every verb has --help; user mistakes are one line on stderr and exit code 2."""

import argparse
import dataclasses
import os
import re
import subprocess
import sys

import pytest

from datamates.cli import COMMANDS, build_parser, main
from datamates.config.core import TrainConfig


def _run(*args, cwd=None):
    env = {**os.environ, "DATAMATES_PROGRESS": "0"}
    return subprocess.run([sys.executable, "-m", "datamates", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


def test_help_lists_every_verb():
    r = _run("--help")
    assert r.returncode == 0
    listed = {m.group(1): m.group(2).strip() for m in re.finditer(r"^ {4}(\S+)\s+(.+)$", r.stdout, re.M)}
    for verb, (_, help_) in COMMANDS.items():  # one entry per verb, with its own help line
        assert listed.get(verb, "").split()[:3] == help_.split()[:3], (verb, r.stdout)


@pytest.mark.parametrize("verb", list(COMMANDS))
def test_each_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0
    assert "usage: datamates" in capsys.readouterr().out


def test_parser_builds_all_verbs():
    """Every verb's module imports and declares its arguments (a verb whose module fails to import is
    only marked `_missing` by build_parser, so this is where it shows)."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert sorted(sub.choices) == sorted(COMMANDS)
    for verb, p in sub.choices.items():
        assert p.get_default("_missing") is None, f"{verb}: its command module did not import"
    args = parser.parse_args(["probe", "--checkpoint", "c", "--pool", "p", "--lr", "0.5", "--set", "a=1"])
    assert (args.verb, args.checkpoint, args.pool, args.lr, args.sets) == ("probe", "c", "p", 0.5, ["a=1"])


def test_bad_config_key_exit_2_one_line(tmp_path):
    r = _run("config", "show", "--set", "train.lrr=1")
    assert r.returncode == 2
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("datamates config: error: --set train.lrr=1: unknown key 'train.lrr'"), err
    allowed = set(err.split("allowed keys here: ")[1].split(", "))
    assert allowed == {f.name for f in dataclasses.fields(TrainConfig)}, err  # the train section's keys, all of them


def test_malformed_jsonl_exit_2_names_file_and_line(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.jsonl").write_text('{"text": "ok"}\n{"text": "ok"}\n{broken\n')
    r = _run("pool", "build", "--input", str(tmp_path / "d"), "--out", str(tmp_path / "p"),
             "--set", "pool.tokenizer.vocab_size=300", "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 2, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1 and errors[0] == r.stderr.strip().splitlines()[-1], r.stderr
    assert errors[0].startswith("datamates pool: error: d/x.jsonl:3: malformed JSON"), r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "p").exists()


def test_missing_pool_is_a_clear_error(tmp_path):
    r = _run("train", "--pool", str(tmp_path / "nope"), "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 2
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("datamates train: error:"), err
    assert str(tmp_path / "nope") in err and "no built pool here" in err and "datamates pool build" in err, err


def test_config_show_documents_knobs():
    r = _run("config", "show", "-c", "tiny_cpu")
    assert r.returncode == 0
    assert "seq_len: 256  # tokens per training sequence" in r.stdout


def test_run_config_change_names_the_key_and_a_stale_hash_alone_is_accepted(tmp_path):
    import yaml

    from datamates.commands._common import write_run_config
    from datamates.config.run import load_config
    from datamates.errors import ConfigError
    from datamates.run_dir import RunDir

    rd = RunDir(tmp_path / "r")
    rd.root.mkdir()
    write_run_config(load_config("tiny_cpu"), rd)
    with pytest.raises(ConfigError) as e:
        write_run_config(load_config("tiny_cpu", ["train.lr=0.001"]), rd)
    assert "(train.lr: 0.002 -> 0.001)" in str(e.value) and "config_hash" not in str(e.value)
    # the same settings under a hash an older datamates computed: the settings decide, the run resumes
    data = yaml.safe_load(rd.config.read_text())
    rd.config.write_text(yaml.safe_dump({**data, "config_hash": "0" * 16}, sort_keys=False))
    write_run_config(load_config("tiny_cpu"), rd)
    assert yaml.safe_load(rd.config.read_text())["config_hash"] == data["config_hash"]


def test_adding_a_selector_to_a_finished_run_is_accepted(tmp_path):
    """`mates.selectors` only says which branches run; each branch's artifacts carry their own
    fingerprints, so a selector added later (the arena's way of growing) resumes the run."""
    import yaml

    from datamates.commands._common import write_run_config
    from datamates.config.run import load_config
    from datamates.errors import ConfigError
    from datamates.run_dir import RunDir

    rd = RunDir(tmp_path / "r")
    rd.root.mkdir()
    write_run_config(load_config("tiny_cpu", ["mates.selectors=[random, mates]"]), rd)
    write_run_config(load_config("tiny_cpu", ["mates.selectors=[random, mates, loss]"]), rd)
    assert yaml.safe_load(rd.config.read_text())["mates"]["selectors"] == ["random", "mates", "loss"]
    with pytest.raises(ConfigError) as e:  # anything else still refuses
        write_run_config(load_config("tiny_cpu", ["mates.selectors=[random]", "mates.stage_steps=3"]), rd)
    assert "mates.stage_steps" in str(e.value)


def test_a_run_recorded_by_an_older_spelling_resumes(tmp_path):
    """A run whose config.yaml an older datamates wrote (the flat executor keys before
    `mates.probe.executor`, a knob added since missing) resumes under today's spelling of the same
    settings; a real difference still refuses, naming the key."""
    import yaml

    from datamates.commands._common import write_run_config
    from datamates.config.run import load_config
    from datamates.errors import ConfigError
    from datamates.run_dir import RunDir

    rd = RunDir(tmp_path / "r")
    rd.root.mkdir()
    write_run_config(load_config("tiny_cpu"), rd)
    data = yaml.safe_load(rd.config.read_text())
    probe = data["mates"]["probe"]
    ex = probe.pop("executor")
    probe.update(workers=ex["workers"], threads=ex["threads"], backend=ex["backend"], ray_address=ex["ray_address"])
    del data["mates"]["baselines"]["group"]["device"]  # a knob this older version did not have
    rd.config.write_text(yaml.safe_dump({**data, "config_hash": "0" * 16}, sort_keys=False))
    write_run_config(load_config("tiny_cpu"), rd)
    assert "executor" in yaml.safe_load(rd.config.read_text())["mates"]["probe"]
    probe["n_probes"] = probe["n_probes"] + 1
    rd.config.write_text(yaml.safe_dump({**data, "config_hash": "0" * 16}, sort_keys=False))
    with pytest.raises(ConfigError) as e:
        write_run_config(load_config("tiny_cpu"), rd)
    assert "mates.probe.n_probes" in str(e.value)


def test_how_a_stage_spreads_its_work_is_not_the_runs_identity(tmp_path):
    """Every `executor` section (workers, threads, Ray's claims) may change between a run and its resume:
    the outputs are the same across workers and shards. The longer arena, recorded when Ray's CPUs per
    scoring actor defaulted to 1.0 (today null, the same 1), was refused by the version that changed it."""
    import yaml

    from datamates.commands._common import write_run_config
    from datamates.config.run import load_config
    from datamates.run_dir import RunDir

    rd = RunDir(tmp_path / "r")
    rd.root.mkdir()
    write_run_config(load_config("tiny_cpu"), rd)
    data = yaml.safe_load(rd.config.read_text())
    data["mates"]["score"]["executor"]["ray_cpus"] = 1.0
    data["mates"]["probe"]["executor"]["workers"] = 3
    rd.config.write_text(yaml.safe_dump({**data, "config_hash": "0" * 16}, sort_keys=False))
    write_run_config(load_config("tiny_cpu", ["mates.score.executor.workers=2"]), rd)
    assert yaml.safe_load(rd.config.read_text())["mates"]["score"]["executor"]["workers"] == 2
