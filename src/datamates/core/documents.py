"""Sequences and the documents they come from; held-out sets drawn by whole documents.

A pool cuts packed documents into fixed-length sequences, so one document (a novel in `books`)
spans many sequences and one sequence may touch several documents. `seq_doc_ptr.npy` /
`seq_doc_idx.npy` (core/pool.py) hold that incidence; `DocIndex` reads it both ways.

`draw_heldout` is the one rule for held-out evaluation data, used by the MATES plan (plan.py) and
the ablation partitions (ablation/partition.py): per domain, documents are taken in a seeded random
order, at most `max_per_doc` of a document's sequences (those of the domain) go into the held-out
set, until it has `n` sequences; every other sequence that touches a held-out document is the
*guard*, kept out of training, probing and candidate blocks too, so no document is split between
what a model sees and what it is evaluated on (issue 18: held-out random windows of a novel whose
other windows were trained on made held-out perplexity leak).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from datamates.errors import InputError


class DocIndex:
    """Sequence <-> document incidence of a pool (CSR both ways)."""

    def __init__(self, pool) -> None:
        self.seq_ptr = np.load(pool.path / "seq_doc_ptr.npy")  # [n_seq + 1]
        self.seq_doc = np.load(pool.path / "seq_doc_idx.npy")  # [nnz]
        n_seq = len(self.seq_ptr) - 1
        self.seq_of = np.repeat(np.arange(n_seq, dtype=np.int64), np.diff(self.seq_ptr))  # [nnz]
        order = np.argsort(self.seq_doc, kind="stable")
        self.doc_seq = self.seq_of[order]  # sequences, grouped by document, ascending within a document
        n_docs = len(pool.docs)
        self.doc_ptr = np.concatenate([[0], np.cumsum(np.bincount(self.seq_doc, minlength=n_docs))])
        self.first_doc = self.seq_doc[self.seq_ptr[:-1]]  # [n_seq] first document of each sequence

    def seqs_of(self, doc: int) -> np.ndarray:
        return self.doc_seq[self.doc_ptr[doc] : self.doc_ptr[doc + 1]]

    def docs_of(self, seqs: np.ndarray) -> np.ndarray:
        """Sorted unique documents touched by any of `seqs`."""
        mask = np.zeros(len(self.seq_ptr) - 1, dtype=bool)
        mask[np.asarray(seqs, dtype=np.int64)] = True
        return np.unique(self.seq_doc[mask[self.seq_of]])

    def n_docs_of(self, seqs: np.ndarray) -> int:
        return len(self.docs_of(seqs))

    def seqs_touching(self, docs: np.ndarray) -> np.ndarray:
        """Sorted unique sequences that overlap any of `docs`."""
        parts = [self.seqs_of(int(d)) for d in docs]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)


def draw_heldout(pool, index: DocIndex, n: int, *, max_per_doc: int, seed: int, key: str,
                 max_share: float | None = None, skip_domains: Sequence[str] = (),
                 avoid: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Held-out ids per domain, drawn by whole documents, and the guard (every other sequence that
    touches a held-out document). Returns ({domain: sorted ids}, sorted guard ids).

    `n` sequences per domain; with `max_share`, a domain gets min(n, floor(max_share x its
    sequences)) instead of an error when it is small. `key` names the config knob in errors.
    `skip_domains` are never drawn from (planted junk, datamates.junk); no document touching an
    `avoid` sequence is drawn (a second draw disjoint from a first one and its guard)."""
    seq_domain = np.asarray(pool.seq_domain)
    doc_domain = np.asarray(pool.docs.column("domain").to_numpy())
    heldout: dict[str, np.ndarray] = {}
    if n == 0:
        return heldout, np.zeros(0, dtype=np.int64)
    blocked = set(index.docs_of(avoid).tolist()) if avoid is not None and len(avoid) else set()
    for d, name in enumerate(pool.domains):
        if name in skip_domains:
            continue
        n_dom = int((seq_domain == d).sum())
        want = n if max_share is None else min(n, int(n_dom * max_share))
        if want == 0:
            continue
        if n_dom <= want:
            raise InputError(f"domain '{name}' has {n_dom} sequences, not more than {key} = {n}; lower {key}")
        docs = np.nonzero(doc_domain == d)[0]
        rng = np.random.default_rng([seed, 7919, d])
        taken: list[int] = []
        seen: set[int] = set()
        for doc in docs[rng.permutation(len(docs))]:
            if int(doc) in blocked:
                continue
            seqs = [int(s) for s in index.seqs_of(int(doc)) if seq_domain[s] == d and int(s) not in seen]
            seqs = seqs[:max_per_doc]
            taken += seqs
            seen.update(seqs)
            if len(taken) >= want:
                break
        if len(taken) < want:
            raise InputError(f"domain '{name}': could only hold out {len(taken)} of {want} sequences; lower {key}")
        heldout[name] = np.sort(np.array(taken[:want], dtype=np.int64))
    if not heldout:
        return heldout, np.zeros(0, dtype=np.int64)
    held_all = np.concatenate(list(heldout.values()))
    guard = np.setdiff1d(index.seqs_touching(index.docs_of(held_all)), held_all)
    return heldout, guard


__all__ = ["DocIndex", "draw_heldout"]
