"""Configs of the data influence model: fit, score, select (MATES §4, §2.4; docs/methods.md#data-influence-model, docs/methods.md#gumbel-top-k-selection, docs/methods.md#scoring-the-pool)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from datamates.config.base import Alias, knob
from datamates.config.executor import ExecutorConfig
from datamates.errors import ConfigError


@dataclass(kw_only=True)
class EncoderConfig:
    """How a pool sequence becomes encoder input (shared by fit and score; part of the cache key)."""

    backbone: str = knob("minilm", "encoder: 'minilm' (offline, bundled), a local folder, or a hub name "
                                   "(MATES: bert-base-uncased)")
    max_tokens: int = knob(1024, "encoder positions per sequence, specials included (MATES: 1024)", ge=8)
    chunk_len: int = knob(512, "encoder positions per chunk; a sequence is max_tokens / chunk_len chunks "
                               "encoded independently and mean-pooled together (MATES: 2 x 512)", ge=4)
    chunking: Literal["specials", "mates"] = knob(
        "specials",
        "specials: every chunk is a well-formed encoder input ([CLS] text [SEP], positions from 0); "
        "mates: the reference code's layout ([CLS] text [SEP] cut into chunks; chunk 2 has no [CLS])",
    )

    def check(self) -> None:
        if self.max_tokens % self.chunk_len:
            raise ConfigError(f"max_tokens = {self.max_tokens}: must be a multiple of chunk_len = {self.chunk_len}")


@dataclass(kw_only=True)
class FitConfig:
    mode: Literal["finetune", "frozen", "lm"] = knob(
        "finetune",
        "finetune: the whole encoder + head, fresh from the backbone each stage (MATES); "
        "frozen: cached mean-pooled embeddings of the frozen encoder + a ridge head; "
        "lm: features of the current LM from one forward per candidate (`features`) + a `head` "
        "(docs/influence_model.md)",
    )
    features: list[str] = knob(
        ["stats", "hidden", "fo"],
        "lm mode (default: issue 14's influence_bench pick, the full-forward model; configs/paper_410m.yaml uses issue "
        "28's cheaper pick, docs/influence_model.md): feature kinds (selection/features.py): stats (the LM's loss mean, quantiles, std, mean "
        "entropy), hidden (its mean-pooled last hidden state), fo (the first-order head term "
        "<D, grad_W loss(x)>), embed (the LM's normalised input embedding of the whole candidate, "
        "mean-pooled: no block runs), encoder (the frozen encoder embedding)",
    )
    head: Literal["ridge", "mlp"] = knob("ridge", "lm mode: ridge (alpha by leave-one-out) or a small MLP head")
    prefix_tokens: int | None = knob(
        None, "lm mode: features of the first this many tokens of each sequence only (the forward runs on "
              "the prefix; docs/influence_model.md#cheaper-features); null: the whole sequence", ge=2)
    exit_layer: int | None = knob(
        None, "lm mode: early exit, the LM's first this many blocks then its final norm and head (logit "
              "lens; 0: the input embedding); null: every block", ge=0)
    lm_batch_size: int = knob(16, "lm mode: candidates per LM forward", ge=1)
    encoder: EncoderConfig = knob(EncoderConfig(), "encoder input")
    lr: float = knob(5e-5, "peak learning rate (linear decay to 0, as HF Trainer's default)", gt=0)
    weight_decay: float = knob(0.01, "AdamW weight decay", ge=0)
    warmup_steps: int = knob(0, "linear warmup steps (MATES: 0)", ge=0)
    epochs: int = knob(5, "passes over the training labels", ge=1)
    batch_size: int = knob(32, "sequences per optimizer step (MATES: 32 x 8 GPUs)", ge=1)
    micro_batch_size: int | None = knob(None, "sequences per forward/backward (gradient accumulation); null: batch_size", ge=1)
    val_fraction: float = knob(0.1, "share of labels held out for validation (MATES: 0.1)", gt=0, lt=1)
    split_seed: int = knob(1234, "seed of the train/validation split (MATES: 1234)")
    seed: int = knob(0, "seed of the head init, dropout and batch order")
    eval_every: int = knob(20, "validate every this many steps, and at the end; keep the best Spearman", ge=1)
    dropout: float = knob(0.1, "dropout before the linear head (MATES: 0.1)", ge=0, lt=1)
    ridge_alphas: list[float] = knob(
        [0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0],
        "frozen mode: ridge penalties tried (on standardized embeddings); the one with the lowest "
        "leave-one-out error on the training split is kept",
    )
    embed_batch_size: int = knob(64, "chunks per encoder forward when embedding / validating", ge=1)
    min_labels: int = knob(16, "refuse to fit on fewer labels", ge=4)
    device: str = knob("auto", "auto, cpu, cuda, cuda:N")
    precision: Literal["auto", "fp32", "bf16"] = knob("auto", "auto: bf16 autocast on CUDA, fp32 on CPU")

    def check(self) -> None:
        known = ("stats", "hidden", "fo", "embed", "encoder")
        bad = [f for f in self.features if f not in known]
        if bad or not self.features or len(set(self.features)) != len(self.features):
            raise ConfigError(f"features = {self.features}: name each of {', '.join(known)} at most once "
                              f"({'unknown: ' + bad[0] if bad else 'none or a repeat'})")


@dataclass(kw_only=True)
class ScoreConfig:
    ALIASES = {  # deprecated flat spellings of the executor section
        "workers": Alias("executor.workers"), "backend": Alias("executor.backend"),
        "threads_per_worker": Alias("executor.threads", lambda v: 0 if v is None else v),
        "ray_address": Alias("executor.ray_address"), "ray_cpus_per_actor": Alias("executor.ray_cpus"),
        "ray_gpus_per_actor": Alias("executor.ray_gpus"),
    }

    batch_size: int = knob(64, "encoder chunks per forward pass (length-sorted, padded to the batch's longest)", ge=1)
    shard_size: int = knob(65536, "sequences per score shard (the unit of resume and of parallel work)", ge=1)
    device: str = knob("auto", "auto, cpu, cuda, cuda:N (local workers on CUDA use cuda:0..workers-1)")
    precision: Literal["auto", "fp32", "bf16"] = knob("auto", "auto: bf16 autocast on CUDA, fp32 on CPU (as fit: same features)")
    executor: ExecutorConfig = knob(ExecutorConfig(), "where the score shards run (docs/executor.md)")


@dataclass(kw_only=True)
class SelectConfig:
    method: Literal["gumbel", "topk", "random"] = knob(
        "gumbel", "gumbel: Gumbel-top-k on the scores; topk: the k lowest scores; random: uniform, same noise"
    )
    fraction: float = knob(0.2, "share of the candidate block kept (MATES: 0.2)", gt=0, le=1)
    temperature: float = knob(0.5, "Gumbel-top-k temperature tau on z-scored scores; 0 is exact top-k "
                                    "(MATES code: 0.5)", ge=0)
    gumbel: Literal["exact", "mates"] = knob(
        "exact",
        "exact: the k largest of -z/tau + G, a sample without replacement from softmax(-z/tau); "
        "mates: the k smallest of z/tau + G, the reference code's variant (docs/methods.md#gumbel-top-k-selection)",
    )
    scale: Literal["block", "label", "none"] = knob(
        "block",
        "what z is, the same for every selector (one protocol): block: the scores standardized over the "
        "candidate block (sd(z) = 1); label: (score - label mean) / label std of the influence model, the "
        "reference code's variant for MATES-parity runs (its predictions shrink, so sd(z) < 1: hotter); "
        "selectors without label statistics fall back to block; none: raw scores",
    )
    seed: int = knob(0, "seed of the Gumbel noise; the noise of a sequence depends only on (seed, id)")
    write_documents: bool = knob(False, "also write the selected documents in the input format")
    write_scores: bool = knob(
        True, "with scores: also write scores.parquet ((sequence, document) rows) and Dolma-style attributes "
        "(one line per pool document) for filter tools (docs/formats.md)"
    )
