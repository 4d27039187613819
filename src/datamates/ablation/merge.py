"""Parameter averaging of unit models: a mixture's proxy (Na et al. 2024, §2; docs/methods.md#merging).

For a mixture S of units with weights w_i (uniform: w_i = 1; token-weighted: w_i = tokens of
unit i), every floating-point tensor of the proxy is

    uniform / weighted   theta_S = sum_{i in S} w_i theta_i / sum_{i in S} w_i
    task_arithmetic      theta_S = seed + lam * (sum_i w_i (theta_i - seed) / sum_i w_i)
                                 = seed + lam * (theta_mean - seed)

(lam = 1 is the plain average; the paper's proxy is the uniform mean). Non-float tensors are
copied from the first model.

Two implementations:

* `merge(...)` writes a merged checkpoint. It streams tensor by tensor: for each tensor name it
  reads that tensor from each input's model.safetensors (`safe_open`, memory-mapped), accumulates in
  float64 and appends the result to the output file through a streaming safetensors writer, so
  memory holds one tensor of each kind, never a whole model. The result is a normal checkpoint
  (config, tokenizer, trainer_state with the tokenizer hash) that `core.checkpoint.load_model` and
  `AutoModelForCausalLM.from_pretrained` load.
* `RunningMerge` evaluates many mixtures without a disk round trip: it keeps S_sum = sum w_i theta_i
  for the current mixture and, walking the mixtures in Gray-code order, adds or subtracts one unit
  model per step (O(P) per mixture instead of O(kP)); `load_into(model)` writes S_sum / W straight
  into the parameters of a resident model. The sum is recomputed from scratch every
  `recompute_every` steps to bound floating-point drift.

Before merging, `check_compatible` refuses inputs whose config.json (architecture, shapes),
tokenizer hash, tensor names / shapes, or recorded seed differ.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from datamates.ablation import weights_sha
from datamates.artifacts import Output, produce
from datamates.core.checkpoint import load_model, open_safetensors
from datamates.errors import ArtifactMissing, IncompatibleArtifacts, InputError
from datamates.identity import hash_file, hash_text
from datamates.log import get_logger
from datamates.run_dir import atomic_write_json, is_done, meta_record, read_json

log = get_logger(__name__)

WEIGHTS = "model.safetensors"
# config.json keys that do not change what the weights mean
_IGNORED_CONFIG_KEYS = {"transformers_version", "_name_or_path", "dtype", "torch_dtype", "use_cache"}
_ST_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.bfloat16: "BF16", torch.float16: "F16",
              torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
              torch.uint8: "U8", torch.bool: "BOOL"}
OUT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
METHODS = ("uniform", "weighted", "task_arithmetic")


# ----------------------------------------------------------------------------- inspection & checks


@dataclass
class CheckpointInfo:
    """What a checkpoint folder says about itself, read without loading its weights."""

    path: Path
    config: dict[str, Any]
    tensors: dict[str, tuple[str, tuple[int, ...]]]  # file key -> (safetensors dtype, shape)
    tokenizer_hash: str | None
    state: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def weights_file(self) -> Path:
        return self.path / WEIGHTS

    @property
    def seed_sha(self) -> str | None:
        return self.meta.get("seed_sha")

    @property
    def unit_tokens(self) -> int | None:
        """Tokens of the unit this model was trained on (meta.json, written by train-partitions),
        else the tokens it was trained for (train_summary.json)."""
        if self.meta.get("unit_tokens"):
            return int(self.meta["unit_tokens"])
        summ = self.path / "train_summary.json"
        return int(read_json(summ)["tokens"]) if summ.exists() else None


def inspect_checkpoint(path: str | Path) -> CheckpointInfo:
    path = Path(path)
    if not (path / "config.json").exists() or not (path / WEIGHTS).exists():
        if (path / "checkpoint").is_dir():
            return inspect_checkpoint(path / "checkpoint")
        raise ArtifactMissing(f"{path}: not a checkpoint (needs config.json and {WEIGHTS}; sharded weights are not supported)")
    if (path / "trainer_state.json").exists() and not is_done(path):
        raise ArtifactMissing(f"{path}: checkpoint is incomplete (no DONE marker); re-run the stage that writes it")
    config = json.loads((path / "config.json").read_text())
    tensors = {}

    with open_safetensors(path / WEIGHTS) as f:  # a truncated or corrupt file: one line
        for key in f.keys():
            sl = f.get_slice(key)
            tensors[key] = (sl.get_dtype(), tuple(sl.get_shape()))
    state = read_json(path / "trainer_state.json") if (path / "trainer_state.json").exists() else {}
    meta = read_json(path / "meta.json") if (path / "meta.json").exists() else {}
    tok = state.get("tokenizer_hash")
    if tok is None and (path / "tokenizer.json").exists():
        tok = "file:" + hash_file(path / "tokenizer.json")
    return CheckpointInfo(path, config, tensors, tok, state, meta)


def check_compatible(infos: Sequence[CheckpointInfo], seed: CheckpointInfo | None = None) -> None:
    """Refuse to merge checkpoints of different architectures, shapes, tokenizers or seeds."""
    if not infos:
        raise InputError("nothing to merge: no checkpoints given")
    ref = infos[0]
    others = list(infos[1:]) + ([seed] if seed is not None else [])
    ref_cfg = {k: v for k, v in ref.config.items() if k not in _IGNORED_CONFIG_KEYS}
    for o in others:
        cfg = {k: v for k, v in o.config.items() if k not in _IGNORED_CONFIG_KEYS}
        if cfg != ref_cfg:
            key = next(k for k in sorted(set(cfg) | set(ref_cfg)) if cfg.get(k) != ref_cfg.get(k))
            raise IncompatibleArtifacts(
                f"{o.path}: different architecture from {ref.path} (config.json {key} = {cfg.get(key)!r} vs "
                f"{ref_cfg.get(key)!r}); only models of one shape can be averaged"
            )
        if o.tensors.keys() != ref.tensors.keys():
            extra = sorted(set(o.tensors) ^ set(ref.tensors))[0]
            raise IncompatibleArtifacts(f"{o.path}: tensor '{extra}' is in one of {o.path}, {ref.path} but not the other")
        for k, (_dt, shape) in ref.tensors.items():
            if o.tensors[k][1] != shape:
                raise IncompatibleArtifacts(
                    f"{o.path}: tensor '{k}' has shape {o.tensors[k][1]}, {ref.path} has {shape}"
                )
        if o.tokenizer_hash and ref.tokenizer_hash and o.tokenizer_hash != ref.tokenizer_hash:
            raise IncompatibleArtifacts(
                f"{o.path}: trained with tokenizer {o.tokenizer_hash}, {ref.path} with {ref.tokenizer_hash}; "
                "models of different tokenizers cannot be averaged"
            )
    shas = {i.seed_sha for i in infos if i.seed_sha}
    if len(shas) > 1:
        raise IncompatibleArtifacts(
            "the unit models branch from different seed checkpoints (" + ", ".join(sorted(shas)) + "); "
            "parameter averaging needs one shared seed (docs/methods.md#unit-and-gold-training)"
        )
    if seed is not None and shas:
        sha = weights_sha(seed.path)
        if sha not in shas:
            raise IncompatibleArtifacts(
                f"{seed.path}: is not the seed the unit models were trained from (weights {sha}, units: {shas.pop()})"
            )


def resolve_weights(
    infos: Sequence[CheckpointInfo], method: str, weights: Sequence[float] | str | None
) -> list[float]:
    """Per-model weights. uniform: all 1. weighted: the given numbers, or 'tokens' (each unit's
    tokens). task_arithmetic: given numbers, else uniform."""
    if method not in METHODS:
        raise InputError(f"merge method '{method}': unknown; available: {', '.join(METHODS)}")
    k = len(infos)
    if method == "uniform":
        if weights is not None:
            raise InputError("merge method 'uniform' takes no weights; use method 'weighted'")
        return [1.0] * k
    if weights is None:
        if method == "task_arithmetic":
            return [1.0] * k
        weights = "tokens"
    if isinstance(weights, str):
        if weights != "tokens":
            raise InputError(f"weights = {weights!r}: give numbers or 'tokens'")
        toks = [i.unit_tokens for i in infos]
        missing = [str(i.path) for i, t in zip(infos, toks) if not t]
        if missing:
            raise InputError(f"{missing[0]}: no token count recorded (meta.json unit_tokens / train_summary.json); give weights")
        w = [float(t) for t in toks]
    else:
        w = [float(x) for x in weights]
    if len(w) != k:
        raise InputError(f"{len(w)} weights for {k} checkpoints")
    if any(not math.isfinite(x) for x in w):
        raise InputError(f"weights {w}: every weight must be a finite number")
    if any(x < 0 for x in w):
        raise InputError(f"weights {w}: negative weights are not allowed")
    if sum(w) <= 0:
        raise InputError(f"weights {w}: do not sum to a positive number")
    return w


# ----------------------------------------------------------------------------- streaming merge to disk


class SafetensorsWriter:
    """Write a .safetensors file tensor by tensor: the header (names, dtypes, shapes, offsets) is
    known up front, so each tensor's bytes are appended as soon as it is computed."""

    def __init__(self, path: Path, specs: list[tuple[str, torch.dtype, tuple[int, ...]]], metadata: dict[str, str] | None = None):
        self.path = path
        header: dict[str, Any] = {"__metadata__": metadata or {"format": "pt"}}
        off = 0
        self.expect: list[tuple[str, torch.dtype, tuple[int, ...]]] = []
        for name, dtype, shape in specs:
            n = math.prod(shape) * torch.tensor([], dtype=dtype).element_size()
            header[name] = {"dtype": _ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [off, off + n]}
            off += n
            self.expect.append((name, dtype, shape))
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * ((8 - len(blob) % 8) % 8)
        self.fh = open(path, "wb")
        self.fh.write(len(blob).to_bytes(8, "little"))
        self.fh.write(blob)
        self.i = 0

    def write(self, name: str, t: torch.Tensor) -> None:
        exp_name, dtype, shape = self.expect[self.i]
        if name != exp_name or t.dtype != dtype or tuple(t.shape) != shape:
            raise RuntimeError(f"tensor {name} {t.dtype} {tuple(t.shape)} out of order; expected {exp_name} {dtype} {shape}")
        self.fh.write(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        self.i += 1

    def close(self) -> None:
        if self.i != len(self.expect):
            raise RuntimeError(f"{self.path}: {self.i} of {len(self.expect)} tensors written")
        self.fh.flush()
        self.fh.close()


def merge(
    paths: Sequence[str | Path],
    out: str | Path,
    *,
    weights: Sequence[float] | str | None = None,
    method: str = "uniform",
    seed: str | Path | None = None,
    lam: float = 1.0,
    lam_scale: str = "constant",
    out_dtype: str = "float32",
    meta: dict[str, Any] | None = None,
) -> Path:
    """Average the checkpoints `paths` into a new checkpoint at `out` (streaming; see the module
    docstring). `weights`: numbers, 'tokens', or None (uniform). `seed` is required for
    task_arithmetic; with lam_scale 'size' its lambda is lam x (number of checkpoints). Returns `out`."""
    out = Path(out)
    infos = [inspect_checkpoint(p) for p in paths]
    if method == "task_arithmetic" and seed is None:
        raise InputError("merge method 'task_arithmetic' needs the seed checkpoint (--seed)")
    if not (lam > 0 and math.isfinite(lam)):
        raise InputError(f"lam = {lam}: must be a positive number")
    if out_dtype not in OUT_DTYPES:
        raise InputError(f"out_dtype '{out_dtype}': unknown; available: {', '.join(OUT_DTYPES)}")
    if lam_scale == "size":
        lam = lam * len(infos)
    seed_info = inspect_checkpoint(seed) if seed is not None else None
    check_compatible(infos, seed_info)
    w = resolve_weights(infos, method, weights)
    total = sum(w)
    ref = infos[0]
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(safe_open(str(i.weights_file), "pt")) for i in infos]
        seed_h = stack.enter_context(safe_open(str(seed_info.weights_file), "pt")) if seed_info else None
        keys = sorted(ref.tensors)
        specs = []
        for k in keys:
            t0 = handles[0].get_slice(k)
            is_float = t0.get_dtype() in ("F32", "F64", "BF16", "F16")
            dtype = OUT_DTYPES[out_dtype] if is_float else _torch_dtype(t0.get_dtype())
            specs.append((k, dtype, tuple(t0.get_shape())))
        toks = [i.unit_tokens for i in infos]
        group = {"unit_tokens": int(sum(toks))} if all(toks) else {}  # a pre-merged group's tokens (macro-merging)
        seeds = {i.seed_sha for i in infos}
        if len(seeds) == 1 and None not in seeds:
            group["seed_sha"] = seeds.pop()
        identity = {"inputs": [weights_sha(i.path) for i in infos], "weights": w, "method": method, "lam": lam,
                    "seed": weights_sha(seed_info.path) if seed_info else None, "out_dtype": out_dtype}

        def build(tmp: Path) -> dict[str, Any]:
            writer = SafetensorsWriter(tmp / WEIGHTS, specs)
            for (k, dtype, _shape) in specs:
                first = handles[0].get_tensor(k)
                if not first.is_floating_point():
                    writer.write(k, first)
                    continue
                acc = first.to(torch.float64).mul_(w[0])  # [*shape] float64: one tensor at a time
                for h, wi in zip(handles[1:], w[1:]):
                    acc.add_(h.get_tensor(k).to(torch.float64), alpha=wi)
                acc.div_(total)
                if method == "task_arithmetic":
                    s = seed_h.get_tensor(k).to(torch.float64)
                    acc = s.add_(acc.sub_(s), alpha=lam) if lam != 1.0 else acc
                writer.write(k, acc.to(dtype))
            writer.close()
            for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                         "special_tokens_map.json"):
                if (ref.path / name).exists():
                    shutil.copy2(ref.path / name, tmp / name)
            steps = {i.state.get("global_step") for i in infos}
            state = {"tokenizer_hash": ref.tokenizer_hash, "pool_id": ref.state.get("pool_id"),
                     "seq_len": ref.state.get("seq_len"),
                     "merged": {"inputs": [str(i.path) for i in infos], "weights": w, "method": method, "lam": lam,
                                "seed": str(seed) if seed else None}}
            if len(steps) == 1 and None not in steps:
                state["global_step"] = steps.pop()
            atomic_write_json(tmp / "trainer_state.json", state)
            atomic_write_json(tmp / "merge.json", state["merged"])
            return meta_record("merge", inputs=[str(i.path) for i in infos], weights=w, method=method, lam=lam,
                               seed=str(seed) if seed else None, **group, **(meta or {}))

        produce(Output(out, "merged_checkpoint", identity,
                       inputs=tuple(i.path for i in infos) + ((seed_info.path,) if seed_info else ())), build)
    log.info("merged %d checkpoints (%s) -> %s", len(infos), method, out)
    return out


def macro_merge(groups: Sequence[Sequence[str | Path]], out: str | Path, *, group_dir: str | Path,
                within: str = "weighted", across: str = "weighted", out_dtype: str = "float32") -> Path:
    """Macro-merging (Na et al. 2024, §5): merge pre-merged groups. Each group's models are merged
    into `group_dir/<i>` (skipped when already there), then the group checkpoints are merged:

        theta_g   = sum_{i in g} w_i theta_i / sum_{i in g} w_i            (within: uniform w_i = 1, or
                                                                          weighted w_i = tokens of unit i)
        theta_out = sum_g W_g theta_g / sum_g W_g                           (across: uniform W_g = 1, or
                                                                          weighted W_g = sum_{i in g} tokens)

    With token weights on both levels, W_g theta_g = sum_{i in g} w_i theta_i, so theta_out is the
    flat token-weighted average of all units, whatever the grouping (a pre-merged group can stand in
    for its members); uniform on both levels equals the flat uniform mean only when the groups are
    equally large. A group checkpoint records its members' total tokens (meta.json unit_tokens), so
    a group can itself be merged again. Returns `out`."""
    if not groups or any(len(g) == 0 for g in groups):
        raise InputError("macro-merge: every group needs at least one checkpoint")
    group_dir = Path(group_dir)
    paths = []
    for i, g in enumerate(groups):
        ident = hash_text(json.dumps([within, [weights_sha(x) for x in g]]), digits=12)
        gp = group_dir / f"group_{i:02d}_{ident}"  # named by its members' weights: never a stale group
        if not is_done(gp):
            merge(list(g), gp, method=within, weights="tokens" if within == "weighted" else None, out_dtype="float32")
        paths.append(gp)
    return merge(paths, out, method=across, weights="tokens" if across == "weighted" else None, out_dtype=out_dtype,
                 meta={"macro": {"groups": [[str(p) for p in g] for g in groups], "within": within, "across": across}})


def _torch_dtype(st: str) -> torch.dtype:
    inv = {v: k for k, v in _ST_DTYPES.items()}
    return inv[st]


# ----------------------------------------------------------------------------- in-memory: Gray-code running sums


def gray_code_masks(k: int) -> list[int]:
    """All 2^k - 1 non-empty subsets of k units as bit masks, in reflected Gray-code order:
    consecutive masks differ in exactly one unit."""
    return [i ^ (i >> 1) for i in range(1, 1 << k)]


def gray_rank(mask: int) -> int:
    """Position of `mask` in the reflected Gray code (the inverse of i -> i ^ (i >> 1))."""
    r = mask
    shift = 1
    while (mask >> shift) > 0:
        r ^= mask >> shift
        shift += 1
    return r


def walk_order(masks: Sequence[int]) -> list[int]:
    """An order of `masks` with few units added / removed between neighbours: by Gray-code rank
    (for the full power set, exactly one change per step)."""
    return sorted(set(masks), key=gray_rank)


def mask_of(indices: Sequence[int]) -> int:
    m = 0
    for i in indices:
        m |= 1 << i
    return m


def members(mask: int) -> list[int]:
    return [i for i in range(mask.bit_length()) if mask >> i & 1]


def param_key_map(weights_file: Path, model: torch.nn.Module | None = None) -> dict[str, str]:
    """safetensors key -> in-memory parameter name. Keys that are parameter names map to
    themselves; renamed ones (GPT-NeoX saves `lm_head.weight` as `embed_out.weight`) are matched
    by value against `model`, which must hold this very file's weights (default: the checkpoint
    loaded with core.checkpoint.load_model, bit-exact)."""
    if model is None:
        model = load_model(Path(weights_file).parent)
    params = dict(model.named_parameters())
    out: dict[str, str] = {}
    with safe_open(str(weights_file), "pt") as f:
        pending = []
        for k in f.keys():
            if k in params:
                out[k] = k
            else:
                pending.append(k)
        left = [n for n in params if n not in out.values()]
        for k in pending:
            t = f.get_tensor(k)
            match = next((n for n in left if params[n].shape == t.shape and torch.equal(params[n].detach().cpu(), t)), None)
            if match is not None:
                out[k] = match
                left.remove(match)
    missing = [n for n in params if n not in out.values()]
    if missing:
        raise IncompatibleArtifacts(f"{weights_file}: parameter '{missing[0]}' of the model is not in the file")
    return out


class UnitStore:
    """The unit models' parameters by in-memory name: all resident (`cache=True`, K x P floats), or
    read from disk tensor by tensor whenever a unit is added or removed (`cache=False`)."""

    def __init__(self, paths: Sequence[str | Path], model: torch.nn.Module, cache: bool = True):
        self.infos = [inspect_checkpoint(p) for p in paths]
        self.paths = [i.path for i in self.infos]
        self.keymap = param_key_map(self.infos[0].weights_file)
        self.shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
        self.cache = cache
        self._mem: list[dict[str, torch.Tensor]] | None = None
        if cache:
            self._mem = [dict(self._read(i)) for i in range(len(self.paths))]

    def __len__(self) -> int:
        return len(self.paths)

    def _read(self, i: int) -> Iterator[tuple[str, torch.Tensor]]:
        with safe_open(str(self.infos[i].weights_file), "pt") as f:
            for key, name in self.keymap.items():
                yield name, f.get_tensor(key).to(torch.float32)

    def tensors(self, i: int) -> Iterator[tuple[str, torch.Tensor]]:
        if self._mem is not None:
            yield from self._mem[i].items()
        else:
            yield from self._read(i)

    def nbytes(self) -> int:
        if self._mem is None:
            return 0
        return sum(t.numel() * t.element_size() for d in self._mem for t in d.values())


class RunningMerge:
    """S = sum_{i in mask} w_i theta_i kept up to date as units are added / removed.

    `set(mask)` moves to a new mixture by toggling the units that differ (one per step on a
    Gray-code walk) and recomputes S from scratch every `recompute_every` moves; `load_into`
    writes the proxy (S / W, or the task-arithmetic form) into a resident model's parameters."""

    def __init__(self, store: UnitStore, weights: Sequence[float] | None = None, *,
                 dtype: torch.dtype = torch.float32, recompute_every: int = 16):
        self.store = store
        self.w = [1.0] * len(store) if weights is None else [float(x) for x in weights]
        self.dtype = dtype
        self.recompute_every = recompute_every
        self.sum = {n: torch.zeros(s, dtype=dtype) for n, s in store.shapes.items()}
        self.mask = 0
        self.moves = 0
        self.unit_reads = 0  # unit models added or removed (each one pass over P parameters)

    def _apply(self, i: int, sign: float) -> None:
        a = sign * self.w[i]
        for name, t in self.store.tensors(i):
            acc = self.sum[name]
            acc.add_(t.to(device=acc.device, dtype=self.dtype), alpha=a)
        self.unit_reads += 1

    def recompute(self, mask: int) -> None:
        for t in self.sum.values():
            t.zero_()
        for i in members(mask):
            self._apply(i, 1.0)
        self.mask = mask
        self.moves = 0

    def set(self, mask: int) -> None:
        if mask == 0:
            raise InputError("an empty mixture has no proxy")
        diff = self.mask ^ mask
        if self.moves >= self.recompute_every or bin(diff).count("1") >= bin(mask).count("1"):
            self.recompute(mask)
            return
        for i in members(diff):
            self._apply(i, 1.0 if mask >> i & 1 else -1.0)
        self.mask = mask
        self.moves += 1

    @property
    def total_weight(self) -> float:
        return sum(self.w[i] for i in members(self.mask))

    @torch.no_grad()
    def load_into(self, model: torch.nn.Module, *, method: str = "uniform", lam: float = 1.0,
                  seed: dict[str, torch.Tensor] | None = None) -> None:
        """Write the current mixture's proxy into `model`'s parameters in place."""
        W = self.total_weight
        if W <= 0:
            raise InputError(f"mixture weights sum to {W}; they must sum to a positive number")
        for name, p in model.named_parameters():
            s = self.sum[name]
            if method == "task_arithmetic":
                if seed is None:
                    raise InputError("task_arithmetic needs the seed's parameters")
                # seed + lam * (S / W - seed)
                p.copy_(s.to(torch.float64).div(W).sub_(seed[name].to(torch.float64)).mul_(lam)
                        .add_(seed[name].to(torch.float64)))
            elif s.dtype == p.dtype:
                p.copy_(s).div_(W)
            else:
                p.copy_(s.div(W))


@torch.no_grad()
def direct_average(store: UnitStore, indices: Sequence[int], weights: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
    """The reference: sum_i w_i theta_i / sum_i w_i in float64, computed from scratch."""
    w = [1.0] * len(store) if weights is None else list(weights)
    acc = {n: torch.zeros(s, dtype=torch.float64) for n, s in store.shapes.items()}
    for i in indices:
        for name, t in store.tensors(i):
            acc[name].add_(t.to(torch.float64), alpha=w[i])
    W = sum(w[i] for i in indices)
    return {n: t / W for n, t in acc.items()}
