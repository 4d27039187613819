"""DSIR: data selection by importance resampling on hashed n-grams (Xie et al., NeurIPS 2023, §3).

Features: a text is lower-cased and split into words by NLTK's WordPunct rule (`\\w+|[^\\w\\s]+`, the
`regex` module's Unicode classes, as NLTK);
every unigram and every n-gram up to `ngrams` (joined by spaces) is hashed into one of B buckets,
h(g) = int(sha256(g)) mod B, giving counts c(x) in N^B. Two bag-of-hashed-n-grams models,

    p_target[j] = sum_{x in target} c_j(x) / sum_{x in target} |c(x)|      (the reference set)
    p_raw[j]    = sum_{x in pool}   c_j(x) / sum_{x in pool}   |c(x)|      (the candidates)

and the log importance weight of a sequence x is

    log w(x) = sum_j c_j(x) (log(p_target[j] + 1e-8) - log(p_raw[j] + 1e-8))

exactly as the PyPI package `data-selection` (`HashedNgramDSIR`) computes it (tests check the two
agree to 1e-6). Importance resampling draws k sequences without replacement with probability
proportional to w: Gumbel-top-k on log w, which is the common `select` with temperature 1 on the
raw scores (score = -log w, label_mean 0, label_std 1; `select_hint`).

Streaming: one pass over the candidates accumulates p_raw (B counts), a second pass writes the
weights shard by shard, so memory is O(B + shard) whatever the pool size. The hash of a distinct
n-gram is computed once (a dictionary memo), which is what makes this faster than the package on
the same data (benchmarks/baselines.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import regex

from datamates.baselines._common import (
    check_ids,
    counts,
    digest,
    reference_texts,
    sequence_texts,
    write_scores,
)
from datamates.config.base import knob, to_dict, validate
from datamates.core.pool import Pool
from datamates.errors import InputError
from datamates.log import get_logger, progress_bar

log = get_logger(__name__)


@dataclass(kw_only=True)
class DSIRConfig:
    """DSIR (Xie et al. 2023, §3): hashed n-gram bag-of-words importance weights."""

    reference: str = knob("lambada_openai", "target distribution: a registered reference set "
                                            "(lambada_openai, flan_cot, dolly), a JSONL file or a pool folder")
    reference_size: int | None = knob(None, "reference examples used (seeded draw); null: all", ge=1)
    ngrams: int = knob(2, "n of the hashed n-grams: 2 = unigrams + bigrams (DSIR default)", ge=1)
    num_buckets: int = knob(10000, "hash buckets of the n-gram features (DSIR default 10,000)", ge=2)
    smoothing: float = knob(1e-8, "added to both bucket probabilities before the log (data-selection: 1e-8)", gt=0)
    shard_size: int = knob(65536, "sequences per score shard (the unit of streaming and of resume)", ge=1)
    seed: int = knob(1234, "seed of the reference subsample")


# NLTK's WordPunctTokenizer pattern, compiled (as NLTK does) with the `regex` module: its \w differs
# from `re`'s on some characters (re keeps "¹⁶c₂" as one word, regex and NLTK split it in three)
_WORDPUNCT = regex.compile(r"\w+|[^\w\s]+", regex.UNICODE | regex.MULTILINE | regex.DOTALL)


class HashedNgrams:
    """c(x): hashed n-gram counts [B] of a text, with a memo of bucket ids per distinct n-gram."""

    def __init__(self, num_buckets: int = 10000, ngrams: int = 2):
        self.B = int(num_buckets)
        self.n = int(ngrams)
        self._memo: dict[str, int] = {}

    def _bucket(self, g: str) -> int:
        b = self._memo.get(g)
        if b is None:
            b = int(hashlib.sha256(g.encode("utf-8")).hexdigest(), 16) % self.B
            if len(self._memo) < 4_000_000:  # bounded memo (~0.5 GB worst case)
                self._memo[g] = b
        return b

    def buckets(self, text: str) -> list[int]:
        words = _WORDPUNCT.findall(text.lower())
        out = [self._bucket(w) for w in words]
        for k in range(2, self.n + 1):
            out += [self._bucket(" ".join(words[i : i + k])) for i in range(len(words) - k + 1)]
        return out

    def counts(self, text: str) -> np.ndarray:
        return np.bincount(np.asarray(self.buckets(text), dtype=np.int64), minlength=self.B)

    def counts_many(self, texts: list[str]) -> np.ndarray:
        """[len(texts), B] int64."""
        out = np.zeros((len(texts), self.B), dtype=np.int64)
        for i, t in enumerate(texts):
            b = self.buckets(t)
            if b:
                out[i] = np.bincount(np.asarray(b, dtype=np.int64), minlength=self.B)
        return out

    def total(self, texts, bar=None) -> np.ndarray:
        """Summed counts [B] over an iterable of texts."""
        acc = np.zeros(self.B, dtype=np.int64)
        for t in texts:
            b = self.buckets(t)
            if b:
                acc += np.bincount(np.asarray(b, dtype=np.int64), minlength=self.B)
            if bar is not None:
                bar.update(1)
        return acc


def log_diff(target_counts: np.ndarray, raw_counts: np.ndarray, smoothing: float = 1e-8) -> np.ndarray:
    """log(p_target + s) - log(p_raw + s) per bucket [B] float64."""
    if target_counts.sum() == 0:
        raise InputError("the reference set has no words to build DSIR's target model from")
    if raw_counts.sum() == 0:
        raise InputError("the candidate sequences have no words to build DSIR's raw model from")
    pt = target_counts / target_counts.sum()
    pr = raw_counts / raw_counts.sum()
    return np.log(pt + smoothing) - np.log(pr + smoothing)


def dsir(cfg: DSIRConfig, pool: Pool, ids: np.ndarray | None, out: str | Path, *,
         target: list[str] | None = None) -> Path:
    """DSIR scores (-log importance weight, lower is better) of candidates `ids` (None: the whole
    pool) against `cfg.reference` (or the texts `target`: a run passes its plan's reference part),
    written to `out` (the common scores format). A finished `out` for the same inputs is returned
    as it is; a killed run resumes by shard."""
    validate(cfg)
    ids = check_ids(ids, pool)
    feat = HashedNgrams(cfg.num_buckets, cfg.ngrams)
    ref_name = cfg.reference if target is None else "the run's reference part"
    if target is None:
        target = reference_texts(cfg.reference, cfg.reference_size, cfg.seed)
    elif not any(t.strip() for t in target):
        raise InputError("DSIR: the reference texts are empty")
    t_counts = feat.total(target)
    tok = pool.tokenizer()
    S = cfg.shard_size
    bar = progress_bar("DSIR raw model", total=len(ids), unit="seq")
    r_counts = np.zeros(cfg.num_buckets, dtype=np.int64)
    for s in range(0, len(ids), S):  # pass 1: the raw model, streamed
        r_counts += feat.total(sequence_texts(pool, ids[s : s + S], tok), bar)
    bar.close()
    ld = log_diff(t_counts, r_counts, cfg.smoothing)
    n_words = {"target": int(t_counts.sum()), "raw": int(r_counts.sum())}

    def score_fn(part: np.ndarray) -> np.ndarray:  # pass 2: the weights, shard by shard
        return -(feat.counts_many(sequence_texts(pool, part, tok)) @ ld)

    def meta() -> dict:
        return {"method": "dsir", "label_mean": 0.0, "label_std": 1.0, "reference": ref_name,
                "n_reference": len(target), "config": to_dict(cfg),
                "select_hint": {"method": "gumbel", "temperature": 1.0, "scale": "none"},
                **counts(None, words=n_words["target"] + 2 * n_words["raw"]), "ngram_counts": n_words}

    plan = {"pool_id": pool.pool_id, "model_hash": digest("dsir", ld.astype(np.float64)), "method": "dsir"}
    write_scores(out, pool, ids, plan, S, score_fn, meta, desc="DSIR weights")
    log.info("DSIR: %d candidates weighted against %s (%d examples) -> %s", len(ids), ref_name, len(target), out)
    return Path(out)
