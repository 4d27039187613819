"""Tokenizers: load a Hugging Face `tokenizer.json` (file, folder or hub name), or train a
byte-level BPE on the pool. Everything downstream uses the fast `tokenizers.Tokenizer`."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from datamates.errors import ConfigError, InputError
from datamates.identity import hash_config


def load_tokenizer(name_or_path: str | Path) -> Tokenizer:
    """A tokenizer.json file, a folder with one, or a hub name (downloaded by transformers)."""
    p = Path(name_or_path)
    if p.is_dir():
        p = p / "tokenizer.json"
        if not p.exists():
            raise InputError(f"{name_or_path}: folder has no tokenizer.json")
    if p.exists():
        try:
            return Tokenizer.from_file(str(p))
        except Exception as e:  # tokenizers raises a bare Exception on parse errors
            msg = str(e).splitlines()[0][:200]
            raise InputError(f"{p}: not a valid tokenizer.json ({msg})") from None
    if str(name_or_path).endswith(".json"):
        raise InputError(f"{name_or_path}: tokenizer file not found")
    try:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(name_or_path))
    except Exception as e:
        raise ConfigError(
            f"tokenizer '{name_or_path}': not a local file or folder, and loading it from the hub failed "
            f"({type(e).__name__}); pass a path to a tokenizer.json"
        ) from None
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(f"tokenizer '{name_or_path}' has no fast (tokenizers) backend")
    return backend


def train_bpe(texts: Iterable[str], vocab_size: int, eos_token: str) -> Tokenizer:
    """Byte-level BPE (GPT-2 / GPT-NeoX style) with `eos_token` as its only special token."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[eos_token],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def eos_id(tok: Tokenizer, eos_token: str) -> int:
    i = tok.token_to_id(eos_token)
    if i is None:
        raise ConfigError(
            f"tokenizer has no token {eos_token!r}; set pool.tokenizer.eos_token to its end-of-text token"
        )
    return i


def tokenizer_hash(tok: Tokenizer) -> str:
    """Hash of the vocabulary and merges (not of formatting), to check artifacts belong together."""
    spec = json.loads(tok.to_str())
    return hash_config({"model": spec.get("model"), "added": spec.get("added_tokens")})


def save_hf_tokenizer(tok: Tokenizer, out_dir: str | Path, eos_token: str) -> None:
    """Write tokenizer files that `transformers.AutoTokenizer.from_pretrained(out_dir)` loads."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=eos_token, bos_token=eos_token, unk_token=eos_token
    )
    hf.save_pretrained(str(out_dir))


def decode_documents(tok, rows: np.ndarray, eos: int) -> list[list[str]]:
    """Each token row split at `eos` into its documents' pieces, every piece decoded in one batched
    call (special tokens skipped): per row, its decoded pieces in order (empty pieces left out)."""
    pieces: list[list[int]] = []
    owner: list[int] = []
    for i, row in enumerate(rows):
        start = 0
        for c in [*np.nonzero(row == eos)[0].tolist(), len(row)]:
            if c > start:
                pieces.append(row[start:c].tolist())
                owner.append(i)
            start = c + 1
    decoded = tok.decode_batch(pieces, skip_special_tokens=True) if pieces else []
    out: list[list[str]] = [[] for _ in range(len(rows))]
    for o, t in zip(owner, decoded, strict=True):
        out[o].append(t)
    return out
