"""The reliability catalogue (docs/reliability.md): every user mistake the README promises to catch,
driven through the real command line on tiny inputs made here.

Each case asserts exit code 2 (130 for Ctrl-C), exactly one error line on stderr that names the
file, line, key or flag at fault, no traceback, and no partial artifact left where the output
would have gone. Lines before the error line are allowed only if they are the command's own log
records (progress a person reads, e.g. "training a byte-level BPE tokenizer"), never stray output.

Most cases run `datamates.cli.main([...])` in-process (stderr and the exit code captured: the
command line without the interpreter's start-up cost); the fault cases (kill -9, a second writer,
SIGINT) run `python -m datamates` in a subprocess, as a user would.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import itertools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from datamates_testing import TINY_YAML

from datamates.cli import main


@dataclass
class Result:
    rc: int
    out: str
    err: str
    logged: list[str] = field(default_factory=list)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def cli(*argv: object) -> Result:
    """`datamates ARGV` in this process: exit code, stdout, stderr and the log records emitted."""
    out, err, rec = io.StringIO(), io.StringIO(), _Records()
    logger = logging.getLogger("datamates")
    logger.addHandler(rec)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main([str(a) for a in argv])
            except SystemExit as e:  # argparse: --help, a bad flag
                rc = e.code if isinstance(e.code, int) else 2
    finally:
        logger.removeHandler(rec)
    return Result(rc, out.getvalue(), err.getvalue(), rec.messages)


def cli_one_thread(*argv: object) -> Result:
    """`cli` with one torch thread, as the subprocesses run (OMP_NUM_THREADS=1): float sums depend on
    the thread count, so a reference computed in-process must use the same one."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return cli(*argv)
    finally:
        torch.set_num_threads(n)


def _env() -> dict[str, str]:
    env = {**os.environ, "DATAMATES_PROGRESS": "0", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1"}  # a 16-wide model gains nothing from a second thread on shared cores
    env.pop("DATAMATES_FAULT", None)
    return env


def cli_process(*argv: object, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "datamates", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(), **kw)


def assert_one_error_line(r: Result, *names: str, code: int = 2) -> str:
    """Exit `code`; stderr ends with the only error line, which names every string in `names`;
    anything before it is the command's own log records; no traceback."""
    assert r.rc == code, f"exit code {r.rc}, expected {code}; stderr:\n{r.err}"
    assert "Traceback" not in r.err, r.err
    lines = [ln for ln in r.err.splitlines() if ln.strip()]
    assert lines, "no message on stderr"
    errors = [ln for ln in lines if ln.startswith("datamates") and ": error: " in ln]
    assert len(errors) == 1 and lines[-1] == errors[0], f"expected one error line, last; stderr:\n{r.err}"
    for ln in lines[:-1]:
        assert ln in r.logged, f"stray stderr line (not a log record): {ln!r}"
    for n in names:
        assert n in errors[0], f"{n!r} not named in: {errors[0]}"
    return errors[0]


def assert_nothing_written(*paths: Path) -> None:
    """Neither the output nor its `.partial` scratch folder nor its lock file is left."""
    for p in paths:
        p = Path(p)
        for q in (p, p.with_name(p.name + ".partial"), p.with_name(f".{p.name}.lock")):
            assert not q.exists(), f"{q} was left behind"


# ----------------------------------------------------------------------------- shared tiny inputs


@dataclass
class World:
    root: Path
    cfg: Path
    corpus: Path
    pool: Path
    ckpt: Path
    pool2: Path  # another tokenizer (another vocabulary)

    def tiny(self, *extra: object) -> list[object]:
        return ["-c", self.cfg, *extra]


def _lines(src: Path, n: int) -> list[str]:
    with gzip.open(src, "rt", encoding="utf-8") as fh:
        return list(itertools.islice(fh, n))


@pytest.fixture(scope="session")
def world(data: Path, tmp_path_factory) -> World:
    """One tiny pool (50 real documents, 2 domains), one tiny checkpoint (2 AdamW steps) and a
    second pool with another tokenizer, built once per session through the CLI itself."""
    root = tmp_path_factory.mktemp("bad_input")
    corpus = root / "corpus"
    for domain, f, n in (("web", "pretrain/web/c4_100_domains_theguardian_10.jsonl.gz", 40),
                         ("wiki", "pretrain/wiki/nq_open_oracle_wikipedia_passages.jsonl.gz", 40)):
        (corpus / domain).mkdir(parents=True)
        (corpus / domain / "part.jsonl").write_text("".join(_lines(data / f, n)))
    cfg = root / "tiny.yaml"
    cfg.write_text(TINY_YAML + f"runs_root: {root / 'runs'}\n")
    w = World(root, cfg, corpus, root / "pool", root / "ckpt", root / "pool2")
    r = cli("pool", "build", *w.tiny("--input", corpus, "--out", w.pool, "--run-dir", root / "run"))
    assert r.rc == 0, r.err
    r = cli("train", *w.tiny("--pool", w.pool, "--out", w.ckpt, "--run-dir", root / "run"))
    assert r.rc == 0, r.err
    r = cli("pool", "build", *w.tiny("--input", corpus / "wiki", "--out", w.pool2, "--run-dir", root / "run",
                                     "--set", "pool.tokenizer.vocab_size=280"))
    assert r.rc == 0, r.err
    return w


# ----------------------------------------------------------------------------- the cases
#
# A case gets the shared World and its own empty folder `t`; it returns (argv, names the error line
# must contain, outputs that must not exist afterwards).

Case = Callable[[World, Path], tuple[list[object], list[str], list[Path]]]
CASES: dict[str, dict[str, Case]] = {"config": {}, "pool": {}, "artifacts": {}, "ids": {}}


def case(area: str, name: str):
    def deco(fn: Case) -> Case:
        CASES[area][name] = fn
        return fn
    return deco


def _yaml(t: Path, text: str) -> Path:
    p = t / "bad.yaml"
    p.write_text(TINY_YAML + text)
    return p


def _pool_build(w: World, t: Path, inputs: Path | str, *extra: object):
    out = t / "out"
    return (["pool", "build", *w.tiny("--input", inputs, "--out", out, "--run-dir", t / "run", *extra)], out)


# --- config ------------------------------------------------------------------------------------

@case("config", "unknown key in the YAML file")
def _(w, t):
    p = t / "bad.yaml"
    p.write_text("train:\n  lrr: 1\n")
    return ["config", "show", "-c", p], [str(p), "unknown key 'train.lrr'", "allowed keys here: "], []


@case("config", "unknown key by --set")
def _(w, t):
    return ["config", "show", *w.tiny("--set", "train.lrr=1")], ["--set train.lrr=1", "unknown key 'train.lrr'"], []


@case("config", "a deprecated executor key and its new spelling disagree")
def _(w, t):
    return (["config", "show", *w.tiny("--set", "mates.score.workers=2", "--set", "mates.score.executor.workers=3")],
            ["--set mates.score.workers=2", "mates.score.executor.workers = 3", "keep mates.score.executor.workers"], [])


@case("config", "out of range in a deprecated executor key names the --set")
def _(w, t):
    return (["config", "show", *w.tiny("--set", "ablation.branch.workers=0")],
            ["--set ablation.branch.workers=0: ablation.branch.executor.workers = 0: must be >= 1"], [])


@case("config", "wrong type")
def _(w, t):
    p = t / "bad.yaml"
    p.write_text("train:\n  lr: fast\n")
    return ["config", "show", "-c", p], [str(p), "train.lr = 'fast'", "expected float"], []


@case("config", "out of range in the YAML file")
def _(w, t):
    p = t / "bad.yaml"
    p.write_text("train:\n  warmup_steps: -1\n")
    return ["config", "show", "-c", p], [str(p), "train.warmup_steps = -1", ">= 0"], []


@case("config", "out of range by --set names the --set, not the file")
def _(w, t):
    return (["config", "show", *w.tiny("--set", "train.lr=-1")],
            ["error: --set train.lr=-1: train.lr = -1.0: must be > 0"], [])


@case("config", "out of range by a CLI flag names the flag")
def _(w, t):
    argv, out = _pool_build(w, t, w.corpus, "--seq-len", 0)
    return argv, ["error: --seq-len 0: pool.seq_len = 0: must be >= 8"], [out]


@case("config", "rule across keys broken by --set names the --set")
def _(w, t):
    return (["config", "show", *w.tiny("--set", "train.schedule=wsd")],
            ["--set train.schedule=wsd", "decay_steps"], [])


@case("config", "malformed YAML")
def _(w, t):
    p = t / "bad.yaml"
    p.write_text("train:\n  lr: 0.1\n   steps: [3\n")
    return ["config", "show", "-c", p], [f"{p}: line 3", "not valid YAML"], []


@case("config", "missing config file")
def _(w, t):
    return ["config", "show", "-c", t / "nope.yaml"], [f"{t / 'nope.yaml'}: config file not found"], []


@case("config", "unknown config name")
def _(w, t):
    return ["config", "show", "-c", "no_such_config"], ["config 'no_such_config' not found", "tiny_cpu"], []


@case("config", "a folder where a config file is expected")
def _(w, t):
    return ["config", "show", "-c", t], [f"{t}: is a folder"], []


@case("config", "unknown preset")
def _(w, t):
    return (["config", "show", *w.tiny("--set", "model.preset=pythia-9t")],
            ["--set model.preset=pythia-9t", "unknown preset", "pythia-160m"], [])


@case("config", "unknown selector")
def _(w, t):
    return (["run", *w.tiny("--set", "mates.selectors=[random,nope]", "--run-dir", t / "run")],
            ["mates.selectors", "'nope'", "available"], [t / "run" / "config.yaml"])


@case("config", "unknown selector in config show (run refuses it)")
def _(w, t):
    return (["config", "show", *w.tiny("--set", "mates.selectors=[random,nope]")],
            ["mates.selectors", "'nope'", "available"], [])


@case("config", "a garbled runs/<name>/config.yaml")
def _(w, t):
    (t / "run").mkdir()
    (t / "run" / "config.yaml").write_text("name: tiny\npool: {seq_len: 32\n  tokenizer: [\n")
    return (["run", *w.tiny("--run-dir", t / "run")], [str(t / "run" / "config.yaml"), "not valid YAML"],
            [t / "run" / "pool"])


@case("config", "--set without =")
def _(w, t):
    return ["config", "show", *w.tiny("--set", "train.lr")], ["--set 'train.lr'", "KEY=VALUE"], []


@case("config", "--set into a value that is not a section")
def _(w, t):
    return ["config", "show", *w.tiny("--set", "name.x=1")], ["--set name.x=1", "'name' is not a section"], []


@case("config", "a flag of the wrong type (argparse, one line)")
def _(w, t):
    argv, out = _pool_build(w, t, w.corpus, "--seq-len", "long")
    return argv, ["datamates pool: error: argument --seq-len: invalid int value: 'long'", "--help"], [out]


@case("config", "a stage number of 0 (stages count from 1)")
def _(w, t):
    return (["select", "--stage", 0, *w.tiny("--run-dir", t / "run")],
            ["datamates select: error: argument --stage: 0: must be >= 1"], [t / "run" / "stage_00"])


@case("config", "keep -k 0 sequences")
def _(w, t):
    return (["select", "-k", 0, "--ids", t / "ids.txt", "--pool", w.pool, "--out", t / "sel",
             *w.tiny("--run-dir", t / "run")], ["datamates select: error: argument -k: 0: must be >= 1"], [t / "sel"])


@case("config", "unknown verb")
def _(w, t):
    return ["probee"], ["datamates: error: argument VERB: invalid choice: 'probee'"], []


@case("config", "run name that escapes runs_root")
def _(w, t):
    return ["config", "show", *w.tiny("--set", "name=../elsewhere")], ["--set name=../elsewhere", "plain name"], []


@case("config", "empty run name")
def _(w, t):
    return ["config", "show", *w.tiny("--set", "name=")], ["name = ''", "plain name"], []


@case("config", "task name that escapes the output folder")
def _(w, t):
    spec = t / "evil.yaml"
    spec.write_text("task: ../../evil\ndataset_path: json\ndata_files: x.jsonl\ntest_split: test\n"
                    "output_type: loglikelihood\ndoc_to_text: a\ndoc_to_target: b\n")
    out = t / "ev"
    return (["evaluate", "--checkpoint", w.ckpt, "--tasks", spec, "--reference", "--out", out, "-c", w.cfg],
            [f"{spec}:1", "task = '../../evil'", "plain name"], [out])


# --- pool inputs -------------------------------------------------------------------------------

def _jsonl(t: Path, *lines: str, name: str = "x.jsonl") -> Path:
    d = t / "in"
    d.mkdir(exist_ok=True)
    (d / name).write_text("".join(ln + "\n" for ln in lines))
    return d


DOC = json.dumps({"text": "The quick brown fox jumps over the lazy dog. " * 8})


@case("pool", "malformed JSON mid-file")
def _(w, t):
    argv, out = _pool_build(w, t, _jsonl(t, DOC, DOC, '{"text": "unterminated', DOC))
    return argv, ["in/x.jsonl:3: malformed JSON"], [out]


@case("pool", "missing text field")
def _(w, t):
    argv, out = _pool_build(w, t, _jsonl(t, DOC, json.dumps({"body": "no text key"})))
    return argv, ["in/x.jsonl:2: no field 'text'", "pool.text_field"], [out]


@case("pool", "text field that is not text")
def _(w, t):
    argv, out = _pool_build(w, t, _jsonl(t, json.dumps({"text": 5})))
    return argv, ["in/x.jsonl:1: field 'text' is int"], [out]


@case("pool", "a record that is not an object")
def _(w, t):
    argv, out = _pool_build(w, t, _jsonl(t, DOC, "[1, 2]"))
    return argv, ["in/x.jsonl:2: expected a JSON object"], [out]


@case("pool", "empty file")
def _(w, t):
    argv, out = _pool_build(w, t, _jsonl(t))
    return argv, ["the pool is empty", "0 records"], [out]


@case("pool", "empty folder")
def _(w, t):
    (t / "empty").mkdir()
    argv, out = _pool_build(w, t, t / "empty")
    return argv, [f"{t / 'empty'}: no .jsonl"], [out]


@case("pool", "missing input path")
def _(w, t):
    argv, out = _pool_build(w, t, t / "nowhere")
    return argv, [f"{t / 'nowhere'}: no such file or folder"], [out]


@case("pool", "unsupported input file type")
def _(w, t):
    (t / "notes.txt").write_text("hello\n")
    argv, out = _pool_build(w, t, t / "notes.txt")
    return argv, ["notes.txt: unsupported file type"], [out]


@case("pool", "only non-UTF-8 lines")
def _(w, t):
    d = t / "in"
    d.mkdir()
    (d / "x.jsonl").write_bytes(b'{"text": "caf\xe9 \xff\xfe"}\n')
    argv, out = _pool_build(w, t, d)
    return argv, ["the pool is empty"], [out]


@case("pool", "truncated .gz")
def _(w, t):
    d = t / "in"
    d.mkdir()
    blob = gzip.compress(("".join(DOC + "\n" for _ in range(200))).encode())
    (d / "x.jsonl.gz").write_bytes(blob[: len(blob) // 2])
    argv, out = _pool_build(w, t, d)
    return argv, ["in/x.jsonl.gz: corrupt or truncated gzip file"], [out]


@case("pool", "Parquet file without the text column")
def _(w, t):
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = t / "in"
    d.mkdir()
    pq.write_table(pa.table({"body": ["some words here"] * 3}), d / "x.parquet")
    argv, out = _pool_build(w, t, d)
    return argv, ["in/x.parquet:1: no field 'text'"], [out]


@case("pool", "duplicate document ids")
def _(w, t):
    a = json.dumps({"id": "doc-1", "text": "first document " * 10})
    b = json.dumps({"id": "doc-2", "text": "second document " * 10})
    argv, out = _pool_build(w, t, _jsonl(t, a, b, a))
    return argv, ["in/x.jsonl:3: duplicate document id 'doc-1'", "pool.id_field"], [out]


@case("pool", "missing tokenizer")
def _(w, t):
    argv, out = _pool_build(w, t, w.corpus, "--tokenizer", t / "nope" / "tokenizer.json")
    return argv, [f"{t / 'nope' / 'tokenizer.json'}: tokenizer file not found"], [out]


@case("pool", "corrupt tokenizer")
def _(w, t):
    (t / "tokenizer.json").write_text('{"model": ')
    argv, out = _pool_build(w, t, w.corpus, "--tokenizer", t / "tokenizer.json")
    return argv, [f"{t / 'tokenizer.json'}: not a valid tokenizer.json"], [out]


@case("pool", "seq_len out of range")
def _(w, t):
    argv, out = _pool_build(w, t, w.corpus, "--set", "pool.seq_len=4")
    return argv, ["--set pool.seq_len=4", "pool.seq_len = 4: must be >= 8"], [out]


@case("pool", "a domain field that no record has")
def _(w, t):
    argv, out = _pool_build(w, t, w.corpus, "--set", "pool.domain_from=field", "--set", "pool.domain_field=meta.dom")
    return argv, ["pool.domain_field = 'meta.dom'", "none of the first 50 records"], [out]


def _zst_blocks(n: int = 100) -> bytes:
    """One zstandard frame of `n` documents, each flushed as its own block (as streaming writers do)."""
    import zstandard

    buf = io.BytesIO()
    with zstandard.ZstdCompressor().stream_writer(buf, closefd=False) as w:
        for i in range(n):
            w.write((json.dumps({"text": f"document {i} " * 30}) + "\n").encode())
            w.flush(zstandard.FLUSH_BLOCK)
    return buf.getvalue()


@case("pool", "a .jsonl.zst cut inside its last frame at a block boundary")
def _(w, t):
    import zstandard

    blob = _zst_blocks()
    cut = len(blob) * 6 // 10
    # the cut lands where zstandard's own stream reader returns the documents so far and stops silently
    part = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob[:cut]), read_across_frames=True).read()
    assert 0 < part.count(b"\n") < 100
    d = t / "in"
    d.mkdir()
    (d / "x.jsonl.zst").write_bytes(blob[:cut])
    argv, out = _pool_build(w, t, d)
    return argv, ["in/x.jsonl.zst: truncated zstandard file"], [out]


@case("pool", "a .jsonl.zst cut inside its only frame's header")
def _(w, t):
    d = t / "in"
    d.mkdir()
    (d / "x.jsonl.zst").write_bytes(_zst_blocks()[:5])
    argv, out = _pool_build(w, t, d)
    return argv, ["in/x.jsonl.zst: truncated zstandard file"], [out]


@case("pool", "a truncated Parquet file")
def _(w, t):
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = t / "in"
    d.mkdir()
    pq.write_table(pa.table({"text": ["some words here " * 10] * 50}), d / "x.parquet")
    blob = (d / "x.parquet").read_bytes()
    (d / "x.parquet").write_bytes(blob[: len(blob) - 40])
    argv, out = _pool_build(w, t, d)
    return argv, ["in/x.parquet: not a readable Parquet file: truncated"], [out]


# --- artifacts ---------------------------------------------------------------------------------

def _ckpt_copy(w: World, t: Path, name: str = "ck") -> Path:
    dst = t / name
    shutil.copytree(w.ckpt, dst)
    return dst


def _truncated(w: World, t: Path) -> Path:
    ck = _ckpt_copy(w, t)
    data = (ck / "model.safetensors").read_bytes()
    (ck / "model.safetensors").write_bytes(data[: len(data) // 2])
    return ck


def _evaluate(w: World, ck: Path, out: Path, *extra: object) -> list[object]:
    return ["evaluate", "--checkpoint", ck, "--tasks", "--reference", "--heldout", w.pool, "--out", out,
            "-c", w.cfg, *extra]


@case("artifacts", "checkpoint without model.safetensors")
def _(w, t):
    ck = _ckpt_copy(w, t)
    (ck / "model.safetensors").unlink()
    return _evaluate(w, ck, t / "ev"), [f"{ck}: not a checkpoint", "model.safetensors"], [t / "ev"]


@case("artifacts", "truncated model.safetensors: evaluate")
def _(w, t):
    ck = _truncated(w, t)
    return _evaluate(w, ck, t / "ev"), [f"{ck / 'model.safetensors'}: not a complete safetensors file"], [t / "ev"]


@case("artifacts", "truncated model.safetensors: export (not copied as loadable)")
def _(w, t):
    ck = _truncated(w, t)
    return (["export", "--checkpoint", ck, "--out", t / "hf"],
            [f"{ck / 'model.safetensors'}: not a complete safetensors file"], [t / "hf"])


@case("artifacts", "truncated model.safetensors: train --init")
def _(w, t):
    ck = _truncated(w, t)
    return (["train", *w.tiny("--pool", w.pool, "--init", ck, "--out", t / "c2", "--run-dir", t / "run")],
            [f"{ck / 'model.safetensors'}: not a complete safetensors file"], [t / "c2"])


@case("artifacts", "truncated model.safetensors: merge")
def _(w, t):
    ck = _truncated(w, t)
    return (["merge", w.ckpt, ck, "--out", t / "m", *w.tiny("--run-dir", t / "run")],
            [f"{ck / 'model.safetensors'}: not a complete safetensors file"], [t / "m"])


@case("artifacts", "model.safetensors that is not safetensors at all")
def _(w, t):
    ck = _ckpt_copy(w, t)
    (ck / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + bytes(64))
    return _evaluate(w, ck, t / "ev"), [f"{ck / 'model.safetensors'}: not a complete safetensors file"], [t / "ev"]


@case("artifacts", "config.json whose vocab size disagrees with the weights")
def _(w, t):
    ck = _ckpt_copy(w, t)
    c = json.loads((ck / "config.json").read_text())
    c["vocab_size"] += 128
    (ck / "config.json").write_text(json.dumps(c))
    return (_evaluate(w, ck, t / "ev"),
            [f"{ck / 'config.json'}: vocab_size = {c['vocab_size']}", "embedding rows"], [t / "ev"])


@case("artifacts", "config.json that is not JSON")
def _(w, t):
    ck = _ckpt_copy(w, t)
    (ck / "config.json").write_text("{not json")
    return _evaluate(w, ck, t / "ev"), [f"{ck / 'config.json'}: not valid JSON"], [t / "ev"]


@case("artifacts", "checkpoint of another vocabulary (train --init on another pool)")
def _(w, t):
    return (["train", *w.tiny("--pool", w.pool2, "--init", w.ckpt, "--out", t / "c2", "--run-dir", t / "run")],
            [str(w.ckpt), "tokenizer"], [t / "c2"])


@case("artifacts", "probe from a checkpoint without optimizer state")
def _(w, t):
    assert cli("export", "--checkpoint", w.ckpt, "--out", t / "hf").rc == 0
    ids = t / "ids.txt"
    ids.write_text("1\n2\n")
    return (["probe", "--checkpoint", t / "hf", "--pool", w.pool, "--candidates", ids, "--out", t / "pr",
             "--reference", w.pool, *w.tiny("--run-dir", t / "run")],
            [str(t / "hf"), "optimizer"], [t / "pr"])


def _scores_of(pool_dir: Path, out: Path) -> Path:
    """A finished scores folder (the score stage's own file format) for `pool_dir`."""
    from datamates.core.pool import Pool
    from datamates.run_dir import atomic_dir
    from datamates.selection.scores_io import SIGN, shard_name, write_shard

    pool = Pool(pool_dir)
    ids = np.arange(len(pool), dtype=np.int64)
    meta = {"sign": SIGN, "pool_id": pool.pool_id, "model_hash": "m0", "label_mean": 0.0, "label_std": 1.0,
            "shards": [shard_name(0)], "n": len(ids)}
    with atomic_dir(out, meta=meta) as tmp:
        write_shard(tmp / shard_name(0), ids, np.linspace(-1, 1, len(ids)), pool_id=pool.pool_id, model_hash="m0")
    return out


@case("artifacts", "a scores folder of another pool")
def _(w, t):
    s = _scores_of(w.pool2, t / "scores")
    return (["select", "--scores", s, "--pool", w.pool, "--out", t / "sel", *w.tiny("--run-dir", t / "run")],
            [str(s), "pool_id"], [t / "sel"])


@case("artifacts", "labels with NaN")
def _(w, t):
    import pyarrow as pa
    import pyarrow.parquet as pq

    lab = t / "probe"
    lab.mkdir()
    pq.write_table(pa.table({"seq_id": np.array([0, 1, 2, 3], np.int64),
                             "ref_loss_delta": np.array([0.1, np.nan, -0.2, 0.0])}), lab / "labels.parquet")
    return (["fit", "--labels", lab, "--pool", w.pool, "--out", t / "dim", *w.tiny("--run-dir", t / "run")],
            [str(lab / "labels.parquet"), "NaN"], [t / "dim"])


@case("artifacts", "a fraction of 0")
def _(w, t):
    s = _scores_of(w.pool, t / "scores")
    return (["select", "--scores", s, "--pool", w.pool, "--out", t / "sel", "--fraction", 0,
             *w.tiny("--run-dir", t / "run")], ["--fraction 0", "mates.select.fraction"], [t / "sel"])


@case("artifacts", "a fraction of 1.5")
def _(w, t):
    s = _scores_of(w.pool, t / "scores")
    return (["select", "--scores", s, "--pool", w.pool, "--out", t / "sel", "--fraction", 1.5,
             *w.tiny("--run-dir", t / "run")], ["--fraction 1.5", "mates.select.fraction"], [t / "sel"])


@case("artifacts", "a task spec naming a missing field")
def _(w, t):
    (t / "d.jsonl").write_text(json.dumps({"q": "Is the sky blue?", "a": "yes"}) + "\n")
    spec = t / "mine.yaml"
    spec.write_text("task: mine\ndataset_path: json\ndata_files: d.jsonl\ntest_split: test\n"
                    "output_type: loglikelihood\ndoc_to_text: '{{question}}'\ndoc_to_target: ' {{a}}'\n")
    out = t / "ev"
    return (["evaluate", "--checkpoint", w.ckpt, "--tasks", spec, "--reference", "--out", out, "-c", w.cfg],
            ["d.jsonl:1", "'question' is undefined", "doc_to_text"], [out])


@case("artifacts", "an lm-eval task YAML with a !function hook")
def _(w, t):
    (t / "d.jsonl").write_text(json.dumps({"sentence": "The cat _ sat.", "option1": "a", "option2": "b"}) + "\n")
    spec = t / "wino.yaml"
    spec.write_text("task: wino\ndataset_path: json\ndata_files: d.jsonl\nvalidation_split: train\n"
                    "output_type: multiple_choice\ndoc_to_text: !function preprocess.doc_to_text\n"
                    "doc_to_choice: '{{[option1, option2]}}'\ndoc_to_target: 0\n")
    out = t / "ev"
    return (["evaluate", "--checkpoint", w.ckpt, "--tasks", spec, "--reference", "--out", out, "-c", w.cfg],
            [f"{spec}:6", "!function preprocess.doc_to_text", "Jinja2 template"], [out])


@case("artifacts", "an lm-eval task YAML with an unknown key")
def _(w, t):
    (t / "d.jsonl").write_text(json.dumps({"q": "Is the sky blue?", "c": ["yes", "no"], "g": 0}) + "\n")
    spec = t / "mine.yaml"
    spec.write_text("task: mine\ndataset_path: json\ndata_files: d.jsonl\ntest_split: test\n"
                    "output_type: multiple_choice\ndoc_to_text: q\ndoc_to_choices: c\ndoc_to_target: g\n")
    out = t / "ev"
    return (["evaluate", "--checkpoint", w.ckpt, "--tasks", spec, "--reference", "--out", out, "-c", w.cfg],
            [f"{spec}:7", "unknown key 'doc_to_choices'", "allowed keys"], [out])


@case("artifacts", "a missing task file")
def _(w, t):
    out = t / "ev"
    return (["evaluate", "--checkpoint", w.ckpt, "--tasks", t / "missing.yaml", "--reference", "--out", out,
             "-c", w.cfg], [str(t / "missing.yaml")], [out])


@case("artifacts", "an unknown task name")
def _(w, t):
    out = t / "ev"
    return (["evaluate", "--checkpoint", w.ckpt, "--tasks", "sciqq", "--reference", "--out", out, "-c", w.cfg],
            ["sciqq"], [out])


@case("artifacts", "a missing pool")
def _(w, t):
    return (["train", *w.tiny("--pool", t / "nope", "--out", t / "c2", "--run-dir", t / "run")],
            [str(t / "nope"), "datamates pool build"], [t / "c2"])


@case("artifacts", "a checkpoint given where a pool is expected")
def _(w, t):
    return (["train", *w.tiny("--pool", w.ckpt, "--out", t / "c2", "--run-dir", t / "run")], [str(w.ckpt), "pool"],
            [t / "c2"])


@case("artifacts", "--out pointing at an input data file")
def _(w, t):
    f = t / "mine.jsonl"
    f.write_text(DOC + "\n")
    return (["pool", "build", *w.tiny("--input", w.corpus, "--out", f, "--run-dir", t / "run")],
            [f"{f}: is a file"], [])


@case("artifacts", "--out pointing at a folder that is not an artifact")
def _(w, t):
    d = t / "mine"
    d.mkdir()
    (d / "notes.txt").write_text("keep me\n")
    return (["train", *w.tiny("--pool", w.pool, "--out", d, "--run-dir", t / "run")], [str(d)], [])


def _fasttext_bin(t: Path) -> Path:
    """A real fastText model (trained here, a few KB)."""
    fasttext = pytest.importorskip("fasttext")
    tr = t / "ft.txt"
    tr.write_text("".join(f"__label__hq good careful prose number {i}\n__label__cc buy cheap pills now {i}\n"
                          for i in range(40)))
    m = fasttext.train_supervised(input=str(tr), dim=8, bucket=1000, wordNgrams=2, thread=1, verbose=0, epoch=2, seed=0)
    m.save_model(str(t / "ft.bin"))
    tr.unlink()
    return t / "ft.bin"


@case("artifacts", "a fastText .bin cut to half its size (score-with classifier)")
def _(w, t):
    b = _fasttext_bin(t)
    blob = b.read_bytes()
    b.write_bytes(blob[: len(blob) // 2])  # fastText's loader takes it and scores every document -0.0
    return (["score-with", "classifier", "--model", b, "--pool", w.pool, "--out", t / "sc",
             *w.tiny("--run-dir", t / "run")], [f"{b}: not a complete fastText model", "truncated"], [t / "sc"])


@case("artifacts", "the first 300 bytes of a fastText .bin (the loader used to grow without bound)")
def _(w, t):
    b = _fasttext_bin(t)
    b.write_bytes(b.read_bytes()[:300])
    return (["score-with", "classifier", "--model", b, "--pool", w.pool, "--out", t / "sc",
             *w.tiny("--run-dir", t / "run")], [f"{b}: not a complete fastText model", "dictionary"], [t / "sc"])


def _selection_of(w: World, t: Path, pool: Path, ids=None) -> Path:
    """A selection folder (select's own command) of `pool`; `ids` replaces its ids.npy."""
    s = _scores_of(pool, t / "scores")
    r = cli("select", "--scores", s, "--pool", pool, "--out", t / "sel", "-k", 5, *w.tiny("--run-dir", t / "run"))
    assert r.rc == 0, r.err
    if ids is not None:
        np.save(t / "sel" / "ids.npy", ids, allow_pickle=True)
    shutil.rmtree(t / "scores")
    shutil.rmtree(t / "run")
    return t / "sel"


@case("artifacts", "export --selection with --pool another pool")
def _(w, t):
    sel = _selection_of(w, t, w.pool)
    return (["export", "--format", "hf", "--selection", sel, "--pool", w.pool2, "--out", t / "hf"],
            [f"--selection {sel}", "pool_id", str(w.pool2)], [t / "hf"])


def _scores_edit(w: World, t: Path, edit: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]) -> Path:
    """`_scores_of(w.pool)` with its shard's rows rewritten by `edit` (meta.json left as it was)."""
    from datamates.core.pool import Pool
    from datamates.selection.scores_io import read_shard, shard_name, write_shard

    s = _scores_of(w.pool, t / "scores")
    pid = Pool(w.pool).pool_id
    ids, sc = edit(*read_shard(s / shard_name(0)))
    write_shard(s / shard_name(0), ids, sc, pool_id=pid, model_hash="m0")
    return s


def _select_scores(w: World, t: Path, s: Path) -> list[object]:
    return ["select", "--scores", s, "--pool", w.pool, "--out", t / "sel", *w.tiny("--run-dir", t / "run")]


@case("artifacts", "a scores folder whose shard holds fewer rows than its meta.json says")
def _(w, t):
    s = _scores_edit(w, t, lambda i, v: (i[:-10], v[:-10]))
    return _select_scores(w, t, s), [str(s), "rows", "meta.json says n ="], [t / "sel"]


@case("artifacts", "a scores folder with a duplicated sequence id")
def _(w, t):
    s = _scores_edit(w, t, lambda i, v: (np.where(np.arange(len(i)) == 3, i[2], i), v))
    return _select_scores(w, t, s), [str(s), "sequence id 2 has 2 rows"], [t / "sel"]


@case("artifacts", "a scores folder with one NaN among its scores (the real count, the first id)")
def _(w, t):
    s = _scores_edit(w, t, lambda i, v: (i, np.where(np.arange(len(v)) == 7, np.nan, v)))
    return _select_scores(w, t, s), ["shard_00000.parquet", "1 of", "scores are NaN or inf", "sequence id 7"], [t / "sel"]


@case("artifacts", "score with an influence model fitted on another pool")
def _(w, t):
    from datamates.run_dir import atomic_dir, atomic_write_json

    model = t / "dim"
    with atomic_dir(model, meta={"produced_by": "fit"}) as tmp:
        atomic_write_json(tmp / "influence_config.json", {"pool_id": "0123456789abcdef", "model_hash": "m0",
                                                          "mode": "frozen"})
    return (["score", "--model", model, "--pool", w.pool, "--out", t / "sc", *w.tiny("--run-dir", t / "run")],
            [f"--model {model}", "pool_id 0123456789abcdef"], [t / "sc"])


def _partitions(w: World, t: Path) -> Path:
    run = t / "run"
    r = cli("partition", "--pool", w.pool, "--by", "domain", *w.tiny("--run-dir", run, "--set",
                                                                     "ablation.partition.heldout_sequences=2"))
    assert r.rc == 0, r.err
    return run


@case("artifacts", "merge --groups naming a unit twice (its tokens counted twice)")
def _(w, t):
    run = _partitions(w, t)
    return (["merge", "--groups", "web;web", "--out", t / "m", *w.tiny("--run-dir", run)],
            ["--groups 'web;web'", "unit 'web' is named in two groups"], [t / "m"])


@case("artifacts", "merge --groups with --method task_arithmetic (silently a weighted mean)")
def _(w, t):
    run = _partitions(w, t)
    return (["merge", "--groups", "web;wiki", "--method", "task_arithmetic", "--out", t / "m", *w.tiny("--run-dir", run)],
            ["--groups with --method task_arithmetic"], [t / "m"])


# --- sequence id files (one loader for every verb) ---------------------------------------------

def _train_ids(w: World, t: Path, ids: Path) -> tuple[list[object], Path]:
    out = t / "c2"
    return ["train", *w.tiny("--pool", w.pool, "--ids", ids, "--out", out, "--run-dir", t / "run")], out


def _npy(t: Path, arr) -> Path:
    p = t / "ids.npy"
    np.save(p, arr, allow_pickle=True)
    return p


@case("ids", "an object array")
def _(w, t):
    argv, out = _train_ids(w, t, _npy(t, np.array([1, "a", None], dtype=object)))
    return argv, ["--ids", "array of Python objects"], [out]


@case("ids", "a negative id")
def _(w, t):
    argv, out = _train_ids(w, t, _npy(t, np.array([3, -1, 4])))
    return argv, ["--ids", "position 1: sequence id -1 is negative"], [out]


@case("ids", "a non-integer id")
def _(w, t):
    argv, out = _train_ids(w, t, _npy(t, np.array([1.0, 2.5])))
    return argv, ["--ids", "position 1: 2.5 is not an integer"], [out]


@case("ids", "an id outside the pool")
def _(w, t):
    argv, out = _train_ids(w, t, _npy(t, np.array([0, 10**9])))
    return argv, ["--ids", "position 1: sequence id 1000000000 is not in the pool"], [out]


@case("ids", "an empty id list")
def _(w, t):
    argv, out = _train_ids(w, t, _npy(t, np.zeros(0, np.int64)))
    return argv, ["--ids", "non-empty 1-d list"], [out]


@case("ids", "a 2-d id array")
def _(w, t):
    argv, out = _train_ids(w, t, _npy(t, np.zeros((2, 2), np.int64)))
    return argv, ["--ids", "non-empty 1-d list"], [out]


@case("ids", "a text line that is not an id")
def _(w, t):
    p = t / "ids.txt"
    p.write_text("1\n2\nthree\n")
    argv, out = _train_ids(w, t, p)
    return argv, [f"{p}:3: not an integer sequence id: 'three'"], [out]


@case("ids", "a missing id file")
def _(w, t):
    argv, out = _train_ids(w, t, t / "none.npy")
    return argv, ["--ids", "no such id file"], [out]


@case("ids", "an object array given to export (the same loader as train)")
def _(w, t):
    sel = _selection_of(w, t, w.pool, ids=np.array([1, "a", None], dtype=object))
    return (["export", "--format", "hf", "--selection", sel, "--pool", w.pool, "--out", t / "hf"],
            [f"--selection {sel}/ids.npy", "array of Python objects"], [t / "hf"])


ALL = [(area, name) for area, cases in CASES.items() for name in cases]


def _run_case(world: World, t: Path, area: str, name: str) -> tuple[Result, list[Path]]:
    argv, names, outputs = CASES[area][name](world, t)
    before = {p: p.read_bytes() for p in t.rglob("*") if p.is_file()}
    r = cli(*argv)
    assert_one_error_line(r, *names)
    for p, data in before.items():  # a refused command leaves the user's files as they were
        assert p.exists() and p.read_bytes() == data, f"{p} was changed"
    return r, outputs


# Known defects, owned elsewhere: strict, so the fix makes them fail until this list is emptied.
XFAIL: dict[tuple[str, str], str] = {}


@pytest.mark.parametrize(("area", "name"), [
    pytest.param(a, n, marks=pytest.mark.xfail(strict=True, reason=XFAIL[(a, n)])) if (a, n) in XFAIL else (a, n)
    for a, n in ALL], ids=[f"{a}: {n}" for a, n in ALL])
def test_user_mistake_is_one_line_exit_2_and_nothing_written(world, tmp_path, area, name):
    _, outputs = _run_case(world, tmp_path, area, name)
    assert_nothing_written(*outputs)


def test_after_fixing_a_malformed_input_the_same_command_succeeds(world, tmp_path):
    """The error line tells the user what to fix; once fixed, the same command must just work
    (a user error drops the partial it started, so no --force is needed)."""
    d = _jsonl(tmp_path, DOC, '{"text": "unterminated', DOC)
    argv, out = _pool_build(world, tmp_path, d)
    assert_one_error_line(cli(*argv), "in/x.jsonl:2: malformed JSON")
    (d / "x.jsonl").write_text(DOC + "\n" + DOC + "\n")
    r = cli(*argv)
    assert r.rc == 0, r.err  # not "the interrupted pool was started from other inputs ... --force"


def test_the_catalogue_has_the_documented_number_of_cases():
    """docs/reliability.md states the count; it must be this file's."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "reliability.md").read_text()
    total = len(ALL) + len(FAULT_CASES) + len(HELD_CASES)
    assert f"**{total} cases**" in doc, f"docs/reliability.md should say **{total} cases**"


# ----------------------------------------------------------------------------- counted, not dropped

def test_undecodable_lines_are_skipped_counted_and_reported(world, tmp_path):
    """A non-UTF-8 line is not an error (web dumps have them): it is skipped, counted in meta.json
    and printed in the summary; never silently dropped."""
    d = tmp_path / "in"
    d.mkdir()
    (d / "x.jsonl").write_bytes((DOC + "\n").encode() * 20 + b'{"text": "caf\xe9"}\n' + (DOC + "\n").encode() * 20)
    r = cli("pool", "build", *world.tiny("--input", d, "--out", tmp_path / "p", "--run-dir", tmp_path / "run"))
    assert r.rc == 0, r.err
    meta = json.loads((tmp_path / "p" / "meta.json").read_text())
    assert meta["counters"]["skipped_undecodable"] == 1
    assert "1 undecodable" in r.err + r.out


def test_documents_without_the_domain_field_are_counted(world, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    rows = [json.dumps({"text": f"document number {i} " * 20, "dom": "a"}) for i in range(6)]
    rows.insert(3, json.dumps({"text": "no domain here " * 20}))
    (d / "x.jsonl").write_text("\n".join(rows) + "\n")
    r = cli("pool", "build", *world.tiny("--input", d, "--out", tmp_path / "p", "--run-dir", tmp_path / "run",
                                         "--set", "pool.domain_from=field", "--set", "pool.domain_field=dom"))
    assert r.rc == 0, r.err
    assert "warning: 1 documents have no field 'dom'" in r.out


def test_lone_surrogates_are_replaced_and_counted_in_the_pool(world, tmp_path):
    """A JSON-escaped lone surrogate (`\\ud800`) is text no encoder can write: the one rule
    (core/jsonl.replace_invalid_unicode) replaces it by U+FFFD and counts it; it used to be a
    TypeError from the tokenizer, and the partial it left was refused on the fixed input."""
    d = tmp_path / "in"
    d.mkdir()
    bad = '{"text": "half a pair \\ud800 here and \\udfff there ' + "and more words " * 10 + '"}'
    (d / "x.jsonl").write_text((DOC + "\n") * 20 + bad + "\n" + (DOC + "\n") * 20)
    r = cli("pool", "build", *world.tiny("--input", d, "--out", tmp_path / "p", "--run-dir", tmp_path / "run",
                                         "--tokenizer", world.pool / "tokenizer.json"))
    assert r.rc == 0, r.err
    meta = json.loads((tmp_path / "p" / "meta.json").read_text())
    assert meta["counters"]["replaced_invalid_unicode"] == 2
    assert meta["n_documents"] == 41
    assert "2 lone surrogate code points" in r.err + r.out


def test_lone_surrogates_in_task_data_follow_the_same_rule(world, tmp_path):
    (tmp_path / "d.jsonl").write_text('{"q": "Is the sky \\ud800 blue?", "a": "yes"}\n'
                                      '{"q": "Is grass green?", "a": "no"}\n')
    spec = tmp_path / "mine.yaml"
    spec.write_text("task: mine\ndataset_path: json\ndata_files: d.jsonl\ntest_split: test\n"
                    "output_type: loglikelihood\ndoc_to_text: '{{q}}'\ndoc_to_target: ' {{a}}'\n")
    r = cli("evaluate", "--checkpoint", world.ckpt, "--tasks", spec, "--reference", "--out", tmp_path / "ev",
            "-c", world.cfg, "--run-dir", tmp_path / "run")
    assert r.rc == 0, r.err
    assert any("1 lone surrogate code points (invalid Unicode) replaced by U+FFFD" in m for m in r.logged), r.logged


def test_the_torchrun_mailbox_never_unpickles_a_file_it_did_not_sign(tmp_path):
    """`<run>/logs/ranks/` used to be read with pickle.load: anyone able to write the run folder
    could run code in every rank. Files are now JSON (arrays as .npy, allow_pickle=False) signed with
    a key that never touches the disk, and name code only through executor.WORKERS."""
    import hashlib
    import hmac
    import inspect
    import json
    import pickle

    import numpy as np
    import torch

    from datamates import executor
    from datamates.core.loss import TargetExample
    from datamates.selection.probe.first_order import FirstOrderConstants
    from datamates.selection.probe.oracle import ProbeTask, WorkSpec, _write_chunk

    src = inspect.getsource(executor)
    assert "import pickle" not in src and "pickle." not in src and "allow_pickle=True" not in src
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    key = os.urandom(32)
    planted = tmp_path / "job_0000.json"
    planted.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(executor.ShardFailed, match="signature does not match"):
        executor._read(planted, key)
    forged = tmp_path / "end.json"
    forged.write_bytes(os.urandom(32).hex().encode() + b"\n" + pickle.dumps(Evil()))
    with pytest.raises(executor.ShardFailed, match="signature does not match"):
        executor._read(forged, key)
    # even a correctly signed file may name only datamates' registered workers, dataclasses and errors
    for name in ("os:system", "datamates.run_dir:atomic_write_bytes"):
        text = json.dumps({"arrays": [], "body": {"__ref__": name}}).encode()
        signed = tmp_path / "named.json"
        signed.write_bytes(hmac.new(key, text, hashlib.sha256).hexdigest().encode() + b"\n" + text)
        with pytest.raises(executor.ShardFailed, match="not"):
            executor._read(signed, key)
    assert not marker.exists()
    # a probe job goes through as JSON + .npy files and comes back equal
    spec = WorkSpec("ckpt", "pool", {"mode": "first_order", "lr": None}, 0.1,
                    [TargetExample((1, 2), (3,)), TargetExample((4,), (5, 6))], np.eye(3), np.arange(3.0), 0,
                    FirstOrderConstants("theta", [torch.ones(4, 3)], np.zeros(3), None))
    job = executor.Job("probe", [tmp_path / "a.npz", tmp_path / "b.npz"], ProbeTask(spec, np.arange(7), 4),
                       save=_write_chunk, sizes=[4, 3], unit="probe")
    executor._post(tmp_path / "job_0001.json", {"job": job, "todo": [0, 1], "device": "cpu"}, key)
    back = executor._read(tmp_path / "job_0001.json", key)["job"]
    assert back.save is _write_chunk and back.paths == job.paths and back.sizes == [4, 3]
    s = back.worker.spec
    assert s.examples == spec.examples and isinstance(s.examples[0].context, tuple) and s.cfg == spec.cfg
    assert np.array_equal(s.groups, spec.groups) and np.array_equal(back.worker.ids, np.arange(7))
    assert torch.equal(s.first_order.rho[0], spec.first_order.rho[0])
    executor._post(tmp_path / "ok.json", ("user", executor.ConfigError, "x"), key)
    assert executor._read(tmp_path / "ok.json", key) == ("user", executor.ConfigError, "x")


HELD_CASES = [test_undecodable_lines_are_skipped_counted_and_reported, test_documents_without_the_domain_field_are_counted,
              test_after_fixing_a_malformed_input_the_same_command_succeeds,
              test_lone_surrogates_are_replaced_and_counted_in_the_pool,
              test_lone_surrogates_in_task_data_follow_the_same_rule,
              test_the_torchrun_mailbox_never_unpickles_a_file_it_did_not_sign]


# ----------------------------------------------------------------------------- read-only outputs

@pytest.fixture
def read_only(tmp_path):
    """A folder nobody may write into, root included: mode 555, and the immutable attribute when
    running as root (root ignores modes). Skipped where neither is possible."""
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    immutable = False
    if os.geteuid() == 0:
        immutable = subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode == 0
        if not immutable:
            d.chmod(0o755)
            pytest.skip("running as root without chattr: a read-only folder cannot be made")
    try:
        yield d
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(d)], check=True)
        d.chmod(0o755)


@pytest.mark.parametrize("verb", ["pool build", "train", "evaluate"])
def test_read_only_output_folder_is_one_line(world, read_only, tmp_path, verb):
    out = read_only / "out"
    if verb == "pool build":
        argv = ["pool", "build", *world.tiny("--input", world.corpus, "--out", out, "--run-dir", tmp_path / "run")]
    elif verb == "train":
        argv = ["train", *world.tiny("--pool", world.pool, "--out", out, "--run-dir", tmp_path / "run")]
    else:
        argv = _evaluate(world, world.ckpt, out, "--run-dir", tmp_path / "run")
    line = assert_one_error_line(cli(*argv), str(read_only), "writable")
    assert "denied" in line or "not permitted" in line
    assert list(read_only.iterdir()) == []


@pytest.fixture
def full_disk(tmp_path):
    """A folder on a file system of one 4 KiB page (a tmpfs; needs root). Skipped elsewhere."""
    d = tmp_path / "full"
    d.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(d)],
                                           capture_output=True).returncode != 0:
        pytest.skip("a full disk needs root (a 4 KiB tmpfs)")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


@pytest.mark.parametrize("verb", ["pool build", "train", "evaluate"])
def test_a_full_disk_is_one_line(world, full_disk, tmp_path, verb):
    out = full_disk / "out"
    if verb == "pool build":
        argv = ["pool", "build", *world.tiny("--input", world.corpus, "--out", out, "--run-dir", tmp_path / "run",
                                             "--tokenizer", world.pool / "tokenizer.json")]
    elif verb == "train":
        argv = ["train", *world.tiny("--pool", world.pool, "--out", out, "--run-dir", tmp_path / "run")]
    else:
        argv = _evaluate(world, world.ckpt, out, "--run-dir", tmp_path / "run")
    assert_one_error_line(cli(*argv), "No space left on device", "free some space")


# ----------------------------------------------------------------------------- faults (subprocesses)

def _train_argv(w: World, out: Path, run: Path, steps: int = 40) -> list[object]:
    return ["train", *w.tiny("--pool", w.pool, "--out", out, "--run-dir", run, "--steps", steps,
                             "--set", "train.checkpoint_every=4", "--set", "train.log_every=10")]


def _wait_for(pred: Callable[[], bool], proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.monotonic()
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"the process ended (exit {proc.returncode}) before the fault point: "
                                 f"{proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out waiting for the fault point")
        time.sleep(0.005)


def _first_step_done(out: Path) -> Callable[[], bool]:
    part = out.with_name(out.name + ".partial")
    return lambda: any((s / "DONE").exists() for s in part.glob("step_*"))


def _files(d: Path) -> dict[str, object]:
    """A checkpoint's bytes, but for wall-clock fields: DONE and meta.json hold timestamps, the
    train log and summary seconds; trainer_state.json is compared without its `seconds` keys."""
    skip = {"DONE", "meta.json", "train_log.jsonl", "train_summary.json", "trainer_state.json"}
    out: dict[str, object] = {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file() and p.name not in skip}

    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if "seconds" not in k}
        return node

    out["trainer_state.json"] = strip(json.loads((d / "trainer_state.json").read_text()))
    assert "model.safetensors" in out and "optimizer.safetensors" in out
    return out


@pytest.fixture(scope="session")
def uninterrupted_train(world, tmp_path_factory) -> dict[str, bytes]:
    t = tmp_path_factory.mktemp("train_ref")
    r = cli_one_thread(*_train_argv(world, t / "ck", t / "run"))
    assert r.rc == 0, r.err
    return _files(t / "ck")


@pytest.mark.slow
def test_kill_9_during_train_then_the_same_command_gives_the_same_bytes(world, tmp_path, uninterrupted_train):
    out = tmp_path / "ck"
    p = cli_process(*_train_argv(world, out, tmp_path / "run"))
    _wait_for(_first_step_done(out), p)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL
    assert not out.exists() and out.with_name("ck.partial").exists()
    r = cli_process(*_train_argv(world, out, tmp_path / "run"))
    _, err = r.communicate(timeout=600)
    assert r.returncode == 0, err
    assert _files(out) == uninterrupted_train


@pytest.mark.slow
def test_ctrl_c_is_one_line_exit_130_then_resumes_to_the_same_bytes(world, tmp_path, uninterrupted_train):
    out = tmp_path / "ck"
    p = cli_process(*_train_argv(world, out, tmp_path / "run"))
    _wait_for(_first_step_done(out), p)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert_one_error_line(Result(p.returncode, "", err.replace(": interrupted", ": error: interrupted"), []),
                          "interrupted", "re-run the same command to resume", code=130)
    assert not out.exists(), "a half-written checkpoint was left under the final name"
    r = cli_process(*_train_argv(world, out, tmp_path / "run"))
    _, err = r.communicate(timeout=600)
    assert r.returncode == 0, err
    assert _files(out) == uninterrupted_train


@pytest.mark.slow
def test_a_second_train_on_the_same_output_is_refused_by_the_lock(world, tmp_path):
    out = tmp_path / "ck"
    p = cli_process(*_train_argv(world, out, tmp_path / "run", steps=100_000))
    try:
        _wait_for(_first_step_done(out), p)
        r = cli(*_train_argv(world, out, tmp_path / "run2", steps=100_000))
        assert_one_error_line(r, str(out), "another datamates process", f"pid {p.pid}")
    finally:
        p.send_signal(signal.SIGKILL)
        p.communicate(timeout=60)


def test_kill_9_during_pool_clean_up_then_the_same_command_gives_the_same_bytes(world, tmp_path):
    """(The write-out itself is covered by tests/test_artifacts.py.)"""
    ref = world.pool
    out = tmp_path / "pool"
    argv = ["pool", "build", *world.tiny("--input", world.corpus, "--out", out, "--run-dir", tmp_path / "run")]
    env = {**_env(), "DATAMATES_FAULT": "pool.cleanup"}
    k = subprocess.run([sys.executable, "-m", "datamates", *map(str, argv)], capture_output=True, text=True, env=env,
                       timeout=600)
    assert k.returncode == -signal.SIGKILL, k.stderr
    r = cli(*argv)
    assert r.rc == 0, r.err
    names = sorted(p.name for p in ref.iterdir() if p.is_file() and p.name not in ("DONE", "meta.json"))
    assert names == sorted(p.name for p in out.iterdir() if p.is_file() and p.name not in ("DONE", "meta.json"))
    for n in names:
        assert (out / n).read_bytes() == (ref / n).read_bytes(), n


def _probe_argv(w: World, cands: Path, out: Path, run: Path) -> list[object]:
    return ["probe", "--checkpoint", w.ckpt, "--pool", w.pool, "--candidates", cands, "--reference", w.pool,
            "--reference-size", 8, "--mode", "exact", "--out", out,
            *w.tiny("--run-dir", run, "--set", "mates.probe.chunk_size=4")]


@pytest.mark.slow
def test_kill_9_during_probe_then_the_same_command_gives_the_same_bytes(world, tmp_path):
    cands = tmp_path / "cands.txt"
    cands.write_text("".join(f"{i}\n" for i in range(160)))
    ref = cli_one_thread(*_probe_argv(world, cands, tmp_path / "ref", tmp_path / "run"))
    assert ref.rc == 0, ref.err
    out = tmp_path / "pr"
    p = cli_process(*_probe_argv(world, cands, out, tmp_path / "run"))
    _wait_for(lambda: any(out.with_name("pr.partial").glob("chunks/*.npz")), p)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL and not out.exists()
    r = cli_process(*_probe_argv(world, cands, out, tmp_path / "run"))
    _, err = r.communicate(timeout=600)
    assert r.returncode == 0, err
    assert (out / "labels.parquet").read_bytes() == (tmp_path / "ref" / "labels.parquet").read_bytes()


@pytest.fixture(scope="session")
def influence_model(world, tmp_path_factory) -> tuple[Path, Path]:
    """A frozen-trunk influence model (bundled MiniLM, ridge head) fitted on 24 exact probe labels."""
    t = tmp_path_factory.mktemp("dim")
    cands = t / "cands.txt"
    cands.write_text("".join(f"{i}\n" for i in range(0, 48, 2)))
    r = cli_one_thread(*_probe_argv(world, cands, t / "probe", t / "run"))
    assert r.rc == 0, r.err
    r = cli_one_thread("fit", "--labels", t / "probe", "--pool", world.pool, "--out", t / "dim", "--mode", "frozen",
                       "--cache-dir", t / "cache", *world.tiny("--run-dir", t / "run"))
    assert r.rc == 0, r.err
    return t / "dim", t / "cache"


def _score_argv(w: World, model: Path, cache: Path, out: Path, run: Path) -> list[object]:
    return ["score", "--model", model, "--pool", w.pool, "--out", out, "--cache-dir", cache,
            *w.tiny("--run-dir", run, "--set", "mates.score.shard_size=40")]


@pytest.mark.slow
def test_kill_9_during_score_then_the_same_command_gives_the_same_bytes(world, influence_model, tmp_path):
    model, cache = influence_model
    ref = cli_one_thread(*_score_argv(world, model, cache, tmp_path / "ref", tmp_path / "run"))
    assert ref.rc == 0, ref.err
    out = tmp_path / "sc"
    p = cli_process(*_score_argv(world, model, cache, out, tmp_path / "run"))
    _wait_for(lambda: any(out.with_name("sc.partial").glob("**/shard_*.parquet")), p)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL and not out.exists()
    r = cli_process(*_score_argv(world, model, cache, out, tmp_path / "run"))
    _, err = r.communicate(timeout=600)
    assert r.returncode == 0, err
    shards = sorted(q.name for q in (tmp_path / "ref").glob("shard_*.parquet"))
    assert len(shards) > 1 and shards == sorted(q.name for q in out.glob("shard_*.parquet"))
    for name in shards:
        assert (out / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name


# ----------------------------------------------------------------------------- kill -9 of the newer verbs
#
# Each verb runs in a subprocess that kills itself (SIGKILL) at its k-th os.replace: the first (the
# first file made durable inside `<out>.partial`) and the last (the rename of the finished partial
# onto `<out>`); the same command then runs to the end, and every file of `<out>` has the sha256 of
# an uninterrupted run's (meta.json and DONE compared without their wall-clock fields).

_KILLER = """
import atexit, os, signal, sys
n, seen, real = int(os.environ["DATAMATES_KILL_AT_REPLACE"]), [0], os.replace
def replace(*a, **k):
    seen[0] += 1
    if seen[0] == n:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*a, **k)
os.replace = replace
atexit.register(lambda: open(os.environ["DATAMATES_REPLACE_COUNT"], "w").write(str(seen[0])))
from datamates.cli import main
sys.exit(main(sys.argv[1:]))
"""

_CLOCK_KEYS = ("created", "seconds", "time", "elapsed", "wall")


def _digests(d: Path) -> dict[str, str]:
    import hashlib

    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if not any(c in k for c in _CLOCK_KEYS)}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    out = {}
    for p in sorted(q for q in d.rglob("*") if q.is_file()):
        rel = str(p.relative_to(d))
        if p.name == "DONE":
            continue
        data = p.read_bytes()
        if p.suffix == ".json":
            data = json.dumps(strip(json.loads(data)), sort_keys=True).encode()
        out[rel] = hashlib.sha256(data).hexdigest()
    return out


def _killed_at(argv: list[object], k: int, count: Path) -> subprocess.CompletedProcess:
    env = {**_env(), "DATAMATES_KILL_AT_REPLACE": str(k), "DATAMATES_REPLACE_COUNT": str(count)}
    return subprocess.run([sys.executable, "-c", _KILLER, *map(str, argv)], capture_output=True, text=True, env=env,
                          timeout=600)


def _kill_argv(verb: str, w: World, t: Path, out: Path) -> list[object]:
    run = ["--run-dir", t / "run"]
    if verb == "select (scores.parquet, attributes, documents)":
        s = t / "scores" if (t / "scores").exists() else _scores_of(w.pool, t / "scores")
        return ["select", "--scores", s, "--pool", w.pool, "--out", out, "--write-documents",
                *w.tiny(*run, "--set", "mates.select.write_scores=true")]
    if verb == "score-with dsir":
        ref = t / "ref.jsonl"
        if not ref.exists():
            ref.write_text("".join(json.dumps({"text": f"the reference document {i} about rivers and hills " * 6}) + "\n"
                                   for i in range(20)))
        return ["score-with", "dsir", "--reference", ref, "--pool", w.pool, "--out", out,
                *w.tiny(*run, "--set", "baselines.dsir.shard_size=300")]
    if verb == "fit (frozen encoder)":
        lab = t / "probe"
        if not lab.exists():
            import pyarrow as pa
            import pyarrow.parquet as pq

            lab.mkdir()
            rng = np.random.default_rng(0)
            pq.write_table(pa.table({"seq_id": np.arange(0, 48, 2, dtype=np.int64),
                                     "ref_loss_delta": rng.normal(0, 0.01, 24)}), lab / "labels.parquet")
        argv = ["fit", "--labels", lab, "--pool", w.pool, "--out", out, "--mode", "frozen", "--cache-dir", t / "cache",
                *w.tiny(*run)]
        if not (t / "cache").exists():  # the embedding cache warm before every run: meta.json counts the encoder
            warm = cli_one_thread(*argv[:6], t / "warm", *argv[7:])  # work each command did, not the kill's effect
            assert warm.rc == 0, warm.err
        return argv
    if verb == "export (model)":
        return ["export", "--checkpoint", w.ckpt, "--out", out]
    if verb == "merge":
        ck2 = t / "ck2" if (t / "ck2").exists() else _ckpt_copy(w, t, "ck2")
        return ["merge", w.ckpt, ck2, "--out", out, "--weights", "1,3", "--method", "weighted", *w.tiny(*run)]
    raise AssertionError(verb)


KILL_VERBS = ["select (scores.parquet, attributes, documents)", "score-with dsir", "fit (frozen encoder)",
              "export (model)", "merge"]


@pytest.mark.slow
@pytest.mark.parametrize("verb", KILL_VERBS)
def test_kill_9_of_a_newer_verb_then_the_same_command_gives_the_same_bytes(world, tmp_path, verb):
    ref = tmp_path / "ref"
    count = tmp_path / "count"
    r = _killed_at(_kill_argv(verb, world, tmp_path, ref), 0, count)  # 0: never killed; counts the renames
    assert r.returncode == 0, r.stderr
    n = int(count.read_text())
    assert n >= 2, n
    want = _digests(ref)
    assert want
    for k in sorted({1, n}):
        out = tmp_path / f"out{k}"
        argv = _kill_argv(verb, world, tmp_path, out)
        k9 = _killed_at(argv, k, count)
        assert k9.returncode == -signal.SIGKILL, k9.stderr
        again = _killed_at(argv, 0, count)
        assert again.returncode == 0, again.stderr
        got = _digests(out)
        assert got == want, (verb, k, {f for f in set(got) | set(want) if got.get(f) != want.get(f)})


FAULT_CASES = [test_kill_9_during_score_then_the_same_command_gives_the_same_bytes, test_kill_9_during_probe_then_the_same_command_gives_the_same_bytes, test_kill_9_during_train_then_the_same_command_gives_the_same_bytes,
               test_ctrl_c_is_one_line_exit_130_then_resumes_to_the_same_bytes,
               test_a_second_train_on_the_same_output_is_refused_by_the_lock,
               test_kill_9_during_pool_clean_up_then_the_same_command_gives_the_same_bytes,
               *[test_read_only_output_folder_is_one_line] * 3, *[test_a_full_disk_is_one_line] * 3,
               *[test_kill_9_of_a_newer_verb_then_the_same_command_gives_the_same_bytes] * len(KILL_VERBS)]


def test_the_error_line_starts_on_a_fresh_line_after_a_progress_bar(world, tmp_path, monkeypatch):
    """With progress bars on (the default at a terminal), an error raised mid-loop must not land
    on the bar's line: the bars are closed (and cleared) first."""
    monkeypatch.setenv("DATAMATES_PROGRESS", "1")
    d = _jsonl(tmp_path, *[DOC] * 50, '{"text": "unterminated')
    argv, out = _pool_build(world, tmp_path, d, "--tokenizer", world.pool / "tokenizer.json")  # no BPE training
    r = cli(*argv)
    assert r.rc == 2, r.err
    assert "%|" in r.err or "it/s" in r.err or "doc" in r.err, "no progress bar was drawn: the test shows nothing"
    last = r.err.rstrip("\n").split("\n")[-1].split("\r")[-1]  # what the terminal shows on the last line
    assert last.startswith("datamates pool: error: in/x.jsonl:51: malformed JSON"), repr(r.err[-300:])


HELD_CASES.append(test_the_error_line_starts_on_a_fresh_line_after_a_progress_bar)


# ----------------------------------------------------------------------------- ecosystem inputs (issue 16)
#
# Inputs datamates reads since issue 16 (docs/formats.md): each mistake is one line naming the file,
# dataset or URL and what to do, exit 2, nothing written. Same shape as CASES.

ECOSYSTEM_CASES: dict[str, Case] = {}


def ecosystem_case(name: str):
    def deco(fn: Case) -> Case:
        ECOSYSTEM_CASES[name] = fn
        return fn
    return deco


@ecosystem_case("a .zst that is not zstandard")
def _(w, t):
    d = t / "in"
    d.mkdir()
    (d / "x.jsonl.zst").write_bytes((DOC + "\n").encode() * 3)  # plain JSON lines under a .zst name
    argv, out = _pool_build(w, t, d)
    return argv, ["in/x.jsonl.zst: not a zstandard file", "give a .zst made by zstd"], [out]


@ecosystem_case("a Hugging Face dataset that does not resolve offline")
def _(w, t):
    argv, out = _pool_build(w, t, "hf:no-such-user/no-such-dataset:train")
    return argv, ["hf:no-such-user/no-such-dataset:train: the dataset does not resolve", "download it first"], [out]


@ecosystem_case("an fsspec URL with no installed filesystem backend")
def _(w, t):
    argv, out = _pool_build(w, t, "nosuchfs://bucket/corpus/")
    return argv, ["nosuchfs://bucket/corpus/: no fsspec filesystem for 'nosuchfs://' is installed"], [out]


@ecosystem_case("a token binary whose size is not a multiple of the dtype")
def _(w, t):
    d = t / "in"
    d.mkdir()
    (d / "x.bin").write_bytes(np.arange(10, dtype=np.uint16).tobytes() + b"\x01")  # 21 bytes of uint16
    argv, out = _pool_build(w, t, d, "--tokenizer", w.pool / "tokenizer.json")
    return argv, ["in/x.bin: 21 bytes is not a multiple of the token size 2 (uint16)", "pool.token_dtype"], [out]


@ecosystem_case("a token binary without the tokenizer that made it")
def _(w, t):
    d = t / "in"
    d.mkdir()
    (d / "x.bin").write_bytes(np.arange(10, dtype=np.uint16).tobytes())
    argv, out = _pool_build(w, t, d)
    return argv, ["in/x.bin: a pre-tokenized input needs the tokenizer", "pool.tokenizer.name_or_path"], [out]


@ecosystem_case("a datatrove shard without its .ds.index")
def _(w, t):
    d = t / "in"
    d.mkdir()
    (d / "x.ds").write_bytes(np.arange(10, dtype=np.uint16).tobytes())
    argv, out = _pool_build(w, t, d, "--tokenizer", w.pool / "tokenizer.json")
    return argv, ["in/x.ds: no in/x.ds.index beside it"], [out]


@pytest.mark.parametrize("name", list(ECOSYSTEM_CASES))
def test_ecosystem_input_mistake_is_one_line_exit_2_and_nothing_written(world, tmp_path, name, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv, names, outputs = ECOSYSTEM_CASES[name](world, tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert_one_error_line(cli(*argv), *names)
    for p, data in before.items():
        assert p.exists() and p.read_bytes() == data, f"{p} was changed"
    assert_nothing_written(*outputs)
