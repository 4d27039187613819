"""The run directory: the only module that knows artifact paths.

    runs/<name>/config.yaml
               pool/                          tokens, index, tokenizer (core/pool.py owns the inside)
               stage_NN/probe/ influence_model/ scores/ selected/ checkpoint/ eval/
               partitions/ units/<unit>/ merged/<key>/ gold/<key>/ ablation/
               report/ logs/ metrics.json

How each artifact is written (atomically, locked, fingerprinted, resumable) is artifacts.py's
`produce`; the small write helpers are re-exported here for the modules that import them from
their old place.
"""

from __future__ import annotations

from pathlib import Path

from datamates.artifacts import (  # noqa: F401  (re-exported)
    DONE,
    META,
    PARTIAL,
    Lock,
    Output,
    atomic_dir,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    begin_partial,
    check_files,
    check_replaceable,
    code_version,
    drop_fresh_partial,
    fault_point,
    fingerprint,
    force_enabled,
    is_done,
    meta_record,
    open_partial,
    partial_path,
    produce,
    read_json,
    read_marker,
    replace_dir,
    reuse,
    set_force,
    write_done,
)
from datamates.identity import hash_file as file_sha256  # noqa: F401  (re-exported)


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

    @property
    def irreducible_model(self) -> Path:
        """The branch's RHO-LOSS irreducible-loss model (baselines/rholoss.py), trained once per branch."""
        return self.base / "irreducible_model"

    def unit(self, name: str) -> Path:
        return self.root / "units" / name

    def merged(self, key: str) -> Path:
        return self.root / "merged" / key

    def gold(self, key: str) -> Path:
        return self.root / "gold" / key

    @property
    def ablation(self) -> Path:
        return self.root / "ablation"
