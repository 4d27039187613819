"""The run directory: the only module that knows artifact paths, and how they are written.

    runs/<name>/config.yaml
               pool/                          tokens, index, tokenizer (core/pool.py owns the inside)
               stage_NN/probe/ influence_model/ scores/ selected/ checkpoint/ eval/
               partitions/ units/<unit>/ merged/<key>/ gold/<key>/ ablation/
               report/ logs/ metrics.json

Every artifact is a directory written under `<name>.partial` and renamed into place; it is
complete when it holds a `DONE` marker. `meta.json` beside the data says what produced it. A killed
run therefore leaves either nothing or a `.partial` folder that the stage resumes from or wipes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from datamates import __version__

DONE = "DONE"
META = "meta.json"


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def is_done(path: str | Path) -> bool:
    return (Path(path) / DONE).exists()


def code_version() -> str:
    """Package version plus the git commit when run from a checkout."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


def meta_record(produced_by: str, **fields: Any) -> dict[str, Any]:
    return {
        "produced_by": produced_by,
        "code_version": code_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **fields,
    }


def partial_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".partial")


@contextlib.contextmanager
def atomic_dir(path: str | Path, meta: dict[str, Any] | None = None, *, resume: bool = False) -> Iterator[Path]:
    """Yield a scratch directory; on success write `meta.json` and `DONE` into it and rename it
    to `path` (replacing an incomplete one). With `resume=True` a scratch directory left by a
    killed run is handed back as it is, so the stage can pick up where it stopped; otherwise it
    is wiped first. On an exception the scratch directory stays for a later resume."""
    path = Path(path)
    tmp = partial_path(path)
    if tmp.exists() and not resume:
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    yield tmp
    if meta is not None:
        atomic_write_json(tmp / META, meta)
    (tmp / DONE).write_text(time.strftime("%Y-%m-%dT%H:%M:%S%z") + "\n")
    if path.exists():
        old = path.with_name(path.name + f".old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
    _fsync_dir(path.parent)


def encoder_cache_dir(pool_dir: str | Path) -> Path:
    """Pool-level cache of the influence model's encoder input (token ids, frozen embeddings): it
    depends only on the pool and the encoder, so every stage and every run on the pool share it."""
    return Path(pool_dir) / "encoder_cache"


class RunDir:
    """Paths of one run's artifacts. Stage numbers are 1-based and zero-padded (stage_01)."""

    def __init__(self, root: str | Path, branch: str | None = None):
        self.root = Path(root)
        self.branch_name = branch
        # stage artifacts of a branch (one selector of a comparison) live in <root>/<branch>/
        self.base = self.root / branch if branch else self.root

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r}, branch={self.branch_name!r})"

    def branch(self, name: str) -> RunDir:
        """The same run seen from one branch: shared pool / plan / report, own stages."""
        return RunDir(self.root, name)

    @property
    def plan(self) -> Path:
        return self.root / "plan"

    @property
    def final(self) -> Path:
        return self.base / "final"

    @property
    def final_eval(self) -> Path:
        return self.base / "eval"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def pool(self) -> Path:
        return self.root / "pool"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    def stage(self, n: int) -> Path:
        return self.base / f"stage_{n:02d}"

    def probe(self, n: int) -> Path:
        return self.stage(n) / "probe"

    def influence_model(self, n: int) -> Path:
        return self.stage(n) / "influence_model"

    def scores(self, n: int) -> Path:
        return self.stage(n) / "scores"

    def selected(self, n: int) -> Path:
        return self.stage(n) / "selected"

    def checkpoint(self, n: int) -> Path:
        return self.stage(n) / "checkpoint"

    def eval(self, n: int) -> Path:
        return self.stage(n) / "eval"

    @property
    def partitions(self) -> Path:
        return self.root / "partitions"

    @property
    def seed_model(self) -> Path:
        return self.root / "seed"

    def unit(self, name: str) -> Path:
        return self.root / "units" / name

    def merged(self, key: str) -> Path:
        return self.root / "merged" / key

    def gold(self, key: str) -> Path:
        return self.root / "gold" / key

    @property
    def ablation(self) -> Path:
        return self.root / "ablation"
