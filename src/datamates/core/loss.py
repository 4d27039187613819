"""Losses on target tokens: the reference loss MATES probes against, perplexity and bits per byte.

A *target example* is (context tokens, target tokens); only the target tokens are scored:

    nll(x) = - sum_{t in target} log p(x_t | x_<t)

Context and target are tokenized the way lm-evaluation-harness does (`encode_pair`): the whole
string is encoded once and the target is what follows the context's own encoding, with a
context's trailing spaces moved onto the target. Examples are batched length-sorted and right-padded;
with causal attention the pads after a row's last real token cannot change any score, so no
attention mask is needed and SDPA takes its causal fast path. Only the positions that predict
target tokens go through the output head (the head is 15-40% of a small model's FLOPs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from datamates.core.jsonl import iter_jsonl
from datamates.core.lm import autocast
from datamates.errors import InputError


@dataclass(frozen=True)
class TargetExample:
    context: tuple[int, ...]
    target: tuple[int, ...]


@dataclass
class TargetScores:
    """Per-example results, in the order of the input examples."""

    nll: np.ndarray  # [n] float64, summed over target tokens
    n_tokens: np.ndarray  # [n] int64
    greedy: np.ndarray  # [n] bool: every target token is the argmax

    def mean_token_loss(self) -> float:
        return float(self.nll.sum() / self.n_tokens.sum())


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-evaluation-harness's `_encode_pair`: trailing spaces of the context move to the
    continuation; the continuation's tokens are those of encode(context + continuation) after
    encode(context)'s length."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer.encode(context + continuation, add_special_tokens=False).ids
    ctx = tokenizer.encode(context, add_special_tokens=False).ids
    return ctx, whole[len(ctx):]


def _batches(lengths: Sequence[int], batch_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    out, cur = [], []
    for i in order:
        if cur and (len(cur) >= batch_size or (max_tokens and (len(cur) + 1) * lengths[cur[0]] > max_tokens)):
            out.append(cur)
            cur = []
        cur.append(i)
    if cur:
        out.append(cur)
    return out


@torch.inference_mode()
def score_targets(
    model: torch.nn.Module,
    examples: Sequence[TargetExample],
    *,
    batch_size: int = 32,
    max_len: int | None = None,
    device: torch.device | str | None = None,
    precision: str = "auto",
    pad_id: int = 0,
) -> TargetScores:
    """Summed target-token NLL, token counts and greedy-match flags for every example.
    Contexts longer than `max_len` (default: the model's context) are cut from the left."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    max_len = max_len or model.config.max_position_embeddings
    n = len(examples)
    nll = np.zeros(n, dtype=np.float64)
    ntok = np.zeros(n, dtype=np.int64)
    greedy = np.zeros(n, dtype=bool)
    rows, tgt_lens = [], []
    for ex in examples:
        if not ex.target:
            raise InputError("a target example has no target tokens")
        full = (ex.context + ex.target)[-(max_len + 1):]
        rows.append(full[:-1])  # input; the last token is only ever a target
        tgt_lens.append(min(len(ex.target), len(full) - 1))
    was_training = model.training
    model.eval()
    head = model.get_output_embeddings()
    for idx in _batches([len(r) for r in rows], batch_size):
        T = len(rows[idx[0]])
        x = torch.full((len(idx), T), pad_id, dtype=torch.long)
        for j, i in enumerate(idx):
            x[j, : len(rows[i])] = torch.tensor(rows[i])
        x = x.to(device)
        # gather the positions that predict target tokens: the last tgt_len inputs of each row
        b_idx, p_idx, labels, owner = [], [], [], []
        for j, i in enumerate(idx):
            L, k = len(rows[i]), tgt_lens[i]
            full_tail = examples[i].target[-k:]
            b_idx += [j] * k
            p_idx += list(range(L - k, L))
            labels += list(full_tail)
            owner += [j] * k
        with autocast(torch.device(device), precision):
            hidden = model.base_model(input_ids=x).last_hidden_state  # [B, T, d]
            logits = head(hidden[torch.tensor(b_idx), torch.tensor(p_idx)])  # [K, V]
        logp = F.log_softmax(logits.float(), dim=-1)
        lab = torch.tensor(labels, device=logp.device)
        tok_nll = -logp.gather(1, lab[:, None])[:, 0].double().cpu().numpy()
        hit = (logp.argmax(-1) == lab).cpu().numpy()
        owner_arr = np.array(owner)
        for j, i in enumerate(idx):
            m = owner_arr == j
            nll[i] = tok_nll[m].sum()
            ntok[i] = m.sum()
            greedy[i] = bool(hit[m].all())
    model.train(was_training)
    return TargetScores(nll, ntok, greedy)


def reference_loss(model: torch.nn.Module, examples: Sequence[TargetExample], batch_size: int = 32, **kw) -> float:
    """Mean NLL per target token over the whole reference set (token-weighted)."""
    return score_targets(model, examples, batch_size=batch_size, **kw).mean_token_loss()


def lambada_records(path: str | Path) -> list[tuple[str, str]]:
    """(context, last word) of every LAMBADA record: the one LAMBADA reader ({context, continuation}
    as lm-eval's lambada_openai files, or {text} split at its last space)."""
    path = Path(path)
    records = []
    for line_no, r in iter_jsonl(path, "LAMBADA file"):
        if isinstance(r, dict) and "context" in r and "continuation" in r:
            records.append((str(r["context"]), str(r["continuation"])))
        elif isinstance(r, dict) and "text" in r:
            ctx, _, cont = str(r["text"]).rpartition(" ")
            records.append((ctx, cont))
        else:
            raise InputError(f"{path}:{line_no}: expected fields 'context' and 'continuation' (or 'text')")
    if not records:
        raise InputError(f"{path}: no examples")
    return records


def load_lambada(path: str | Path, tokenizer, n: int | None = None, seed: int = 1234) -> list[TargetExample]:
    """LAMBADA (OpenAI) as target examples: context, target = ' ' + last word (as lm-eval).
    With `n`, a subsample of n examples drawn with `seed` (MATES: 1024, seed 1234)."""
    records = lambada_records(path)
    if n is not None and n < len(records):
        pick = np.sort(np.random.default_rng(seed).permutation(len(records))[:n])
        records = [records[i] for i in pick]
    out = []
    for ctx, cont in records:
        c, t = encode_pair(tokenizer, ctx, " " + cont.lstrip(" "))
        out.append(TargetExample(tuple(c), tuple(t)))
    return out


@torch.inference_mode()
def sequence_nll(
    model: torch.nn.Module, tokens: np.ndarray, *, batch_size: int = 16, precision: str = "auto"
) -> np.ndarray:
    """Summed next-token NLL of each [T]-token row (T - 1 predictions per row) -> [n] float64."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = np.zeros(len(tokens), dtype=np.float64)
    for i in range(0, len(tokens), batch_size):
        x = torch.as_tensor(np.asarray(tokens[i : i + batch_size]), dtype=torch.long, device=device)
        with autocast(device, precision):
            logits = model(input_ids=x).logits
        nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), x[:, 1:], reduction="none")
        out[i : i + len(x)] = nll.double().sum(1).cpu().numpy()
    model.train(was_training)
    return out


def perplexity_and_bpb(nll_sum: float, n_tokens: int, n_bytes: float) -> tuple[float, float]:
    """exp(mean NLL per token), and bits per UTF-8 byte = NLL / ln 2 / bytes."""
    return math.exp(nll_sum / n_tokens), nll_sum / math.log(2) / n_bytes
