"""`pool_dir: auto`: runs whose pools would be byte-identical share one built pool (and its BPE) in
<runs_root>/pools/<key>; other settings or other inputs get another key, and a run links to it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datamates_testing import tiny_pool_config

from datamates.core.pool import cached_pool
from datamates.errors import DatamatesError
from datamates.run_dir import read_marker


def _corpus(root: Path, data: Path) -> Path:
    d = root / "corpus" / "science"
    d.mkdir(parents=True)
    (d / "arxiv_samples.jsonl.gz").symlink_to(data / "pretrain/science/arxiv_samples.jsonl.gz")
    return root / "corpus"


def test_same_pool_settings_share_one_build_and_others_get_their_own(data, tmp_path):
    corpus = _corpus(tmp_path, data)
    cache = tmp_path / "runs" / "pools"
    cfg = tiny_pool_config([str(corpus)], vocab=300)
    a = cached_pool(cfg, cache)
    assert a.parent == cache and read_marker(a) is not None
    stamp = (a / "meta.json").stat().st_mtime_ns
    # a second run, the same files found under another parent folder: the key is the files' identity
    # (names below the input folder's own name, sizes, hashes), not where they are
    (tmp_path / "moved").mkdir()
    moved = tmp_path / "moved" / "corpus"
    corpus.rename(moved)
    b = cached_pool(tiny_pool_config([str(moved)], vocab=300), cache)
    assert b == a and (a / "meta.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    c = cached_pool(tiny_pool_config([str(moved)], seq_len=32, vocab=300), cache)
    assert c != a and c.parent == cache
    assert json.loads((c / "meta.json").read_text())["seq_len"] == 32
    assert sorted(p.name for p in cache.iterdir()) == sorted([a.name, c.name])


def test_run_links_its_pool_to_the_cache(data, tmp_path):
    from datamates.config import load_config
    from datamates.pipelines import run_pool
    from datamates.run_dir import RunDir

    corpus = _corpus(tmp_path, data)
    cfg = load_config(None, [f"pool.inputs=[{corpus}]", "pool.seq_len=64", "pool.tokenizer.vocab_size=300",
                             "pool_dir=auto", f"runs_root={tmp_path / 'runs'}", "name=one"])
    rd = RunDir(cfg.run_dir)
    p = run_pool(cfg, rd)
    assert p.is_symlink() and p.resolve().parent == (tmp_path / "runs" / "pools").resolve()
    cfg2 = load_config(None, [f"pool.inputs=[{corpus}]", "pool.seq_len=64", "pool.tokenizer.vocab_size=300",
                              "pool_dir=auto", f"runs_root={tmp_path / 'runs'}", "name=two"])
    assert run_pool(cfg2, RunDir(cfg2.run_dir)).resolve() == p.resolve()
    # the run's own link is checked on a later call: other pool settings are refused, not silently reused
    cfg3 = load_config(None, [f"pool.inputs=[{corpus}]", "pool.seq_len=32", "pool.tokenizer.vocab_size=300",
                              "pool_dir=auto", f"runs_root={tmp_path / 'runs'}", "name=one"])
    with pytest.raises(DatamatesError, match="seq_len"):
        run_pool(cfg3, rd)
