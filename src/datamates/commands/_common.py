"""Helpers shared by the verbs: config options, run directory, logging, id files."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from datamates.errors import InputError


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="FILE|NAME",
                   help="YAML config file, or the name of one in configs/ (e.g. tiny_cpu)")
    p.add_argument("--set", "-s", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=3e-4 (repeatable)")
    p.add_argument("--run-dir", metavar="DIR", help="run directory (default: <runs_root>/<name>)")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    p.add_argument("--force", action="store_true",
                   help="redo an output (finished or partial) that was made from another config or other inputs, "
                        "instead of refusing it")


def setup(args: argparse.Namespace, verb: str):
    """Load the RunConfig, set up logging to <run>/logs/<verb>.log; return (cfg, RunDir)."""
    from datamates.config import load_config
    from datamates.log import setup_logging
    from datamates.run_dir import RunDir, set_force

    set_force(getattr(args, "force", False))
    cfg = load_config(args.config, args.sets)
    root = Path(args.run_dir) if getattr(args, "run_dir", None) else cfg.run_dir
    rd = RunDir(root)
    setup_logging(rd.logs / f"{verb}.log", verbose=getattr(args, "verbose", False))
    return cfg, rd


def read_ids(path: str | Path) -> np.ndarray:
    """Sequence ids from a .npy file, a text file (one per line), or a folder holding ids.npy."""
    p = Path(path)
    if p.is_dir():
        p = p / "ids.npy"
    if not p.exists():
        raise InputError(f"{path}: no such id file (expected .npy, a text file of ids, or a folder with ids.npy)")
    if p.suffix == ".npy":
        ids = np.load(p)
    else:
        vals = []
        for n, line in enumerate(p.read_text().splitlines(), start=1):
            line = line.strip()
            if not line:
                continue
            try:
                vals.append(int(line))
            except ValueError:
                raise InputError(f"{p}:{n}: not an integer sequence id: {line!r}") from None
        ids = np.array(vals, dtype=np.int64)
    if ids.ndim != 1 or len(ids) == 0:
        raise InputError(f"{p}: expected a non-empty list of sequence ids")
    return ids.astype(np.int64)


def write_run_config(cfg, rd) -> None:
    """Record the resolved config in <run>/config.yaml; refuse to resume a run started with a
    different config (artifacts of two configs must not mix)."""
    import yaml

    from datamates.config.base import config_hash, to_dict
    from datamates.errors import ConfigError
    from datamates.run_dir import atomic_write_text

    data = to_dict(cfg)
    data["config_hash"] = config_hash(cfg)
    if rd.config.exists():
        old = yaml.safe_load(rd.config.read_text()) or {}
        if old.get("config_hash") not in (None, data["config_hash"]):
            diff = _first_diff(old, data)
            raise ConfigError(
                f"{rd.config}: this run was started with a different config ({diff}); use a new run name "
                f"(--set name=...) or delete {rd.root}"
            )
    atomic_write_text(rd.config, yaml.safe_dump(data, sort_keys=False))


def _first_diff(a, b, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            if k == "config_hash":
                continue
            if a.get(k) != b.get(k):
                return _first_diff(a.get(k), b.get(k), f"{prefix}{k}.")
    return f"{prefix.rstrip('.')}: {a!r} -> {b!r}"
