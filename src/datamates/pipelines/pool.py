"""The pool both boxes start from: <run>/pool, or a link to a shared one."""

from __future__ import annotations

from pathlib import Path

from datamates.config.run import RunConfig
from datamates.core.pool import build_pool, cached_pool
from datamates.run_dir import RunDir


def run_pool(cfg: RunConfig, rd: RunDir) -> Path:
    """<run>/pool, built from cfg.pool, or a link to the shared pool in cfg.pool_dir (`auto`: the
    pool cache <runs_root>/pools/<key of the pool's fingerprint>, built there on first use)."""
    if cfg.pool_dir == "auto" and rd.pool.exists():  # linked by an earlier call: check it is still this pool
        return build_pool(cfg.pool, rd.pool)
    if cfg.pool_dir is not None:
        shared = cached_pool(cfg.pool, Path(cfg.runs_root) / "pools") if cfg.pool_dir == "auto" else cfg.pool_dir
        if not rd.pool.exists():
            rd.root.mkdir(parents=True, exist_ok=True)
            rd.pool.symlink_to(Path(shared).resolve(), target_is_directory=True)
        return rd.pool
    return build_pool(cfg.pool, rd.pool)
