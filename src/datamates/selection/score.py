"""`datamates score`: predict every candidate's ref_loss_delta with the influence model (MATES §3.2
step 3; docs/methods.md#scoring-the-pool).

    score(x) = label_std * f(x) + label_mean        predicted ref_loss_delta, lower is better

What makes it fast (benchmarks/score.py measures each against MATES's way):
- encoder tokens come from the pool-level cache (encode.py): no decode + re-tokenize per stage;
- a shard's chunks are sorted by length and padded only to the longest chunk of their batch, and
  chunks that would be all padding are never encoded (MATES pads every sequence to 2 x 512);
- `torch.inference_mode`, bf16 autocast on CUDA (fp32 weights: the embedding path fit uses, so a
  head sees the features it was fitted on; frozen embeddings are cached per compute precision);
- frozen-trunk models read cached embeddings, so a stage's scoring is one matrix-vector product.

Output: `shard_XXXXX.parquet` per `shard_size` candidates (seq_id, score) + meta.json
(scores_io.py). Shards are the unit of resume (a killed run recomputes only missing shards) and of
parallel work, through datamates.executor (docs/executor.md; section `executor`): backend `local`
runs `workers` processes (one per GPU on CUDA), backend `ray` runs `workers` Ray actors that hold
the model (`ray_cpus` / `ray_gpus` each), and inside `datamates run` under torchrun the
ranks share the shards; all give the same scores. With Ray on a small node leave CPUs free
(ray-project/ray#44687). Ray runs its workers at niceness 15 (ray-project/ray#24928): on a machine
shared with other jobs set RAY_worker_niceness=0 before Ray starts, or the actors get a fraction of
the CPU.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datamates import executor
from datamates.artifacts import Output, finished, produce
from datamates.config.base import from_dict, to_dict, validate
from datamates.config.influence import EncoderConfig, ScoreConfig
from datamates.core.checkpoint import checkpoint_hash, load_model
from datamates.core.lm import flops_per_token, resolve_device
from datamates.core.loss import sequence_nll
from datamates.core.pool import Pool
from datamates.errors import IncompatibleArtifacts
from datamates.identity import hash_ids
from datamates.log import get_logger, progress_bar
from datamates.run_dir import meta_record, read_json
from datamates.selection.encode import EmbeddingCache, TokenCache, encoder_tokens, load_encoder_tokenizer
from datamates.selection.influence_model import (
    compute_precision,
    frozen_embeddings,
    head_predict,
    load_influence_model,
    read_influence_config,
    score_counts,
    sequence_embeddings,
)
from datamates.selection.scores_io import (
    SIGN,
    check_candidate_ids,
    read_scores,
    read_shard,
    shard_name,
    write_shard,
)

log = get_logger(__name__)

__all__ = ["InfluenceScorer", "ScoreTask", "read_scores", "score"]


class InfluenceScorer:
    """An influence model ready to score pool sequences: `scorer(ids) -> [n] float64` predicted
    ref_loss_delta. Used in-process, by local worker processes and inside Ray actors."""

    def __init__(self, model_dir: str | Path, pool: Pool | str | Path, *, cache_dir: str | Path | None = None,
                 batch_size: int = 64, device: str = "cpu", precision: str = "auto"):
        self.pool = pool if isinstance(pool, Pool) else Pool(pool)
        self.device = resolve_device(device)
        self.precision = precision
        # fp32 weights, forward under autocast(device, precision): the embedding path fit used
        self.lm = load_influence_model(model_dir, self.device)
        if self.lm.mode == "lm":  # features of the LM itself (selection/features.py): no encoder tokens
            self.cache_dir, self.batch_size = cache_dir, batch_size
            return
        self.tok = load_encoder_tokenizer(str(self.lm.tokenizer_path))
        self.cache = TokenCache(self.pool, self.lm.encoder_cfg, cache_dir, tokenizer_path=self.lm.tokenizer_path)
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        fitted, now = self.lm.config.get("embedding_precision"), compute_precision(self.device, precision)
        if self.lm.mode == "frozen" and fitted not in (None, now):
            log.warning("%s: the frozen head was fitted on %s embeddings, this scorer computes %s ones (set "
                        "score.precision: %s to score on the fit's features)", model_dir, fitted, now, fitted)

    def embeddings(self, ids: np.ndarray) -> np.ndarray:
        """Mean-pooled embeddings [n, H] float32, by the functions fit uses (frozen models: from / into
        the embedding cache, keyed by the compute precision)."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.lm.mode == "frozen":
            return frozen_embeddings(self.lm.model, self.cache, ids, backbone_digest=self.lm.config["backbone_hash"],
                                     device=self.device, precision=self.precision, batch_size=self.batch_size,
                                     cache_dir=self.cache_dir)[0]
        return sequence_embeddings(self.lm.model, self.cache.get(ids), self.lm.encoder_cfg, self.tok,
                                   device=self.device, precision=self.precision, batch_size=self.batch_size)

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        if self.lm.mode == "lm":
            return self.lm.to_delta(self.lm.model.predict_z(self.pool, ids, self.cache_dir))
        return self.lm.to_delta(head_predict(self.lm.model, self.embeddings(ids)))




def score(cfg: ScoreConfig, model_dir: str | Path, pool: Pool, ids: np.ndarray, out: str | Path, *,
          cache_dir: str | Path | None = None) -> Path:
    """Score candidate sequences `ids` of `pool` with the influence model in `model_dir`; write the
    score shards to `out` and return it. Resumes a killed run shard by shard; a finished `out` for
    the same model, pool and ids is returned as it is; one for anything else is an error."""
    validate(cfg)
    out = Path(out)
    ids = check_candidate_ids(ids, pool)
    icfg = read_influence_config(model_dir)
    plan = {"pool_id": pool.pool_id, "model_hash": icfg["model_hash"], "ids_hash": hash_ids(ids),
            "n": int(len(ids)), "shard_size": cfg.shard_size}
    if icfg.get("pool_id") not in (None, pool.pool_id):  # its labels, label scale and (lm mode) tokens are that pool's
        raise IncompatibleArtifacts(f"--model {model_dir}: fitted on the pool with pool_id {icfg['pool_id']}, not "
                                    f"{pool.path} (pool_id {pool.pool_id}); fit an influence model on this pool's probe "
                                    "labels, or give --pool the pool it was fitted on")
    output = Output(out, "scores", {"plan": plan}, inputs=(model_dir, pool.path))
    if finished(output):
        return out
    n_shards = (len(ids) + cfg.shard_size - 1) // cfg.shard_size

    def build(work: Path) -> dict[str, Any]:  # resumed shard by shard (produce checks the partial's fingerprint)
        np.save(work / "ids.npy", ids)
        todo, n_tokens = [], 0
        for i in range(n_shards):
            f = work / shard_name(i)
            if f.exists():
                read_shard(f, pool_id=pool.pool_id, model_hash=icfg["model_hash"])  # refuses foreign shards
            else:
                todo.append(i)
        if len(todo) < n_shards:
            log.info("resuming: %d of %d score shards already done", n_shards - len(todo), n_shards)
        if todo:
            n_tokens = _prepare_tokens(icfg, model_dir, pool, ids, todo, cfg.shard_size, cache_dir,
                                       compute_precision(resolve_device(cfg.device), cfg.precision))
            task = ScoreTask(str(model_dir), str(pool.path), None if cache_dir is None else str(cache_dir),
                             to_dict(cfg), str(work), pool.pool_id, icfg["model_hash"])
            S = cfg.shard_size
            job = executor.Job("score", [work / shard_name(i) for i in range(n_shards)], task,
                               sizes=[len(ids[i * S : (i + 1) * S]) for i in range(n_shards)], unit="seq")
            ex = cfg.executor  # score's Ray defaults: 1 CPU per actor (CPUs left for Ray's read tasks), 0 GPUs
            executor.run(job, replace(ex, threads=ex.threads if ex.workers > 1 else 0,
                                      ray_cpus=1.0 if ex.ray_cpus is None else ex.ray_cpus),
                         device=cfg.device, progress="score")
        ids_back, _ = _collect(work, n_shards, pool.pool_id, icfg["model_hash"])
        if len(ids_back) != len(ids) or not np.array_equal(np.sort(ids_back), np.sort(ids)):
            raise RuntimeError(f"{work}: score shards cover {len(ids_back)} ids, expected {len(ids)}")
        (work / "ids.npy").unlink()
        log.info("scored %d sequences in %d shards -> %s", len(ids), n_shards, out)
        return meta_record(  # produce adds the seconds this call took
            "score", sign=SIGN, **plan, mode=icfg["mode"], label_mean=icfg["label_mean"],
            label_std=icfg["label_std"], model_dir=str(model_dir), shards=[shard_name(i) for i in range(n_shards)],
            backend=cfg.executor.backend, workers=cfg.executor.workers, config=to_dict(cfg),
            scored_this_call=int(sum(min(cfg.shard_size, len(ids) - i * cfg.shard_size) for i in todo)),
            **dict(zip(("tokens", "flops_per_token"), score_counts(  # counted FLOPs of this call
                icfg, _fit_meta(model_dir), n_tokens, int(sum(min(cfg.shard_size, len(ids) - i * cfg.shard_size)
                                                             for i in todo)), pool.seq_len), strict=True)),
        )

    return produce(output, build, resume=True)


def _collect(work: Path, n_shards: int, pool_id: str, model_hash: str) -> tuple[np.ndarray, np.ndarray]:
    parts = [read_shard(work / shard_name(i), pool_id=pool_id, model_hash=model_hash) for i in range(n_shards)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _fit_meta(model_dir: str | Path) -> dict[str, Any]:
    f = Path(model_dir) / "meta.json"
    return read_json(f) if f.exists() else {}


def _prepare_tokens(icfg: dict[str, Any], model_dir: str | Path, pool: Pool, ids: np.ndarray, todo: list[int],
                    shard_size: int, cache_dir: str | Path | None, precision: str) -> int:
    """Fill the pool-level encoder-token cache for the shards to do, once, before workers start
    (frozen models: only for sequences whose embedding is not cached yet). Returns the encoder
    tokens the workers will process (counted FLOPs)."""

    if icfg["mode"] == "lm":
        return 0  # lm mode reads token rows from the pool
    enc = from_dict(EncoderConfig, icfg["encoder"])
    need = np.concatenate([ids[i * shard_size : (i + 1) * shard_size] for i in todo])
    if icfg["mode"] == "frozen":
        need = EmbeddingCache(pool, enc, icfg["backbone_hash"], cache_dir, precision=precision).missing(need)
    if len(need):
        enc_dir = Path(model_dir) / "encoder"
        tok_path = enc_dir if (enc_dir / "config.json").exists() else Path(icfg["backbone_path"])
        if not tok_path.exists():
            tok_path = None
        cache = TokenCache(pool, enc, cache_dir, tokenizer_path=tok_path)
        cache.ensure(need, desc="encoder tokens (candidates)")
        return encoder_tokens(cache.get(need), enc, cache.tok)
    return 0


@executor.worker
class ScoreTask:
    """The score stage's shards for the executor (datamates.executor): shard i = ids[i x S : (i + 1)
    x S] of the plan's ids.npy. `task(slot)` loads the influence model once per worker on the
    slot's device; `fn(i)` scores shard i and writes shard_XXXXX.parquet (scores_io.write_shard,
    atomic). Picklable: paths and the config as a dict."""

    def __init__(self, model_dir: str, pool_path: str, cache_dir: str | None, cfg_dict: dict, work: str,
                 pool_id: str, model_hash: str):
        self.model_dir, self.pool_path, self.cache_dir, self.cfg_dict = model_dir, pool_path, cache_dir, cfg_dict
        self.work, self.pool_id, self.model_hash = work, pool_id, model_hash

    def __call__(self, slot: executor.Slot):
        cfg = from_dict(ScoreConfig, self.cfg_dict)
        scorer = InfluenceScorer(self.model_dir, self.pool_path, cache_dir=self.cache_dir, batch_size=cfg.batch_size,
                                 device=slot.device, precision=cfg.precision)
        ids = np.load(Path(self.work) / "ids.npy")
        S = cfg.shard_size

        def fn(i: int) -> None:
            part = ids[i * S : (i + 1) * S]
            write_shard(Path(self.work) / shard_name(i), part, scorer(part), pool_id=self.pool_id,
                        model_hash=self.model_hash)

        return fn


# ----------------------------------------------------------------------------- the loss baseline


def score_by_loss(checkpoint: str | Path, pool: Pool, ids: np.ndarray, out: str | Path, *, batch_size: int = 16,
                  device: str = "auto") -> Path:
    """The `loss` selector's scores: minus the current model's mean next-token loss on each
    candidate (high-loss data ranks first under the sign convention, lower is better). Model-aware
    and free of probes and influence models, but one forward of the language model per candidate:
    cheap next to a tiny LM, expensive at pool scale for a large one (that is what MATES's small
    influence model avoids). A finished `out` for the same checkpoint and ids is returned as it is."""
    out = Path(out)
    ids = check_candidate_ids(ids, pool)
    plan = {"pool_id": pool.pool_id, "model_hash": checkpoint_hash(checkpoint), "ids_hash": hash_ids(ids),
            "n": int(len(ids)), "mode": "lm_loss"}
    output = Output(out, "scores", {"plan": plan}, inputs=(checkpoint, pool.path))
    if finished(output):
        return out

    def build(work: Path) -> dict[str, Any]:  # the forwards run under produce: its lock, its seconds
        model = load_model(checkpoint, device=resolve_device(device))
        nll = np.empty(len(ids), dtype=np.float64)
        step = 256
        with torch.inference_mode(), progress_bar(total=len(ids), desc="loss scores", unit="seq") as bar:
            for i in range(0, len(ids), step):
                nll[i : i + step] = sequence_nll(model, pool.tokens(ids[i : i + step]), batch_size=batch_size)
                bar.update(len(ids[i : i + step]))
        mean_loss = nll / (pool.seq_len - 1)
        write_shard(work / shard_name(0), ids, -mean_loss, pool_id=pool.pool_id, model_hash=plan["model_hash"])
        log.info("loss scores for %d sequences (mean loss %.4f) -> %s", len(ids), mean_loss.mean(), out)
        return meta_record(
            "score", sign=SIGN, **plan, checkpoint=str(checkpoint), shards=[shard_name(0)],
            mean_candidate_loss=float(mean_loss.mean()),
            tokens={"lm_forward": int(len(ids)) * pool.seq_len},  # counted FLOPs: one forward per candidate
            flops_per_token={"lm_forward": flops_per_token(model, pool.seq_len) / 3})

    produce(output, build)
    return out
