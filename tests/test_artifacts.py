"""Artifacts (run_dir.py): fingerprints in DONE / PARTIAL, --force, a lock per output, refusing to
replace what is not an artifact, resumable write-outs, a pool identity that survives a move.

Faults are real: the CLI runs in a subprocess and DATAMATES_FAULT=<point> kills it with SIGKILL
at that point (run_dir.fault_point), as `kill -9` would."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from datamates.config.base import data_dir
from datamates.core.pool import Pool, build_pool
from datamates.errors import IncompatibleArtifacts, OutputConflict
from datamates.run_dir import Lock, atomic_dir, read_marker, reuse

FILES = ["pretrain/web/c4_100_domains_theguardian_10.jsonl.gz", "pretrain/web/dolma_cc_en_head-0174.jsonl.gz"]


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """Two small real JSONL.gz files, copied (not linked) so that the test can move them."""
    d = data_dir()
    if not (d / FILES[0]).exists():
        pytest.skip(f"sample data not found at {d}; set DATAMATES_DATA to the data bundle")
    root = tmp_path / "corpus" / "web"
    root.mkdir(parents=True)
    for f in FILES:
        shutil.copy(d / f, root / Path(f).name)
    return tmp_path / "corpus"


def _pool_cli(corpus: Path, out: Path, *extra: str, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATAMATES_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    env.pop("DATAMATES_FAULT", None)
    if fault:
        env["DATAMATES_FAULT"] = fault
    cmd = [sys.executable, "-m", "datamates", "pool", "build", "--input", str(corpus), "--out", str(out),
           "--seq-len", "32", "--set", "pool.tokenizer.vocab_size=300", "--run-dir", str(out.parent / "run"), *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _same_files(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        if name != "DONE":  # DONE holds a timestamp
            assert (a / name).read_bytes() == (b / name).read_bytes(), name


def _one_error_line(r: subprocess.CompletedProcess, *words: str) -> str:
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error:" in ln]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize("point", ["pool.finalize", "pool.cleanup.file"])
def test_kill_during_pool_write_out_then_rerun_gives_the_same_bytes(corpus, tmp_path, point):
    """kill -9 during the final write-out, then the same command == an uninterrupted build (the
    old write-out deleted its sources as it went, and the re-run certified zero-filled index files)."""
    ref = _pool_cli(corpus, tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-2000:]
    killed = _pool_cli(corpus, tmp_path / "p", fault=point)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (tmp_path / "p").exists() and (tmp_path / "p.partial").is_dir()
    again = _pool_cli(corpus, tmp_path / "p")
    assert again.returncode == 0, again.stderr[-2000:]
    _same_files(tmp_path / "ref", tmp_path / "p")
    assert not (tmp_path / "p.partial").exists()
    # DONE certifies every file with its size
    files = read_marker(tmp_path / "p")["files"]
    assert {"seq_doc_idx.npy", "seq_domain.npy", "seq_bytes.npy", "seq_doc_ptr.npy", "docs.parquet"} <= set(files)


def test_changed_config_is_refused_for_a_partial_and_a_done_pool_unless_force(corpus, tmp_path):
    killed = _pool_cli(corpus, tmp_path / "p", fault="pool.finalize")
    assert killed.returncode == -9
    stale = _pool_cli(corpus, tmp_path / "p", "--seq-len", "48")  # resuming would mix 32- and 48-token rows
    _one_error_line(stale, "p.partial", "pool.seq_len: 32 -> 48", "--force")
    assert _pool_cli(corpus, tmp_path / "p").returncode == 0
    done = _pool_cli(corpus, tmp_path / "p", "--seq-len", "48")
    _one_error_line(done, "pool.seq_len: 32 -> 48", "--force")
    assert Pool(tmp_path / "p").seq_len == 32
    forced = _pool_cli(corpus, tmp_path / "p", "--seq-len", "48", "--force")
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert Pool(tmp_path / "p").seq_len == 48
    # an input file that changed is seen (by content), and named
    f = corpus / "web" / Path(FILES[1]).name
    f.write_bytes(f.read_bytes()[:-100] + bytes(100))
    changed = _pool_cli(corpus, tmp_path / "p", "--seq-len", "48")
    _one_error_line(changed, "inputs.corpus/web/dolma_cc_en_head-0174.jsonl.gz")


def test_out_at_a_user_folder_or_an_input_file_is_refused_and_left_alone(corpus, tmp_path):
    mine = tmp_path / "my_notes"
    mine.mkdir()
    (mine / "thesis.txt").write_text("irreplaceable")
    _one_error_line(_pool_cli(corpus, mine), "my_notes", "not a datamates artifact")
    assert (mine / "thesis.txt").read_text() == "irreplaceable"
    data_file = corpus / "web" / Path(FILES[0]).name
    before = data_file.read_bytes()
    _one_error_line(_pool_cli(corpus, data_file), "is a file")
    assert data_file.read_bytes() == before
    # another kind of artifact is not replaced either
    with atomic_dir(tmp_path / "ck", kind="checkpoint") as tmp:
        (tmp / "model.safetensors").write_bytes(b"x")
    _one_error_line(_pool_cli(corpus, tmp_path / "ck"), "holds a checkpoint, not a pool")
    assert (tmp_path / "ck" / "model.safetensors").exists()


def test_a_second_writer_is_refused_by_the_lock(corpus, tmp_path):
    out = tmp_path / "p"
    with Lock(out):  # this test process is the first writer
        r = _pool_cli(corpus, out)
        _one_error_line(r, str(out), "another datamates process", f"pid {os.getpid()}")
        assert not out.exists()
    assert _pool_cli(corpus, out).returncode == 0  # the lock is gone with its holder
    assert not (tmp_path / ".p.lock").exists()


def test_pool_id_survives_moving_the_corpus(corpus, tmp_path):
    """The pool identity hashed absolute input paths; it now hashes relative names and contents."""
    from datamates_testing import tiny_pool_config

    a = Pool(build_pool(tiny_pool_config([str(corpus / "web")], seq_len=32, vocab=300), tmp_path / "a"))
    moved = tmp_path / "elsewhere" / "deeper"
    shutil.copytree(corpus, moved / "corpus")
    b = Pool(build_pool(tiny_pool_config([str(moved / "corpus" / "web")], seq_len=32, vocab=300), tmp_path / "b"))
    assert a.meta["inputs"][0]["path"] != b.meta["inputs"][0]["path"]
    assert a.pool_id == b.pool_id
    # and the finished pool is reused from its new place (same fingerprint)
    cfg = tiny_pool_config([str(moved / "corpus" / "web")], seq_len=32, vocab=300)
    assert build_pool(cfg, tmp_path / "a") == tmp_path / "a"


def test_reuse_names_the_differing_key(tmp_path):
    out = tmp_path / "x"
    with atomic_dir(out, kind="scores", fingerprint={"score.batch": "8", "pool_id": '"ab"'}) as tmp:
        (tmp / "scores.npy").write_bytes(b"123")
    assert reuse(out, "scores", {"score.batch": "8", "pool_id": '"ab"'})
    with pytest.raises(IncompatibleArtifacts, match=r"pool_id: \"ab\" -> \"cd\".*--force"):
        reuse(out, "scores", {"score.batch": "8", "pool_id": '"cd"'})
    assert not reuse(out, "scores", {"score.batch": "8", "pool_id": '"cd"'}, force=True)
    with pytest.raises(OutputConflict, match="holds a scores, not a pool"):
        reuse(out, "pool", {})
    (out / "scores.npy").write_bytes(b"12")  # truncated after it was certified
    with pytest.raises(IncompatibleArtifacts, match="scores.npy has 2 bytes, DONE certified 3"):
        reuse(out, "scores", {"score.batch": "8", "pool_id": '"ab"'})


def test_the_error_line_starts_on_a_fresh_line_after_a_progress_bar(tmp_path, capsys, monkeypatch):
    """A bad line mid-file stops `pool build` with its bar drawn; the old CLI printed the error
    right after the bar, on the same terminal line."""
    from datamates.cli import main

    tok = data_dir() / "tokenizer" / "gpt-neox-20b" / "tokenizer.json"
    if not tok.exists():
        pytest.skip(f"sample data not found at {data_dir()}; set DATAMATES_DATA to the data bundle")
    monkeypatch.setenv("DATAMATES_PROGRESS", "1")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jsonl").write_text('{"text": "hello world, a first document"}\n{"text": "a second one"}\n{oops\n')
    rc = main(["pool", "build", "--input", str(bad), "--out", str(tmp_path / "p"), "--tokenizer", str(tok),
               "--seq-len", "8", "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2
    i = err.index("datamates pool: error: ")
    assert "pool build" in err[:i]  # the bar was drawn
    assert err[i - 1] in "\r\n", repr(err[max(0, i - 80) : i + 40])
    assert "a.jsonl:3: malformed JSON" in err[i:].splitlines()[0]


def test_a_truncated_pool_file_is_refused_on_open(corpus, tmp_path):
    from datamates_testing import tiny_pool_config

    from datamates.errors import ArtifactMissing

    out = build_pool(tiny_pool_config([str(corpus / "web")], seq_len=32, vocab=300), tmp_path / "p")
    Pool(out)
    f = out / "seq_doc_idx.npy"
    f.write_bytes(f.read_bytes()[:-8])
    with pytest.raises(ArtifactMissing, match=r"p: the pool is damaged \(seq_doc_idx.npy has .* bytes, DONE certified"):
        Pool(out)


def test_a_user_error_drops_the_partial_it_started_but_not_a_resumed_one(tmp_path):
    from datamates.errors import InputError

    out = tmp_path / "x"
    with pytest.raises(InputError), atomic_dir(out, resume=True, kind="scores", fingerprint={"a": "1"}) as tmp:
        (tmp / "half").write_text("bad input")
        raise InputError("x.jsonl:2: malformed JSON")
    assert not (tmp_path / "x.partial").exists()  # the fixed re-run starts clean, with the new fingerprint
    with pytest.raises(KeyboardInterrupt), atomic_dir(out, resume=True, kind="scores", fingerprint={"a": "1"}) as tmp:
        (tmp / "shard_0").write_text("work")
        raise KeyboardInterrupt  # Ctrl-C keeps the work for the resume
    with pytest.raises(InputError), atomic_dir(out, resume=True, kind="scores", fingerprint={"a": "1"}) as tmp:
        assert (tmp / "shard_0").read_text() == "work"
        raise InputError("later input")
    assert (tmp_path / "x.partial" / "shard_0").exists()  # a resumed partial holds earlier work: kept


def test_produce_records_the_seconds_build_took(tmp_path):
    """The seconds of an artifact are measured by produce, around build, and written into meta.json
    beside the stamped record build returns (no stage times itself); a meta without a clock stays
    byte-exact, and a build that returns None writes no meta.json."""
    import json

    from datamates.artifacts import Output, produce

    calls = []

    def build(tmp: Path) -> dict:
        calls.append(tmp)
        (tmp / "data").write_text("x")
        return {"produced_by": "test", "created": "now", "tokens": {}}

    out = produce(Output(tmp_path / "a", "test", {"k": 1}), build)
    meta = json.loads((out / "meta.json").read_text())
    assert set(meta) == {"produced_by", "created", "tokens", "seconds"} and isinstance(meta["seconds"], float)
    assert meta["seconds"] >= 0
    assert produce(Output(tmp_path / "a", "test", {"k": 1}), build) == out and len(calls) == 1  # reused
    assert json.loads((out / "meta.json").read_text()) == meta  # a reuse does not touch it
    produce(Output(tmp_path / "b", "test", {"k": 1}), lambda tmp: (tmp / "data").write_text("y") and None)
    assert not (tmp_path / "b" / "meta.json").exists()
    produce(Output(tmp_path / "c", "test", {"k": 1}), lambda tmp: {"n": 1})  # no clock (the pool's): none added
    assert json.loads((tmp_path / "c" / "meta.json").read_text()) == {"n": 1}
