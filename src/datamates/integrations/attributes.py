"""Per-document scores out, in the forms filter tools read (issue 16; docs/formats.md).

Scores are keyed by pool sequence (docs/contracts.md); a filter tool works on documents. Beside a
selection's `ids.npy` (`datamates select` with scores) this writes:

  scores.parquet    one row per (scored sequence, document it overlaps): doc_id (the input's document
                    id, docs/formats.md), doc_index (row of the pool's docs.parquet), seq_id, score,
                    selected; pandas / polars / datatrove join it to the input ids and threshold it
  attributes/<name>/<input rel path>
                    Dolma-style attributes, one JSON line per pool document of that input file, in the
                    file's order: {"id": ..., "attributes": {"<name>__score": [[0, n_chars, s_doc]],
                    "<name>__selected": [[0, n_chars, 1.0|0.0]]}}; a document-level span over the
                    whole text. JSON-lines inputs keep their file name and compression (Dolma's mixer
                    finds attributes by that name); other inputs get `<name>.jsonl.gz`

The document value is the mean score of the scored sequences that overlap the document,

    s_doc = (1 / |S(d)|) sum_{i in S(d)} s_i,    S(d) = scored sequences holding tokens of d

(lower is better: the sign of the scores folder, docs/contracts.md), and `selected` is 1.0 when any
of its sequences was kept (the rule `write_documents` uses to write a document). A document with no
scored sequence has empty span lists. Documents the pool skipped (empty text) have no line, so an
attributes file lines up with its input only when the input has no empty documents.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from datamates.config.base import from_dict
from datamates.config.core import PoolConfig
from datamates.core.pool import Pool
from datamates.core.sources import JSONL_SUFFIXES, iter_records, reopen, strip_suffix
from datamates.errors import InputError

CHUNK = 1 << 20  # sequences per Parquet write
SCHEMA = pa.schema([("doc_id", pa.string()), ("doc_index", pa.int64()), ("seq_id", pa.int64()),
                    ("score", pa.float64()), ("selected", pa.bool_())])


def pairs(pool: Pool, seq_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, doc) of every (sequence, overlapping document) pair: row indexes `seq_ids`."""
    ptr = np.asarray(pool._doc_ptr)
    seq_ids = np.asarray(seq_ids, dtype=np.int64)
    start, stop = ptr[seq_ids], ptr[seq_ids + 1]
    counts = stop - start
    row = np.repeat(np.arange(len(seq_ids), dtype=np.int64), counts)
    offs = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    doc = np.asarray(pool._doc_idx)[np.repeat(start, counts) + offs]
    return row, doc


def document_scores(pool: Pool, seq_ids: np.ndarray, scores: np.ndarray, selected: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[n_docs] mean score (NaN: not scored), [n_docs] scored-sequence count, [n_docs] any selected."""
    n_docs = len(pool.docs)
    n = np.zeros(n_docs, dtype=np.int64)
    total = np.zeros(n_docs, dtype=np.float64)
    hits = np.zeros(n_docs, dtype=np.float64)
    scores = np.asarray(scores, np.float64)
    selected = np.asarray(selected, np.float64)
    for lo in range(0, len(seq_ids), CHUNK):  # memory O(CHUNK + documents)
        row, doc = pairs(pool, seq_ids[lo : lo + CHUNK])
        row += lo
        n += np.bincount(doc, minlength=n_docs)
        total += np.bincount(doc, weights=scores[row], minlength=n_docs)
        hits += np.bincount(doc, weights=selected[row], minlength=n_docs)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, total / np.maximum(n, 1), np.nan)
    sel = hits > 0
    return mean, n, sel


def _writer(dst: Path):
    if dst.name.endswith(".gz"):
        return gzip.open(dst, "wt", encoding="utf-8")
    if dst.name.endswith(".zst"):
        import io

        import zstandard

        return io.TextIOWrapper(zstandard.ZstdCompressor().stream_writer(open(dst, "wb"), closefd=True), "utf-8")
    return open(dst, "w", encoding="utf-8")


def attribute_path(rel: str, name: str) -> Path:
    if rel.endswith(JSONL_SUFFIXES):
        return Path("attributes") / name / rel
    return Path("attributes") / name / f"{strip_suffix(rel)}.jsonl.gz"


def write_attributes(pool: Pool, seq_ids: np.ndarray, scores: np.ndarray, chosen: np.ndarray, out: Path, *,
                     name: str = "datamates") -> dict[str, Any]:
    """Write `out/scores.parquet` and `out/attributes/<name>/...` for scored sequences `seq_ids`
    (`scores` aligned with them) of which `chosen` were kept. Returns counts for meta.json."""
    seq_ids = np.asarray(seq_ids, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    selected = np.isin(seq_ids, np.asarray(chosen, dtype=np.int64))
    docs = pool.docs
    doc_ids = docs.column("id")
    n_pairs = 0
    with pq.ParquetWriter(out / "scores.parquet", SCHEMA) as writer:  # CHUNK sequences at a time
        for lo in range(0, len(seq_ids), CHUNK):
            row, doc = pairs(pool, seq_ids[lo : lo + CHUNK])
            row += lo
            writer.write_table(pa.table({
                "doc_id": doc_ids.take(pa.array(doc)), "doc_index": pa.array(doc), "seq_id": pa.array(seq_ids[row]),
                "score": pa.array(scores[row]), "selected": pa.array(selected[row]),
            }, schema=SCHEMA))
            n_pairs += len(row)

    mean, n, sel = document_scores(pool, seq_ids, scores, selected)
    files = np.asarray(docs.column("file").to_numpy())
    n_chars = np.asarray(docs.column("n_chars").to_numpy() if "n_chars" in docs.column_names
                         else docs.column("n_bytes").to_numpy())
    inputs = pool.meta["inputs"]
    ids_list = doc_ids.to_pylist()
    written = []
    order = np.argsort(files, kind="stable")  # documents grouped by input file, in file order
    bounds = np.searchsorted(files[order], np.unique(files), side="left").tolist() + [len(files)]
    for k, fi in enumerate(np.unique(files)):
        rel = inputs[int(fi)]["rel"]
        dst = out / attribute_path(rel, name)
        dst.parent.mkdir(parents=True, exist_ok=True)
        with _writer(dst) as fh:
            for d in order[bounds[k] : bounds[k + 1]].tolist():
                span = int(n_chars[d])
                attrs = ({f"{name}__score": [[0, span, float(mean[d])]],
                          f"{name}__selected": [[0, span, 1.0 if sel[d] else 0.0]]}
                         if n[d] else {f"{name}__score": [], f"{name}__selected": []})
                fh.write(json.dumps({"id": ids_list[d], "attributes": attrs}) + "\n")
        written.append(str(attribute_path(rel, name)))
    return {"scores_parquet": "scores.parquet", "attributes": written, "attribute_name": name,
            "documents_scored": int((n > 0).sum()), "documents": int(len(n)), "pairs": int(n_pairs)}


__all__ = ["attribute_path", "document_scores", "pairs", "write_attributes"]


# ----------------------------------------------------------------------------- a selection as a dataset


def selected_records(pool: Pool, seq_ids: np.ndarray):
    """The documents behind `seq_ids` (each once, whole, in pool order), read back from the pool's
    inputs: dicts of id, text (pre-tokenized inputs: input_ids), domain, source (input rel path)."""

    cfg = from_dict(PoolConfig, pool.meta.get("config"))
    docs = pool.docs
    doc_idx = pool.docs_of_many(seq_ids)
    files = np.asarray(docs.column("file").to_numpy())[doc_idx]
    lines = np.asarray(docs.column("line").to_numpy())[doc_idx]
    domains = np.asarray(docs.column("domain").to_numpy())[doc_idx]
    inputs = pool.meta["inputs"]
    for fi in np.unique(files):
        f = reopen(inputs[int(fi)], cfg)
        want = {int(ln): int(dm) for ln, dm in zip(lines[files == fi], domains[files == fi])}
        counters: dict[str, int] = {k: 0 for k in ("skipped_empty", "skipped_undecodable", "blank_lines",
                                                  "missing_domain")}
        for rec in iter_records(f, cfg, counters):
            if rec.line in want:
                row: dict[str, Any] = {"id": rec.id, "domain": pool.domains[want[rec.line]], "source": f.rel}
                if rec.tokens is None:
                    row["text"] = rec.text
                else:
                    row["input_ids"] = rec.tokens.tolist()
                yield row


def _records_of(pool_dir: str, seq_ids: np.ndarray):
    yield from selected_records(Pool(pool_dir), seq_ids)


def write_hf_dataset(pool: Pool, seq_ids: np.ndarray, out: Path, scratch: Path) -> int:
    """The selected documents as a Hugging Face dataset folder (`Dataset.save_to_disk` layout,
    loadable by `datasets.load_from_disk`), built through `Dataset.from_generator` (Arrow written
    as it is read: memory flat) with its cache in `scratch`. Returns the number of documents."""
    try:
        import datasets
    except ImportError:
        raise InputError("export --format hf needs the `datasets` package (pip install 'datamates[io]')") from None
    # the pool goes by path: datasets fingerprints gen_kwargs by pickling them (a Pool's memory maps would be
    # pickled whole)
    ds = datasets.Dataset.from_generator(_records_of, gen_kwargs={"pool_dir": str(pool.path),
                                                                  "seq_ids": np.asarray(seq_ids, np.int64)},
                                         cache_dir=str(scratch), keep_in_memory=False)
    ds.save_to_disk(str(out))
    return len(ds)
