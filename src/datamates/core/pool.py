"""The pool: documents -> fixed-length token sequences, MATES's selection unit.

`build_pool` streams documents from any input core/sources.py reads (JSONL, gzip, zstandard, Parquet,
Hugging Face datasets, fsspec URLs, pre-tokenized binaries; docs/formats.md), tokenizes the text ones, appends EOS to every
document and cuts each domain's token stream into `seq_len`-token rows (memory stays
O(domains x seq_len) whatever the pool size). On disk (`<run>/pool/`):

    tokens_00000.bin ...   uint16/uint32 rows of seq_len tokens, memory-mapped
    seq_domain.npy         [n_seq] int16   domain id of each sequence
    seq_bytes.npy          [n_seq] float32 UTF-8 bytes of text behind each sequence (for bits/byte)
    seq_doc_ptr.npy        [n_seq+1] int64 CSR pointers into seq_doc_idx
    seq_doc_idx.npy        [nnz] int64     documents overlapping each sequence
    docs.parquet           doc index -> id, domain, file, line, n_tokens, n_bytes, n_chars
    tokenizer.json, meta.json (counts, tokens per domain, what was skipped and why), DONE

A killed build resumes after the last fully processed input file (`progress.json` in the
`.partial` folder records the file sizes to truncate back to and the per-domain carry-over).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from datamates.artifacts import Output, finished, produce
from datamates.config.base import config_hash, to_dict
from datamates.config.core import PoolConfig
from datamates.core.sources import (  # noqa: F401 (re-exported: the pool's readers)
    SUFFIXES,
    InputFile,
    Record,
    describe,
    discover_inputs,
    iter_records,
    source_identity,
    strip_suffix,
)
from datamates.core.tokenizer import eos_id, load_tokenizer, save_hf_tokenizer, tokenizer_hash, train_bpe
from datamates.errors import ArtifactMissing, IncompatibleArtifacts, InputError
from datamates.identity import FULL, hash_file, hash_key64, hash_record, hash_text
from datamates.log import get_logger, progress_bar
from datamates.run_dir import (
    DONE,
    atomic_write_json,
    check_files,
    fault_point,
    is_done,
    read_json,
    read_marker,
)

log = get_logger(__name__)

# reading inputs: core/sources.py (every format -> one document stream); re-exported here


# ----------------------------------------------------------------------------- building


class _Appender:
    """Append-only binary column; resumable by truncating to a recorded length."""

    def __init__(self, path: Path, dtype: str):
        self.path, self.dtype = path, np.dtype(dtype)
        self.fh = open(path, "ab")

    def write(self, arr: Any) -> None:
        self.fh.write(np.asarray(arr, dtype=self.dtype).tobytes())

    def size(self) -> int:
        self.fh.flush()
        return self.fh.tell()

    def close(self) -> None:
        self.fh.close()

    def to_npy(self, out: Path) -> int:
        self.close()
        n = os.path.getsize(self.path) // self.dtype.itemsize
        arr = np.lib.format.open_memmap(out, mode="w+", dtype=self.dtype, shape=(n,))
        if n:
            src = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(n,))
            step = 1 << 24
            for i in range(0, n, step):
                arr[i : i + step] = src[i : i + step]
        arr.flush()
        del arr
        return n  # the source stays until the whole write-out is certified (_finalize)


@dataclass
class _Segment:
    doc: int
    tokens: np.ndarray
    bytes_per_token: float
    domain: int


@dataclass
class _Packer:
    """Carry-over buffer of one domain: document segments not yet cut into a full sequence."""

    segments: list[_Segment] = field(default_factory=list)
    n: int = 0

    def add(self, seg: _Segment) -> None:
        self.segments.append(seg)
        self.n += len(seg.tokens)

    def pop_sequence(self, L: int) -> tuple[np.ndarray, list[int], float, list[tuple[int, int]]]:
        """Cut L tokens: (tokens, overlapping docs, bytes, [(domain, n_tokens)])."""
        parts, docs, need, nbytes = [], [], L, 0.0
        shares = []
        while need:
            seg = self.segments[0]
            take = min(need, len(seg.tokens))
            parts.append(seg.tokens[:take])
            docs.append(seg.doc)
            shares.append((seg.domain, take))
            nbytes += take * seg.bytes_per_token
            if take == len(seg.tokens):
                self.segments.pop(0)
            else:
                self.segments[0] = _Segment(seg.doc, seg.tokens[take:], seg.bytes_per_token, seg.domain)
            need -= take
        self.n -= L
        return np.concatenate(parts), docs, nbytes, shares


def _tokenizer_for_build(cfg: PoolConfig, files: list[InputFile], work: Path, counters: dict[str, int]):
    tok_path = work / "tokenizer.json"
    if tok_path.exists():
        return load_tokenizer(tok_path), json.loads((work / "tokenizer_source.json").read_text())
    pre = [f.rel for f in files if f.pretokenized]
    if pre and cfg.tokenizer.name_or_path is None:
        raise InputError(f"{pre[0]}: a pre-tokenized input needs the tokenizer that made it; set "
                         "pool.tokenizer.name_or_path (--tokenizer) to its tokenizer.json, folder or hub name")
    if cfg.tokenizer.name_or_path is not None:
        tok = load_tokenizer(cfg.tokenizer.name_or_path)
        source = {"kind": "given", "name_or_path": cfg.tokenizer.name_or_path}
    else:
        budget = cfg.tokenizer.train_max_bytes
        scratch = {k: 0 for k in counters}

        def texts() -> Iterator[str]:
            used = 0
            for f in files:
                for rec in iter_records(f, cfg, scratch):
                    yield rec.text
                    used += len(rec.text.encode())
                    if used >= budget:
                        return

        log.info("training a byte-level BPE tokenizer (vocab %d) on up to %d bytes", cfg.tokenizer.vocab_size, budget)
        tok = train_bpe(texts(), cfg.tokenizer.vocab_size, cfg.tokenizer.eos_token)
        source = {"kind": "trained_bpe", "vocab_size": cfg.tokenizer.vocab_size, "train_max_bytes": budget}
    tok.save(str(tok_path))
    atomic_write_json(work / "tokenizer_source.json", source)
    return tok, source


_COLUMNS = {
    "seq_domain": "int16", "seq_bytes": "float32", "seq_doc_end": "int64", "seq_doc_idx": "int64",
    "doc_ntok": "int64", "doc_nbytes": "int64", "doc_domain": "int16", "doc_file": "int32",
    "doc_line": "int64", "doc_hash": "uint64", "doc_digest": "uint64", "doc_nchars": "int64",
}


def input_identity(files: list[InputFile]) -> list[dict[str, Any]]:
    """What identifies the inputs before they are read: their names relative to the given folder,
    sizes and content hashes (not their absolute paths: a moved corpus is the same corpus).
    The pool's identity (`Pool.pool_id`) hashes the documents themselves, not these."""
    return [source_identity(f) for f in files]


def pool_identity(cfg: PoolConfig, files: list[InputFile]) -> dict[str, Any]:
    """Everything that determines a pool's bytes: the pool config (less where the inputs were
    found and the read batch size), the inputs' identities, and a given tokenizer's file hash."""
    section = {k: v for k, v in to_dict(cfg).items() if k not in ("inputs", "read_batch")}
    tok: Any = cfg.tokenizer.name_or_path
    if tok is not None:
        t = Path(tok)
        t = t / "tokenizer.json" if t.is_dir() else t
        tok = hash_file(t) if t.is_file() else tok
    inputs = {i["rel"]: ", ".join(f"{k} {v}" for k, v in i.items() if k != "rel") for i in input_identity(files)}
    return {"pool": section, "inputs": inputs, "tokenizer_file": tok}


def build_pool(cfg: PoolConfig, out: str | Path, *, force: bool | None = None) -> Path:
    """Build (or resume, or skip if done) the pool at `out`. Returns `out`. A finished or
    partial pool built from another config or other inputs is refused (one line naming the
    key) unless `force` (--force), which rebuilds it."""
    out = Path(out)
    if not cfg.inputs and is_done(out):  # no inputs named: use the pool that is there (copied in, linked)
        log.info("pool %s is already built (no pool.inputs to compare with); using it", out)
        return out
    files = discover_inputs(cfg.inputs)
    output = Output(out, "pool", pool_identity(cfg, files), inputs=tuple(f.path for f in files if f.path is not None))
    if finished(output, force=force):
        log.info("pool %s is already built; skipping", out)
        return out

    def build(work: Path) -> dict[str, Any]:
        meta = _build_into(cfg, files, work)
        _finalize(work, meta)
        # tokenizer_config.json etc., so checkpoints built on this pool load with AutoTokenizer
        save_hf_tokenizer(load_tokenizer(work / "tokenizer.json"), work, cfg.tokenizer.eos_token)
        log.info(_summary(meta))
        return meta

    produce(output, build, resume=True, force=force)
    return out


def cached_pool(cfg: PoolConfig, cache_root: str | Path) -> Path:
    """Build (or reuse) the pool in `<cache_root>/<key>`, the key a hash of its fingerprint (pool
    config, the inputs' names, sizes and content hashes, a given tokenizer's hash): runs whose pools
    would be byte-identical share one, tokenizer included (`pool_dir: auto`)."""
    ident = pool_identity(cfg, discover_inputs(cfg.inputs))
    key = hash_text(json.dumps(ident, sort_keys=True, default=str))
    return build_pool(cfg, Path(cache_root) / key)


def _truncate_to(work: Path, state: dict[str, Any], row_bytes: int) -> None:
    """Truncate every append-only file back to the last consistent point `state` records (a resumed
    build), and remove token shards past it."""
    for name in list(_COLUMNS) + ["doc_ids"]:
        with open(work / f"{name}.bin", "ab") as fh:
            fh.truncate(state["sizes"].get(name, 0))
    with open(work / f"tokens_{state['shard']:05d}.bin", "ab") as fh:
        fh.truncate(state["shard_rows"] * row_bytes)
    for stale in work.glob("tokens_*.bin"):
        if int(stale.stem.split("_")[1]) > state["shard"]:
            stale.unlink()


class _ShardWriter:
    """Appends packed sequences to the token shards (a new shard every `shard_sequences` rows) and
    their seq_* columns; `state` (the build's progress record) counts the rows."""

    def __init__(self, work: Path, state: dict[str, Any], cols: dict[str, Any], dtype: str, L: int,
                 shard_sequences: int):
        self.work, self.state, self.cols, self.dtype, self.shard_sequences = work, state, cols, dtype, shard_sequences
        self.fh = open(work / f"tokens_{state['shard']:05d}.bin", "ab")

    def write(self, toks: np.ndarray, dom: int, nbytes: float, docs: Any) -> None:
        state, cols = self.state, self.cols
        self.fh.write(toks.astype(self.dtype).tobytes())
        state["shard_rows"] += 1
        state["n_seq"] += 1
        cols["seq_domain"].write([dom])
        cols["seq_bytes"].write([nbytes])
        cols["seq_doc_idx"].write(docs)
        state["nnz"] = state.get("nnz", 0) + len(docs)
        cols["seq_doc_end"].write([state["nnz"]])
        if state["shard_rows"] >= self.shard_sequences:
            self.fh.close()
            state["shard"] += 1
            state["shard_rows"] = 0
            self.fh = open(self.work / f"tokens_{state['shard']:05d}.bin", "ab")

    def flush(self) -> None:
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


def _majority(shares: Any) -> int:
    """The domain holding most of a sequence's tokens (shares: (domain, tokens) pairs)."""
    by: dict[int, int] = {}
    for dd, n in shares:
        by[dd] = by.get(dd, 0) + n
    return max(by, key=lambda k: by[k])


def _document(rec: Record, encs: Any, token_bytes: np.ndarray | None) -> tuple[np.ndarray, int, int, bytes]:
    """A record's token ids, bytes, characters and 16-byte digest (`encs`: the batch's encodings of
    its text records, in order; a pre-tokenized record's bytes are its tokens' byte lengths, exact
    for byte-level BPE)."""
    if rec.tokens is None:
        enc = next(encs)
        ids = np.fromiter(enc.ids, dtype=np.int64, count=len(enc.ids))
        nbytes, nchars = len(rec.text.encode("utf-8")), len(rec.text)
        content = rec.text.encode("utf-8")
    else:
        ids = rec.tokens
        nbytes = nchars = int(token_bytes[ids].sum()) if token_bytes is not None else 0
        content = ids.astype("<i8").tobytes()
    return ids, nbytes, nchars, hash_record(json.dumps([rec.id, rec.domain]).encode(), content)


def _write_document(cols: dict[str, Any], ids_fh: Any, rec: Record, ntok: int, nbytes: int, nchars: int, d: int,
                    fi: int, digest: bytes) -> None:
    """One document's doc_* column values and its id line."""
    cols["doc_ntok"].write([ntok])
    cols["doc_nbytes"].write([nbytes])
    cols["doc_domain"].write([d])
    cols["doc_file"].write([fi])
    cols["doc_line"].write([rec.line])
    cols["doc_hash"].write(np.array([hash_key64(rec.id)], dtype=np.uint64))
    cols["doc_digest"].write(np.frombuffer(digest, dtype="<u8"))
    cols["doc_nchars"].write([nchars])
    ids_fh.write((json.dumps(rec.id) + "\n").encode())


def _count_tails(packers: dict[str, Any], per_domain: dict[str, dict[str, int]], counters: dict[str, int],
                 by_domain: bool) -> None:
    """The tokens left in the packers (fewer than seq_len): dropped and counted."""
    for key, packer in packers.items():
        if packer.n:
            if by_domain:
                per_domain[key]["tail_tokens_dropped"] += packer.n
            counters["tail_tokens_dropped"] = counters.get("tail_tokens_dropped", 0) + packer.n


def _check_not_empty(counters: dict[str, int], n_seq: int, n_files: int, L: int) -> None:
    if counters["documents_kept"] == 0:
        raise InputError(
            f"the pool is empty: {counters['documents_read']} records read from {n_files} files, none with text"
        )
    if n_seq == 0:
        raise InputError(
            f"the pool is empty: {counters['documents_kept']} documents hold fewer than seq_len = {L} tokens "
            "per domain; lower pool.seq_len or add data"
        )


def _progress(prog_path: Path, counters: dict[str, int], n_files: int) -> dict[str, Any]:
    """The build's progress record: a killed build's (resumed after its last finished file), or a new one."""
    if prog_path.exists():
        state = read_json(prog_path)
        log.info("resuming pool build after %d of %d files", state["files_done"], n_files)
        return state
    return {"files_done": 0, "counters": counters, "domains": [], "shard": 0,
            "shard_rows": 0, "n_seq": 0, "n_docs": 0, "sizes": {}, "per_domain": {}}


def _pool_meta(cfg: PoolConfig, files: list[InputFile], state: dict[str, Any], dtype: str,
               tokenizer: dict[str, Any]) -> dict[str, Any]:
    """The finished pool's meta.json (less its content hash)."""
    L = cfg.seq_len
    return {
        "n_sequences": state["n_seq"],
        "n_documents": state["n_docs"],
        "n_shards": state["shard"] + (1 if state["shard_rows"] else 0),
        "shard_sequences": cfg.shard_sequences,
        "seq_len": L,
        "dtype": dtype,
        "tokens": state["n_seq"] * L,
        "domains": state["domains"],
        "per_domain": state["per_domain"],
        "counters": state["counters"],
        "tokenizer": tokenizer,
        "inputs": [{**describe(f), **ident} for f, ident in zip(files, input_identity(files))],
        "config": to_dict(cfg),
        "config_hash": config_hash(cfg),
    }


def _pretokenized(cfg: PoolConfig, files: list[InputFile], tok: Any, vocab: int, eos: int
                  ) -> tuple[PoolConfig, np.ndarray | None]:
    """With pre-tokenized inputs: the config with its token_eos_id (default: the tokenizer's EOS),
    each such file told the vocabulary size, and every token's byte length; else (cfg, None)."""
    if not any(f.pretokenized for f in files):
        return cfg, None
    if cfg.token_eos_id is None:
        cfg = dataclasses.replace(cfg, token_eos_id=eos)
    for f in files:
        f.extra["vocab_size"] = vocab
    return cfg, _token_byte_lengths(tok)


def _build_into(cfg: PoolConfig, files: list[InputFile], work: Path) -> dict[str, Any]:
    counters = {"documents_read": 0, "documents_kept": 0, "skipped_empty": 0, "skipped_undecodable": 0,
                "blank_lines": 0, "missing_domain": 0}
    tok, tok_source = _tokenizer_for_build(cfg, files, work, counters)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    eos = eos_id(tok, cfg.tokenizer.eos_token)
    cfg, token_bytes = _pretokenized(cfg, files, tok, vocab, eos)
    dtype = "uint16" if vocab <= 65535 else "uint32"
    L = cfg.seq_len

    prog_path = work / "progress.json"
    if prog_path.exists() and read_json(prog_path).get("phase") == "finalized":
        return read_json(prog_path)["meta"]  # killed after the write-out, during the clean-up
    state = _progress(prog_path, counters, len(files))
    counters = state["counters"]
    _truncate_to(work, state, L * np.dtype(dtype).itemsize)

    cols = {name: _Appender(work / f"{name}.bin", dt) for name, dt in _COLUMNS.items()}
    ids_fh = open(work / "doc_ids.bin", "ab")
    domains: list[str] = state["domains"]
    dom_index = {d: i for i, d in enumerate(domains)}
    per_domain: dict[str, dict[str, int]] = state["per_domain"]
    packers: dict[str, _Packer] = {}
    carry = work / "carry.npz"
    if carry.exists() and state["files_done"]:
        packers = _load_carry(carry)

    shards = _ShardWriter(work, state, cols, dtype, L, cfg.shard_sequences)

    def emit(key: str) -> None:
        packer = packers[key]
        while packer.n >= L:
            toks, docs, nbytes, shares = packer.pop_sequence(L)
            dom = dom_index[key] if cfg.pack_by_domain else _majority(shares)
            shards.write(toks, dom, nbytes, docs)
            pd = per_domain[domains[dom]]
            pd["sequences"] += 1
            pd["tokens"] += L

    total_bytes = sum(f.size for f in files)
    done_bytes = sum(f.size for f in files[: state["files_done"]])
    bar = progress_bar("pool build", total=total_bytes, unit="B")
    bar.update(done_bytes)
    for fi in range(state["files_done"], len(files)):
        f = files[fi]
        batch: list[Record] = []

        def flush(batch: list[Record], fi: int = fi) -> None:
            texts = [r.text for r in batch if r.tokens is None]
            encs = iter(tok.encode_batch(texts, add_special_tokens=False) if texts else [])
            for rec in batch:
                ids, nbytes, nchars, digest = _document(rec, encs, token_bytes)
                ids = np.append(ids, eos)
                if rec.domain not in dom_index:
                    dom_index[rec.domain] = len(domains)
                    domains.append(rec.domain)
                    per_domain[rec.domain] = {"documents": 0, "sequences": 0, "tokens": 0, "bytes": 0,
                                              "tail_tokens_dropped": 0}
                d = dom_index[rec.domain]
                doc = state["n_docs"]
                state["n_docs"] += 1
                _write_document(cols, ids_fh, rec, len(ids), nbytes, nchars, d, fi, digest)
                per_domain[rec.domain]["documents"] += 1
                per_domain[rec.domain]["bytes"] += nbytes
                counters["documents_kept"] += 1
                key = rec.domain if cfg.pack_by_domain else "__all__"
                packers.setdefault(key, _Packer()).add(_Segment(doc, ids, nbytes / len(ids), d))
                emit(key)

        for rec in iter_records(f, cfg, counters):
            counters["documents_read"] += 1
            batch.append(rec)
            if len(batch) >= cfg.read_batch:
                flush(batch)
                batch = []
        if batch:
            flush(batch)
        # checkpoint: everything up to this file is durable
        shards.flush()
        ids_fh.flush()
        state["files_done"] = fi + 1
        state["sizes"] = {name: c.size() for name, c in cols.items()}
        state["sizes"]["doc_ids"] = ids_fh.tell()
        _save_carry(carry, packers)
        atomic_write_json(prog_path, state)
        bar.update(f.size)
    bar.close()
    shards.close()
    ids_fh.close()

    _count_tails(packers, per_domain, counters, cfg.pack_by_domain)
    _check_not_empty(counters, state["n_seq"], len(files), L)
    for c in cols.values():
        c.close()
    return _pool_meta(cfg, files, state, dtype, {"source": tok_source, "hash": tokenizer_hash(tok), "vocab_size": vocab,
                                                 "eos_id": eos, "eos_token": cfg.tokenizer.eos_token})


def _save_carry(path: Path, packers: dict[str, _Packer]) -> None:
    arrays: dict[str, np.ndarray] = {}
    index = []
    for key, p in packers.items():
        for s in p.segments:
            name = f"s{len(index)}"
            arrays[name] = s.tokens
            index.append([key, s.doc, s.bytes_per_token, s.domain, name])
    arrays["index"] = np.array(json.dumps(index))
    tmp = path.with_name(".carry.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _load_carry(path: Path) -> dict[str, _Packer]:
    z = np.load(path)
    packers: dict[str, _Packer] = {}
    for key, doc, bpt, dom, name in json.loads(str(z["index"])):
        packers.setdefault(key, _Packer()).add(_Segment(doc, z[name], bpt, dom))
    return packers


def _finalize(work: Path, meta: dict[str, Any]) -> None:
    """Append-only columns -> .npy arrays and docs.parquet; check ids are unique.

    Resumable at any point: the .bin sources are only deleted after every output is written and
    progress.json says so (phase "finalized"); a run killed before that rewrites every output
    from the sources, one killed after it only finishes the clean-up."""
    prog_path = work / "progress.json"
    if prog_path.exists() and read_json(prog_path).get("phase") == "finalized":
        _cleanup(work)
        return
    n_seq = meta["n_sequences"]
    cols = {name: _Appender(work / f"{name}.bin", dt) for name, dt in _COLUMNS.items()}
    for c in cols.values():
        c.close()
    for name in ("seq_domain", "seq_bytes", "seq_doc_idx"):
        cols[name].to_npy(work / f"{name}.npy")
        fault_point("pool.finalize")
    ends = np.fromfile(work / "seq_doc_end.bin", dtype=np.int64)
    np.save(work / "seq_doc_ptr.npy", np.concatenate([[0], ends]).astype(np.int64))
    assert len(ends) == n_seq
    # duplicate ids: sort the 8-byte id hashes (the only O(documents) memory of the build)
    hashes = np.fromfile(work / "doc_hash.bin", dtype=np.uint64)
    order = np.argsort(hashes, kind="stable")
    dup = np.nonzero(hashes[order][1:] == hashes[order][:-1])[0]
    meta["content_hash"] = _content_hash(work / "doc_digest.bin")
    docs = {name: np.memmap(work / f"{name}.bin", dtype=_COLUMNS[name], mode="r") for name in
            ("doc_ntok", "doc_nbytes", "doc_domain", "doc_file", "doc_line", "doc_nchars")}
    if len(dup):
        a, b = sorted((int(order[dup[0]]), int(order[dup[0] + 1])))
        ids_ab = _read_ids(work / "doc_ids.bin", {a, b})
        fa = meta["inputs"][docs["doc_file"][a]]["rel"]
        fb = meta["inputs"][docs["doc_file"][b]]["rel"]
        raise InputError(
            f"{fb}:{docs['doc_line'][b]}: duplicate document id {ids_ab[b]!r} (first seen at {fa}:{docs['doc_line'][a]}); "
            f"ids must be unique ({len(dup)} duplicates in all) - fix the data or set pool.id_field: null"
        )
    del hashes, order
    schema = pa.schema([("id", pa.string()), ("domain", pa.int16()), ("file", pa.int32()), ("line", pa.int64()),
                        ("n_tokens", pa.int64()), ("n_bytes", pa.int64()), ("n_chars", pa.int64())])
    chunk = 1 << 18
    with pq.ParquetWriter(work / "docs.parquet", schema) as writer, open(work / "doc_ids.bin", "rb") as fh:
        start = 0
        while True:
            ids = [json.loads(line) for _, line in zip(range(chunk), fh)]
            if not ids:
                break
            sl = slice(start, start + len(ids))
            writer.write_table(pa.table({
                "id": pa.array(ids, pa.string()),
                "domain": pa.array(np.asarray(docs["doc_domain"][sl])),
                "file": pa.array(np.asarray(docs["doc_file"][sl])),
                "line": pa.array(np.asarray(docs["doc_line"][sl])),
                "n_tokens": pa.array(np.asarray(docs["doc_ntok"][sl])),
                "n_bytes": pa.array(np.asarray(docs["doc_nbytes"][sl])),
                "n_chars": pa.array(np.asarray(docs["doc_nchars"][sl])),
            }, schema=schema))
            start += len(ids)
    del docs
    state = read_json(prog_path) if prog_path.exists() else {}
    atomic_write_json(prog_path, {**state, "phase": "finalized", "meta": meta})
    fault_point("pool.cleanup")
    _cleanup(work)


def _content_hash(digests: Path) -> str:
    """sha256 over the documents' 16-byte digests blake2b(json([id, domain]) NUL text-or-tokens), in
    pool order: what the documents are, whatever container or path they were read from."""
    return hash_file(digests, digits=FULL)


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's byte -> printable character map, inverted (what byte-level BPE tokens are spelt in)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _token_byte_lengths(tok) -> np.ndarray:
    """[vocab] UTF-8 bytes each token id stands for, so a pre-tokenized document's byte count (for
    bits per byte) is a table look-up, not a decode. Byte-level BPE (GPT-2, GPT-NeoX, the BPE
    datamates trains): exact, one byte per character of the token's spelling; other tokenizers:
    the length of the token decoded alone. Special tokens count 0."""
    spec = json.loads(tok.to_str())
    dec = spec.get("decoder") or {}
    parts = dec.get("decoders", [dec]) if dec.get("type") == "Sequence" else [dec]
    byte_level = any(p.get("type") == "ByteLevel" for p in parts if isinstance(p, dict))
    specials = {a["content"] for a in spec.get("added_tokens", []) if a.get("special")}
    alphabet = _byte_alphabet()
    vocab = tok.get_vocab(with_added_tokens=True)
    out = np.zeros(max(vocab.values(), default=-1) + 1, dtype=np.int64)
    for t, i in vocab.items():
        if t in specials:
            continue
        if byte_level and all(c in alphabet for c in t):
            out[i] = len(t)
        else:
            out[i] = len(tok.decode([i], skip_special_tokens=False).encode("utf-8"))
    return out


def _cleanup(work: Path) -> None:
    """Delete the build's sources once its outputs are certified (idempotent)."""
    for name in _COLUMNS:
        (work / f"{name}.bin").unlink(missing_ok=True)
        fault_point("pool.cleanup.file")
    (work / "doc_ids.bin").unlink(missing_ok=True)
    for name in ("carry.npz", "progress.json"):
        (work / name).unlink(missing_ok=True)
    # empty trailing shard (the last one filled exactly)
    for shard in work.glob("tokens_*.bin"):
        if shard.stat().st_size == 0:
            shard.unlink()


def _read_ids(path: Path, rows: set[int]) -> dict[int, str]:
    out = {}
    with open(path, "rb") as fh:
        for i, line in enumerate(fh):
            if i in rows:
                out[i] = json.loads(line)
                if len(out) == len(rows):
                    break
    return out


def _summary(meta: dict[str, Any]) -> str:
    c = meta["counters"]
    lines = [
        f"pool: {meta['n_documents']:,} documents -> {meta['n_sequences']:,} sequences x {meta['seq_len']} "
        f"= {meta['tokens']:,} tokens",
        f"  {'domain':<20} {'docs':>9} {'sequences':>10} {'tokens':>13} {'MB text':>9} {'tail dropped':>13}",
    ]
    for d in meta["domains"]:
        p = meta["per_domain"][d]
        lines.append(
            f"  {d:<20} {p['documents']:>9,} {p['sequences']:>10,} {p['tokens']:>13,} "
            f"{p['bytes'] / 1e6:>9.2f} {p['tail_tokens_dropped']:>13,}"
        )
    lines.append(
        f"  skipped: {c['skipped_empty']:,} empty documents, {c['skipped_undecodable']:,} undecodable lines, "
        f"{c['blank_lines']:,} blank lines; {c.get('tail_tokens_dropped', 0):,} tail tokens dropped "
        f"(shorter than one sequence at the end of a domain)"
    )
    if c.get("replaced_invalid_unicode"):
        lines.append(f"  replaced: {c['replaced_invalid_unicode']:,} lone surrogate code points (invalid Unicode) "
                     "by U+FFFD")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- reading a pool


class Pool:
    """Read-only view of a built pool. Sequence ids are row numbers 0..len-1."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not is_done(self.path):
            raise ArtifactMissing(f"{self.path}: no built pool here (missing {DONE}); run `datamates pool build` first")
        kind = (read_marker(self.path) or {}).get("kind")
        meta_path = self.path / "meta.json"
        meta = read_json(meta_path) if meta_path.is_file() else {}
        if kind not in (None, "pool") or not isinstance(meta, dict) or "seq_len" not in meta:
            raise IncompatibleArtifacts(f"{self.path}: is {('a ' + kind) if kind else 'another artifact'}, not a "
                                        "pool; give the folder `datamates pool build` wrote")
        broken = check_files(self.path)  # every file DONE certified, with its size
        if broken is not None:
            raise ArtifactMissing(f"{self.path}: the pool is damaged ({broken}); rebuild it with "
                                  "`datamates pool build --force`")
        self.meta: dict[str, Any] = meta
        self.seq_len: int = self.meta["seq_len"]
        self.dtype = np.dtype(self.meta["dtype"])
        self.domains: list[str] = self.meta["domains"]
        self.vocab_size: int = self.meta["tokenizer"]["vocab_size"]
        self.eos_id: int = self.meta["tokenizer"]["eos_id"]
        self.tokenizer_hash: str = self.meta["tokenizer"]["hash"]
        self._shards = []
        self._offsets = [0]
        for shard in sorted(self.path.glob("tokens_*.bin")):
            n = shard.stat().st_size // (self.seq_len * self.dtype.itemsize)
            self._shards.append(np.memmap(shard, dtype=self.dtype, mode="r", shape=(n, self.seq_len)))
            self._offsets.append(self._offsets[-1] + n)
        self._offsets_arr = np.array(self._offsets)
        if self._offsets[-1] != self.meta["n_sequences"]:
            raise ArtifactMissing(f"{self.path}: token shards hold {self._offsets[-1]} sequences, meta.json says "
                                  f"{self.meta['n_sequences']}; rebuild the pool")
        self.seq_domain = np.load(self.path / "seq_domain.npy", mmap_mode="r")
        self.seq_bytes = np.load(self.path / "seq_bytes.npy", mmap_mode="r")
        self._doc_ptr = np.load(self.path / "seq_doc_ptr.npy", mmap_mode="r")
        self._doc_idx = np.load(self.path / "seq_doc_idx.npy", mmap_mode="r")
        self._docs: pa.Table | None = None

    def __len__(self) -> int:
        return self._offsets[-1]

    @property
    def pool_id(self) -> str:
        """Identity of this pool's contents: its tokenizer, sequence length, packing, sequence count and
        the hash of its document stream (ids, domains, texts or tokens, in order), never paths or
        container formats: the same documents as JSONL, .jsonl.zst, Parquet, a save_to_disk folder
        or a file:// URL give the same id, and moving the corpus or the pool keeps it."""
        m = self.meta
        if "content_hash" in m:  # the documents, not their files (pools built since issue 16)
            blob = json.dumps([m["tokenizer"]["hash"], m["seq_len"], m["n_sequences"], m["content_hash"],
                               m["config"].get("pack_by_domain")], sort_keys=True)
            return hash_text(blob)
        inputs = [{k: v for k, v in i.items() if k != "path"} for i in m["inputs"]]  # not where they lie
        blob = json.dumps([m["tokenizer"]["hash"], m["seq_len"], m["n_sequences"], inputs,
                           m["config"].get("pack_by_domain")], sort_keys=True)
        return hash_text(blob)

    def tokens(self, ids: Any) -> np.ndarray:
        """[len(ids), seq_len] int64 token rows, in the order of `ids`."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self)):
            bad = ids[(ids < 0) | (ids >= len(self))][0]
            raise InputError(f"sequence id {int(bad)} is not in the pool {self.path} (0..{len(self) - 1})")
        out = np.empty((len(ids), self.seq_len), dtype=np.int64)
        shard = np.searchsorted(self._offsets_arr, ids, side="right") - 1
        for s in np.unique(shard):
            m = shard == s
            out[m] = self._shards[s][ids[m] - self._offsets[s]]
        return out

    def domain_of(self, ids: Any) -> np.ndarray:
        return np.asarray(self.seq_domain)[np.asarray(ids, dtype=np.int64)]

    def ids_in_domain(self, domain: str) -> np.ndarray:
        if domain not in self.domains:
            raise InputError(f"domain '{domain}' is not in the pool; domains: {', '.join(self.domains)}")
        return np.nonzero(np.asarray(self.seq_domain) == self.domains.index(domain))[0]

    def docs_of(self, seq_id: int) -> np.ndarray:
        """Indices (rows of docs.parquet) of the documents overlapping sequence `seq_id`."""
        return np.asarray(self._doc_idx[self._doc_ptr[seq_id] : self._doc_ptr[seq_id + 1]])

    def docs_of_many(self, ids: Any) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        parts = [self.docs_of(int(i)) for i in ids]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)

    @property
    def docs(self) -> pa.Table:
        if self._docs is None:
            self._docs = pq.read_table(self.path / "docs.parquet")
        return self._docs

    def tokenizer(self):
        return load_tokenizer(self.path / "tokenizer.json")

    def decode(self, seq_id: int) -> str:
        return self.tokenizer().decode(self.tokens([seq_id])[0].tolist(), skip_special_tokens=False)


def split_ids(ids: np.ndarray, sizes: list[int], seed: int) -> list[np.ndarray]:
    """Disjoint random subsets of `ids` with the given sizes (sorted), reproducible by seed."""
    ids = np.asarray(ids, dtype=np.int64)
    if sum(sizes) > len(ids):
        raise InputError(f"asked for {sum(sizes)} sequences ({sizes}) but only {len(ids)} are available")
    perm = np.random.default_rng(seed).permutation(len(ids))
    out, start = [], 0
    for n in sizes:
        out.append(np.sort(ids[perm[start : start + n]]))
        start += n
    return out


