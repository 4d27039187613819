"""Configs of the static baselines (docs/baselines.md): DSIR, SemDeDup, the quality rater, the
fastText classifier filter and the perplexity filter; DsDm, reducible loss and group-level selection. One dataclass per method; `BaselinesConfig`
holds them all (`datamates score-with METHOD --set baselines.<method>.<knob>=...`). A scorer may
instead declare its section in its own module (`Scorer.config`, e.g. baselines/heuristic.py): config/
cannot import a scorer, so such a section is kept raw in `BaselinesConfig.scorers` until
`selectors.resolve_config` checks it (config/base.py, owned sections)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from datamates.config.base import knob
from datamates.config.influence import EncoderConfig
from datamates.errors import ConfigError


@dataclass(kw_only=True)
class DSIRConfig:
    """DSIR (Xie et al. 2023, §3): hashed n-gram bag-of-words importance weights."""

    reference: str = knob("lambada_openai", "target distribution: a registered reference set "
                                            "(lambada_openai, flan_cot, dolly), a JSONL file or a pool folder")
    reference_size: int | None = knob(None, "reference examples used (seeded draw); null: all", ge=1)
    ngrams: int = knob(2, "n of the hashed n-grams: 2 = unigrams + bigrams (DSIR default)", ge=1)
    num_buckets: int = knob(10000, "hash buckets of the n-gram features (DSIR default 10,000)", ge=2)
    smoothing: float = knob(1e-8, "added to both bucket probabilities before the log (data-selection: 1e-8)", gt=0)
    shard_size: int = knob(65536, "sequences per score shard (the unit of streaming and of resume)", ge=1)
    seed: int = knob(1234, "seed of the reference subsample")


@dataclass(kw_only=True)
class SemDeDupConfig:
    """SemDeDup (Abbas et al. 2023, §3): k-means on embeddings, near-duplicates removed per cluster."""

    encoder: EncoderConfig | None = knob(None, "encoder of the embeddings (frozen); null: in a run, the run's "
                                               "encoder (mates.fit.encoder: its cached embeddings are reused), "
                                               "in score-with the encoder defaults")
    clusters: int = knob(100, "k-means clusters (the paper: 50,000 for LAION-440M; capped at n / 4)", ge=1)
    kmeans_iters: int = knob(20, "k-means iterations (faiss)", ge=1)
    eps: float | None = knob(None, "duplicate threshold: drop a sequence whose cosine similarity to an earlier "
                                   "one of its cluster exceeds 1 - eps; null: chosen so `keep_fraction` is kept",
                             gt=0, lt=1)
    keep_fraction: float = knob(0.8, "share kept when eps is null (eps is then the largest value that keeps it)",
                                gt=0, le=1)
    batch_size: int = knob(64, "encoder chunks per forward", ge=1)
    device: str = knob("auto", "auto, cpu, cuda, cuda:N")
    seed: int = knob(0, "seed of the k-means initialisation")


@dataclass(kw_only=True)
class RaterConfig:
    """QuRating-style quality rater (Wettig et al. 2024): frozen encoder + linear head on judgements."""

    labels: str | None = knob(None, "JSONL(.gz) of judgements: {text, label} (pointwise) or "
                                    "{text_a, text_b, prefer: a|b} (pairwise, Bradley-Terry)")
    text_field: str = knob("text", "text field of pointwise records")
    label_field: str = knob("label", "label field of pointwise records (a number; higher is better)")
    encoder: EncoderConfig | None = knob(None, "encoder (frozen) whose mean-pooled embeddings the head reads; null: "
                                               "in a run, the run's encoder (mates.fit.encoder), in score-with the "
                                               "encoder defaults")
    ridge_alphas: list[float] = knob([0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0],
                                     "L2 penalties tried: pointwise by leave-one-out (core/regression.ridge_loo), pairwise by "
                                     "the validation Bradley-Terry loss")
    val_fraction: float = knob(0.1, "share of judgements held out to report the rater's quality", gt=0, lt=1)
    split_seed: int = knob(1234, "seed of the train/validation split")
    temperature: float = knob(2.0, "selection temperature on the standardised predicted quality "
                                   "(QuRating: tau = 2, sampling rather than top-k)", ge=0)
    batch_size: int = knob(64, "encoder chunks per forward", ge=1)
    device: str = knob("auto", "auto, cpu, cuda, cuda:N")
    min_labels: int = knob(8, "refuse to fit on fewer judgements", ge=4)


@dataclass(kw_only=True)
class ClassifierConfig:
    """DCLM / FineWeb-Edu style filter: a fastText classifier, score = -P(positive)."""

    model: str | None = knob(None, "an existing fastText .bin (e.g. the DCLM classifier); null: train one")
    positive_label: str = knob("__label__hq", "the label whose probability is the quality (DCLM: __label__hq)")
    reference: str = knob("flan_cot", "positives when training: a registered reference set or a JSONL file")
    positives: int = knob(2000, "reference examples drawn as positives (seeded; fewer if the set is smaller)", ge=1)
    negatives: int | None = knob(None, "pool sequences drawn as negatives; null: as many as positives", ge=1)
    epoch: int = knob(25, "fastText epochs", ge=1)
    lr: float = knob(0.5, "fastText learning rate", gt=0)
    dim: int = knob(32, "fastText embedding size", ge=1)
    bucket: int = knob(200000, "fastText hash buckets of word n-grams (its default, 2M, makes a 2M x dim "
                               "model file: 256 MB at dim 32)", ge=1)
    word_ngrams: int = knob(2, "fastText word n-grams (DCLM: 2)", ge=1)
    min_count: int = knob(1, "fastText minimal word count", ge=1)
    max_chars: int = knob(20000, "characters of a text given to fastText (DCLM reads whole documents)", ge=1)
    seed: int = knob(0, "seed of the negative draw and of fastText (trained on one thread: reproducible)")
    shard_size: int = knob(65536, "sequences per score shard", ge=1)


@dataclass(kw_only=True)
class PerplexityConfig:
    """Perplexity filter (Wenzek et al. 2020 CCNet; Ankner et al. 2024 "Perplexed by Perplexity")."""

    model: str | None = knob(None, "reference LM: a datamates checkpoint or any Hugging Face causal LM folder/name")
    keep: Literal["low", "middle", "high"] = knob(
        "low", "low: low perplexity first (CCNet head); middle: closest to the median log-perplexity first "
               "(Ankner et al.); high: high perplexity first")
    max_tokens: int = knob(1024, "tokens of a sequence scored (re-tokenized text is cut to this)", ge=2)
    batch_size: int = knob(8, "sequences per forward", ge=1)
    device: str = knob("auto", "auto, cpu, cuda, cuda:N; auto in a run: the run's mates.score.device")
    shard_size: int = knob(65536, "sequences per score shard", ge=1)


@dataclass(kw_only=True)
class DsDmConfig:
    """DsDm (Engstrom et al. 2024): TRAK datamodel scores of the candidates on the reference loss."""

    dim: int = knob(2048, "d, dimensions of the random projection of per-example gradients (TRAK/DsDm: 2048)", ge=1)
    projection: Literal["countsketch", "rademacher", "gaussian", "identity"] = knob(
        "countsketch", "random projection P [n_params, d]: countsketch (one +-1 per parameter in a hashed column: "
                       "O(n_params) per example, the CPU default), rademacher or gaussian (dense, entries +-1/sqrt(d) "
                       "or N(0, 1/d), generated from the seed in row blocks, never stored), identity (no projection: "
                       "d = n_params, tiny models and tests only)")
    damping: float = knob(0.01, "lambda of the kernel (Phi^T Phi + lambda I)^-1, relative to the mean squared norm of a "
                                "candidate's projected gradient", gt=0)
    checkpoints: list[str] = knob([], "models the scores are averaged over (TRAK's ensemble); empty: the stage's "
                                      "starting checkpoint")
    batch_size: int = knob(16, "candidates per batched per-example-gradient pass", ge=1)
    precision: str = knob("fp32", "precision of the gradient passes (fp32, bf16)", choices=("fp32", "bf16", "auto"))
    seed: int = knob(0, "seed of the projection")
    device: str = knob("auto", "auto, cpu, cuda, cuda:N; auto in a run: the run's mates.score.device")


@dataclass(kw_only=True)
class RhoLossConfig:
    """RHO-LOSS (Mindermann et al. 2022): reducible loss = current loss - irreducible-model loss."""

    model: str | None = knob(None, "irreducible-loss model: a datamates checkpoint; null: fine-tune one from the "
                                   "first selection stage's starting checkpoint on the plan's reference part "
                                   "(once per branch, cached in <branch>/irreducible_model)")
    steps: int = knob(50, "optimizer steps of that fine-tune", ge=1)
    lr: float = knob(5e-4, "constant learning rate of that fine-tune (AdamW, fresh optimizer state)", gt=0)
    micro_batch_size: int = knob(8, "sequences per step of that fine-tune", ge=1)
    seed: int = knob(0, "seed of the fine-tune's data order")
    batch_size: int = knob(16, "sequences per forward when scoring", ge=1)


@dataclass(kw_only=True)
class GroupConfig:
    """Group-level selection (Group-MATES style, 2025): cluster-wise greedy with a diversity bonus."""

    clusters: int = knob(16, "k-means clusters of the candidate block (capped at n / 4)", ge=1)
    alpha: float = knob(1.0, "diversity weight: goodness(x) * (1 + alpha * (1 - mean cosine to the selected))", ge=0)
    allocation: Literal["size", "score"] = knob(
        "size", "share of k per cluster: size (proportional to its members) or score (to its softmax(-z / tau) "
                "mass; top-k: to its members in the plain top-k)")
    kmeans_iters: int = knob(20, "k-means iterations (faiss)", ge=1)
    seed: int = knob(0, "seed of the k-means initialisation")
    batch_size: int = knob(64, "encoder chunks per forward (embeddings not yet cached)", ge=1)
    device: str = knob("auto", "auto, cpu, cuda, cuda:N")


def with_encoder(cfg):
    """A SemDeDup / rater config with its encoder filled in: null is the encoder defaults (a run
    fills in its own encoder first, selectors.py)."""
    return cfg if cfg.encoder is not None else dataclasses.replace(cfg, encoder=EncoderConfig())


@dataclass(kw_only=True)
class BaselinesConfig:
    dsir: DSIRConfig = knob(DSIRConfig(), "DSIR importance resampling")
    semdedup: SemDeDupConfig = knob(SemDeDupConfig(), "SemDeDup")
    rater: RaterConfig = knob(RaterConfig(), "QuRating-style quality rater")
    classifier: ClassifierConfig = knob(ClassifierConfig(), "fastText classifier filter")
    perplexity: PerplexityConfig = knob(PerplexityConfig(), "perplexity filter")
    dsdm: DsDmConfig = knob(DsDmConfig(), "DsDm (TRAK datamodels)")
    rholoss: RhoLossConfig = knob(RhoLossConfig(), "reducible loss (RHO-LOSS)")
    group: GroupConfig = knob(GroupConfig(), "group-level selection (group:NAME)")
    scorers: dict[str, Any] = knob({}, "the sections scorer modules declare themselves (`Scorer.config` in "
                                       "selectors.SCORERS, e.g. heuristic), each at baselines.<name>: kept as "
                                       "written by the loader, checked against its dataclass when a verb starts "
                                       "(selectors.resolve_config)", owned=True)

    def check(self) -> None:
        if self.semdedup.eps is not None and not 0 < self.semdedup.eps < 1:
            raise ConfigError(f"baselines.semdedup.eps = {self.semdedup.eps}: must be in (0, 1)")
