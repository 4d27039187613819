"""Checkpoints: a Hugging Face model folder that also carries the full training state.

    config.json, model.safetensors          -> AutoModelForCausalLM.from_pretrained(path)
    tokenizer.json, tokenizer_config.json   -> AutoTokenizer.from_pretrained(path)
    optimizer.safetensors                   AdamW moments per parameter name + step counts
    rng.safetensors                         torch CPU / CUDA generator states
    trainer_state.json                      global step, data cursor, lr, schedule, seeds
    meta.json, DONE

No pickles: every tensor is in safetensors, everything else is JSON. Weights are saved in fp32
and load back bit-exactly, which is what makes resume exact.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers import PreTrainedModel

from datamates.errors import ArtifactMissing, CorruptArtifact, IncompatibleArtifacts
from datamates.identity import hash_dir
from datamates.run_dir import DONE, atomic_dir, atomic_write_json, is_done, read_json

MODEL_FILES = ("config.json", "model.safetensors", "generation_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@contextlib.contextmanager
def open_safetensors(file: str | Path) -> Iterator[Any]:
    """`safetensors.safe_open(file, "pt")` (memory-mapped, lazy) whose failures are one line:
    a missing file is ArtifactMissing; a truncated or corrupt one (header not JSON, data not
    covering the offsets the header declares) is CorruptArtifact naming the file."""
    file = Path(file)
    if not file.is_file():
        raise ArtifactMissing(f"{file}: no such weights file" + (" (it is a folder)" if file.is_dir() else ""))
    try:
        handle = safe_open(str(file), "pt")
    except (SafetensorError, OSError) as e:
        raise CorruptArtifact(
            f"{file}: not a complete safetensors file ({str(e).splitlines()[0][:160]}); it is truncated or "
            "corrupt: re-run the stage that wrote it, or copy it again"
        ) from None
    with handle as f:
        yield f


def load_safetensors(file: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file (CPU), with the one-line errors of `open_safetensors`."""
    with open_safetensors(file) as f:
        try:
            return {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, RuntimeError) as e:
            raise CorruptArtifact(f"{file}: cannot read its tensors ({str(e).splitlines()[0][:160]})") from None


def safetensors_shapes(file: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from the header alone (no data is read)."""
    with open_safetensors(file) as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def save_checkpoint(
    path: str | Path,
    model: PreTrainedModel,
    optimizer: torch.optim.Optimizer | None,
    trainer_state: dict[str, Any],
    *,
    tokenizer_dir: str | Path | None = None,
    meta: dict[str, Any] | None = None,
    rng: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint atomically (a `.partial` folder renamed into place, then DONE)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its "Writing model shards" bar, once per checkpoint
    path = Path(path)
    model = getattr(model, "module", model)  # unwrap DDP
    with atomic_dir(path, meta=meta, kind="checkpoint") as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        if optimizer is not None:
            save_file(optimizer_tensors(model, optimizer), str(tmp / "optimizer.safetensors"))
        if rng is None:  # this process's generators (the training loop passes every rank's)
            rng = {"torch_cpu": torch.get_rng_state()}
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                for i, s in enumerate(torch.cuda.get_rng_state_all()):
                    rng[f"cuda_{i}"] = s
        save_file(rng, str(tmp / "rng.safetensors"))
        atomic_write_json(tmp / "trainer_state.json", trainer_state)
        if tokenizer_dir is not None:
            for name in TOKENIZER_FILES:
                src = Path(tokenizer_dir) / name
                if src.exists():
                    shutil.copy2(src, tmp / name)
    return path


def optimizer_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """AdamW state keyed `<moment>.<parameter name>` (moment in exp_avg, exp_avg_sq, step)."""
    names = {id(p): n for n, p in model.named_parameters()}
    out: dict[str, torch.Tensor] = {}
    for p, st in optimizer.state.items():
        name = names[id(p)]
        for k, v in st.items():
            if torch.is_tensor(v):
                out[f"{k}.{name}"] = v.detach().to("cpu").contiguous()
            else:
                out[f"{k}.{name}"] = torch.tensor(float(v), dtype=torch.float32)
    return out


def load_optimizer_state(
    path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> None:
    """Fill `optimizer.state` from `optimizer.safetensors` (parameters matched by name)."""
    path = Path(path)
    f = path / "optimizer.safetensors"
    if not f.exists():
        raise ArtifactMissing(
            f"{path}: checkpoint has no optimizer state (optimizer.safetensors); it was exported weights-only"
        )
    tensors = load_safetensors(f)
    by_name: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        moment, name = key.split(".", 1)
        by_name.setdefault(name, {})[moment] = t
    for name, p in model.named_parameters():
        if name not in by_name:
            continue
        st = by_name[name]
        state: dict[str, Any] = {}
        for k, v in st.items():
            if k == "step":
                state[k] = v.clone().to(torch.float32)  # torch keeps `step` as a CPU float tensor
            else:
                if v.shape != p.shape:
                    raise IncompatibleArtifacts(
                        f"{f}: {k} of '{name}' has shape {tuple(v.shape)}, the model's parameter {tuple(p.shape)}"
                    )
                state[k] = v.to(device=p.device, dtype=p.dtype).clone()
        optimizer.state[p] = state


def has_optimizer_state(path: str | Path) -> bool:
    return (Path(path) / "optimizer.safetensors").exists()


def check_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder at `path` (or `path/checkpoint`), after checks that need no weights
    read: config.json is a JSON object, model.safetensors is a complete safetensors file (its
    header parses and its data covers every tensor: a truncated copy fails here), and the
    vocabulary of config.json matches the embedding rows of the weights. Each failure is one line."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactMissing(f"{path}: no such checkpoint folder" + (" (it is a file)" if path.exists() else ""))
    if not (path / "config.json").is_file() or not (path / "model.safetensors").exists():
        if (path / "checkpoint").is_dir():  # a stage folder: use its checkpoint
            return check_checkpoint(path / "checkpoint")
        raise ArtifactMissing(f"{path}: not a checkpoint (needs config.json and model.safetensors)")
    if (path / "trainer_state.json").exists() and not is_done(path):
        raise ArtifactMissing(f"{path}: checkpoint is incomplete (no {DONE} marker); re-run the stage that writes it")
    try:
        config = json.loads((path / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptArtifact(f"{path / 'config.json'}: not valid JSON ({e}); re-run the stage that wrote it") from None
    if not isinstance(config, dict):
        raise CorruptArtifact(f"{path / 'config.json'}: expected a JSON object of model settings")
    shapes = safetensors_shapes(path / "model.safetensors")
    vocab = config.get("vocab_size")
    rows = [s[0] for k, s in shapes.items() if k.endswith(("embed_in.weight", "embed_tokens.weight", "wte.weight"))]
    if isinstance(vocab, int) and rows and rows[0] != vocab:
        raise IncompatibleArtifacts(
            f"{path / 'config.json'}: vocab_size = {vocab}, but model.safetensors has {rows[0]} embedding rows; "
            "the config and the weights come from different models"
        )
    return path


def load_model(path: str | Path, device: str | torch.device = "cpu") -> PreTrainedModel:
    """Weights in fp32 on `device`, exactly as saved (transformers maps legacy key names, e.g.
    GPT-NeoX's `embed_out` <-> `lm_head`)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    path = check_checkpoint(path)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # no "LOAD REPORT" for our own checkpoints
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        # RuntimeError: a tensor shape that disagrees with config.json (transformers refuses it)
        raise IncompatibleArtifacts(
            f"{path}: cannot load the model ({str(e).splitlines()[0][:200]}); config.json and model.safetensors "
            "must come from the same model"
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return model.to(device)


def trainer_state(path: str | Path) -> dict[str, Any]:
    f = Path(path) / "trainer_state.json"
    return read_json(f) if f.exists() else {}




def export_hf(path: str | Path, out: str | Path) -> Path:
    """Weights + config + tokenizer only: a plain Hugging Face model folder."""
    path = check_checkpoint(path)
    out = Path(out)
    with atomic_dir(out, kind="export", fingerprint={"source": checkpoint_hash(path)}) as tmp:
        for name in MODEL_FILES + TOKENIZER_FILES:
            if (path / name).exists():
                shutil.copy2(path / name, tmp / name)
    # DONE stays (kind export): it lets a re-export replace an export (and nothing else); HF ignores it
    return out


def checkpoint_hash(path: str | Path) -> str:
    """sha256 of the checkpoint's weights, optimizer state and trainer state (first 16 hex digits)."""
    return hash_dir(path, ("model.safetensors", "optimizer.safetensors", "trainer_state.json"))
