"""Pool: real JSONL/Parquet in, packed sequences out; deterministic, resumable, strict on bad input."""

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datamates_testing import tiny_pool_config

from datamates.core import pool as pool_mod
from datamates.core.pool import Pool, build_pool, discover_inputs, split_ids
from datamates.core.tokenizer import load_tokenizer
from datamates.errors import InputError


def _write_jsonl(path: Path, records, gz=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records).encode()
    path.write_bytes(gzip.compress(data) if gz else data)


def test_sequences_are_the_packed_token_stream(tiny_pool, small_corpus):
    """Concatenating a domain's sequences gives encode(doc) + EOS for its documents, in order."""
    tok = tiny_pool.tokenizer()
    domain = "web"
    files = [f for f in discover_inputs([str(small_corpus)]) if f.folder_domain == domain]
    stream = []
    for f in files:
        with gzip.open(f.path, "rt") as fh:
            for line in fh:
                text = json.loads(line)["text"]
                if text.strip():
                    stream += tok.encode(text, add_special_tokens=False).ids + [tiny_pool.eos_id]
    ids = tiny_pool.ids_in_domain(domain)
    got = tiny_pool.tokens(ids).reshape(-1)
    L = tiny_pool.seq_len
    assert len(stream) // L == len(ids)
    np.testing.assert_array_equal(got, np.array(stream[: len(ids) * L]))
    meta = tiny_pool.meta["per_domain"][domain]
    assert meta["tail_tokens_dropped"] == len(stream) % L
    assert meta["documents"] == 30
    # sequence -> documents: the first web sequence starts with the first web document
    first_doc = tiny_pool.docs_of(int(ids[0]))[0]
    assert tiny_pool.docs["domain"][int(first_doc)].as_py() == tiny_pool.domains.index(domain)
    assert abs(float(np.asarray(tiny_pool.seq_bytes)[ids].sum()) - meta["bytes"]) / meta["bytes"] < 0.01


def test_build_is_deterministic(small_corpus, tmp_path):
    cfg = tiny_pool_config([str(small_corpus / "web"), str(small_corpus / "mixed")], seq_len=32, vocab=300)
    a, b = build_pool(cfg, tmp_path / "a"), build_pool(cfg, tmp_path / "b")
    for name in ["tokens_00000.bin", "seq_domain.npy", "seq_doc_idx.npy", "tokenizer.json"]:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert Pool(a).pool_id == Pool(b).pool_id


def test_killed_build_resumes_to_the_same_pool(small_corpus, tmp_path, monkeypatch):
    cfg = tiny_pool_config([str(small_corpus / "web"), str(small_corpus / "mixed")], seq_len=32, vocab=300)
    cfg.shard_sequences = 1000  # several shards
    ref = build_pool(cfg, tmp_path / "ref")
    real = pool_mod.iter_records
    calls = {"n": 0}

    def dying(f, c, counters):
        calls["n"] += 1
        if calls["n"] == 6:  # the BPE pass reads the 4 files, then the build dies on its 2nd file
            raise KeyboardInterrupt
        yield from real(f, c, counters)

    monkeypatch.setattr(pool_mod, "iter_records", dying)
    with pytest.raises(KeyboardInterrupt):
        build_pool(cfg, tmp_path / "p")
    assert not (tmp_path / "p").exists() and (tmp_path / "p.partial" / "progress.json").exists()
    monkeypatch.setattr(pool_mod, "iter_records", real)
    out = build_pool(cfg, tmp_path / "p")
    assert not (tmp_path / "p.partial").exists()
    for name in sorted(os.listdir(ref)):
        if name not in ("meta.json", "DONE"):
            assert (ref / name).read_bytes() == (out / name).read_bytes(), name
    assert Pool(out).meta["n_sequences"] == Pool(ref).meta["n_sequences"]


def test_parquet_domain_field_and_skips(tmp_path):
    rows = [{"text": "alpha beta gamma " * 20, "meta": {"domain": "a"}, "id": f"d{i}"} for i in range(5)]
    rows += [{"text": "   ", "meta": {"domain": "a"}, "id": "empty"}]
    rows += [{"text": "delta epsilon " * 30, "meta": {"domain": "b"}, "id": f"e{i}"} for i in range(5)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    (tmp_path / "bad.jsonl").write_bytes(b'{"text": "ok text here", "id": "x1", "meta": {"domain": "a"}}\n'
                                         b'\xff\xfe{"text": "broken"}\n\n')
    cfg = tiny_pool_config([str(tmp_path / "in.parquet"), str(tmp_path / "bad.jsonl")], seq_len=16, vocab=280)
    cfg.domain_from, cfg.domain_field = "field", "meta.domain"
    p = Pool(build_pool(cfg, tmp_path / "pool"))
    c = p.meta["counters"]
    assert (c["skipped_empty"], c["skipped_undecodable"], c["blank_lines"]) == (1, 1, 1)
    assert p.domains == ["a", "b"]
    assert p.docs["id"].to_pylist()[:2] == ["d0", "d1"]
    assert set(p.seq_domain) == {0, 1}


@pytest.mark.parametrize(
    "lines, pattern",
    [
        (['{"text": "fine"}', '{"text": oops}'], r"f.jsonl:2: malformed JSON"),
        (['{"text": "fine"}', '{"body": "x"}'], r"f.jsonl:2: no field 'text' \(set pool.text_field"),
        (['{"text": ""}', '{"text": "  "}'], r"the pool is empty"),
        (['{"text": "one doc here", "id": 1}', '{"text": "two docs here", "id": 1}'], r"f.jsonl:2: duplicate document id '1'"),
        (['{"text": 5}'], r"f.jsonl:1: field 'text' is int, not text"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path, lines, pattern):
    _write_jsonl(tmp_path / "d" / "f.jsonl", lines)
    cfg = tiny_pool_config([str(tmp_path / "d")], seq_len=8, vocab=270)
    with pytest.raises(InputError, match=pattern) as e:
        build_pool(cfg, tmp_path / "pool")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "pool").exists()


def test_missing_inputs_and_bad_tokenizer(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .jsonl"):
        discover_inputs([str(tmp_path / "empty")])
    with pytest.raises(InputError, match="no such file or folder"):
        discover_inputs([str(tmp_path / "nothing*.jsonl")])
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"not": "a tokenizer"')
    with pytest.raises(InputError, match="tokenizer.json: not a valid tokenizer.json"):
        load_tokenizer(bad)


def test_real_tokenizer_file(data, tmp_path):
    """The GPT-NeoX tokenizer MATES uses; 'Hello world' -> [12092, 1533] (SOURCES.md)."""
    tok = load_tokenizer(data / "tokenizer/gpt-neox-20b/tokenizer.json")
    assert tok.encode("Hello world").ids == [12092, 1533]


def test_split_ids_is_disjoint_and_reproducible():
    a = split_ids(np.arange(100), [10, 20], seed=3)
    b = split_ids(np.arange(100), [10, 20], seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert len(set(a[0]) & set(a[1])) == 0 and len(a[0]) == 10
    with pytest.raises(InputError):
        split_ids(np.arange(5), [10], seed=0)
