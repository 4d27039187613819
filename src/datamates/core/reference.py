"""Reference sets: the examples whose loss MATES's oracle watches (docs/methods.md#reference-sets).

A reference set is a list of `core.loss.TargetExample` (context tokens, target tokens); its loss is
the token-weighted mean NLL of the target tokens,

    L_ref(theta) = sum_i nll_i(theta) / sum_i n_i,    nll_i = - sum_{t in target_i} log p_theta(x_t | x_<t)

(the same quantity as `core.loss.reference_loss`). Sources, by `spec`:

    lambada_openai (default; alias lambada)   LAMBADA-OpenAI test split, target = " " + last word
                                              (MATES: 1024 examples, seed 1234), via core.loss.load_lambada
    lambada_nic / lambada_ic                  the LAMBADA examples whose target word does not (nic) / does
                                              (ic) appear in the context as a word, case-insensitive
                                              (`in_context`; issue 30: word-shuffled junk teaches "repeat a
                                              word of this document", which wins the in-context part)
    clean                                     a MATES run's held-out clean pool text (plan.py: whole
                                              documents of every non-junk domain, disjoint from the held-out
                                              evaluation set); outside a run, give the pool directory
    flan_cot                                  $DATAMATES_DATA/reference/flan_v2_cot_train.jsonl.gz
    dolly                                     $DATAMATES_DATA/reference/dolly_hhrlhf_train_small.jsonl.gz
    a .jsonl / .jsonl.gz file                 records of one of the shapes in `record_pair`
    a pool directory                          whole sequences as targets (every token after the first)

FLAN-style records (input, target, rationale) are split as context = input and target =
"\\n" + rationale + "\\nSo the answer is: " + target, so context + target is exactly the record's
`text` field and the loss covers the chain of thought and the answer but not the question
(Group-MATES scores FLAN the same way: loss on the response tokens only). Without a rationale the
target is "\\n" + target.

Several references at once: specs joined by "+" (`clean+lambada_nic`) give one `ReferenceSet` with
`parts` (the part of every example); a probe then records each part's delta and its label is the
mean over the parts of delta_r / sd_r, sd_r taken over the probed candidates (oracle.py,
`combine_part_deltas`), so no reference dominates by its token count or its loss scale.

The plan splits every text reference set once (`split_examples`, plan.py): a *reference* part that
probes, influence labels and the per-stage curve see, and a disjoint *evaluation* part that only the
final evaluation scores (issue 18: probing LAMBADA examples that the headline LAMBADA loss then
evaluated let selectors optimise the numbers they were judged by). Both are example positions in
the file (0-based, blank lines skipped, the order `evaluate.spec.load_docs` reads them in);
`load_reference(..., index=...)` loads those examples only.

`ReferenceBatches` turns a set into ready tensors once: length-sorted, right-padded batches (causal
attention: pads after a row's last token cannot change its scores, so no mask is needed) and, per
batch, the flat positions that predict target tokens. Only those positions go through the output
head. A probe then costs one body forward over the set plus a tiny head matmul.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from datamates.config.base import data_dir
from datamates.core.jsonl import iter_jsonl
from datamates.core.lm import autocast
from datamates.core.loss import TargetExample, encode_pair, lambada_records
from datamates.core.pool import Pool
from datamates.errors import ConfigError, IncompatibleArtifacts, InputError
from datamates.identity import hash_chunks

# name -> file under $DATAMATES_DATA (a plain dict registry; `load_reference` lists the names on a miss)
REFERENCE_SETS: dict[str, str] = {
    "lambada_openai": "eval/lambada_openai.jsonl",
    "lambada": "eval/lambada_openai.jsonl",
    "flan_cot": "reference/flan_v2_cot_train.jsonl.gz",
    "dolly": "reference/dolly_hhrlhf_train_small.jsonl.gz",
    "lambada_nic": "eval/lambada_openai.jsonl",
    "lambada_ic": "eval/lambada_openai.jsonl",
}
# LAMBADA subsets by whether the target word is in the context: spec -> the `in_context` value kept
LAMBADA_FILTERS: dict[str, bool] = {"lambada_nic": False, "lambada_ic": True}
CLEAN = "clean"  # the plan's held-out clean reference (plan.py)


def reference_parts(spec: str) -> list[str]:
    """The specs of a reference spec: "a+b" -> ["a", "b"]; one spec -> [spec]."""
    parts = [p.strip() for p in str(spec).split("+")] if "+" in str(spec) else [str(spec)]
    if any(not p for p in parts) or len(set(parts)) < len(parts):
        raise ConfigError(f"reference = {spec!r}: join distinct reference specs with '+', e.g. clean+lambada_nic")
    return parts


def in_context(context: str, target: str) -> bool:
    """Does the target word (letters and digits, lower-cased) occur as a whole word in the context?"""
    word = re.sub(r"[^\w]", "", target.strip().lower())
    return bool(word) and re.search(rf"\b{re.escape(word)}\b", context.lower()) is not None


@dataclass
class ReferenceSet:
    """A tokenized reference set and where it came from (for meta.json)."""

    name: str
    source: str
    examples: list[TargetExample]
    seed: int
    n_available: int
    pool_ids: np.ndarray | None = None  # pool references: the sequence ids used
    kind: str = "jsonl"
    parts: np.ndarray | None = None  # [n] int: the part of each example (several references, "a+b"), else None
    part_names: list[str] | None = None
    _fingerprint: str | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def n_target_tokens(self) -> int:
        return int(sum(len(e.target) for e in self.examples))

    @property
    def fingerprint(self) -> str:
        """Hash of the token ids of every example (identifies the set whatever its spec)."""
        if self._fingerprint is None:
            chunks = [part for e in self.examples for part in (np.asarray(e.context, dtype=np.int64).tobytes(), b"|",
                                                               np.asarray(e.target, dtype=np.int64).tobytes(), b"#")]
            if self.parts is not None:  # several references: which example belongs to which
                chunks += [np.asarray(self.parts, dtype=np.int64).tobytes(), "|".join(self.part_names or []).encode()]
            self._fingerprint = hash_chunks(chunks)
        return self._fingerprint

    def halves(self, seed: int | None = None) -> np.ndarray:
        """[n] int8 in {0, 1}: a random split into two disjoint halves (sizes differ by at most 1)."""
        rng = np.random.default_rng([self.seed if seed is None else seed, 7])
        out = np.zeros(len(self), dtype=np.int8)
        out[rng.permutation(len(self))[len(self) // 2 :]] = 1
        return out

    def subset(self, index: Sequence[int] | np.ndarray, name: str | None = None) -> ReferenceSet:
        index = np.asarray(index, dtype=np.int64)
        return ReferenceSet(name or f"{self.name}[{len(index)}]", self.source, [self.examples[i] for i in index],
                            self.seed, self.n_available, None if self.pool_ids is None else self.pool_ids[index],
                            self.kind, None if self.parts is None else self.parts[index], self.part_names)

    def part(self, name: str) -> ReferenceSet:
        """The examples of one part of a combined set."""
        if self.parts is None or not self.part_names or name not in self.part_names:
            raise InputError(f"reference set {self.name}: no part {name!r}")
        sub = self.subset(np.nonzero(self.parts == self.part_names.index(name))[0], name=name)
        sub.parts, sub.part_names = None, None
        return sub

    def describe(self) -> dict[str, Any]:
        out = {"name": self.name, "source": self.source, "kind": self.kind, "size": len(self),
               "n_available": self.n_available, "seed": self.seed, "n_target_tokens": self.n_target_tokens,
               "fingerprint": self.fingerprint}
        if self.parts is not None and self.part_names:
            out["parts"] = {n: int((self.parts == i).sum()) for i, n in enumerate(self.part_names)}
        return out


def combine_references(sets: Sequence[ReferenceSet], names: Sequence[str] | None = None) -> ReferenceSet:
    """Several reference sets as one, each example tagged with its part (module docstring); `names`:
    the parts' names (default: the sets')."""
    if len(sets) < 2:
        raise InputError("combine_references: give at least two reference sets")
    names = list(names) if names is not None else [s.name for s in sets]
    examples = [e for s in sets for e in s.examples]
    parts = np.concatenate([np.full(len(s), i, dtype=np.int64) for i, s in enumerate(sets)])
    return ReferenceSet("+".join(names), "+".join(s.source for s in sets), examples, sets[0].seed,
                        sum(s.n_available for s in sets), None, "combined", parts, names)


# ----------------------------------------------------------------------------- reading


def record_pair(r: dict[str, Any]) -> tuple[str, str] | None:
    """(context, target) text of one record, by the fields it has:

        context, continuation        lm-eval style; " " joins them unless either side has the space
        input, target [, rationale]  FLAN (CoT): target = "\\n" + rationale + "\\nSo the answer is: " + target
        prompt, response             instruction data (Dolly, HH-RLHF)
        query, choices, gold         multiple choice: context = query, target = " " + choices[gold]
        text                         the whole text is the target (no context)
    None if the record has none of these shapes."""
    if "context" in r and "continuation" in r:
        ctx, cont = str(r["context"]), str(r["continuation"])
        if not ctx.endswith((" ", "\n")) and not cont.startswith((" ", "\n")):
            cont = " " + cont
        return ctx, cont
    if "input" in r and "target" in r:
        rationale = r.get("rationale")
        if rationale:
            return str(r["input"]), f"\n{rationale}\nSo the answer is: {r['target']}"
        return str(r["input"]), f"\n{r['target']}"
    if "prompt" in r and "response" in r:
        return str(r["prompt"]), str(r["response"])
    if "query" in r and "choices" in r and "gold" in r:
        return str(r["query"]), " " + str(r["choices"][int(r["gold"])])
    if "text" in r:
        return "", str(r["text"])
    return None


def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    """All (context, target) pairs of a JSONL / JSONL.gz file; one-line errors name file and line."""
    out: list[tuple[str, str]] = []
    for line_no, r in iter_jsonl(path, "reference file"):
        pair = record_pair(r) if isinstance(r, dict) else None
        if pair is None:
            raise InputError(
                f"{path}:{line_no}: cannot tell context from target; expected fields context/continuation, "
                "input/target(/rationale), prompt/response, query/choices/gold or text"
            )
        if not pair[1].strip():
            raise InputError(f"{path}:{line_no}: empty target")
        out.append(pair)
    if not out:
        raise InputError(f"{path}: no examples")
    return out


def _pick(n_total: int, size: int | None, seed: int) -> np.ndarray:
    """The subsample rule of `core.loss.load_lambada`: sorted first `size` of a seeded permutation."""
    if size is None or size >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).permutation(n_total)[:size])


def split_examples(n_total: int, eval_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(reference, evaluation): a seeded split of positions 0..n_total-1 into two disjoint sorted
    parts, round(eval_fraction x n_total) of them for evaluation (each part at least one example)."""
    if n_total < 2:
        raise InputError(f"a reference set of {n_total} example(s) cannot be split into a reference and an "
                         "evaluation part; give at least 2 examples")
    n_eval = min(max(int(round(eval_fraction * n_total)), 1), n_total - 1)
    perm = np.random.default_rng([seed, 4099]).permutation(n_total)
    return np.sort(perm[n_eval:]), np.sort(perm[:n_eval])


def reference_path(spec: str) -> Path:
    """The file (or pool directory) behind a reference spec: a registered name or a path."""
    if spec in REFERENCE_SETS:
        path = data_dir() / REFERENCE_SETS[spec]
        if not path.exists():
            raise InputError(f"reference '{spec}': {path} not found; set DATAMATES_DATA to the data bundle")
        return path
    path = Path(spec)
    if not path.exists():
        raise ConfigError(
            f"reference = {spec!r}: not a registered reference set ({', '.join(sorted(REFERENCE_SETS))}) "
            "nor an existing file or pool directory"
        )
    return path


def count_examples(path: str | Path) -> int:
    """Examples (non-blank lines) of a JSONL / JSONL.gz reference file."""
    return sum(1 for _ in iter_jsonl(path, "reference file"))


def _is_pool(path: Path) -> bool:
    return path.is_dir() and (path / "seq_domain.npy").exists()


def load_reference(
    spec: str = "lambada_openai",
    tokenizer=None,
    *,
    size: int | None = 1024,
    seed: int = 1234,
    ids: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
    tokenizer_hash: str | None = None,
    index: np.ndarray | None = None,
) -> ReferenceSet:
    """A reference set by `spec` (see the module docstring), tokenized with `tokenizer` (a
    `tokenizers.Tokenizer`; not needed for pool references). `size` examples are drawn with `seed`
    (null: all). Pool references take `ids` if given, else `size` random sequences not in `exclude`
    (keep the probe candidates out of the reference set); `tokenizer_hash` is checked against the pool's.
    `index` (text sets): draw only from these example positions (the plan's reference part); the
    `size` examples are then a seeded subsample of them. "a+b" loads every part (each with these
    arguments) and combines them (`combine_references`); `clean` exists only inside a run's plan."""
    parts = reference_parts(spec)
    if len(parts) > 1:
        if index is not None:
            raise InputError(f"reference {spec!r}: load the parts one by one with their own example positions")
        return combine_references([load_reference(p, tokenizer, size=size, seed=seed, ids=ids, exclude=exclude,
                                                  tokenizer_hash=tokenizer_hash) for p in parts], parts)
    if spec == CLEAN:
        raise ConfigError("reference 'clean' is the held-out clean text a MATES run's plan draws "
                          "(mates.probe.clean_per_domain); outside a run, give a pool directory")
    path = reference_path(spec)
    if path.is_dir():
        if not _is_pool(path):
            raise InputError(f"{path}: a reference directory must be a built pool (tokens_*.bin, seq_domain.npy)")
        return _pool_reference(path, size, seed, ids, exclude, tokenizer_hash)
    if tokenizer is None:
        raise InputError(f"{path}: a text reference set needs the model's tokenizer")
    name = spec if spec in REFERENCE_SETS else path.name
    if path.name.startswith("lambada"):
        pairs = [(ctx, " " + cont.lstrip(" ")) for ctx, cont in lambada_records(path)]
        kind = "lambada"
    else:
        pairs, kind = read_pairs(path), "jsonl"
    allowed = np.arange(len(pairs)) if index is None else np.asarray(index, dtype=np.int64)
    if len(allowed) and (allowed.min() < 0 or allowed.max() >= len(pairs)):
        raise IncompatibleArtifacts(f"{path}: the plan names example {int(allowed.max()) + 1}, the file has "
                                    f"{len(pairs)}; the reference file changed since the plan was made")
    if spec in LAMBADA_FILTERS:
        want = LAMBADA_FILTERS[spec]
        allowed = np.asarray([i for i in allowed if in_context(*pairs[int(i)]) == want], dtype=np.int64)
        if not len(allowed):
            raise InputError(f"reference {spec!r}: no LAMBADA example of this kind in {path}")
    pick = allowed[_pick(len(allowed), size, seed)]
    examples = []
    for i in pick:
        ctx, tgt = pairs[i]
        if ctx:
            c, t = encode_pair(tokenizer, ctx, tgt)
        else:
            c, t = [], tokenizer.encode(tgt, add_special_tokens=False).ids
        if not t:
            raise InputError(f"{path}: example {int(i) + 1} has no target tokens after tokenization")
        examples.append(TargetExample(tuple(c), tuple(t)))
    if index is not None:
        name = f"{name}[reference part]"
    return ReferenceSet(name, str(path), examples, seed, len(pairs), kind=kind)


def clean_reference(pool_path: str | Path, ids: np.ndarray, tokenizer_hash: str | None = None) -> ReferenceSet:
    """The plan's held-out clean reference (`clean`): the pool sequences `ids`, whole ones as targets."""
    ref = _pool_reference(Path(pool_path), None, 0, ids, None, tokenizer_hash)
    ref.name = CLEAN
    return ref


def _pool_reference(path: Path, size, seed, ids, exclude, tokenizer_hash) -> ReferenceSet:

    pool = Pool(path)
    if tokenizer_hash is not None and pool.tokenizer_hash != tokenizer_hash:
        raise IncompatibleArtifacts(
            f"{path}: reference pool uses tokenizer {pool.tokenizer_hash}, the model {tokenizer_hash}"
        )
    if ids is None:
        avail = np.arange(len(pool), dtype=np.int64)
        if exclude is not None and len(exclude):
            avail = np.setdiff1d(avail, np.asarray(exclude, dtype=np.int64))
        if not len(avail):
            raise InputError(f"{path}: no pool sequences left for the reference set after excluding the candidates")
        ids = avail[_pick(len(avail), size, seed)]
        n_avail = len(avail)
    else:
        ids = np.asarray(ids, dtype=np.int64)
        n_avail = len(pool)
    rows = pool.tokens(ids)
    examples = [TargetExample((), tuple(int(t) for t in row)) for row in rows]
    return ReferenceSet(f"pool:{path.name}", str(path), examples, seed, n_avail, pool_ids=ids, kind="pool")


# ----------------------------------------------------------------------------- evaluation


@dataclass
class _Batch:
    x: torch.Tensor  # [B, T] int64 input rows, right-padded
    pos: torch.Tensor  # [K] int64 flat index (row * T + position) of every position that predicts a target token
    labels: torch.Tensor  # [K] int64 the target token predicted there
    owner: torch.Tensor  # [K] int64 index of the example (in the set's order) the target token belongs to


class ReferenceBatches:
    """The reference set as ready tensors; `nll(model)` costs one body forward over the set.

    Rows and targets follow `core.loss.score_targets` exactly (contexts longer than `max_len` are
    cut from the left; batches are length-sorted, longest first, `batch_size` rows and at most
    `max_tokens` padded tokens each), so `loss(model)` equals `core.loss.reference_loss`."""

    def __init__(
        self,
        examples: Sequence[TargetExample],
        *,
        max_len: int,
        batch_size: int = 32,
        max_tokens: int | None = None,
        pad_id: int = 0,
        device: torch.device | str = "cpu",
    ):
        if not examples:
            raise InputError("the reference set is empty")
        self.device = torch.device(device)
        rows, tgt_lens = [], []
        for ex in examples:
            if not ex.target:
                raise InputError("a reference example has no target tokens")
            full = (ex.context + ex.target)[-(max_len + 1):]
            rows.append(full[:-1])
            tgt_lens.append(min(len(ex.target), len(full) - 1))
        self.n = len(examples)
        self.n_tokens = np.asarray(tgt_lens, dtype=np.int64)  # [n]
        if self.n_tokens.sum() == 0:
            raise InputError("the reference set has no scorable target tokens")
        order = sorted(range(self.n), key=lambda i: -len(rows[i]))
        groups: list[list[int]] = []
        cur: list[int] = []
        for i in order:
            if cur and (len(cur) >= batch_size or (max_tokens and (len(cur) + 1) * len(rows[cur[0]]) > max_tokens)):
                groups.append(cur)
                cur = []
            cur.append(i)
        groups.append(cur)
        self.batches: list[_Batch] = []
        for idx in groups:
            T = len(rows[idx[0]])
            x = torch.full((len(idx), T), pad_id, dtype=torch.long)
            pos, labels, owner = [], [], []
            for j, i in enumerate(idx):
                L, k = len(rows[i]), tgt_lens[i]
                x[j, :L] = torch.tensor(rows[i], dtype=torch.long)
                pos += [j * T + p for p in range(L - k, L)]
                labels += list(examples[i].target[len(examples[i].target) - k :])
                owner += [i] * k
            self.batches.append(_Batch(x.to(self.device), torch.tensor(pos, device=self.device),
                                       torch.tensor(labels, device=self.device),
                                       torch.tensor(owner, device=self.device)))
        self.padded_tokens = int(sum(b.x.numel() for b in self.batches))
        self.real_tokens = int(sum(len(r) for r in rows))

    def __len__(self) -> int:
        return self.n

    def _token_nll(self, model: torch.nn.Module, b: _Batch, precision: str) -> torch.Tensor:
        """[K] NLL of the batch's target tokens (float32, or float64 for a float64 model)."""
        with autocast(self.device, precision):
            hidden = model.base_model(input_ids=b.x).last_hidden_state  # [B, T, d]
            h = hidden.reshape(-1, hidden.size(-1))[b.pos]  # [K, d]
            logits = model.get_output_embeddings()(h)  # [K, V]
        logits = logits if logits.dtype == torch.float64 else logits.float()  # float64 stays (tests)
        return F.cross_entropy(logits, b.labels, reduction="none")

    @torch.inference_mode()
    def nll(self, model: torch.nn.Module, precision: str = "fp32") -> torch.Tensor:
        """[n] float64 summed target NLL of every example (in the set's order), on CPU."""
        out = torch.zeros(self.n, dtype=torch.float64, device=self.device)
        for b in self.batches:
            out.index_add_(0, b.owner, self._token_nll(model, b, precision).double())
        return out.cpu()

    def loss(self, model: torch.nn.Module, precision: str = "fp32") -> float:
        """L_ref: token-weighted mean target NLL."""
        return float(self.nll(model, precision).sum() / self.n_tokens.sum())

    def backward(self, model: torch.nn.Module, precision: str = "fp32", weights: np.ndarray | None = None) -> float:
        """Accumulate grad L into the parameters' `.grad`, L = sum_i w_i nll_i / sum_i w_i n_i (w: 0/1
        per example; all ones by default). Returns L. One batch's graph lives at a time."""
        w = torch.ones(self.n, dtype=torch.float32) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
        denom = float((w.numpy().astype(np.float64) * self.n_tokens).sum())
        if denom == 0:
            raise InputError("reference subset has no target tokens")
        w = w.to(self.device)
        total = 0.0
        for b in self.batches:
            wt = w[b.owner]
            if not bool(wt.any()):
                continue
            part = (self._token_nll(model, b, precision) * wt).sum() / denom
            part.backward()
            total += float(part.detach())
        return total
