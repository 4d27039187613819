"""The same documents in every input format build the same pool (issue 16, docs/formats.md).

JSONL, .jsonl.zst, .json.gz, Parquet, a `save_to_disk` folder and a `file://` URL give the same pool
identity and the same token stream; a pre-tokenized flat binary and datatrove's tokenized shards
(made by datatrove's own DocumentTokenizer) give the same token stream without re-tokenising; a
moved corpus folder keeps the identity. Real Dolma documents from the sample data, a 300-token BPE.
"""

from __future__ import annotations

import gzip
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datamates_testing import tiny_pool_config

from datamates.core.pool import Pool, build_pool, discover_inputs
from datamates.errors import InputError


@pytest.fixture(scope="module")
def records(data: Path) -> list[dict]:
    """40 real documents, `id` and `text`: two Dolma shards (their ids) and DCLM pool documents
    (which ship without one: given `dclm-<n>` here)."""
    rows = []
    for name in ("dolma_cc_en_head-0091", "dolma_cc_en_head-0174", "dclm_pool_quality_labeled_499"):
        with gzip.open(data / f"pretrain/web/{name}.jsonl.gz", "rt", encoding="utf-8") as fh:
            for i, line in enumerate(itertools.islice(fh, 20)):
                r = json.loads(line)
                rows.append({"id": r.get("id", f"dclm-{i}"), "text": r["text"][:1500]})
    assert len(rows) == 40
    return rows


def _jsonl_bytes(records: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def _write(fmt: str, folder: Path, records: list[dict]) -> Path:
    """The records as `folder/x.<fmt>` (or the folder `folder/x` for save_to_disk); returns folder."""
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        (folder / "x.jsonl").write_bytes(_jsonl_bytes(records))
    elif fmt == "jsonl.zst":
        import zstandard

        (folder / "x.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(_jsonl_bytes(records)))
    elif fmt == "json.gz":
        (folder / "x.json.gz").write_bytes(gzip.compress(_jsonl_bytes(records)))
    elif fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(records), folder / "x.parquet", row_group_size=7)
    elif fmt == "save_to_disk":
        import datasets

        datasets.Dataset.from_list(records).save_to_disk(str(folder / "x"), max_shard_size="20KB")
    else:
        raise AssertionError(fmt)
    return folder


def _cfg(inputs, **kw):
    cfg = tiny_pool_config([str(i) for i in inputs], seq_len=32, vocab=300)
    cfg.domain_from = "none"
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def _stream(p: Pool) -> np.ndarray:
    return p.tokens(np.arange(len(p))).reshape(-1)


@pytest.fixture(scope="module")
def reference(records, tmp_path_factory) -> Pool:
    root = tmp_path_factory.mktemp("formats")
    src = _write("jsonl", root / "jsonl" / "in", records)
    return Pool(build_pool(_cfg([src]), root / "pool_jsonl"))


@pytest.mark.parametrize("fmt", ["jsonl.zst", "json.gz", "parquet", "save_to_disk", "file_url", "fsspec_folder",
                                 "fsspec_file"])
def test_every_container_gives_the_same_pool(fmt, records, reference, tmp_path):
    if fmt == "file_url":
        src = f"file://{_write('jsonl', tmp_path / 'url' / 'in', records)}"
    elif fmt.startswith("fsspec"):  # a non-local filesystem (fsspec's in-memory one): listed and read by fsspec
        import fsspec
        import zstandard

        fs = fsspec.filesystem("memory")
        root = f"/{tmp_path.name}/in"
        fs.pipe(f"{root}/x.jsonl.zst", zstandard.ZstdCompressor().compress(_jsonl_bytes(records)))
        src = f"memory://{root}" if fmt == "fsspec_folder" else f"memory://{root}/x.jsonl.zst"
    else:
        src = _write(fmt, tmp_path / fmt / "in", records)
    p = Pool(build_pool(_cfg([src]), tmp_path / "pool"))
    np.testing.assert_array_equal(_stream(p), _stream(reference))
    assert p.docs.column("id").to_pylist() == [r["id"] for r in records]
    assert p.docs.column("n_bytes").to_pylist() == reference.docs.column("n_bytes").to_pylist()
    assert p.meta["content_hash"] == reference.meta["content_hash"]
    assert p.pool_id == reference.pool_id


def test_documents_without_ids_get_the_same_ids_in_every_container(records, tmp_path):
    bare = [{"text": r["text"]} for r in records[:12]]
    a = Pool(build_pool(_cfg([_write("jsonl", tmp_path / "a" / "in", bare)]), tmp_path / "pa"))
    b = Pool(build_pool(_cfg([_write("parquet", tmp_path / "b" / "in", bare)]), tmp_path / "pb"))
    assert a.docs.column("id").to_pylist() == [f"in/x:{i}" for i in range(1, 13)]
    assert b.docs.column("id").to_pylist() == a.docs.column("id").to_pylist()
    assert a.pool_id == b.pool_id


def test_other_documents_give_another_identity(records, reference, tmp_path):
    changed = [dict(r) for r in records]
    changed[5]["text"] = changed[5]["text"] + " And one more sentence."
    p = Pool(build_pool(_cfg([_write("jsonl", tmp_path / "in", changed)]), tmp_path / "pool"))
    assert p.pool_id != reference.pool_id


def test_moving_the_corpus_folder_keeps_the_identity(records, reference, tmp_path):
    first = _write("jsonl.zst", tmp_path / "disk1" / "in", records)
    a = Pool(build_pool(_cfg([first]), tmp_path / "pool"))
    moved = tmp_path / "elsewhere" / "deeper" / "in"
    moved.parent.mkdir(parents=True)
    shutil.move(str(first), str(moved))
    again = build_pool(_cfg([moved]), tmp_path / "pool")  # the same inputs: reused, not refused or rebuilt
    assert Pool(again).pool_id == a.pool_id == reference.pool_id
    b = Pool(build_pool(_cfg([moved]), tmp_path / "pool2"))
    assert b.pool_id == a.pool_id


@pytest.mark.parametrize("block", [1 << 24, 7])
def test_a_flat_token_binary_gives_the_same_token_stream(records, reference, tmp_path, block, monkeypatch):
    """nanoGPT / Megatron layout: uint16 ids, documents separated by EOS; no re-tokenising. Read in
    blocks (7 tokens: documents cross block boundaries)."""
    from datamates.core import sources

    monkeypatch.setattr(sources, "BLOCK", block)
    tok = reference.tokenizer()
    eos = reference.eos_id
    ids: list[int] = []
    for r in records:
        ids += tok.encode(r["text"], add_special_tokens=False).ids + [eos]
    d = tmp_path / "in"
    d.mkdir()
    np.asarray(ids, dtype=np.uint16).tofile(d / "x.bin")
    cfg = _cfg([d])
    cfg.tokenizer.name_or_path = str(reference.path / "tokenizer.json")
    p = Pool(build_pool(cfg, tmp_path / "pool"))
    np.testing.assert_array_equal(_stream(p), _stream(reference))
    assert len(p.docs) == len(records)
    # bytes behind each document (bits per byte): the tokens' byte lengths equal the text's UTF-8 bytes
    assert p.docs.column("n_bytes").to_pylist() == reference.docs.column("n_bytes").to_pylist()
    np.testing.assert_allclose(np.asarray(p.seq_bytes), np.asarray(reference.seq_bytes), rtol=1e-6)


def test_datatrove_tokenized_shards_give_the_same_token_stream(records, reference, tmp_path):
    """Shards written by datatrove's DocumentTokenizer in a real LocalPipelineExecutor run."""
    pytest.importorskip("datatrove")
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.tokens import DocumentTokenizer

    src = _write("jsonl", tmp_path / "src", records)
    out = tmp_path / "tokenized"
    LocalPipelineExecutor(pipeline=[
        JsonlReader(str(src)),
        DocumentTokenizer(str(out), tokenizer_name_or_path=str(reference.path / "tokenizer.json"),
                          eos_token="<|endoftext|>", shuffle_documents=False),
    ], tasks=1, logging_dir=str(tmp_path / "logs")).run()
    shards = sorted(out.glob("*.ds"))
    assert shards and all(Path(f"{s}.index").is_file() for s in shards)
    cfg = _cfg([out])
    cfg.tokenizer.name_or_path = str(reference.path / "tokenizer.json")
    p = Pool(build_pool(cfg, tmp_path / "pool"))
    np.testing.assert_array_equal(_stream(p), _stream(reference))
    assert len(p.docs) == len(records)


def test_a_hub_dataset_streams_from_the_local_cache(records, reference, tmp_path, monkeypatch):
    """hf:NAME:SPLIT goes through datasets.load_dataset(streaming=True); a local dataset folder (the
    `json` builder on data files) resolves offline, so the same documents give the same pool."""
    pytest.importorskip("datasets")
    _write("jsonl", tmp_path / "hub" / "in", records)
    monkeypatch.chdir(tmp_path / "hub")
    p = Pool(build_pool(_cfg(["hf:in:train"]), tmp_path / "pool"))
    np.testing.assert_array_equal(_stream(p), _stream(reference))
    assert p.pool_id == reference.pool_id


def test_unknown_suffix_next_to_known_ones_is_ignored_and_datatrove_index_is_not_an_input(tmp_path):
    (tmp_path / "x.ds").write_bytes(np.arange(4, dtype=np.uint16).tobytes())
    (tmp_path / "x.ds.index").write_bytes(np.array([4], dtype=np.uint64).tobytes())
    (tmp_path / "notes.txt").write_text("hi")
    assert [f.kind for f in discover_inputs([str(tmp_path)])] == ["datatrove"]


def test_pre_tokenized_input_without_a_tokenizer_is_refused(tmp_path):
    np.arange(10, dtype=np.uint16).tofile(tmp_path / "x.bin")
    with pytest.raises(InputError, match=r"x.bin: a pre-tokenized input needs the tokenizer.*pool.tokenizer.name_or_path"):
        build_pool(_cfg([tmp_path / "x.bin"]), tmp_path / "pool")


# ----------------------------------------------------------------------------- outputs


def test_selection_writes_dolma_attributes_and_a_scores_table(records, tmp_path, monkeypatch):
    """Scores keyed by sequence come out per document: the Parquet rows are the (sequence,
    document) pairs of the pool's incidence; a document's attribute value is the hand-computed mean
    of its sequences' scores, over a span of its whole text; `selected` marks the documents
    write_documents writes. The .jsonl.zst input keeps its name and compression (Dolma's mixer)."""
    import zstandard

    from datamates.config.influence import SelectConfig
    from datamates.integrations import attributes
    from datamates.selection.select import select

    monkeypatch.setattr(attributes, "CHUNK", 7)  # the Parquet table written 7 sequences at a time

    src = _write("jsonl.zst", tmp_path / "in", records)
    pool = Pool(build_pool(_cfg([src]), tmp_path / "pool"))
    ids = np.arange(len(pool), dtype=np.int64)
    scores = np.sin(ids * 1.7)  # any values: the test recomputes the document means from them
    out = select(SelectConfig(method="topk", fraction=0.25, write_documents=True), (ids, scores), pool,
                 tmp_path / "sel", attributes=attributes.write_attributes)
    chosen = np.load(out / "ids.npy")
    table = pq.read_table(out / "scores.parquet").to_pylist()
    expect = [(int(s), int(d)) for s in ids for d in pool.docs_of(int(s))]
    assert [(r["seq_id"], r["doc_index"]) for r in table] == expect
    doc_ids = pool.docs.column("id").to_pylist()
    assert all(r["doc_id"] == doc_ids[r["doc_index"]] and r["score"] == scores[r["seq_id"]]
               and r["selected"] == (r["seq_id"] in set(chosen.tolist())) for r in table)

    lines = zstandard.ZstdDecompressor().stream_reader(open(out / "attributes/datamates/in/x.jsonl.zst", "rb")).read()
    attrs = [json.loads(x) for x in lines.decode().splitlines()]
    assert [a["id"] for a in attrs] == doc_ids
    kept_docs = set(pool.docs_of_many(chosen).tolist())
    for d, a in enumerate(attrs):
        seqs = [s for s in ids if d in pool.docs_of(int(s))]
        (start, end, value), = a["attributes"]["datamates__score"]
        assert (start, end) == (0, len(records[d]["text"]))
        assert value == pytest.approx(float(np.mean(scores[seqs])), rel=1e-12) if seqs else np.isnan(value)
        assert a["attributes"]["datamates__selected"][0][2] == (1.0 if d in kept_docs else 0.0)
    # the selected documents, in the input's format (zstandard JSON lines, byte for byte)
    got = zstandard.ZstdDecompressor().stream_reader(open(out / "documents/in/x.jsonl.zst", "rb")).read()
    assert got == b"".join(_jsonl_bytes([records[d]]) for d in sorted(kept_docs))


def test_export_format_hf_loads_with_load_from_disk(records, tmp_path):
    datasets = pytest.importorskip("datasets")
    from datamates.cli import main

    src = _write("parquet", tmp_path / "in", records)
    pool = Pool(build_pool(_cfg([src]), tmp_path / "pool"))
    sel = tmp_path / "sel"
    sel.mkdir()
    chosen = np.array([0, 3, len(pool) - 1], dtype=np.int64)
    np.save(sel / "ids.npy", chosen)
    assert main(["export", "--selection", str(sel), "--pool", str(pool.path), "--format", "hf",
                 "--out", str(tmp_path / "hf")]) == 0
    ds = datasets.load_from_disk(str(tmp_path / "hf"))
    want = sorted(pool.docs_of_many(chosen).tolist())
    assert ds["id"] == [records[d]["id"] for d in want]
    assert ds["text"] == [records[d]["text"] for d in want]
    assert not (tmp_path / "hf.partial").exists()


def test_a_token_id_outside_the_vocabulary_is_refused(reference, tmp_path):
    np.array([1, 2, 60000, 3], dtype=np.uint16).tofile(tmp_path / "x.bin")
    cfg = _cfg([tmp_path / "x.bin"])
    cfg.tokenizer.name_or_path = str(reference.path / "tokenizer.json")
    with pytest.raises(InputError, match=r"x.bin: token id 60000 is not in the tokenizer's vocabulary \(300\)"):
        build_pool(cfg, tmp_path / "pool")
    assert not (tmp_path / "pool").exists()


def test_a_glob_names_its_files_relative_to_where_the_pattern_starts(records, tmp_path):
    """Default ids of documents without one do not carry the absolute path a glob was given with."""
    bare = [{"text": r["text"]} for r in records[:10]]
    a = _write("jsonl", tmp_path / "one" / "corpus" / "in", bare)
    b = _write("jsonl", tmp_path / "two" / "deeper" / "corpus" / "in", bare)
    pa_ = Pool(build_pool(_cfg([f"{a.parent}/*/*.jsonl"]), tmp_path / "pa"))
    pb_ = Pool(build_pool(_cfg([f"{b.parent}/*/*.jsonl"]), tmp_path / "pb"))
    assert pa_.docs.column("id").to_pylist()[:2] == ["corpus/in/x:1", "corpus/in/x:2"]
    assert pa_.pool_id == pb_.pool_id


def test_a_killed_build_from_zstandard_and_token_inputs_resumes_to_the_same_bytes(records, reference, tmp_path,
                                                                                 monkeypatch):
    """Two .jsonl.zst files and a token .bin: killed on the third input, resumed, byte-identical."""
    import os

    import zstandard

    from datamates.core import pool as pool_mod

    d = tmp_path / "in"
    d.mkdir()
    for i, part in enumerate((records[:15], records[15:30])):
        (d / f"p{i}.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(_jsonl_bytes(part)))
    tok = reference.tokenizer()
    ids: list[int] = []
    for r in records[30:]:
        ids += tok.encode(r["text"], add_special_tokens=False).ids + [reference.eos_id]
    np.asarray(ids, dtype=np.uint16).tofile(d / "p2.bin")
    cfg = _cfg([d])
    cfg.tokenizer.name_or_path = str(reference.path / "tokenizer.json")
    cfg.shard_sequences = 50
    ref = build_pool(cfg, tmp_path / "ref")
    real = pool_mod.iter_records

    def dying(f, c, counters):
        if f.rel.endswith("p2.bin"):
            raise KeyboardInterrupt
        yield from real(f, c, counters)

    monkeypatch.setattr(pool_mod, "iter_records", dying)
    with pytest.raises(KeyboardInterrupt):
        build_pool(cfg, tmp_path / "p")
    assert json.loads((tmp_path / "p.partial" / "progress.json").read_text())["files_done"] == 2
    monkeypatch.setattr(pool_mod, "iter_records", real)
    out = build_pool(cfg, tmp_path / "p")
    for name in sorted(os.listdir(ref)):
        if name not in ("meta.json", "DONE") and (ref / name).is_file():
            assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    assert Pool(out).pool_id == Pool(ref).pool_id
