"""What every static baseline shares: candidate ids, the text of pool sequences, frozen encoder
embeddings (through the influence model's caches), and writing a scores folder in the common
format (selection/scores_io.py) with resume by shard.

meta.json of every baseline's scores records, beside the common keys (sign, pool_id, model_hash,
label_mean, label_std, shards, n):

    method            dsir | semdedup | rater | classifier | perplexity
    select_hint       the selection the method's paper uses: {method, temperature, scale}
    tokens            {kind: tokens run through a model by this call}, kinds `encoder_forward`,
                      `lm_forward` (docs/contracts.md: the report multiplies them by flops_per_token)
    flops_per_token   {kind: forward FLOPs per token}: 2 x parameters (encoder; HF LMs), or a
                      datamates checkpoint's own figure (its train FLOPs per token / 3)
    flops             their product, summed (0 for the model-free DSIR and fastText)
    text_units        words (DSIR) or characters (fastText) featurised without a model
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from datamates import executor
from datamates.artifacts import finished, produce
from datamates.config.base import data_dir
from datamates.config.influence import EncoderConfig
from datamates.core.lm import resolve_device
from datamates.core.pool import Pool
from datamates.core.reference import REFERENCE_SETS, read_pairs
from datamates.core.tokenizer import decode_documents
from datamates.errors import InputError
from datamates.identity import hash_file, hash_ids, hash_parts
from datamates.log import get_logger
from datamates.run_dir import meta_record
from datamates.selection.encode import (
    TokenCache,
    backbone_hash,
    check_encoder,
    content_budget,
    encoder_tokens,
    load_encoder_tokenizer,
    resolve_backbone,
)
from datamates.selection.influence_model import (
    InfluenceModel,
    frozen_embeddings,
    load_encoder,
    sequence_embeddings,
)
from datamates.selection.scores_io import (
    SIGN,
    check_candidate_ids,
    read_shard,
    scores_output,
    shard_name,
    write_shard,
)

log = get_logger(__name__)


check_ids = check_candidate_ids  # the scorers' one candidate-id check (selection/scores_io.py)


def sequence_texts(pool: Pool, ids: np.ndarray, tok=None) -> list[str]:
    """The text of each pool sequence: its tokens split at EOS, each piece decoded, pieces joined
    by a blank line (as the encoder cache decodes them, selection/encode.py)."""
    tok = tok or pool.tokenizer()
    return ["\n\n".join(p) for p in decode_documents(tok, pool.tokens(ids), pool.eos_id)]


def reference_texts(spec: str, size: int | None = None, seed: int = 1234) -> list[str]:
    """Texts of a reference set (context + target of each record; core/reference.py's shapes).
    One line on a set with no usable text."""

    path = data_dir() / REFERENCE_SETS[spec] if spec in REFERENCE_SETS else Path(spec)
    if not path.exists():
        raise InputError(f"reference {spec!r}: {path} not found; give a registered set "
                         f"({', '.join(sorted(REFERENCE_SETS))}) or a JSONL file (set DATAMATES_DATA for the bundle)")
    if path.is_dir():
        raise InputError(f"reference {spec!r}: a folder; text baselines need a JSONL reference file")
    texts = [c + t for c, t in read_pairs(path)]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise InputError(f"{path}: no usable text in the reference file")
    if size is not None and size < len(texts):
        pick = np.sort(np.random.default_rng(seed).permutation(len(texts))[:size])
        texts = [texts[i] for i in pick]
    return texts


def with_encoder(cfg):
    """A SemDeDup / rater config with its encoder filled in: null is the encoder defaults (a run
    fills in its own encoder first, selectors.py)."""
    return cfg if cfg.encoder is not None else dataclasses.replace(cfg, encoder=EncoderConfig())


def encoder_embeddings(pool: Pool, enc, ids: np.ndarray, *, cache_dir: str | Path | None = None,
                       batch_size: int = 64, device: str = "auto", precision: str = "auto"
                       ) -> tuple[np.ndarray, int, int]:
    """Mean-pooled frozen-encoder embeddings [n, H] float32 of pool sequences: the frozen influence
    model's own path and cache (influence_model.frozen_embeddings). Returns (emb, encoder tokens
    run forward now, encoder parameters)."""

    cache = TokenCache(pool, enc, cache_dir)  # checks the backbone is an encoder
    cache.ensure(ids)
    dev = resolve_device(device)
    model = InfluenceModel(load_encoder(cache.backbone)).to(dev).eval()
    emb, tokens = frozen_embeddings(model, cache, ids, backbone_digest=backbone_hash(cache.backbone), device=dev,
                                    precision=precision, batch_size=batch_size, cache_dir=cache_dir,
                                    desc="embeddings")
    return emb, int(tokens), sum(p.numel() for p in model.encoder.parameters())


def embedding_tokens(pool: Pool, enc, ids: np.ndarray, *, cache_dir: str | Path | None = None) -> int:
    """Encoder tokens the embeddings of `ids` cost, whether `encoder_embeddings` computed them now or
    found them cached: a group selection's statistics (part of its identity) come out the same when a
    finished run is resumed."""
    cache = TokenCache(pool, enc, cache_dir)
    return encoder_tokens(cache.get(np.asarray(ids, dtype=np.int64)), enc, cache.tok)


digest = hash_parts  # a baseline's fitted-model identity (identity.py)


def file_digest(path: str | Path) -> str:
    return hash_file(path)



def write_scores(out: str | Path, pool: Pool, ids: np.ndarray, plan: dict[str, Any], shard_size: int,
                 score_fn: Callable[[np.ndarray], np.ndarray], meta: Callable[[], dict[str, Any]],
                 desc: str = "score", files: dict[str, bytes] | None = None) -> Path:
    """Score `ids` shard by shard with `score_fn(ids) -> [n]` (lower is better) into `out`.
    A killed run resumes at the first missing shard (an interrupted run of another plan is
    refused); meta.json (common keys + `meta()`) and DONE are written last, then the folder is
    renamed into place. `plan` must hold pool_id and model_hash."""
    out = Path(out)
    plan = {**plan, "ids_hash": hash_ids(ids), "n": int(len(ids)), "shard_size": shard_size}
    output = scores_output(out, plan, inputs=(pool.path,))
    if finished(output):
        return out
    n_shards = (len(ids) + shard_size - 1) // shard_size

    def build(work: Path) -> dict[str, Any]:  # resumed shard by shard (produce checks the partial's fingerprint)
        done = sum((work / shard_name(i)).exists() for i in range(n_shards))
        for i in range(n_shards):
            if (work / shard_name(i)).exists():
                read_shard(work / shard_name(i), pool_id=plan["pool_id"], model_hash=plan["model_hash"])

        def shards():
            def fn(i: int) -> None:
                part = ids[i * shard_size : (i + 1) * shard_size]
                s = np.asarray(score_fn(part), dtype=np.float64)
                if not np.isfinite(s).all():
                    raise InputError(f"{desc}: {int((~np.isfinite(s)).sum())} scores are not finite")
                write_shard(work / shard_name(i), part, s, pool_id=plan["pool_id"], model_hash=plan["model_hash"])

            return fn

        # the executor's resume and ordering; score_fn is a closure, so the shards stay in this process
        job = executor.Job(desc, [work / shard_name(i) for i in range(n_shards)], None,
                           sizes=[len(ids[i * shard_size : (i + 1) * shard_size]) for i in range(n_shards)], unit="seq")
        executor.run(job, local_worker=shards, progress=desc, share=False)
        if done:
            log.info("resumed: %d of %d score shards were already done", done, n_shards)
        for name, blob in (files or {}).items():  # artifacts beside the scores (e.g. a trained classifier)
            (work / name).write_bytes(blob)
        fields = {**meta(), **plan, "shards": [shard_name(i) for i in range(n_shards)]}
        return meta_record("score-with", sign=SIGN, **fields)  # produce adds the seconds this call took

    return produce(output, build, resume=True)


def flops(n_params: int, tokens: int) -> float:
    """Forward FLOPs counted as 2 x parameters x tokens (the report's rule for encoders)."""
    return 2.0 * float(n_params) * float(tokens)


def counts(kind: str | None = None, tokens: int = 0, fpt: float = 0.0, **text_units: int) -> dict[str, Any]:
    """The counted-compute keys of a baseline's meta.json (see the module docstring)."""
    if kind is None:
        return {"tokens": {}, "flops_per_token": {}, "flops": 0.0, "text_units": text_units}
    return {"tokens": {kind: int(tokens)}, "flops_per_token": {kind: float(fpt)}, "flops": float(tokens) * float(fpt),
            "text_units": text_units}


def encoder_parameters(enc) -> int:
    """Parameters of an encoder folder, from its safetensors header (no weights loaded)."""

    path = resolve_backbone(enc.backbone)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        from datamates.selection.influence_model import load_encoder

        return sum(p.numel() for p in load_encoder(path).parameters())
    from safetensors import safe_open

    n = 0
    for f in files:
        with safe_open(str(f), "np") as fh:
            for k in fh.keys():
                n += int(np.prod(fh.get_slice(k).get_shape()))
    return n


def text_embeddings(texts: list[str], enc, *, batch_size: int = 64, device: str = "auto", precision: str = "auto"
                    ) -> tuple[np.ndarray, int, int, str]:
    """Mean-pooled frozen-encoder embeddings [n, H] of raw texts, by the influence model's embedding
    path (influence_model.sequence_embeddings: the same budget, chunking, pooling and precision as
    pool sequences). Returns (emb, encoder tokens, encoder parameters, backbone hash)."""

    bpath = resolve_backbone(enc.backbone)
    check_encoder(bpath)
    tok = load_encoder_tokenizer(str(bpath))
    budget = content_budget(enc, tok)
    content = [np.asarray(e.ids[:budget], dtype=np.int64)
               for e in tok.backend.encode_batch(list(texts), add_special_tokens=False)]
    dev = resolve_device(device)
    model = InfluenceModel(load_encoder(bpath)).to(dev).eval()
    emb = sequence_embeddings(model, content, enc, tok, device=dev, precision=precision, batch_size=batch_size)
    n_params = sum(p.numel() for p in model.encoder.parameters())
    return emb, encoder_tokens(content, enc, tok), n_params, backbone_hash(bpath)
