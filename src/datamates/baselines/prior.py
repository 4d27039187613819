"""MATES x a quality prior (issue 30, item 3): the influence model's scores and a quality filter's
scores of the same candidate block, combined per candidate on one scale.

    combined_i = z_i(influence) + w * z_i(prior)        w = mates.baselines.prior.weight (default 1.0)

Each z is its scores standardised over the candidate block exactly as `select` standardises
(selection/select.py, `select.scale: block`: the block's mean and population sd; `standardised_keys`
is called with that scale, so there is one implementation of it). Both components are lower-is-better,
so the combination is too, and it is scale-free: multiplying either component's raw scores by a
positive constant, or adding one, changes nothing. `select` then standardises the combined scores over the block again like
every selector's (one protocol: the temperature means the same). w = 0 is the influence model's
ranking exactly (an affine map of its scores); a large w is the prior's.

Why a prior: the influence target can be gamed by junk (word-shuffled text lowers the LAMBADA loss
while raising held-out clean loss; experiments/selection_arena/README.md, "Junk"), and a quality
filter scores a candidate without looking at the target. The registry has two instances (selectors.py
`_prior`): `mates+fasttext`, the fastText filter (baselines/classifier.py: reference positives vs pool
negatives, DCLM's recipe; seconds per block), and `mates+heuristic`, the Gopher / C4 rules
(baselines/heuristic.py; no model). Measured indicatively on the junk arena's first selection stage
(docs/baselines.md#mates-x-a-quality-prior-matesfasttext): the fastText prior with its default FLAN
positives *raises* the junk kept, the heuristic one lowers it a little; neither is a verdict.

The combined scores are a scores folder in the common format (selection/scores_io.py) whose identity
is the two components' DONE fingerprints and w; meta.json records w and each component's folder,
block mean and sd. No model runs here (flops 0); the components count their own compute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datamates.artifacts import read_marker
from datamates.baselines._common import check_ids, counts, digest, write_scores
from datamates.config.base import knob, to_dict, validate
from datamates.config.influence import SelectConfig
from datamates.core.pool import Pool
from datamates.errors import ConfigError, InputError
from datamates.selection.select import standardised_keys


@dataclass(kw_only=True)
class PriorConfig:
    """`mates+fasttext`, `mates+heuristic`: MATES's influence and a quality prior, each standardised over the
    block (its section, baselines.prior, lives here: the registry lines name it, docs/extending.md)."""

    weight: float = knob(1.0, "w of combined = z(mates) + w * z(prior) (mates+fasttext, mates+heuristic), both "
                              "z-scores over the candidate block (select's block scale), lower is better; 0: mates's "
                              "ranking", ge=0)

    def check(self) -> None:
        if not math.isfinite(self.weight):
            raise ConfigError(f"weight = {self.weight}: must be a finite number >= 0 (1.0: influence and prior alike)")


BLOCK = SelectConfig(scale="block", method="topk")  # the protocol's block standardisation, no noise


def block_z(scores: str | Path, pool: Pool) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """(ids, z, {mean, sd}) of a scores folder, standardised over its block as `select` does."""
    ids, z, _, info = standardised_keys(BLOCK, scores, pool)
    return ids, z, {"mean": float(info["z_mean"]), "sd": float(info["z_std"])}


def combine(cfg: PriorConfig, pool: Pool, ids: np.ndarray, out: str | Path, *, influence: str | Path,
            prior: str | Path, shard_size: int = 65536) -> Path:
    """Write z(influence) + cfg.weight * z(prior) of candidates `ids` into the scores folder `out`.
    Both folders must hold exactly the candidates `ids` (one line otherwise)."""
    validate(cfg)
    ids = check_ids(ids, pool)
    parts: dict[str, Any] = {}
    values = np.zeros(len(ids), dtype=np.float64)
    order = np.argsort(ids, kind="stable")
    for name, folder, w in (("influence", influence, 1.0), ("prior", prior, cfg.weight)):
        got, z, stats = block_z(folder, pool)
        srt = np.argsort(got, kind="stable")
        if len(got) != len(ids) or not np.array_equal(got[srt], ids[order]):
            raise InputError(f"{folder}: its scores are of {len(got):,} other candidates than the {len(ids):,} of this "
                             "block; delete the folder and re-run the stage")
        values[order] += w * z[srt]
        marker = read_marker(folder) or {}
        parts[name] = {"scores": str(folder), "fingerprint": marker.get("fingerprint"), "weight": w, **stats}
    by_id, sorted_values = ids[order], values[order]

    def score_fn(part: np.ndarray) -> np.ndarray:
        return sorted_values[np.searchsorted(by_id, part)]

    def meta() -> dict[str, Any]:
        return {"method": "mates+prior", "weight": cfg.weight, "components": parts, "config": to_dict(cfg),
                "select_hint": {"method": "gumbel", "scale": "block"}, **counts(None)}

    plan = {"pool_id": pool.pool_id, "method": "mates+prior",
            "model_hash": digest("mates+prior", parts["influence"]["fingerprint"], parts["prior"]["fingerprint"],
                                 repr(float(cfg.weight)))}
    return write_scores(out, pool, ids, plan, shard_size, score_fn, meta, desc="combined scores")
