"""Configs of the shared nouns: tokenizer, pool, language model, training loop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from datamates.config.base import knob
from datamates.errors import ConfigError


@dataclass(kw_only=True)
class TokenizerConfig:
    name_or_path: str | None = knob(
        None,
        "a tokenizer.json file, a folder holding one, or a Hugging Face hub name; "
        "null: train a byte-level BPE of `vocab_size` on the pool",
    )
    vocab_size: int = knob(8192, "vocabulary size of the BPE trained on the pool", ge=260)
    train_max_bytes: int = knob(
        200_000_000, "train the BPE on at most this many bytes of text (the first documents read)", gt=0
    )
    eos_token: str = knob("<|endoftext|>", "token appended after every document")


@dataclass(kw_only=True)
class PoolConfig:
    inputs: list[str] = knob(
        [], "files (JSONL, .jsonl.gz/.json.gz, .jsonl.zst/.json.zst, Parquet, token .bin, datatrove .ds), "
        "folders of them, glob patterns, save_to_disk folders, fsspec URLs (file://, s3://, gs://, hf://) "
        "or Hugging Face datasets hf:NAME[:CONFIG]:SPLIT (docs/formats.md)"
    )
    text_field: str = knob("text", "record field holding the document text")
    id_field: str | None = knob(
        "id", "record field holding a unique document id; records without it get '<name>:<line>' (the file's "
        "relative path less its container suffix, so the id does not depend on the format)"
    )
    domain_field: str | None = knob(None, "record field holding the domain (dotted path, e.g. meta.domain)")
    domain_from: Literal["field", "folder", "file", "none"] = knob(
        "folder",
        "where a document's domain comes from: a record field, the name of the input folder's "
        "sub-folder the file sits in, the file name, or nowhere (all 'default')",
    )
    seq_len: int = knob(1024, "tokens per training sequence (MATES's selection unit)", ge=8)
    pack_by_domain: bool = knob(
        True, "pack each domain into its own sequences, so every sequence has exactly one domain"
    )
    shard_sequences: int = knob(65536, "sequences per token shard file", ge=1)
    read_batch: int = knob(512, "documents tokenized per batch", ge=1)
    token_dtype: Literal["auto", "uint16", "uint32"] = knob(
        "auto", "pre-tokenized .bin inputs: the token dtype (auto: uint16 when the tokenizer has at most "
        "65536 tokens, else uint32; datatrove .ds shards: from their .ds.metadata)"
    )
    token_eos_id: int | None = knob(
        None, "pre-tokenized inputs: the id separating documents (null: the tokenizer's eos_token)", ge=0
    )
    tokenizer: TokenizerConfig = knob(TokenizerConfig(), "tokenizer")


@dataclass(kw_only=True)
class ModelConfig:
    """GPT-NeoX (Pythia) shapes. `preset` fills every field; explicit keys override it."""

    preset: str = knob("tiny", "named shape: tiny, pythia-14m, -70m, -160m, -410m, -1b")
    n_layers: int = knob(4, "transformer layers", ge=1)
    d_model: int = knob(128, "hidden size", ge=8)
    n_heads: int = knob(4, "attention heads", ge=1)
    d_ff: int | None = knob(None, "MLP width; null: 4 * d_model", ge=1)
    context: int = knob(1024, "maximum sequence length (position budget)", ge=8)
    rotary_pct: float = knob(0.25, "fraction of each head's dims that get rotary embeddings", gt=0, le=1)
    parallel_residual: bool = knob(True, "GPT-NeoX parallel attention + MLP residual")
    tie_embeddings: bool = knob(False, "share input and output embeddings (Pythia: no)")
    vocab_size: int | None = knob(
        None, "embedding rows; null: the tokenizer's vocabulary rounded up to a multiple of 128", ge=2
    )
    init_std: float = knob(0.02, "std of the normal init of linear and embedding weights", gt=0)
    attn_implementation: Literal["sdpa", "eager"] = knob("sdpa", "attention kernel")

    PRESETS: ClassVar[dict[str, ModelConfig]] = {}

    def check(self) -> None:
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model = {self.d_model}: must be divisible by n_heads = {self.n_heads}")


def _preset(name: str, n_layers: int, d_model: int, n_heads: int, context: int = 1024) -> ModelConfig:
    return ModelConfig(preset=name, n_layers=n_layers, d_model=d_model, n_heads=n_heads, context=context)


ModelConfig.PRESETS.update(
    {
        "tiny": _preset("tiny", 4, 128, 4),
        "pythia-14m": _preset("pythia-14m", 6, 128, 4),
        "pythia-70m": _preset("pythia-70m", 6, 512, 8),
        "pythia-160m": _preset("pythia-160m", 12, 768, 12),
        "pythia-410m": _preset("pythia-410m", 24, 1024, 16),
        "pythia-1b": _preset("pythia-1b", 16, 2048, 8),
    }
)


@dataclass(kw_only=True)
class TrainConfig:
    """One optimizer loop for every LM training in datamates (MATES stages, partitions, gold models).
    Defaults are MATES's recipe (docs/methods.md#language-model-and-training-recipe): AdamW (0.9, 0.95), wd 0.1 on all parameters,
    clip 1.0, warmup then constant."""

    steps: int = knob(300, "optimizer steps to take in this call", ge=0)
    micro_batch_size: int = knob(8, "sequences per forward/backward per process", ge=1)
    grad_accum: int = knob(1, "micro-batches accumulated per optimizer step", ge=1)
    lr: float = knob(1e-3, "peak learning rate", gt=0)
    min_lr_ratio: float = knob(0.1, "cosine / wsd decay floor, as a fraction of lr", ge=0, le=1)
    schedule: Literal["constant", "cosine", "wsd", "exp_decay"] = knob(
        "constant",
        "after warmup: constant, cosine to min_lr, warmup-stable-decay, or exp_decay "
        "(lr * 0.5^(i / decay_half_life) from the start of this call: MATES's pre-evaluation decay)",
    )
    warmup_steps: int = knob(0, "linear warmup steps (counted in global optimizer steps)", ge=0)
    total_steps: int | None = knob(
        None, "horizon of the cosine / wsd schedule in global steps; null: the global step at the end of this call", ge=1
    )
    decay_steps: int = knob(0, "wsd: length of the final linear decay to min_lr", ge=0)
    decay_half_life: float = knob(50.0, "exp_decay: steps per halving of the learning rate", gt=0)
    beta1: float = knob(0.9, "AdamW beta1", ge=0, lt=1)
    beta2: float = knob(0.95, "AdamW beta2", ge=0, lt=1)
    eps: float = knob(1e-8, "AdamW epsilon", gt=0)
    weight_decay: float = knob(0.1, "decoupled weight decay", ge=0)
    decay_norm_and_bias: bool = knob(
        True, "apply weight decay to LayerNorm weights and biases too (MATES does)"
    )
    grad_clip: float | None = knob(1.0, "clip the global gradient norm to this value; null: no clipping", gt=0)
    seed: int = knob(1337, "seed of model init (when training from scratch) and of the data order")
    precision: Literal["auto", "fp32", "bf16"] = knob(
        "auto", "auto: bf16 autocast on CUDA, fp32 on CPU"
    )
    device: str = knob("auto", "auto, cpu, cuda, cuda:N")
    checkpoint_every: int = knob(100, "write a resumable checkpoint every this many steps", ge=1)
    log_every: int = knob(10, "log loss every this many steps", ge=1)
    init_optimizer: bool = knob(
        True, "when starting from a checkpoint, also load its AdamW moments and step count"
    )
    compile: bool = knob(False, "torch.compile the model (GPU runs; costs minutes of compilation on CPU)")

    def check(self) -> None:
        if self.schedule == "wsd" and self.decay_steps == 0:
            raise ConfigError("decay_steps = 0: the wsd schedule needs decay_steps > 0")
