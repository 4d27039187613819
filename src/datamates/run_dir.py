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


WARMUP = "warmup"  # the branch of the warmup stages, shared by every selector
TRAIN_SUMMARY = "train_summary.json"  # a checkpoint's counted training tokens and FLOPs (core/train_loop.py)
# the artifacts of a stage folder, in data-flow order
PROBE, INFLUENCE_MODEL, SCORES, SELECTED, CHECKPOINT, EVAL = (
    "probe", "influence_model", "scores", "selected", "checkpoint", "eval")
STAGE_ARTIFACTS = (PROBE, INFLUENCE_MODEL, SCORES, SELECTED, CHECKPOINT, EVAL)


def train_summary(checkpoint: str | Path) -> Path:
    return Path(checkpoint) / TRAIN_SUMMARY


class StagePaths:
    """The artifacts of one stage folder (`RunDir.stage_paths(n)`), for code that walks stages."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.number = int(self.folder.name.split("_")[1])

    @property
    def probe(self) -> Path:
        return self.folder / PROBE

    @property
    def influence_model(self) -> Path:
        return self.folder / INFLUENCE_MODEL

    @property
    def scores(self) -> Path:
        return self.folder / SCORES

    @property
    def selected(self) -> Path:
        return self.folder / SELECTED

    @property
    def checkpoint(self) -> Path:
        return self.folder / CHECKPOINT

    @property
    def eval(self) -> Path:
        return self.folder / EVAL

    @property
    def timings(self) -> Path:
        return self.folder / "timings.json"


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

    def stage_paths(self, n: int) -> StagePaths:
        return StagePaths(self.stage(n))

    def stages(self) -> list[StagePaths]:
        """The stage folders of this branch, in order."""
        return [StagePaths(d) for d in sorted(self.base.glob("stage_[0-9]*")) if d.is_dir()]

    def branches(self) -> list[str]:
        """The selector branches of the run (folders holding stages), less the shared warmup."""
        return [p.name for p in sorted(self.root.iterdir()) if p.is_dir() and not p.is_symlink()
                and p.name != WARMUP and p.name not in ("units", "merged", "gold") and any(p.glob("stage_[0-9]*"))]

    def probe(self, n: int) -> Path:
        return self.stage(n) / PROBE

    def influence_model(self, n: int) -> Path:
        return self.stage(n) / INFLUENCE_MODEL

    def scores(self, n: int) -> Path:
        return self.stage(n) / SCORES

    def selected(self, n: int) -> Path:
        return self.stage(n) / SELECTED

    def checkpoint(self, n: int) -> Path:
        return self.stage(n) / CHECKPOINT

    def eval(self, n: int) -> Path:
        return self.stage(n) / EVAL

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

    @property
    def units(self) -> Path:
        return self.root / "units"

    def unit(self, name: str) -> Path:
        return self.units / name

    def merged(self, key: str) -> Path:
        return self.root / "merged" / key

    def gold(self, key: str) -> Path:
        return self.root / "gold" / key

    def gold_root(self, natural: bool = False) -> Path:
        """The ablation study's gold models (train_partition.gold_dir names one mixture's folder):
        gold/ (units upsampled to equal weight, the paper), gold_natural/ (natural token proportions,
        gold_balance 'both')."""
        return self.root / ("gold_natural" if natural else "gold")

    @property
    def eval_cache(self) -> Path:
        """The ablation study's evaluations of the seed, the proxies and the gold models (EvalCache)."""
        return self.root / "ablation_cache" / "evals.jsonl"

    @property
    def ablation(self) -> Path:
        return self.root / "ablation"
