"""`datamates select`: keep a fraction of the candidates by Gumbel-top-k on their scores (MATES §3.2
step 4; docs/methods.md#gumbel-top-k-selection).

One protocol for every selector (docs/methods.md#selection-protocol; issue 18): a selector hands over
raw scores s_i, lower is better, and `select` alone puts them on the scale the temperature refers to,
the same way for every selector:

  scale: block (default)  z_i = (s_i - mean_block(s)) / sd_block(s)   the candidates' own statistics,
                          so sd(z) = 1 and tau means the same for the influence model, the oracle's
                          labels, the loss scorer and every baseline
  scale: label            z_i = (s_i - label_mean) / label_std  the influence model's label statistics
                          (the reference code: its DIM predicts z-scored labels); predictions shrink
                          toward the mean, so sd(z) < 1 and tau acts hotter. For MATES-parity runs only
  scale: none             z_i = s_i

With G_i ~ Gumbel(0, 1) and k = floor(fraction * N):

  gumbel, exact (default):  keep the k largest  -z_i / tau + G_i
      = k draws without replacement from softmax(-z / tau)  (Gumbel-top-k; Kool et al. 2019)
  gumbel, mates:            keep the k smallest  z_i / tau + G_i   (the reference code)
      = the k largest of -z_i/tau - G_i: the noise is a reflected (Gumbel-min) variable, so this
      is a noisy "prefer low z" rule but not sampling from softmax(-z/tau)
  topk (or tau = 0):        keep the k smallest z_i
  random:                   keep the k largest G_i (a uniform k-subset; MATES: zeros + Gumbel)
  group:                    keep the k smallest raw values, unscaled and without noise: the pick order of
                            group-level selection (selection/group.py), which applied the scale and the
                            noise itself through `standardised_keys`

Why exact is the default: it is the only variant with a stated distribution (Plackett-Luce on
softmax(-z/tau)); both agree as tau -> 0 (exact top-k) and both prefer low z, so nothing in MATES's
results depends on the reflected noise; `gumbel: mates` is there for parity runs.

The effective temperature is written into meta.json (`effective`): z_sd = sd of the standardised
scores over the block, tau_effective = tau / z_sd (the temperature on unit-variance scores: what tau
really does), and topk_overlap = |kept ∩ exact top-k| / k (1: deterministic; about k / N: random).

Reproducibility: G_i is a function of (seed, sequence id) only, u_i = SplitMix64(SplitMix64(seed) xor
id) mapped to (0, 1), G_i = -log(-log u_i), a counter-based generator. So the selection does not
depend on how scores are sharded or ordered, and a re-run gives the same ids. Ties (possible in
top-k on float32 scores) go to the lower sequence id.

Streaming: shards are read one at a time into a buffer of 1.25 k candidates; whenever it is full it
is cut back to the k best and the k-th key becomes a threshold that later shards are filtered with.
Memory O(k + shard) (about 30 bytes per kept candidate), time O(N) plus one partition of the
buffer per k/4 candidates that pass the threshold (benchmarks/select.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from datamates.artifacts import Output, produce, read_marker
from datamates.config.base import from_dict, to_dict, validate
from datamates.config.core import PoolConfig
from datamates.config.influence import SelectConfig
from datamates.core.pool import Pool
from datamates.core.sources import write_selected
from datamates.errors import ArtifactMissing, InputError
from datamates.identity import hash_array, hash_config, hash_ids
from datamates.log import get_logger, progress_bar
from datamates.run_dir import meta_record
from datamates.selection.scores_io import check_scores, iter_scores, scores_meta

log = get_logger(__name__)

# ----------------------------------------------------------------------------- noise


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer (Steele et al. 2014) on uint64 arrays; wraps modulo 2^64."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def uniform_noise(ids: np.ndarray, seed: int) -> np.ndarray:
    """u in (0, 1) float64, a pure function of (seed, id)."""
    with np.errstate(over="ignore"):
        key = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
        h = _splitmix64(np.asarray(ids, dtype=np.int64).view(np.uint64) ^ key)
    return ((h >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / 9007199254740992.0)


def gumbel_noise(ids: np.ndarray, seed: int) -> np.ndarray:
    """G ~ Gumbel(0, 1) per sequence id: -log(-log u(seed, id))."""
    return -np.log(-np.log(uniform_noise(ids, seed)))


def selection_keys(ids: np.ndarray, z: np.ndarray | None, *, method: str, temperature: float, seed: int,
                   gumbel: str = "exact") -> np.ndarray:
    """Keys whose k largest are kept (see the module docstring for each method)."""
    if method == "random":
        return gumbel_noise(ids, seed)
    z = np.asarray(z, dtype=np.float64)
    if method in ("topk", "group") or temperature == 0:
        return -z
    g = gumbel_noise(ids, seed)
    return -z / temperature + (g if gumbel == "exact" else -g)


# ----------------------------------------------------------------------------- streaming top-k


def top_k_exact(keys: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k largest keys, ties to the lower id: the first k of the order
    (key descending, id ascending), found without a full sort."""
    n = len(keys)
    if k >= n:
        return np.arange(n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    kth = np.partition(keys, n - k)[n - k]  # the k-th largest key
    gt = np.nonzero(keys > kth)[0]
    eq = np.nonzero(keys == kth)[0]
    need = k - len(gt)
    if need < len(eq):
        eq = eq[np.argsort(ids[eq], kind="stable")[:need]]
    return np.concatenate([gt, eq])


class StreamingTopK:
    """The k largest (key, id) pairs of a stream of chunks, ties to the lower id.

    A preallocated buffer of cap = k + max(k/4, 65536) (key float64, id int64) pairs is filled;
    when full it is cut back in place to its k best, and the k-th key becomes a threshold that
    later chunks are filtered with before they are copied in. Memory ~ 16 B x cap + 8 B x cap
    transient (about 30 B per kept candidate), whatever the stream's length."""

    def __init__(self, k: int, slack: float = 0.25, min_room: int = 1 << 16):
        self.k = int(k)
        self.cap = self.k + max(int(self.k * slack), min_room, 1)
        self._keys = np.empty(self.cap, dtype=np.float64)
        self._ids = np.empty(self.cap, dtype=np.int64)
        self._n = 0
        self.threshold = -np.inf
        self.seen = 0
        self.compactions = 0

    def push(self, keys: np.ndarray, ids: np.ndarray) -> None:
        self.seen += len(keys)
        if self.threshold > -np.inf:
            m = keys >= self.threshold  # ties at the threshold are resolved when compacting
            keys, ids = keys[m], ids[m]
        while len(keys):
            take = min(self.cap - self._n, len(keys))
            self._keys[self._n : self._n + take] = keys[:take]
            self._ids[self._n : self._n + take] = ids[:take]
            self._n += take
            keys, ids = keys[take:], ids[take:]
            if self._n == self.cap:
                self._compact()
                if self.threshold > -np.inf and len(keys):
                    m = keys >= self.threshold
                    keys, ids = keys[m], ids[m]

    def _compact(self) -> None:
        n, k = self._n, self.k
        if n <= k:
            return
        self.compactions += 1
        keys, ids = self._keys[:n], self._ids[:n]
        kth = np.partition(keys, n - k)[n - k] if k > 0 else np.inf  # the k-th largest key
        gt = keys > kth
        n_gt = int(gt.sum())
        eq = np.nonzero(keys == kth)[0]
        need = k - n_gt
        if need < len(eq):
            eq = eq[np.argsort(ids[eq], kind="stable")[:need]]
        gt[eq] = True  # keep: every key above the k-th, and the tied ones with the lowest ids
        self._keys[:k] = keys[gt]
        self._ids[:k] = ids[gt]
        self._n = k
        self.threshold = float(kth) if k > 0 else np.inf

    def result(self) -> np.ndarray:
        """The kept ids, sorted ascending (sorted in place: no copy of the buffer)."""
        self._compact()
        ids = self._ids[: self._n]
        ids.sort()
        self._keys = np.empty(0)
        return ids


def gumbel_top_k(chunks: Iterable[tuple[np.ndarray, np.ndarray | None]], k: int, *, method: str = "gumbel",
                 temperature: float = 0.5, seed: int = 0, gumbel: str = "exact",
                 scale: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Selected ids (sorted) from a stream of (ids, scores) chunks; z = (score - scale[0]) / scale[1]."""
    top = StreamingTopK(k)
    mu, sd = scale
    for ids, s in chunks:
        ids = np.asarray(ids, dtype=np.int64)
        z = None if s is None else (np.asarray(s, dtype=np.float64) - mu) / sd
        top.push(selection_keys(ids, z, method=method, temperature=temperature, seed=seed, gumbel=gumbel), ids)
    return top.result()


# ----------------------------------------------------------------------------- select


Candidates = str | Path | tuple[np.ndarray, np.ndarray] | np.ndarray


def _chunks(candidates: Candidates, pool_id: str | None, size: int = 1 << 20
            ) -> tuple[Any, int, dict[str, Any]]:
    """(a factory of (ids, scores) chunk iterators, N, info about the source)."""
    if isinstance(candidates, str | Path):
        meta = scores_meta(candidates)
        n = int(meta["n"])

        def it() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            return iter_scores(candidates, pool_id=pool_id)

        return it, n, {"scores": str(candidates), "model_hash": meta.get("model_hash"),
                       "label_mean": meta.get("label_mean"), "label_std": meta.get("label_std")}
    if isinstance(candidates, tuple):
        ids, sc = (np.asarray(a) for a in candidates)
        check_scores("the scores", ids, sc)

        def it() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for i in range(0, len(ids), size):
                yield ids[i : i + size], sc[i : i + size]

        return it, len(ids), {"scores": "in-memory"}
    ids = np.asarray(candidates)

    def it_ids() -> Iterator[tuple[np.ndarray, None]]:
        for i in range(0, len(ids), size):
            yield ids[i : i + size], None

    return it_ids, len(ids), {"scores": None}


def _moments(factory: Any, n: int) -> tuple[float, float]:
    """Mean and (population) sd of the scores, in one pass over the chunks."""
    s1 = s2 = 0.0
    for _, s in factory():
        s = np.asarray(s, np.float64)
        s1 += float(s.sum())
        s2 += float((s * s).sum())
    mu = s1 / n
    return mu, float(np.sqrt(max(s2 / n - mu * mu, 0.0)))


def _scale(cfg: SelectConfig, method: str, info: dict[str, Any], factory: Any, n: int) -> tuple[str | None, float, float]:
    """(scale, mu, sd) of the protocol: z = (s - mu) / sd (module docstring)."""
    mu, sd = 0.0, 1.0
    scale = cfg.scale if method not in ("random", "group") else None
    if scale == "label" and not info.get("label_std"):
        # only an influence model's scores carry label statistics; other selectors of a parity run
        # (oracle, loss, baselines) are standardised over the block, and meta.json says so
        log.info("select.scale = 'label': %s has no label statistics; standardising over the block", info["scores"])
        scale = "block"
    if scale == "label":
        mu, sd = float(info["label_mean"]), float(info["label_std"])
    elif scale == "block":  # one extra pass over the scores
        mu, sd = _moments(factory, n)
        sd = sd or 1.0
    return scale, mu, sd


def standardised_keys(cfg: SelectConfig, candidates: Candidates, pool: Pool, *, method: str | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """(ids, z, keys, info) of a block of scores held in memory: the protocol's standardised scores
    z and the keys `select` would rank (the k largest are kept), for selections that post-process
    them (group-level selection) and then hand their pick order back with method 'group'."""
    validate(cfg)
    method = method or cfg.method
    factory, n, info = _chunks(candidates, pool.pool_id)
    if info["scores"] is None or n == 0:
        raise InputError("standardised keys need scores of at least one candidate")
    scale, mu, sd = _scale(cfg, method, info, factory, n)
    parts = list(factory())
    ids = np.concatenate([np.asarray(i, dtype=np.int64) for i, _ in parts])
    z = (np.concatenate([np.asarray(v, dtype=np.float64) for _, v in parts]) - mu) / sd
    if not np.isfinite(z).all():
        raise InputError(f"{info['scores']}: {int((~np.isfinite(z)).sum())} scores are NaN or inf")
    keys = selection_keys(ids, z, method=method, temperature=cfg.temperature, seed=cfg.seed, gumbel=cfg.gumbel)
    return ids, z, keys, {**info, "method": method, "scale": scale, "z_mean": mu, "z_std": sd}


def _candidates_identity(candidates: Candidates) -> str:
    """Digest of what a selection was made from: a scores folder's DONE record (its fingerprint and
    file sizes), or the ids (and scores) held in memory."""
    if isinstance(candidates, str | Path):
        rec = read_marker(candidates) or {}
        return hash_config({"fingerprint": rec.get("fingerprint"), "files": rec.get("files")})
    if isinstance(candidates, tuple):
        return hash_config([hash_ids(candidates[0]), hash_array(candidates[1])])
    return hash_ids(candidates)


def select(cfg: SelectConfig, candidates: Candidates, pool: Pool, out: str | Path, *, method: str | None = None,
           k: int | None = None, group: dict[str, Any] | None = None,
           attributes: Callable[..., dict[str, Any]] | None = None) -> Path:
    """Select from `candidates` (a scores folder, an (ids, scores) pair, or - for random - an id
    array) and write `out/ids.npy` (sorted int64) + meta.json (+ documents/ with write_documents).
    `method` and `k` override cfg.method and floor(cfg.fraction * N); `group` (method 'group') is
    recorded in meta.json; `attributes` (the caller's writer of per-document scores: the CLI and
    the run pass integrations/attributes.write_attributes) runs when mates.select.write_scores is
    on. Returns `out`."""
    validate(cfg)
    out = Path(out)
    method = method or cfg.method
    if method not in ("gumbel", "topk", "random", "group"):
        raise InputError(f"select method {method!r}: allowed values are 'gumbel', 'topk', 'random', 'group'")
    factory, n, info = _chunks(candidates, pool.pool_id)
    if info["scores"] is None and method != "random":
        raise InputError(f"select method '{method}' needs scores; give a scores folder (or use method 'random')")
    if n == 0:
        raise InputError("no candidates to select from")
    k = int(k) if k is not None else int(n * cfg.fraction)
    if not 0 < k <= n:
        raise InputError(f"k = {k}: must be between 1 and the {n} candidates (fraction {cfg.fraction})")

    scale, mu, sd = _scale(cfg, method, info, factory, n)

    bar = progress_bar("select", total=n, unit="seq")
    top = StreamingTopK(k)
    exact = StreamingTopK(k) if method == "gumbel" and cfg.temperature > 0 else None  # for topk_overlap
    z1 = z2 = 0.0
    dom = np.asarray(pool.seq_domain)
    cand_dom = np.zeros(len(pool.domains), dtype=np.int64)
    for ids, s in factory():
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= len(pool)):
            raise InputError(f"candidate sequence id {int(ids.max())} is not in the pool {pool.path}")
        z = None if s is None else (np.asarray(s, np.float64) - mu) / sd
        if z is not None and not np.isfinite(z).all():
            raise InputError(f"{info['scores']}: {int((~np.isfinite(z)).sum())} scores are NaN or inf")
        top.push(selection_keys(ids, z, method=method, temperature=cfg.temperature, seed=cfg.seed,
                                gumbel=cfg.gumbel), ids)
        if z is not None:
            z1 += float(z.sum())
            z2 += float((z * z).sum())
        if exact is not None:
            exact.push(-z, ids)
        cand_dom += np.bincount(dom[ids], minlength=len(pool.domains))
        bar.update(len(ids))
    bar.close()
    chosen = top.result()
    if len(np.unique(chosen)) != len(chosen):
        raise InputError("the candidates hold duplicate sequence ids")
    effective = None
    if method not in ("random", "group"):
        z_sd = float(np.sqrt(max(z2 / n - (z1 / n) ** 2, 0.0)))
        overlap = 1.0 if exact is None else float(len(np.intersect1d(chosen, exact.result())) / k)
        tau = cfg.temperature if method == "gumbel" else 0.0
        effective = {"z_sd": z_sd, "tau": tau, "tau_effective": tau / z_sd if z_sd > 0 else None,
                     "topk_overlap": overlap, "random_overlap": float(k / n)}

    kept = np.bincount(dom[chosen], minlength=len(pool.domains))
    meta = meta_record(
        "select", method=method, gumbel=cfg.gumbel if method == "gumbel" else None, k=int(k), n_candidates=int(n),
        fraction=float(k / n), temperature=cfg.temperature, scale=scale,
        z_mean=mu, z_std=sd, effective=effective, seed=cfg.seed, pool_id=pool.pool_id, config=to_dict(cfg), **info,
        **({"group": group} if group is not None else {}),
        kept_per_domain={d: int(kept[i]) for i, d in enumerate(pool.domains) if kept[i]},
        candidates_per_domain={d: int(cand_dom[i]) for i, d in enumerate(pool.domains) if cand_dom[i]},
    )
    counted = ("encoder_tokens", "encoder_flops")  # the group's accounting (meta.json), not an input
    identity = {"select": cfg, "method": method, "k": int(k), "pool": pool.pool_id,
                "group": None if group is None else {g: v for g, v in group.items() if g not in counted},
                "candidates": _candidates_identity(candidates)}

    def build(tmp: Path) -> dict[str, Any]:
        np.save(tmp / "ids.npy", chosen)
        if cfg.write_documents:
            meta["documents"] = write_documents(pool, chosen, tmp / "documents")
        if info["scores"] is not None and cfg.write_scores and attributes is not None:
            parts = [(np.asarray(i, np.int64), np.asarray(v, np.float64)) for i, v in factory()]
            meta["attributes"] = attributes(pool, np.concatenate([i for i, _ in parts]),
                                                  np.concatenate([v for _, v in parts]), chosen, tmp)
        return meta  # produce writes it, with the seconds this took

    produce(Output(out, "selection", identity, inputs=(pool.path,) + ((candidates,) if isinstance(candidates, str | Path)
                                                                      else ())), build)
    log.info("selected %d of %d candidates (%s%s) -> %s; per domain: %s", k, n, method,
             f", tau {cfg.temperature} on sd(z) {effective['z_sd']:.3g}, {effective['topk_overlap']:.0%} of exact "
             f"top-k" if method == "gumbel" and effective else "", out,
             ", ".join(f"{d} {c}" for d, c in meta["kept_per_domain"].items()))
    return out


def read_selection(path: str | Path) -> np.ndarray:
    path = Path(path)
    if not (path / "ids.npy").exists():
        raise ArtifactMissing(f"{path}: no selection here (missing ids.npy); run `datamates select`")
    return np.load(path / "ids.npy")


# ----------------------------------------------------------------------------- documents out


def write_documents(pool: Pool, seq_ids: np.ndarray, out: Path) -> dict[str, Any]:
    """The documents behind the selected sequences, in their input format (core/sources.py
    write_selected: JSON lines copied byte for byte and recompressed as the input was, Parquet rows
    with the input schema, token documents as a binary), under the input's relative path. A document overlapping any selected sequence is written once, whole."""
    docs = pool.docs
    doc_idx = pool.docs_of_many(seq_ids)
    files = np.asarray(docs.column("file").to_numpy())[doc_idx]
    lines = np.asarray(docs.column("line").to_numpy())[doc_idx]
    inputs = pool.meta["inputs"]
    written = {"documents": int(len(doc_idx)), "files": 0,
               "tokens_in_selected_sequences": int(len(seq_ids) * pool.seq_len),
               "tokens_in_documents": int(np.asarray(docs.column("n_tokens").to_numpy())[doc_idx].sum())}

    pool_cfg = from_dict(PoolConfig, pool.meta.get("config"))
    for fi in np.unique(files):  # each input in its own format (core/sources.py)
        write_selected(inputs[int(fi)], set(int(x) for x in lines[files == fi]), out, pool_cfg)
        written["files"] += 1
    return written


__all__ = ["StreamingTopK", "gumbel_noise", "gumbel_top_k", "read_selection", "select", "selection_keys",
           "standardised_keys", "top_k_exact", "uniform_noise", "write_documents"]
