"""Perplexity filter: score each sequence by a reference language model's perplexity (Wenzek et al.
2020, "CCNet", §3.3: keep the low-perplexity head; Ankner et al. 2024, "Perplexed by Perplexity",
§3: a small reference model's perplexity, keeping the middle or the high part can be better).

    log PPL(x) = 1/(T-1) sum_{t=2..T} -log p_ref(x_t | x_<t)           (T tokens of x under p_ref's tokenizer)

    keep low:     s(x) = log PPL(x)                      lowest perplexity first
    keep middle:  s(x) = |log PPL(x) - median_candidates log PPL|   closest to the median first
    keep high:    s(x) = -log PPL(x)                     highest perplexity first

The reference model is a datamates checkpoint or any Hugging Face causal LM (local folder or a
hub name in the local cache). When its tokenizer is the pool's (same vocabulary hash), the pool's
token rows are scored as they are; otherwise each sequence's text is re-tokenized with the model's
tokenizer and cut to `max_tokens`. log PPL of every candidate is kept in memory (8 bytes each;
the median needs them all), scores are written by shard.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from datamates.baselines._common import check_ids, counts, digest, file_digest, sequence_texts, write_scores
from datamates.config.base import knob, to_dict, validate
from datamates.core.lm import resolve_device
from datamates.core.loss import sequence_nll
from datamates.core.pool import Pool
from datamates.core.tokenizer import tokenizer_hash
from datamates.errors import ConfigError, InputError
from datamates.log import get_logger, progress_bar
from datamates.run_dir import read_json, train_summary

log = get_logger(__name__)


@dataclass(kw_only=True)
class PerplexityConfig:
    """Perplexity filter (Wenzek et al. 2020 CCNet; Ankner et al. 2024 "Perplexed by Perplexity")."""

    model: str | None = knob(None, "reference LM: a datamates checkpoint or any Hugging Face causal LM folder/name")
    keep: Literal["low", "middle", "high"] = knob(
        "low", "low: low perplexity first (CCNet head); middle: closest to the median log-perplexity first "
               "(Ankner et al.); high: high perplexity first")
    max_tokens: int = knob(1024, "tokens of a sequence scored (re-tokenized text is cut to this)", ge=2)
    batch_size: int = knob(8, "sequences per forward", ge=1)
    device: str = knob("auto", "auto, cpu, cuda, cuda:N; auto in a run: the run's mates.score.device")
    shard_size: int = knob(65536, "sequences per score shard", ge=1)


def load_reference_lm(spec: str, device: torch.device):
    """(model, tokenizer or None, identity hash): a datamates checkpoint or any HF causal LM."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = Path(spec).expanduser()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path) if path.exists() else spec, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(path) if path.exists() else spec)
    except Exception as e:
        raise InputError(f"baselines.perplexity.model = {spec!r}: cannot load a causal language model and its "
                         f"tokenizer ({str(e).splitlines()[0][:150] if str(e) else type(e).__name__})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    ident = file_digest(path / "model.safetensors") if (path / "model.safetensors").exists() else spec
    return model.to(device).eval(), tok, ident


def lm_forward_flops_per_token(spec: str, model) -> float:
    """A datamates checkpoint's own figure (train_summary.json: training FLOPs per token / 3, as
    accounting.py counts an LM forward), else 2 x parameters."""

    f = train_summary(spec)
    if f.exists():
        fpt = float(read_json(f).get("flops_per_token", 0.0))
        if fpt > 0:
            return fpt / 3.0
    return 2.0 * float(sum(p.numel() for p in model.parameters()))


def _same_tokenizer(tok, pool: Pool) -> bool:
    from tokenizers import Tokenizer

    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        return False
    return tokenizer_hash(Tokenizer.from_str(backend.to_str())) == pool.tokenizer_hash


def log_perplexity(model, tok, pool: Pool, ids: np.ndarray, cfg: PerplexityConfig, same_tok: bool) -> tuple[np.ndarray, int]:
    """log PPL [n] float64 of pool sequences under the reference LM, and the tokens run forward."""
    out = np.empty(len(ids), dtype=np.float64)
    n_tokens = 0
    step = 256
    ptok = pool.tokenizer()
    bar = progress_bar("perplexity", total=len(ids), unit="seq")
    with torch.inference_mode():
        for s in range(0, len(ids), step):
            part = ids[s : s + step]
            if same_tok:
                rows = pool.tokens(part)[:, : cfg.max_tokens]
                nll = sequence_nll(model, rows, batch_size=cfg.batch_size)
                out[s : s + len(part)] = nll / (rows.shape[1] - 1)
                n_tokens += rows.size
            else:
                texts = sequence_texts(pool, part, ptok)
                for j, t in enumerate(texts):
                    enc = tok(t, add_special_tokens=False)["input_ids"][: cfg.max_tokens]
                    if len(enc) < 2:
                        out[s + j] = np.nan
                        continue
                    nll = sequence_nll(model, np.asarray([enc]), batch_size=1)
                    out[s + j] = nll[0] / (len(enc) - 1)
                    n_tokens += len(enc)
            bar.update(len(part))
    bar.close()
    return out, n_tokens


def perplexity_filter(cfg: PerplexityConfig, pool: Pool, ids: np.ndarray | None, out: str | Path) -> Path:
    """Perplexity-filter scores of candidates `ids` under `cfg.model`, written to `out`."""
    validate(cfg)
    if not cfg.model:
        raise ConfigError("baselines.perplexity.model: give a reference LM (a datamates checkpoint or a Hugging "
                          "Face causal LM folder), e.g. --model DIR")
    ids = check_ids(ids, pool)
    device = resolve_device(cfg.device)
    model, tok, ident = load_reference_lm(cfg.model, device)
    same = _same_tokenizer(tok, pool)
    lp, n_tokens = log_perplexity(model, tok, pool, ids, cfg, same)
    bad = ~np.isfinite(lp)
    if bad.all():
        raise InputError(f"every candidate has under 2 tokens for {cfg.model}; nothing to score")
    med = float(np.median(lp[~bad]))
    s = {"low": lp, "middle": np.abs(lp - med), "high": -lp}[cfg.keep]
    if bad.any():  # sequences with fewer than 2 tokens under the model's tokenizer: ranked last, counted
        log.warning("perplexity: %d sequences have under 2 tokens for %s; ranked last", int(bad.sum()), cfg.model)
        s[bad] = np.nanmax(s) + 1.0
    pos = {int(i): j for j, i in enumerate(ids)}
    fpt = lm_forward_flops_per_token(cfg.model, model)

    def meta() -> dict[str, Any]:
        return {"method": "perplexity", "label_mean": 0.0, "label_std": 1.0, "reference_model": str(cfg.model),
                "keep": cfg.keep, "median_log_ppl": med, "mean_log_ppl": float(lp[~bad].mean()),
                "same_tokenizer": same, "too_short": int(bad.sum()), "config": to_dict(cfg),
                "select_hint": {"method": "topk", "temperature": 0.0, "scale": "none"},
                **counts("lm_forward", n_tokens, fpt)}

    plan = {"pool_id": pool.pool_id, "method": "perplexity", "model_hash": digest("ppl", ident, cfg.keep, cfg.max_tokens)}
    return write_scores(out, pool, ids, plan, cfg.shard_size, lambda part: s[[pos[int(i)] for i in part]], meta,
                        desc="perplexity scores")
