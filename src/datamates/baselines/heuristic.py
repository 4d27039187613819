"""Heuristic quality filter: the rule-based document filters of practice, as a scorer.

Per candidate sequence (its text, decoded as `_common.sequence_texts` does), four rules:

    mean word length      in [min_word_length, max_word_length]     Gopher (Rae et al. 2021, App. A.1.1): 3..10
    symbol-to-word ratio  ('#' and '...' per word) <= max_symbol_ratio           Gopher: 0.1
    alphabetic words      share of words with a letter >= min_alpha_words        Gopher: 0.8
    compression ratio     len(gzip(text)) / len(text) >= min_compression_ratio   repetition filters
                          (a highly repetitive text compresses well; C4 / Gopher remove repeated lines
                          and n-grams, Raffel et al. 2020 §2.2; the gzip ratio is the cheap proxy used by
                          e.g. DataComp-LM's and FineWeb's pipelines)

    score(x) = number of rules x fails  +  (1 - compression ratio(x)) / 2        lower is better

The integer part is the filter (0: kept by every rule); the second term, in [0, 0.5), orders
documents that fail the same number of rules by how repetitive they are, so Gumbel-top-k over a
block has a signal beyond ties. No model runs: the counted compute is zero FLOPs (text units only).

Its knobs, `HeuristicConfig`, live here (the registry line names it: `Scorer(..., config=HeuristicConfig)`);
a run reads them at mates.baselines.heuristic, `score-with heuristic` at baselines.heuristic.
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datamates.baselines._common import check_ids, counts, digest, sequence_texts, write_scores
from datamates.config.base import knob, to_dict, validate
from datamates.core.pool import Pool
from datamates.log import get_logger

log = get_logger(__name__)
RULES = ("word_length", "symbol_ratio", "alpha_words", "compression")
_WORD = re.compile(r"\S+")
_ALPHA = re.compile(r"[^\W\d_]")


@dataclass(kw_only=True)
class HeuristicConfig:
    """Gopher / C4-style rule-based quality filter (baselines/heuristic.py): rules failed, lower is better."""

    min_word_length: float = knob(3.0, "a document's mean word length must be at least this (Gopher: 3)", ge=0)
    max_word_length: float = knob(10.0, "... and at most this (Gopher: 10)", gt=0)
    max_symbol_ratio: float = knob(0.1, "at most this many '#' / '...' per word (Gopher: 0.1)", ge=0)
    min_alpha_words: float = knob(0.8, "at least this share of words holds a letter (Gopher: 0.8)", ge=0, le=1)
    min_compression_ratio: float = knob(0.3, "gzip size / text size at least this (lower: repetitive text)", ge=0)
    shard_size: int = knob(65536, "sequences per score shard", ge=1)


def features(text: str) -> tuple[float, float, float, float]:
    """(mean word length, symbols per word, share of words with a letter, gzip compression ratio)."""
    words = _WORD.findall(text)
    n = max(len(words), 1)
    mean_len = sum(len(w) for w in words) / n
    symbols = (text.count("#") + text.count("...") + text.count("\u2026")) / n
    alpha = sum(1 for w in words if _ALPHA.search(w)) / n
    raw = text.encode("utf-8")
    ratio = len(gzip.compress(raw, compresslevel=6, mtime=0)) / max(len(raw), 1)
    return mean_len, symbols, alpha, ratio


def heuristic_scores(cfg: HeuristicConfig, texts: list[str]) -> np.ndarray:
    """score = rules failed + (1 - compression ratio) / 2, per text (module docstring)."""
    out = np.empty(len(texts), dtype=np.float64)
    for i, t in enumerate(texts):
        mean_len, symbols, alpha, ratio = features(t)
        failed = ((not cfg.min_word_length <= mean_len <= cfg.max_word_length) + (symbols > cfg.max_symbol_ratio)
                  + (alpha < cfg.min_alpha_words) + (ratio < cfg.min_compression_ratio))
        out[i] = failed + (1.0 - min(ratio, 1.0)) / 2
    return out


def heuristic(cfg: HeuristicConfig, pool: Pool, ids: np.ndarray | None, out: str | Path) -> Path:
    """Heuristic-filter scores of candidates `ids` (None: the whole pool) written to `out` (the
    common scores format); resumes by shard, a finished `out` for the same inputs is kept."""
    validate(cfg)
    ids = check_ids(ids, pool)
    tok = pool.tokenizer()
    n_chars = [0]

    def score_fn(part: np.ndarray) -> np.ndarray:
        texts = sequence_texts(pool, part, tok)
        n_chars[0] += sum(len(t) for t in texts)
        return heuristic_scores(cfg, texts)

    def meta() -> dict:
        return {"method": "heuristic", "label_mean": 0.0, "label_std": 1.0, "rules": list(RULES),
                "config": to_dict(cfg), "select_hint": {"method": "topk", "temperature": 0.0, "scale": "none"},
                **counts(None, characters=n_chars[0])}

    plan = {"pool_id": pool.pool_id, "model_hash": digest("heuristic", sorted(to_dict(cfg).items())),
            "method": "heuristic"}
    write_scores(out, pool, ids, plan, cfg.shard_size, score_fn, meta, desc="heuristic rules")
    log.info("heuristic filter: %d candidates scored -> %s", len(ids), out)
    return Path(out)
