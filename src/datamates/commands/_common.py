"""Helpers shared by the verbs: config options, run directory, logging, id files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from datamates.errors import InputError


def positive_int(text: str) -> int:
    """argparse type of counts and 1-based numbers (`--stage`, `-k`): 0 or a negative number is
    refused with one line instead of meaning "unset" or naming `stage_00` / `stage_-1`."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v}: must be >= 1")
    return v


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
    """Load the RunConfig (the scorers' own sections checked and filled in: selectors.resolve_config),
    set up logging to <run>/logs/<verb>.log; return (cfg, RunDir)."""
    from datamates.config import load_config
    from datamates.log import setup_logging
    from datamates.run_dir import RunDir, set_force
    from datamates.selectors import resolve_config

    set_force(getattr(args, "force", False))
    cfg = resolve_config(load_config(args.config, args.sets))  # scorers' own sections: checked before any work
    root = Path(args.run_dir) if getattr(args, "run_dir", None) else cfg.run_dir
    rd = RunDir(root)
    setup_logging(rd.logs / f"{verb}.log", verbose=getattr(args, "verbose", False))
    from datamates import tracking

    tracking.configure(cfg.log)  # log.backend: a missing package is one line before any work
    return cfg, rd


def flag_sets(args: argparse.Namespace, pairs: dict[str, str], section: str = "") -> None:
    """Turn CLI flags into config overrides: for each `attr -> key` of `pairs` whose flag was given,
    append `key=value` to `args.sets`, remembering the flag (`--seq-len 4`), so that a bad value is
    reported against the flag the user typed, not the YAML file. A value of 0 is a value, not
    "unset": only a flag left out (None) is skipped. Strings are quoted (YAML would read `1e3` or
    `null` as something else)."""
    from datamates.config.base import FlagSet

    for attr, key in pairs.items():
        v = getattr(args, attr, None)
        if v is None:
            continue
        flag = ("-" if len(attr) == 1 else "--") + attr.replace("_", "-")
        if isinstance(v, bool):
            expr, shown = f"{section}{key}={str(v).lower()}", flag
        elif isinstance(v, str):
            expr, shown = f"{section}{key}={json.dumps(v)}", f"{flag} {v}"
        elif isinstance(v, list):
            expr, shown = f"{section}{key}={json.dumps(v)}", f"{flag} {' '.join(map(str, v))}"
        else:
            expr, shown = f"{section}{key}={v!r}", f"{flag} {v}"
        args.sets = [*args.sets, FlagSet(expr, shown)]


def read_ids(path: str | Path, n_pool: int | None = None, flag: str = "") -> np.ndarray:
    """Sequence ids from a .npy file, a text file (one per line), or a folder holding ids.npy: the
    one loader of id lists, so every verb refuses the same mistakes with one line naming the file
    (and the position or line): a missing or unreadable file, an array of Python objects (never
    unpickled), a non-integer, negative or (with `n_pool`) out-of-range id, an empty or 2-d list."""
    p = Path(path)
    where = f"{flag} {path}" if flag else str(path)
    if p.is_dir():
        p = p / "ids.npy"
        where = f"{where}/ids.npy"
    if not p.is_file():
        raise InputError(f"{where}: no such id file (expected .npy, a text file of ids, or a folder with ids.npy)")
    if p.suffix == ".npy":
        try:
            ids = np.load(p, allow_pickle=False)
        except ValueError as e:
            if "allow_pickle" in str(e) or "Object arrays" in str(e):
                raise InputError(f"{where}: holds an array of Python objects, not integers; save the ids with "
                                 "np.save(path, np.asarray(ids, dtype=np.int64))") from None
            raise InputError(f"{where}: not a readable .npy file ({str(e).splitlines()[0][:120]})") from None
        except (OSError, EOFError) as e:
            raise InputError(f"{where}: not a readable .npy file ({type(e).__name__}: {str(e)[:120]})") from None
        if not isinstance(ids, np.ndarray):
            raise InputError(f"{where}: expected one array of sequence ids (np.save), not an archive")
        if ids.dtype.kind == "f":
            bad = ~np.isfinite(ids) | (ids != np.round(ids))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise InputError(f"{where}: position {i}: {float(ids.flat[i])!r} is not an integer sequence id")
        elif ids.dtype.kind not in "iu":
            raise InputError(f"{where}: holds {ids.dtype} values, not integer sequence ids")
    else:
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"{where}: not a text file of ids (byte {e.start} is not UTF-8); give .npy or text") from None
        vals = []
        for n, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if not line:
                continue
            try:
                vals.append(int(line))
            except ValueError:
                raise InputError(f"{where}:{n}: not an integer sequence id: {line!r}") from None
        ids = np.array(vals, dtype=np.int64)
    if ids.ndim != 1 or len(ids) == 0:
        raise InputError(f"{where}: expected a non-empty 1-d list of sequence ids (got shape {ids.shape})")
    ids = ids.astype(np.int64)
    neg = np.flatnonzero(ids < 0)
    if len(neg):
        raise InputError(f"{where}: position {int(neg[0])}: sequence id {int(ids[neg[0]])} is negative")
    if n_pool is not None:
        out = np.flatnonzero(ids >= n_pool)
        if len(out):
            raise InputError(f"{where}: position {int(out[0])}: sequence id {int(ids[out[0]])} is not in the pool "
                             f"(ids 0..{n_pool - 1}); were these ids made for another pool?")
    return ids


def _as_spelled_today(cls, old: dict) -> dict:
    """A run's recorded settings as this version spells them (deprecated keys under their new names,
    knobs added since at their defaults), so a run started by an older datamates resumes; as recorded
    when they no longer load (the comparison then names the first difference). No deprecation
    warnings: the user did not write these keys."""
    import logging

    from datamates.config.base import from_dict, to_dict
    from datamates.errors import DatamatesError
    from datamates.selectors import resolve_config

    logger = logging.getLogger("datamates")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return to_dict(resolve_config(from_dict(cls, {k: v for k, v in old.items() if k != "config_hash"})))
    except (DatamatesError, TypeError, ValueError):
        return old
    finally:
        logger.setLevel(level)


def write_run_config(cfg, rd) -> None:
    """Record the resolved config in <run>/config.yaml; refuse to resume a run started with a
    different config (artifacts of two configs must not mix)."""
    import yaml

    from datamates.config.base import config_hash, to_dict
    from datamates.errors import ConfigError
    from datamates.run_dir import atomic_write_text
    from datamates.selectors import resolve_config

    data = to_dict(resolve_config(cfg))  # the scorers' own sections, defaults included (idempotent)
    data["config_hash"] = config_hash(cfg)
    if rd.config.exists():
        try:
            old = yaml.safe_load(rd.config.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{rd.config}: line {mark.line + 1}" if mark is not None else str(rd.config)
            raise ConfigError(f"{where}: the run's recorded config is not valid YAML ({getattr(e, 'problem', None) or e}); "
                              f"restore it, or delete it to record this command's config for the run") from None
        if not isinstance(old, dict):
            raise ConfigError(f"{rd.config}: the run's recorded config is not a mapping of settings; restore it, or "
                              "delete it to record this command's config for the run")
        skip = ("config_hash", "distributed", "log")  # how ranks wait / where metrics go, not what a run computes
        # nor how a stage spreads its work (every `executor` section: workers, threads, Ray's claims): the
        # stages' outputs are the same across workers and shards (tests), and a changed default there (Ray's
        # CPUs per scoring actor: 1 -> null, "the stage's default", the same 1) must not lock a finished run
        body = _without_executor({k: v for k, v in data.items() if k not in skip})
        old_body = _without_executor({k: v for k, v in _as_spelled_today(type(cfg), old).items() if k not in skip})
        # which selectors run: each is its own branch whose artifacts carry their own fingerprints, so
        # adding a selector to a finished run (or dropping one) never mixes two configs' artifacts
        for b in (body, old_body):
            if isinstance(b.get("mates"), dict):
                b["mates"] = {k: v for k, v in b["mates"].items() if k != "selectors"}
        if (old_body.get("eval") or {}).get("num_fewshot") == 0 and body["eval"]["num_fewshot"] is None:
            old_body["eval"]["num_fewshot"] = None  # before task files could name num_fewshot, 0 was the default
        # the settings decide, not the stored hash (a hash of the same settings may change with the code)
        if old.get("config_hash") not in (None, data["config_hash"]) and old_body != body:
            diff = _first_diff(old_body, body)
            raise ConfigError(
                f"{rd.config}: this run was started with a different config ({diff}); use a new run name "
                f"(--set name=...) or delete {rd.root}"
            )
    atomic_write_text(rd.config, yaml.safe_dump(data, sort_keys=False))


def _without_executor(d):
    """A recorded config without its `executor` sections (at any depth)."""
    if isinstance(d, dict):
        return {k: _without_executor(v) for k, v in d.items() if k != "executor"}
    return d


def _first_diff(a, b, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            if k == "config_hash":
                continue
            if a.get(k) != b.get(k):
                return _first_diff(a.get(k), b.get(k), f"{prefix}{k}.")
    return f"{prefix.rstrip('.')}: {a!r} -> {b!r}"
