"""Log-likelihood of (context, continuation) requests, lm-evaluation-harness semantics, batched.

For a request with context tokens c and continuation tokens t (tokenized as lm-eval's
`_encode_pair`: trailing whitespace of the context moves to the continuation, t = encode(c + t)
after encode(c)'s length):

    LL = sum_i log p(t_i | c, t_<i),     greedy = every t_i is the argmax

Inputs longer than the model's context are cut from the left exactly as lm-eval does
(`(c + t)[-(max_len + 1):][:-1]`).

Speed. The requests of one example (its choices) are *packed* into one sequence: the tokens their
rows share (the context, or WinoGrande's common prefix) appear once, followed by each choice's own
tokens. A block mask lets each choice attend to the shared prefix and to itself only, and position
ids restart after the prefix, so each choice sees exactly what it would see alone:

    tokens  c0 c1 c2 c3 | a0 a1 | b0 b1 b2        mask row of b1: c0..c3, b0, b1
    pos      0  1  2  3 |  4  5 |  4  5  6

A 4-choice HellaSwag example costs ctx + sum(choices) tokens instead of 4 * (ctx + choice).
Identical requests are scored once. Packs are sorted by length and batched under a token budget;
only positions that predict continuation tokens go through the output head, each once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from datamates.core.lm import autocast
from datamates.errors import InputError
from datamates.log import get_logger, progress_bar

log = get_logger(__name__)

Request = tuple[list[int], list[int]]  # (context tokens, continuation tokens)
_PAD_SEG = 1 << 30


def encode_pairs(tokenizer, pairs: Sequence[tuple[str, str]], prefix_id: int | None = None) -> list[Request]:
    """`core.loss.encode_pair` for many pairs at once (one `encode_batch` over the unique strings).
    An empty context becomes [prefix_id] (lm-eval: the BOS/EOS token) and the continuation is
    encoded alone."""
    moved = []
    for ctx, cont in pairs:
        n = len(ctx) - len(ctx.rstrip())
        if n:
            ctx, cont = ctx[:-n], ctx[-n:] + cont
        moved.append((ctx, cont))
    strings = list(dict.fromkeys([s for c, t in moved for s in ((c, c + t) if c else (t,))]))
    enc = tokenizer.encode_batch(strings, add_special_tokens=False)
    ids = {s: e.ids for s, e in zip(strings, enc)}
    out = []
    for ctx, cont in moved:
        if not ctx:
            if prefix_id is None:
                raise InputError("a request has an empty context and the model has no BOS/EOS token to start from")
            out.append(([prefix_id], ids[cont]))
            continue
        c = ids[ctx]
        out.append((c, ids[ctx + cont][len(c):]))
    return out


@dataclass
class _Pack:
    tokens: np.ndarray  # [T] int64
    pos: np.ndarray  # [T] position ids
    seg: np.ndarray  # [T] -1: shared prefix, u >= 0: unique request u's own tokens
    need_pos: np.ndarray  # [K] packed positions that predict continuation tokens
    need_lab: np.ndarray  # [K] the tokens they predict
    need_u: np.ndarray  # [K] unique request (of the group) each belongs to


def _pack(reqs: Sequence[Request], max_len: int, share: bool) -> tuple[list[_Pack], np.ndarray, int]:
    """One group's requests -> packs, the unique request of each request, the number of unique ones."""
    rows, ks, req_to_u, index = [], [], [], {}
    for ctx, cont in reqs:
        if not cont:
            raise InputError("a continuation has no tokens (empty choice and empty target delimiter?)")
        full = (list(ctx) + list(cont))[-(max_len + 1):]
        k = min(len(cont), len(full) - 1)
        key = (tuple(full), k)
        if key not in index:
            index[key] = len(rows)
            rows.append(full)
            ks.append(k)
        req_to_u.append(index[key])
    inputs = [r[:-1] for r in rows]
    P = 0
    if share and len(rows) > 1:
        P = min(len(r) for r in inputs)
        for r in inputs[1:]:
            n = 0
            while n < P and r[n] == inputs[0][n]:
                n += 1
            P = n
    if P == 0:  # one sequence per unique request, no mask needed
        packs = []
        for u, (inp, full, k) in enumerate(zip(inputs, rows, ks)):
            L = len(inp)
            packs.append(_Pack(np.asarray(inp, np.int64), np.arange(L), np.full(L, -1), np.arange(L - k, L),
                               np.asarray(full[-k:], np.int64), np.full(k, u)))
        return packs, np.asarray(req_to_u), len(rows)
    tokens, pos, seg = [inputs[0][:P]], [np.arange(P)], [np.full(P, -1)]
    need_pos, need_lab, need_u = [], [], []
    off = P
    for u, (inp, full, k) in enumerate(zip(inputs, rows, ks)):
        suffix = inp[P:]
        tokens.append(suffix)
        pos.append(np.arange(P, P + len(suffix)))
        seg.append(np.full(len(suffix), u))
        j = np.arange(len(inp) - k, len(inp))
        need_pos.append(np.where(j < P, j, off + j - P))
        need_lab.append(np.asarray(full[-k:], np.int64))
        need_u.append(np.full(k, u))
        off += len(suffix)
    pack = _Pack(np.concatenate([np.asarray(t, np.int64) for t in tokens]), np.concatenate(pos),
                 np.concatenate(seg), np.concatenate(need_pos), np.concatenate(need_lab), np.concatenate(need_u))
    return [pack], np.asarray(req_to_u), len(rows)


@dataclass
class GroupScores:
    ll: np.ndarray  # [n_requests] summed continuation log-likelihood (float32 sum, as lm-eval)
    greedy: np.ndarray  # [n_requests] bool
    n_tokens: np.ndarray  # [n_requests] int64 continuation tokens scored
    n_input_tokens: int = 0  # tokens this group's packs fed through the model (shared prefix once)


def _mask(seg: torch.Tensor, eager: bool, dtype: torch.dtype) -> torch.Tensor:
    """[B, T] segment ids -> [B, 1, T, T] mask: causal, and a choice sees the prefix and itself."""
    T = seg.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=seg.device).tril()
    allowed = causal & ((seg[:, None, :] == -1) | (seg[:, None, :] == seg[:, :, None]))  # [B, T, T]
    allowed = allowed[:, None]
    if not eager:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=seg.device).masked_fill(~allowed, torch.finfo(dtype).min)


@torch.inference_mode()
def _batch(packs: Sequence[_Pack], first_slot: Sequence[int], T: int) -> tuple[np.ndarray, ...]:
    """Lay `packs` out as one [B, T] batch: tokens, positions, segments, and for every scored token
    its row, position, label and (group, unique request) slot (`first_slot`: each pack's group's first)."""
    B = len(packs)
    x = np.zeros((B, T), np.int64)
    pos = np.zeros((B, T), np.int64)
    seg = np.full((B, T), _PAD_SEG, np.int64)
    b_idx, p_idx, labels, slots = [], [], [], []
    for r, (p, first) in enumerate(zip(packs, first_slot)):
        n = len(p.tokens)
        x[r, :n], pos[r, :n], seg[r, :n] = p.tokens, p.pos, p.seg
        b_idx.append(np.full(len(p.need_pos), r))
        p_idx.append(p.need_pos)
        labels.append(p.need_lab)
        slots.append(first + p.need_u)
    return x, pos, seg, np.concatenate(b_idx), np.concatenate(p_idx), np.concatenate(labels), np.concatenate(slots)


def score_groups(
    model: torch.nn.Module,
    groups: Sequence[Sequence[Request]],
    *,
    batch_size: int = 32,
    max_tokens: int = 16384,
    precision: str = "auto",
    share_context: bool = True,
    greedy: bool = True,
    desc: str = "scoring",
) -> list[GroupScores]:
    """Score every request of every group (a group = one example's requests, e.g. its choices).
    `greedy=False` skips the argmax over the vocabulary (the flags are then all False)."""
    device = next(model.parameters()).device
    max_len = model.config.max_position_embeddings
    impl = getattr(model.config, "_attn_implementation", "sdpa") or "sdpa"
    if share_context and impl not in ("sdpa", "eager"):
        log.info("attention '%s' takes no custom masks: choices are scored one sequence each", impl)
        share_context = False
    eager = impl == "eager"
    packs: list[_Pack] = []
    owner: list[int] = []  # group of each pack
    req_to_u: list[np.ndarray] = []
    n_unique: list[int] = []
    for g, reqs in enumerate(groups):
        ps, r2u, nu = _pack(reqs, max_len, share_context)
        packs += ps
        owner += [g] * len(ps)
        req_to_u.append(r2u)
        n_unique.append(nu)
    base = np.concatenate([[0], np.cumsum(n_unique)]).astype(np.int64)  # slot of (group, unique request)
    total = int(base[-1])
    ll = np.zeros(total, np.float64)
    miss = np.zeros(total, np.int64)
    ntok = np.zeros(total, np.int64)
    order = sorted(range(len(packs)), key=lambda i: -len(packs[i].tokens))
    was_training = model.training
    model.eval()
    head = model.get_output_embeddings()
    bar = progress_bar(desc, total=len(groups), unit="ex")
    seen_groups: set[int] = set()
    i = 0
    while i < len(order):
        T = len(packs[order[i]].tokens)
        j = i + 1
        while j < len(order) and j - i < batch_size and (j - i + 1) * T <= max_tokens:
            j += 1
        idx = order[i:j]
        i = j
        B = len(idx)
        x, pos, seg, b_all, p_all, lab, slot = _batch([packs[pi] for pi in idx], [base[owner[pi]] for pi in idx], T)
        xt = torch.from_numpy(x).to(device)
        kwargs = {}
        if (seg[seg != _PAD_SEG] >= 0).any():
            segt = torch.from_numpy(seg).to(device)
            kwargs = {"attention_mask": _mask(segt, eager, torch.float32),
                      "position_ids": torch.from_numpy(pos).to(device)}
        flat = b_all * T + p_all
        uniq, inv = np.unique(flat, return_inverse=True)  # positions shared by several choices once
        with autocast(device, precision):
            hidden = model.base_model(input_ids=xt, **kwargs).last_hidden_state  # [B, T, d]
            logits = head(hidden.reshape(B * T, -1)[torch.from_numpy(uniq).to(device)])  # [U, V]
        logp = torch.log_softmax(logits.float(), dim=-1)  # [U, V] (faster than logsumexp on CPU)
        inv_t = torch.from_numpy(inv).to(device)
        lab_t = torch.from_numpy(lab).to(device)
        tok_ll = logp[inv_t, lab_t].cpu()  # [K] float32
        if greedy:
            hit = (logits.argmax(-1)[inv_t] == lab_t).cpu().numpy()
        else:
            hit = np.zeros(len(lab), bool)
        # per-request sums in float32, in token order, as lm-eval's `logits.sum()` (a request's
        # tokens are contiguous here: packs are laid out request after request)
        bounds = np.flatnonzero(np.diff(slot)) + 1
        starts = np.concatenate([[0], bounds])
        sums = [float(x.detach().sum()) for x in torch.tensor_split(tok_ll, torch.from_numpy(bounds))]
        ll[slot[starts]] += sums
        np.add.at(miss, slot, ~hit)
        np.add.at(ntok, slot, 1)
        new = {owner[pi] for pi in idx} - seen_groups
        seen_groups |= new
        bar.update(len(new))
    bar.close()
    model.train(was_training)
    out = []
    fed = np.zeros(len(groups), np.int64)
    np.add.at(fed, np.asarray(owner, np.int64), [len(p.tokens) for p in packs])
    for g in range(len(groups)):
        s = base[g] + req_to_u[g]
        out.append(GroupScores(ll[s], miss[s] == 0, ntok[s], int(fed[g])))
    return out
