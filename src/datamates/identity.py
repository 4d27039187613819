"""What an artifact's bytes were made from, as short digests: the one identity module.

Every identity in datamates (an artifact's fingerprint in its DONE marker, the hashes a meta.json
records, the keys of the encoder caches) is one of these digests, all sha256 cut to DIGEST hex
digits:

    hash_file(path)          the bytes of one file
    hash_dir(root, names)    the named files of a folder, each preceded by its name (a missing one
                             is skipped): a checkpoint, an influence model, an encoder backbone
    hash_ids(ids)            a sequence-id array as int64 bytes (candidates, probe sets, selections)
    hash_array(a)            any array's dtype, shape and bytes (scores or labels held in memory)
    hash_config(obj)         a config dataclass, dict or list as canonical JSON (hash_text of it)
    hash_parts(*parts)       several arrays / values in order (a baseline's fitted model)
    hash_chunks(chunks)      a stream of byte strings (an evaluation set's token ids, arrow shards)
    hash_record(key, content)  one document's 16-byte digest (the pool's per-document column)
    hash_key64(text)         a 64-bit integer of a string (the pool's per-document id hash)

Exceptions to the one length, kept because artifacts that exist depend on them: the pool's
`content_hash` and an arrow input's combined digest are full sha256 (FULL digits; the pool id and
the pool's reuse check are computed from them), task data files are hashed at FULL digits inside
an evaluation's resume key, two ablation folder names use the first 12 digits of the same digest
(a study's merged groups and long mixture names: a resumed study finds its folders), and the
pool's per-document digests are blake2b (hash_record, hash_key64: the pool's content hash and its
doc_hash column are made of them).

An artifact's identity is a dict of such digests and config values; `artifacts.produce` flattens it
into the fingerprint its DONE marker records (docs/run_dir.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

DIGEST = 16  # hex digits of every digest (64 bits)
FULL = 64  # the whole sha256: only for the digests listed above that older artifacts store
_BLOCK = 1 << 23


def _update_file(h: Any, path: Path) -> None:
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            h.update(block)


def hash_file(path: str | Path, digits: int = DIGEST) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    _update_file(h, Path(path))
    return h.hexdigest()[:digits]


def hash_dir(root: str | Path, names: Iterable[str]) -> str:
    """sha256 over the named files of `root`, each preceded by its name; missing files are skipped."""
    root = Path(root)
    h = hashlib.sha256()
    for name in names:
        f = root / name
        if f.is_file():
            h.update(name.encode())
            _update_file(h, f)
    return h.hexdigest()[:DIGEST]


def hash_ids(ids: Any) -> str:
    """sha256 of an id array as contiguous int64 bytes (order matters)."""
    return hashlib.sha256(np.ascontiguousarray(np.asarray(ids), dtype=np.int64).tobytes()).hexdigest()[:DIGEST]


def hash_array(a: Any) -> str:
    """sha256 of an array's dtype, shape and bytes (scores, labels held in memory)."""
    a = np.ascontiguousarray(np.asarray(a))
    return hashlib.sha256(f"{a.dtype.str}{a.shape}".encode() + a.tobytes()).hexdigest()[:DIGEST]


def hash_text(text: str, digits: int = DIGEST) -> str:
    """sha256 of a string's UTF-8 bytes."""
    return hashlib.sha256(text.encode()).hexdigest()[:digits]


def hash_config(obj: Any) -> str:
    """sha256 of a config (dataclass, dict, list, scalar) as sorted JSON."""
    return hash_text(json.dumps(dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) and not isinstance(obj, type)
                                else obj, sort_keys=True, default=str))


def hash_parts(*parts: Any) -> str:
    """sha256 over several parts, each an array (its bytes) or anything else (its str), '|' after each."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.tobytes() if isinstance(p, np.ndarray) else str(p).encode())
        h.update(b"|")
    return h.hexdigest()[:DIGEST]


def hash_chunks(chunks: Iterable[bytes], digits: int = DIGEST) -> str:
    """sha256 of byte strings fed in order (the same as of their concatenation)."""
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()[:digits]


def hash_record(key: bytes, content: bytes) -> bytes:
    """One document's 16-byte digest: blake2b(key NUL content) (the pool's doc_digest column)."""
    return hashlib.blake2b(key + b"\0" + content, digest_size=16).digest()


def hash_key64(text: str) -> int:
    """A string's 64-bit blake2b as an unsigned little-endian integer (the pool's doc_hash column)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
