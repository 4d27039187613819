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


def setup(args: argparse.Namespace, verb: str):
    """Load the RunConfig, set up logging to <run>/logs/<verb>.log; return (cfg, RunDir)."""
    from datamates.config import load_config
    from datamates.log import setup_logging
    from datamates.run_dir import RunDir

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
