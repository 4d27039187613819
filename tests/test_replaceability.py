"""One replaceability rule for every writing verb (issue 24, item 0; artifacts.produce): nothing is
ever replaced that is not the same kind of artifact made by the same command; an output that is one
of the command's own inputs is refused; a finished output made with other settings is a one-line
error (exit 2) unless --force.

Each case drives the real command line on a tiny pool and checkpoint and checks that the artifact
that was there is still there, byte for byte, after the refusal. Every case here lost data (exit 0)
before the rule (commit 69dfbd9: `check_replaceable` let a DONE with `kind: null` replace anything).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import itertools
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datamates_testing import TINY_YAML

from datamates.cli import main


def cli(*argv: object) -> tuple[int, str]:
    """`datamates ARGV` in this process: (exit code, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 2
    return rc, err.getvalue()


def digest(folder: Path) -> str:
    """sha256 over every file's relative path and bytes: the artifact, unchanged or not."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        h.update(str(f.relative_to(folder)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def refused(rc: int, err: str, *names: str) -> None:
    assert rc == 2, f"exit {rc}; stderr:\n{err}"
    assert "Traceback" not in err, err
    line = [ln for ln in err.splitlines() if ": error: " in ln]
    assert len(line) == 1, err
    for n in names:
        assert n in line[0], f"{n!r} not in {line[0]}"


class World:
    def __init__(self, root: Path):
        self.root, self.cfg = root, root / "tiny.yaml"
        self.pool, self.ckpt, self.ckpt2 = root / "pool", root / "ckpt", root / "ckpt2"

    def tiny(self, *extra: object) -> list[object]:
        return ["-c", self.cfg, "--run-dir", self.root / "run", *extra]


@pytest.fixture(scope="module")
def world(data: Path, tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("replace")
    w = World(root)
    w.cfg.write_text(TINY_YAML + f"runs_root: {root / 'runs'}\n")
    corpus = root / "corpus"
    for domain, f in (("web", "pretrain/web/c4_100_domains_theguardian_10.jsonl.gz"),
                      ("wiki", "pretrain/wiki/nq_open_oracle_wikipedia_passages.jsonl.gz")):
        (corpus / domain).mkdir(parents=True)
        with gzip.open(data / f, "rt", encoding="utf-8") as fh:
            (corpus / domain / "part.jsonl").write_text("".join(itertools.islice(fh, 30)))
    assert cli("pool", "build", *w.tiny("--input", corpus, "--out", w.pool))[0] == 0
    assert cli("train", *w.tiny("--pool", w.pool, "--out", w.ckpt))[0] == 0
    assert cli("train", *w.tiny("--pool", w.pool, "--out", w.ckpt2, "--set", "train.seed=1"))[0] == 0
    return w


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _ids(t: Path, n: int = 20) -> Path:
    f = t / "ids.txt"
    f.write_text("".join(f"{i}\n" for i in range(n)))
    return f


def _evaluate(w: World, ck: Path, out: Path, *extra: object) -> list[object]:
    return ["evaluate", "--checkpoint", ck, "--tasks", "--reference", "--heldout", w.pool, "--out", out,
            "-c", w.cfg, *extra]


# --------------------------------------------------------------- another kind at the output

def test_merge_onto_a_pool_is_refused(world, tmp_path):
    pool = _copy(world.pool, tmp_path / "pool")
    before = digest(pool)
    refused(*cli("merge", world.ckpt, world.ckpt2, "--out", pool, *world.tiny()), str(pool), "pool")
    assert digest(pool) == before


def test_select_onto_a_pool_is_refused(world, tmp_path):
    pool = _copy(world.pool, tmp_path / "pool")
    before = digest(pool)
    rc, err = cli("select", "--ids", _ids(tmp_path), "--method", "random", "-k", 5, "--pool", world.pool,
                  "--out", pool, *world.tiny())
    refused(rc, err, str(pool), "pool")
    assert digest(pool) == before


def test_evaluate_onto_a_checkpoint_is_refused(world, tmp_path):
    ck = _copy(world.ckpt2, tmp_path / "ck")
    before = digest(ck)
    refused(*cli(*_evaluate(world, world.ckpt, ck)), str(ck), "checkpoint")
    assert digest(ck) == before


def test_a_pool_onto_a_selection_is_refused(world, tmp_path):
    """The other direction: a kind-null DONE (the old select) must not be replaced by a pool either."""
    sel = tmp_path / "sel"
    assert cli("select", "--ids", _ids(tmp_path), "--method", "random", "-k", 5, "--pool", world.pool,
               "--out", sel, *world.tiny())[0] == 0
    before = digest(sel)
    rc, err = cli("merge", world.ckpt, world.ckpt2, "--out", sel, *world.tiny())
    refused(rc, err, str(sel), "selection")
    assert digest(sel) == before


# --------------------------------------------------------------- an output that is an input

def test_merge_onto_its_own_input_is_refused(world, tmp_path):
    a, b = _copy(world.ckpt, tmp_path / "a"), _copy(world.ckpt2, tmp_path / "b")
    before = digest(a)
    refused(*cli("merge", a, b, "--out", a, *world.tiny()), str(a), "input")
    assert digest(a) == before
    refused(*cli("merge", a, b, "--out", a, "--force", *world.tiny()), str(a), "input")  # not even with --force
    assert digest(a) == before


# --------------------------------------------------------------- the same verb, other settings

def test_select_with_another_fraction_over_a_finished_selection(world, tmp_path):
    sel = tmp_path / "sel"
    ids = _ids(tmp_path)
    base = ["select", "--ids", ids, "--method", "random", "--pool", world.pool, "--out", sel, *world.tiny()]
    assert cli(*base, "--fraction", 0.2)[0] == 0
    before = digest(sel)
    assert cli(*base, "--fraction", 0.2)[0] == 0  # the same settings: kept as it is
    assert digest(sel) == before
    refused(*cli(*base, "--fraction", 0.3), str(sel), "--force")
    assert digest(sel) == before
    assert cli(*base, "--fraction", 0.3, "--force")[0] == 0
    assert len(np.load(sel / "ids.npy")) == 6


def test_evaluate_with_other_settings_over_a_finished_evaluation(world, tmp_path):
    ev = tmp_path / "ev"
    assert cli(*_evaluate(world, world.ckpt, ev))[0] == 0
    before = digest(ev)
    refused(*cli(*_evaluate(world, world.ckpt2, ev)), str(ev), "--force")
    assert digest(ev) == before


def test_fit_with_other_settings_over_a_finished_model(world, tmp_path):
    lab = tmp_path / "labels.parquet"
    rng = np.random.default_rng(0)
    pq.write_table(pa.table({"seq_id": np.arange(24, dtype=np.int64), "ref_loss_delta": rng.normal(size=24)}), lab)
    out = tmp_path / "dim"
    base = ["fit", "--labels", lab, "--pool", world.pool, "--out", out, "--mode", "frozen",
            "--cache-dir", tmp_path / "cache", *world.tiny("--set", "mates.fit.min_labels=8")]
    assert cli(*base)[0] == 0
    before = digest(out)
    refused(*cli(*base, "--set", "mates.fit.ridge_alphas=[1.0]"), str(out), "--force")
    assert digest(out) == before
