"""The score files (docs/contracts.md): written by `datamates score`, read by `datamates select`.

    stage_NN/scores/shard_00000.parquet ...  seq_id int64, score float32 = predicted ref_loss_delta
                                             (Parquet key-value metadata: pool_id, model_hash)
    stage_NN/scores/meta.json                sign, pool_id, model_hash, label_mean, label_std, shards, n

Every shard carries the pool id and influence-model hash it was computed for, so a shard copied in
from another run is refused with one line instead of being mixed into a selection.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from datamates.artifacts import Output, finished
from datamates.errors import ArtifactMissing, CorruptArtifact, IncompatibleArtifacts, InputError
from datamates.identity import hash_ids
from datamates.log import get_logger
from datamates.run_dir import is_done, read_json

log = get_logger(__name__)

SIGN = ("ref_loss_delta = L_ref(after one AdamW step on the sequence) - L_ref(before); "
        "lower is better; selectors keep the lowest")


def shard_name(i: int) -> str:
    return f"shard_{i:05d}.parquet"


def write_shard(path: Path, seq_id: np.ndarray, score: np.ndarray, *, pool_id: str, model_hash: str) -> None:
    """One score shard, written to a temporary name and renamed (a killed writer leaves no shard)."""
    table = pa.table({"seq_id": pa.array(np.asarray(seq_id, dtype=np.int64)),
                      "score": pa.array(np.asarray(score, dtype=np.float32))})
    table = table.replace_schema_metadata({"pool_id": pool_id, "model_hash": model_hash})
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def read_shard(path: Path, *, pool_id: str | None = None, model_hash: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    try:
        table = pq.read_table(path)
    except Exception as e:
        raise InputError(f"{path}: not a readable score shard ({type(e).__name__})") from None
    md = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    if "seq_id" not in table.column_names or "score" not in table.column_names:
        raise InputError(f"{path}: a score shard needs columns seq_id and score, has {', '.join(table.column_names)}")
    for key, want in (("pool_id", pool_id), ("model_hash", model_hash)):
        if want is not None and md.get(key) != want:
            raise IncompatibleArtifacts(
                f"{path}: shard was scored with {key} {md.get(key)}, expected {want} (a shard from another "
                "pool or influence model); delete the scores folder and re-run `datamates score`"
            )
    return (table.column("seq_id").to_numpy().astype(np.int64, copy=False),
            table.column("score").to_numpy().astype(np.float32, copy=False))


def scores_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not (path / "meta.json").exists() or not is_done(path):
        raise ArtifactMissing(f"{path}: no complete scores here (missing meta.json or DONE); run `datamates score`")
    return read_json(path / "meta.json")


def check_scores(where: str, ids: np.ndarray, scores: np.ndarray) -> None:
    """The one score validator (every verb that reads scores: select, merge's group selection, the
    report): as many ids as scores, and every score finite. The count is of the raw scores (before
    any standardisation) and the message names the first offending sequence id."""
    ids, scores = np.asarray(ids), np.asarray(scores)
    if len(ids) != len(scores):
        raise InputError(f"{where}: {len(ids):,} sequence ids but {len(scores):,} scores")
    bad = ~np.isfinite(scores)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise InputError(f"{where}: {int(bad.sum()):,} of {len(scores):,} scores are NaN or inf (the first at sequence "
                         f"id {int(ids[first])}: {float(scores[first])}); re-run the scorer, or drop those sequences")


def iter_scores(path: str | Path, *, pool_id: str | None = None, model_hash: str | None = None
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(seq_id, score) per shard, checking every shard against meta.json (its pool and model, that
    the scores are finite: `check_scores`) and, once read, the rows against meta.json: their count
    is `n`, no sequence id repeats, and the ids are the candidate set the scorer was given (`ids_hash`)."""
    path = Path(path)
    meta = scores_meta(path)
    for key, want in (("pool_id", pool_id), ("model_hash", model_hash)):
        if want is not None and meta.get(key) != want:
            raise IncompatibleArtifacts(f"{path}/meta.json: {key} is {meta.get(key)}, expected {want}")
    listed = set(meta["shards"])
    extra = sorted(p.name for p in path.glob("shard_*.parquet") if p.name not in listed)
    if extra:
        raise IncompatibleArtifacts(f"{path}/{extra[0]}: shard not listed in meta.json (copied from another run?); remove it")
    seen: list[np.ndarray] = []
    for name in meta["shards"]:
        f = path / name
        if not f.exists():
            raise ArtifactMissing(f"{f}: score shard listed in meta.json is missing; re-run `datamates score`")
        ids, sc = read_shard(f, pool_id=meta["pool_id"], model_hash=meta["model_hash"])
        check_scores(str(f), ids, sc)
        seen.append(ids)
        yield ids, sc
    every = np.concatenate(seen) if seen else np.zeros(0, np.int64)
    fix = "the scores folder was changed after it was written; re-run the scorer into a new --out"
    if "n" in meta and len(every) != int(meta["n"]):
        raise CorruptArtifact(f"{path}: its shards hold {len(every):,} rows, meta.json says n = {int(meta['n']):,}; {fix}")
    uniq, counts = np.unique(every, return_counts=True)
    if len(uniq) != len(every):
        raise CorruptArtifact(f"{path}: sequence id {int(uniq[counts > 1][0])} has {int(counts[counts > 1][0])} rows "
                              f"({len(every) - len(uniq):,} repeated ids); {fix}")
    if meta.get("ids_hash") is not None and hash_ids(every) != meta["ids_hash"]:
        raise CorruptArtifact(f"{path}: its rows are not the candidate set meta.json records (ids_hash "
                              f"{meta['ids_hash']}); {fix}")


def read_scores(path: str | Path, *, pool_id: str | None = None, model_hash: str | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """All (seq_id [n] int64, score [n] float32) of a scores folder, in shard order."""
    parts = list(iter_scores(path, pool_id=pool_id, model_hash=model_hash))
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def scores_output(out: str | Path, plan: dict[str, Any], inputs: tuple = ()) -> Output:
    """A scores folder as an artifact: its identity is the scorer's plan (pool, model, ids, ...)."""
    return Output(Path(out), "scores", {"plan": plan}, inputs=inputs)


def finished_scores(out: str | Path, plan: dict[str, Any]) -> bool:
    """True when `out` is a finished scores folder for this plan (artifacts.finished: the one
    identity check); a finished folder of another plan is a one-line error unless --force."""
    return finished(scores_output(out, plan))


def check_candidate_ids(ids: np.ndarray | None, pool: Any) -> np.ndarray:
    """Candidate ids of a scorer: every pool sequence when None; refused (one line) when empty, out
    of range or repeated (each sequence is scored once)."""
    ids = np.arange(len(pool), dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64).reshape(-1)
    if len(ids) == 0:
        raise InputError("no candidate sequences to score (the id list is empty)")
    if ids.min() < 0 or ids.max() >= len(pool):
        bad = ids[(ids < 0) | (ids >= len(pool))][0]
        raise InputError(f"sequence id {int(bad)} is not in the pool {pool.path} (0..{len(pool) - 1})")
    if len(np.unique(ids)) != len(ids):
        raise InputError(f"the candidate ids hold {len(ids) - len(np.unique(ids))} duplicates; each is scored once")
    return ids
