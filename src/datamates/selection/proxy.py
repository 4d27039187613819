"""A small proxy LM trained alongside the run on the same selected stream (issue 28; the
SmallToLarge idea of Yang et al. 2024: a much smaller model's training dynamics stand in for the
big one's). Its features (selection/features.py: loss statistics, hidden state, first-order head
term against its own reference gradient) replace the big LM's in the influence model, so scoring a
candidate costs a forward of the proxy, not of the model being trained
(docs/influence_model.md#a-proxy-lm).

The proxy is the run's model section with a smaller shape (`proxy_model_config`), trained by the
same `train` with the run's stage schedule (`config.run.stage_train_config`: one cosine over the
run, the stage's seed) on exactly the ids each stage of the big model trained on. Every stage is a
checkpoint `<out>/stage_XX/checkpoint`; a killed stage resumes from its partial and gives the same
bytes (core/train_loop.py), and a finished stage is kept.

Its price: the proxy's own training on every trained token plus its forward on every candidate,
against the big LM's forward on every candidate. In a run, the selector
`mates-proxy` trains its branch's proxy lazily (`selectors.branch_proxy`: before stage s, on the warmup's
and the branch's selections of stages 1..s-1) in `<branch>/proxy/stage_XX/checkpoint`; accounting charges
that training to the branch's `fit` (accounting.summarize_branch).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from datamates.config.base import knob
from datamates.config.core import ModelConfig
from datamates.config.run import RunConfig, stage_train_config
from datamates.core.pool import Pool
from datamates.core.train_loop import train
from datamates.errors import ConfigError


@dataclass(kw_only=True)
class ProxyConfig:
    """mates.baselines.proxy: the shape of `mates-proxy`'s proxy LM (docs/influence_model.md#a-proxy-lm).
    The defaults halve the LM's blocks and quarter its width: the tiny LM (4 x 128) gets the 2 x 32 proxy
    of the influence bench; at paper scale set a smaller one (the bench's price table)."""

    n_layers: int | None = knob(None, "proxy blocks; null: half the LM's, at least 1", ge=1)
    d_model: int | None = knob(None, "proxy width; null: a quarter of the LM's, at least 16", ge=8)
    n_heads: int | None = knob(None, "proxy attention heads; null: d_model // 64, at least 1", ge=1)


def proxy_shape(cfg: ProxyConfig, model: ModelConfig) -> tuple[int, int, int]:
    """(n_layers, d_model, n_heads) of the proxy for the run's `model`."""
    n_layers = cfg.n_layers or max(1, model.n_layers // 2)
    d_model = cfg.d_model or max(16, model.d_model // 4)
    return n_layers, d_model, cfg.n_heads or max(1, d_model // 64)


def proxy_model_config(model: ModelConfig, *, n_layers: int, d_model: int, n_heads: int) -> ModelConfig:
    """The run's model with a smaller shape: its vocabulary, context, rotary share, residual layout
    and init kept; the MLP width back to 4 x d_model."""
    if d_model % n_heads:
        raise ConfigError(f"proxy d_model = {d_model}: must be divisible by its n_heads = {n_heads}")
    return replace(model, preset=f"proxy-l{n_layers}-d{d_model}", n_layers=n_layers, d_model=d_model,
                   n_heads=n_heads, d_ff=None)


def parse_shape(spec: str) -> tuple[int, int, int]:
    """'L2d32h2' -> (n_layers 2, d_model 32, n_heads 2); heads default as in `proxy_shape` (d_model // 64, at least 1)."""
    m = re.fullmatch(r"L(\d+)d(\d+)(?:h(\d+))?", spec)
    if not m:
        raise ConfigError(f"proxy shape {spec!r}: write L<layers>d<width>[h<heads>], e.g. L2d32h2")
    n_layers, d_model = int(m.group(1)), int(m.group(2))
    return proxy_shape(ProxyConfig(n_layers=n_layers, d_model=d_model, n_heads=int(m.group(3) or 0) or None),
                       ModelConfig())


def train_proxy(cfg: RunConfig, proxy: ModelConfig, pool: Pool, stream: Iterable[tuple[int, np.ndarray]],
                out: str | Path, *, init: str | Path | None = None, meta: dict | None = None,
                callback=None) -> list[Path]:
    """Train `proxy` stage by stage on `stream` ((stage, the ids the big model trained on at that
    stage), in order) with the run's stage schedule; returns every stage's checkpoint. Stage s
    continues from stage s-1's checkpoint (weights, AdamW state, global step)."""
    out, prev, done = Path(out), init, []
    for s, ids in stream:
        prev = train(stage_train_config(cfg, s), proxy, pool, np.asarray(ids, dtype=np.int64),
                     out / f"stage_{s:02d}" / "checkpoint", init=prev, meta={"stage": s, "proxy": True, **(meta or {})}, callback=callback)
        done.append(prev)
    return done
