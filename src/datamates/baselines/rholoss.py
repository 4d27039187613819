"""Reducible-loss selection (RHO-LOSS: Mindermann et al., ICML 2022, "Prioritized Training on Points that
are Learnable, Worth Learning, and Not Yet Learnt", §3, Eq. 3 and Algorithm 1).

    reducible(x) = L(x; theta_t) - L(x; theta_IL)           mean next-token CE of the candidate's sequence
    score(x)     = -reducible(x) = L(x; theta_IL) - L(x; theta_t)                      lower is better

theta_t is the stage's starting checkpoint (the current model); theta_IL the *irreducible-loss model*,
trained once on data of the target distribution: here the plan's reference part (the examples the
probes and the per-stage curve use; never the evaluation part). The highest reducible loss first:
data the current model has not learnt yet (high L(x; theta_t)) that is learnable and relevant to
the target (low L(x; theta_IL)). The `loss` selector is the special case L(x; theta_IL) = 0.

The irreducible model (decisions where the paper's image-classification recipe does not carry over):
  - given as a checkpoint (`baselines.rholoss.model`), or
  - fine-tuned from the first selection stage's starting checkpoint (the warmup model: the paper
    trains a small model on holdout data; starting from the warmup model gives it the pool's
    general LM ability and the reference's specifics) for `steps` AdamW steps at a constant `lr`
    with a fresh optimizer state, on the reference part's texts (context + target) packed into
    sequences of the pool's length with the pool's tokenizer (a small pool built by
    core/pool.build_pool; training by core/train_loop.train, which resumes a killed run and skips a
    finished one). It is trained once per branch, in `<branch>/irreducible_model/`, and reused by
    every later stage (its recipe is in its meta.json: a run that changes steps, lr, micro_batch_size
    or seed is refused in one line rather than mixing two irreducible models in one branch).

Both losses come from `selection/score.score_by_loss` (one forward per candidate per model, its own
resumable folder under `<stage>/rholoss/`). Counted compute in the scores' meta.json: two LM
forwards per candidate (`lm_forward`), and the irreducible model's training tokens (`lm_train`) on
the stage that trained it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datamates.baselines._common import check_ids, counts, digest, write_scores
from datamates.config.base import knob, to_dict, validate
from datamates.config.core import ModelConfig, PoolConfig, TokenizerConfig, TrainConfig
from datamates.core.checkpoint import checkpoint_hash
from datamates.core.pool import Pool, build_pool
from datamates.core.reference import ReferenceSet
from datamates.core.train_loop import train
from datamates.errors import ConfigError, IncompatibleArtifacts, InputError
from datamates.identity import hash_ids
from datamates.log import get_logger
from datamates.run_dir import atomic_write_text, is_done, read_json, train_summary
from datamates.selection.score import score_by_loss
from datamates.selection.scores_io import finished_scores, iter_scores

log = get_logger(__name__)


@dataclass(kw_only=True)
class RhoLossConfig:
    """RHO-LOSS (Mindermann et al. 2022): reducible loss = current loss - irreducible-model loss."""

    model: str | None = knob(None, "irreducible-loss model: a datamates checkpoint; null: fine-tune one from the "
                                   "first selection stage's starting checkpoint on the plan's reference part "
                                   "(once per branch, cached in <branch>/irreducible_model)")
    steps: int = knob(50, "optimizer steps of that fine-tune", ge=1)
    lr: float = knob(5e-4, "constant learning rate of that fine-tune (AdamW, fresh optimizer state)", gt=0)
    micro_batch_size: int = knob(8, "sequences per step of that fine-tune", ge=1)
    seed: int = knob(0, "seed of the fine-tune's data order")
    batch_size: int = knob(16, "sequences per forward when scoring", ge=1)


SHARD = 65536


def _reference_pool(pool: Pool, reference: ReferenceSet, out: Path) -> Pool:
    """The reference part's texts as a pool of the run's sequence length and tokenizer."""
    tok = pool.tokenizer()
    texts = [tok.decode(list(e.context) + list(e.target)) for e in reference.examples]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise InputError("reducible loss: the reference part has no text to train the irreducible model on")
    src = out / "reference.jsonl"
    src.parent.mkdir(parents=True, exist_ok=True)
    body = "".join(json.dumps({"id": f"ref{i}", "text": t}) + "\n" for i, t in enumerate(texts))
    if not src.exists() or src.read_text() != body:
        atomic_write_text(src, body)
    cfg = PoolConfig(inputs=[str(src)], seq_len=pool.seq_len, domain_from="none",
                     tokenizer=TokenizerConfig(name_or_path=str(pool.path / "tokenizer.json")))
    return Pool(build_pool(cfg, out / "pool"))


def irreducible_model(cfg: RhoLossConfig, pool: Pool, reference: ReferenceSet | None, init: str | Path,
                      out: str | Path, *, device: str = "auto", stage: int | None = None) -> Path:
    """theta_IL: `cfg.model` if given, else `out` (trained from `init` on the reference part, once)."""
    if cfg.model:
        if not Path(cfg.model).exists():
            raise ConfigError(f"baselines.rholoss.model = {cfg.model!r}: not found; give a datamates checkpoint")
        return Path(cfg.model)
    out = Path(out)
    recipe = {k: getattr(cfg, k) for k in ("steps", "lr", "micro_batch_size", "seed")}
    if is_done(out):  # trained by an earlier stage of this branch: the same recipe, or a clear refusal
        old = read_json(out / "meta.json").get("recipe", {})
        diff = next((k for k in recipe if k in old and old[k] != recipe[k]), None)
        if diff is not None:
            raise IncompatibleArtifacts(f"{out}: the irreducible model was trained with baselines.rholoss.{diff} = "
                                        f"{old[diff]}, the run now says {recipe[diff]}; delete {out} to retrain it")
        return out
    if reference is None or not len(reference):
        raise ConfigError("reducible loss needs a text reference set (mates.probe.reference) or "
                          "baselines.rholoss.model")
    rpool = _reference_pool(pool, reference, out.parent / f"{out.name}_data")
    ids = np.arange(len(rpool), dtype=np.int64)
    tcfg = TrainConfig(steps=cfg.steps, lr=cfg.lr, micro_batch_size=cfg.micro_batch_size, warmup_steps=0,
                       schedule="constant", seed=cfg.seed, device=device, init_optimizer=False,
                       checkpoint_every=max(1, cfg.steps // 4), log_every=max(1, cfg.steps // 4))
    log.info("reducible loss: training the irreducible model on %d reference sequences, %d steps", len(ids),
             cfg.steps)
    return train(tcfg, ModelConfig(), rpool, ids, out, init=init,
                 meta={"stage": stage, "role": "irreducible_model", "recipe": recipe,
                       "reference": reference.describe()})


def _losses(folder: Path, ids: np.ndarray) -> np.ndarray:
    """Mean CE per candidate, in `ids` order, from a score_by_loss folder (which stores -loss)."""
    got: dict[int, float] = {}
    for i, s in iter_scores(folder):
        got.update(zip(np.asarray(i).tolist(), (-np.asarray(s, np.float64)).tolist()))
    return np.asarray([got[int(i)] for i in ids], dtype=np.float64)


def reducible_loss(cfg: RhoLossConfig, checkpoint: str | Path, irreducible: str | Path, pool: Pool,
                   ids: np.ndarray | None, out: str | Path, *, work: str | Path, device: str = "auto",
                   charge_training: bool = False) -> Path:
    """Scores L(x; theta_IL) - L(x; theta_t) of candidates `ids` into `out` (the common format); the two
    loss folders go to `work/{current,irreducible}`. `charge_training`: count the irreducible model's
    training tokens in this artifact (the stage that trained it)."""
    validate(cfg)
    ids = check_ids(ids, pool)
    work = Path(work)
    plan = {"pool_id": pool.pool_id, "method": "rholoss",
            "model_hash": digest("rholoss", checkpoint_hash(checkpoint), checkpoint_hash(irreducible), charge_training)}
    if finished_scores(out, {**plan, "ids_hash": hash_ids(ids), "n": int(len(ids)), "shard_size": SHARD}):
        return Path(out)
    cur = score_by_loss(checkpoint, pool, ids, work / "current", batch_size=cfg.batch_size, device=device)
    irr = score_by_loss(irreducible, pool, ids, work / "irreducible", batch_size=cfg.batch_size, device=device)
    l_cur, l_irr = _losses(cur, ids), _losses(irr, ids)
    score = l_irr - l_cur
    pos = {int(i): j for j, i in enumerate(ids)}
    fwd = {k: read_json(f / "meta.json") for k, f in (("current", cur), ("irreducible", irr))}
    fpt = float(fwd["current"]["flops_per_token"]["lm_forward"])
    c = counts("lm_forward", sum(int(m["tokens"]["lm_forward"]) for m in fwd.values()), fpt)
    if charge_training:
        summary = read_json(train_summary(irreducible))
        c["tokens"]["lm_train"] = int(summary["tokens"])
        c["flops_per_token"]["lm_train"] = float(summary["flops_per_token"])
        c["flops"] += float(summary["tokens"]) * float(summary["flops_per_token"])

    def meta() -> dict[str, Any]:
        return {"method": "rholoss", "label_mean": 0.0, "label_std": 1.0, "config": to_dict(cfg),
                "checkpoint": str(checkpoint), "irreducible_model": str(irreducible),
                "mean_current_loss": float(l_cur.mean()), "mean_irreducible_loss": float(l_irr.mean()),
                "mean_reducible_loss": float((l_cur - l_irr).mean()), "irreducible_trained_here": charge_training,
                "select_hint": {"method": "topk", "temperature": 0.0, "scale": "none"}, **c}

    write_scores(out, pool, ids, plan, SHARD, lambda part: score[[pos[int(i)] for i in part]], meta,
                 desc="reducible loss")
    log.info("reducible loss: %d candidates, mean current %.4f, irreducible %.4f -> %s", len(ids), l_cur.mean(),
             l_irr.mean(), out)
    return Path(out)


__all__ = ["irreducible_model", "reducible_loss"]
