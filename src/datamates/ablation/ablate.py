"""The ablation study: a merged proxy for every mixture, gold models for a sample, and how well
the proxies predict the gold models (Na et al. 2024, §4-5; ablations.md §1.5-1.7, §6.3, §6.6, §7).

This module composes the other ablation stages (it is the study, not a stage): it reads the
partition manifest, the seed and unit checkpoints, trains the missing gold models through
`train_partition.train_gold`, and merges with `merge.RunningMerge`.

For each mixture S (a set of units; all 2^K - 1 non-empty subsets unless a list is given):

    proxy(S)  = the parameter average of S's unit models (merge.method: uniform, token-weighted,
                or task arithmetic), built in memory by a Gray-code walk over running sums and
                loaded straight into one resident model; no checkpoint is written per mixture
    gold(S)   = continued pretraining from the seed on the union of S's units for |S| x unit steps
                (train_partition.py); for |S| = 1 the unit model itself (gold_singletons)

Evaluation sets: the held-out sequences of every domain (token perplexity, micro-averaged over
tokens, and bits per byte), all held-out sequences pooled, and LAMBADA (perplexity of the target
word's tokens, and greedy accuracy). For every evaluation set, across the gold mixtures:

    Pearson r of log PPL(proxy) vs log PPL(gold); Spearman rho; Kendall tau;
    pairwise agreement = fraction of mixture pairs ordered the same way by proxy and gold.

reported over all gold mixtures and over the multi-unit ones only (singletons' proxies *are* their
gold models). A free baseline proxy is reported next to it: the mean of the unit models' log PPL.

Outputs in `<run>/ablation/`: results.json, proxies.csv, gold.csv, correlations.csv,
scatter.png, ranking.png, report.md, report.html. Evaluations are cached in
`<run>/ablation_cache/evals.jsonl`, so a killed or extended study re-evaluates nothing.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import math
import time
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datamates.ablation import mixture_key, weights_sha
from datamates.ablation.merge import (
    RunningMerge,
    UnitStore,
    check_compatible,
    inspect_checkpoint,
    mask_of,
    members,
    walk_order,
)
from datamates.ablation.partition import Manifest, read_manifest
from datamates.ablation.train_partition import gold_dir, train_gold
from datamates.config.ablation import AblationConfig, AblationEvalConfig, MergeConfig
from datamates.config.base import config_hash, expand_vars, to_dict
from datamates.config.core import ModelConfig, TrainConfig
from datamates.core.checkpoint import load_model
from datamates.core.lm import resolve_device
from datamates.core.loss import TargetExample, load_lambada, perplexity_and_bpb, score_targets, sequence_nll
from datamates.core.pool import Pool
from datamates.errors import ArtifactMissing, ConfigError, InputError
from datamates.log import get_logger, progress_bar
from datamates.run_dir import RunDir, atomic_dir, atomic_write_text, is_done, meta_record

log = get_logger(__name__)

HELDOUT_ALL = "heldout_all"
BASELINE = "mean_unit_logppl"  # free baseline proxy: the mean of the unit models' log perplexities
LAMBADA = "lambada"


# ----------------------------------------------------------------------------- evaluation sets


def ratio_se(nll: np.ndarray, tokens: np.ndarray) -> float:
    """Standard error of log PPL = sum(nll_i) / sum(t_i) over n sequences (the ratio estimator's
    delta-method SE: sqrt(sum (nll_i - r t_i)^2 / (n (n - 1))) / mean(t)); nan for n < 2."""
    n = len(nll)
    if n < 2:
        return float("nan")
    r = nll.sum() / tokens.sum()
    return float(math.sqrt(((nll - r * tokens) ** 2).sum() / (n * (n - 1))) / tokens.mean())


@dataclass
class EvalSets:
    """Held-out sequences per domain and LAMBADA examples, tokenized once.

    Every result carries `se`, the standard error of its log PPL over the set's sequences
    (`ratio_se`), so a fixed token budget (`eval.tokens_per_set`) says how precise it is. With
    `early_stop_z`, `evaluate(model, race=True)` scores each held-out set in chunks and stops once
    the model is worse than the best model so far (`self.best`, per-sequence NLL on the same
    sequences) by more than z paired standard errors: that mixture is separated from the best."""

    heldout: dict[str, np.ndarray]  # domain -> [n, L] int64 tokens
    heldout_bytes: dict[str, float]  # domain -> UTF-8 bytes behind the predicted tokens
    lambada: list[TargetExample]
    batch_size: int
    precision: str
    ident: str
    early_stop_z: float | None = None
    early_stop_chunk: int = 8
    best: dict[str, tuple[float, np.ndarray]] = field(default_factory=dict)  # set -> (logppl, per-seq nll)

    @property
    def names(self) -> list[str]:
        out = [f"heldout/{d}" for d in self.heldout]
        if self.heldout:
            out.append(HELDOUT_ALL)
        if self.lambada:
            out.append(LAMBADA)
        return out

    def _heldout_nll(self, model: torch.nn.Module, name: str, toks: np.ndarray, race: bool) -> tuple[np.ndarray, bool]:
        z = self.early_stop_z
        if not (race and z and name in self.best):
            return sequence_nll(model, toks, batch_size=self.batch_size, precision=self.precision), False
        ref = self.best[name][1]
        out: list[np.ndarray] = []
        step = self.early_stop_chunk
        for i in range(0, len(toks), step):
            out.append(sequence_nll(model, toks[i : i + step], batch_size=self.batch_size, precision=self.precision))
            done = sum(len(o) for o in out)
            if i + step < len(toks) and done >= 2 * step:
                d = np.concatenate(out) - ref[:done]  # paired per-sequence difference
                if d.mean() - z * d.std(ddof=1) / math.sqrt(done) > 0:
                    return np.concatenate(out), True
        return np.concatenate(out), False

    def evaluate(self, model: torch.nn.Module, race: bool = False) -> dict[str, dict[str, float]]:
        """{set name: {nll, tokens, ppl, logppl, se, n, bpb (held-out), acc (LAMBADA), stopped_early}}."""
        res: dict[str, dict[str, float]] = {}
        all_nll, all_tok, tot_bytes, stopped_any = [], [], 0.0, False
        for dom, toks in self.heldout.items():
            name = f"heldout/{dom}"
            seq, stopped = self._heldout_nll(model, name, toks, race)
            n = len(seq)
            t = np.full(n, toks.shape[1] - 1, dtype=np.float64)
            nbytes = self.heldout_bytes[dom] * n / len(toks)
            nll, n_tok = float(seq.sum()), int(t.sum())
            ppl, bpb = perplexity_and_bpb(nll, n_tok, nbytes)
            res[name] = {"nll": nll, "tokens": n_tok, "ppl": ppl, "logppl": nll / n_tok, "bpb": bpb,
                         "se": ratio_se(seq, t), "n": n, "stopped_early": stopped}
            res[name]["_seq"] = seq
            stopped_any |= stopped
            all_nll.append(seq)
            all_tok.append(t)
            tot_bytes += nbytes
        if self.heldout:
            seq, t = np.concatenate(all_nll), np.concatenate(all_tok)
            ppl, bpb = perplexity_and_bpb(float(seq.sum()), int(t.sum()), tot_bytes)
            res[HELDOUT_ALL] = {"nll": float(seq.sum()), "tokens": int(t.sum()), "ppl": ppl,
                                "logppl": float(seq.sum() / t.sum()), "bpb": bpb, "se": ratio_se(seq, t),
                                "n": len(seq), "stopped_early": stopped_any}
        if self.lambada:
            sc = score_targets(model, self.lambada, batch_size=self.batch_size, precision=self.precision)
            nll, n_tok = float(sc.nll.sum()), int(sc.n_tokens.sum())
            res[LAMBADA] = {"nll": nll, "tokens": n_tok, "ppl": math.exp(nll / n_tok), "logppl": nll / n_tok,
                            "acc": float(sc.greedy.mean()), "se": ratio_se(sc.nll, sc.n_tokens.astype(np.float64)),
                            "n": len(sc.nll)}
        if race and self.early_stop_z:  # a fully evaluated set that beats the best becomes the reference
            for name, r in res.items():
                if "_seq" in r and not r["stopped_early"] and (name not in self.best or r["logppl"] < self.best[name][0]):
                    self.best[name] = (r["logppl"], r["_seq"])
        for r in res.values():
            r.pop("_seq", None)
        return res


def build_eval_sets(manifest: Manifest, pool: Pool, cfg: AblationEvalConfig, precision: str) -> EvalSets:
    heldout, nbytes = {}, {}
    L = pool.seq_len
    if cfg.heldout:
        if not manifest.heldout_domains:
            raise InputError("no held-out sequences in the partition (partition.heldout_sequences = 0); "
                             "set ablation.eval.heldout: false or re-partition")
        for dom in manifest.heldout_domains:
            ids = manifest.heldout_ids(dom)
            if cfg.tokens_per_set is not None:  # a fixed subsample, the same for every model
                n = min(len(ids), max(2, math.ceil(cfg.tokens_per_set / (L - 1))))
                ids = np.sort(np.random.default_rng([0, 4099]).permutation(ids)[:n])
            heldout[dom] = pool.tokens(ids)
            nbytes[dom] = float(np.asarray(pool.seq_bytes, dtype=np.float64)[ids].sum()) * (L - 1) / L
    lambada: list[TargetExample] = []
    lam_path = None
    if cfg.lambada:
        lam_path = Path(expand_vars(cfg.lambada))
        if not lam_path.exists():
            raise InputError(f"ablation.eval.lambada = {cfg.lambada!r}: no such file ({lam_path})")
        lambada = load_lambada(lam_path, pool.tokenizer(), n=cfg.lambada_n)
    if not heldout and not lambada:
        raise ConfigError("ablation.eval: no evaluation set (heldout: false and lambada: null)")
    key = [manifest.data["config_hash"], manifest.data["pool_id"], str(lam_path), cfg.lambada_n, cfg.heldout]
    if cfg.tokens_per_set is not None or cfg.early_stop_z is not None:
        key += [cfg.tokens_per_set, cfg.early_stop_z, cfg.early_stop_chunk]
    ident = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]
    return EvalSets(heldout, nbytes, lambada, cfg.batch_size, precision, ident, cfg.early_stop_z, cfg.early_stop_chunk)


class EvalCache:
    """Append-only JSONL of evaluations keyed by (kind, mixture, model identity, eval-set identity)."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: dict[str, dict[str, Any]] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill
                    continue
                self.rows[r["key"]] = r

    @staticmethod
    def key(kind: str, mixture: str, model_id: str, eval_id: str) -> str:
        return f"{kind}|{mixture}|{model_id}|{eval_id}"

    def get(self, key: str) -> dict[str, Any] | None:
        return self.rows.get(key)

    def put(self, key: str, row: dict[str, Any]) -> None:
        row = {"key": key, **row}
        self.rows[key] = row
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")


# ----------------------------------------------------------------------------- mixtures


def all_subsets(k: int) -> list[list[int]]:
    return [members(m) for m in range(1, 1 << k)]


def choose_gold(units: list[str], count: int, seed: int) -> list[list[str]]:
    """`count` multi-unit mixtures spanning sizes 2..K: the full set, then the rest allocated to
    sizes 2..K-1 in proportion to 1/size (largest remainder), drawn at random within a size."""
    K = len(units)
    if K < 2 or count <= 0:
        return []
    chosen: list[list[str]] = [list(units)]
    sizes = list(range(2, K))
    left = count - 1
    if left > 0 and sizes:
        cap = {s: math.comb(K, s) for s in sizes}
        w = np.array([1 / s for s in sizes])
        quota = w / w.sum() * left
        alloc = {s: min(int(q), cap[s]) for s, q in zip(sizes, quota)}
        rem = sorted(zip(sizes, quota - np.floor(quota)), key=lambda t: -t[1])
        while sum(alloc.values()) < min(left, sum(cap.values())):
            for s, _ in rem:
                if sum(alloc.values()) >= left:
                    break
                if alloc[s] < cap[s]:
                    alloc[s] += 1
        rng = np.random.default_rng([seed, 2053])
        for s in sizes:
            combos = list(combinations(range(K), s))
            pick = rng.permutation(len(combos))[: alloc[s]]
            for p in sorted(pick):
                chosen.append([units[i] for i in combos[p]])
    chosen.sort(key=lambda m: (len(m), [units.index(u) for u in m]))
    return chosen


# ----------------------------------------------------------------------------- statistics


def pairwise_agreement(proxy: np.ndarray, gold: np.ndarray, groups: np.ndarray | None = None) -> float:
    """Fraction of pairs (i < j, gold_i != gold_j) that proxy orders like gold (proxy ties: 1/2);
    with `groups`, only pairs in the same group (e.g. mixtures of the same size)."""
    agree, n = 0.0, 0
    for i in range(len(gold)):
        for j in range(i + 1, len(gold)):
            if groups is not None and groups[i] != groups[j]:
                continue
            g = np.sign(gold[i] - gold[j])
            if g == 0:
                continue
            p = np.sign(proxy[i] - proxy[j])
            agree += 1.0 if p == g else (0.5 if p == 0 else 0.0)
            n += 1
    return agree / n if n else float("nan")


def correlations(proxy_log: np.ndarray, gold_log: np.ndarray, sizes: np.ndarray | None = None) -> dict[str, float]:
    """Pearson on log PPL, Spearman, Kendall, pairwise agreement, mean |log error|; with `sizes`
    (units per mixture) also the within-size versions: pairwise agreement over pairs of equal size
    and Pearson after subtracting each size's mean (sizes with one mixture left out)."""
    from scipy import stats

    n = len(gold_log)
    out = {"n": n, "pearson": float("nan"), "spearman": float("nan"), "kendall": float("nan"),
           "pairwise": pairwise_agreement(proxy_log, gold_log) if n >= 2 else float("nan"),
           "mean_abs_log_err": float(np.mean(np.abs(proxy_log - gold_log))) if n else float("nan")}
    if n >= 3 and np.ptp(proxy_log) > 0 and np.ptp(gold_log) > 0:
        out["pearson"] = float(stats.pearsonr(proxy_log, gold_log)[0])
        out["spearman"] = float(stats.spearmanr(proxy_log, gold_log)[0])
        out["kendall"] = float(stats.kendalltau(proxy_log, gold_log)[0])
    if sizes is not None:
        sizes = np.asarray(sizes)
        out["pairwise_same_size"] = pairwise_agreement(proxy_log, gold_log, sizes)
        keep = np.array([np.sum(sizes == k) >= 2 for k in sizes], dtype=bool)
        p, g = proxy_log[keep].copy(), gold_log[keep].copy()
        for k in np.unique(sizes[keep]):
            m = sizes[keep] == k
            p[m] -= p[m].mean()
            g[m] -= g[m].mean()
        out["n_within_size"] = int(keep.sum())
        out["pearson_within_size"] = (float(stats.pearsonr(p, g)[0])
                                      if keep.sum() >= 3 and np.ptp(p) > 0 and np.ptp(g) > 0 else float("nan"))
    return out


# ----------------------------------------------------------------------------- the study


def _model_id(paths: list[Path]) -> str:
    return hashlib.sha256("|".join(weights_sha(p) for p in paths).encode()).hexdigest()[:16]


def ablate(cfg: AblationConfig, train_cfg: TrainConfig, model_cfg: ModelConfig, rd: RunDir, pool: Pool, *,
           subsets: list[list[str]] | None = None, gold: list[list[str]] | None = None,
           train_gold_models: bool = True, out: str | Path | None = None) -> dict[str, Any]:
    """Run the study and write `<run>/ablation/` (or `out`). Returns the results dict."""
    t_start = time.time()
    manifest = read_manifest(rd.partitions)
    manifest.check_pool(pool)
    units = manifest.units
    K = len(units)
    seed = Path(cfg.seed.checkpoint) if cfg.seed.checkpoint else rd.seed_model
    unit_paths = [rd.unit(u) for u in units]
    missing = [u for u, p in zip(units, unit_paths) if not is_done(p)]
    if not is_done(seed) and not (seed / "model.safetensors").exists():
        raise ArtifactMissing(f"{seed}: no seed model; run `datamates train-partitions` first")
    if missing:
        raise ArtifactMissing(f"{rd.unit(missing[0])}: unit model '{missing[0]}' is not trained "
                              f"({len(missing)} of {K} missing); run `datamates train-partitions`")
    infos = [inspect_checkpoint(p) for p in unit_paths]
    seed_info = inspect_checkpoint(seed)
    check_compatible(infos, seed_info)

    # ---- which mixtures
    subsets = subsets if subsets is not None else cfg.subsets
    if subsets is None:
        if K > cfg.max_all_units:
            raise ConfigError(f"{K} units give {2 ** K - 1:,} mixtures, above ablation.max_all_units = "
                              f"{cfg.max_all_units}; list the mixtures in ablation.subsets")
        masks = list(range(1, 1 << K))
    else:
        masks = [mask_of([units.index(u) for u in manifest.check_names(list(s), f"ablation.subsets[{i}]: ")])
                 for i, s in enumerate(subsets)]
    gold = gold if gold is not None else cfg.gold
    gold_mix = ([manifest.check_names(list(g), f"ablation.gold[{i}]: ") for i, g in enumerate(gold)]
                if gold is not None else choose_gold(units, cfg.gold_count, cfg.gold_seed))
    gold_multi = [g for g in gold_mix if len(g) > 1]
    gold_single = [[u] for u in units] if cfg.gold_singletons else [g for g in gold_mix if len(g) == 1]
    gold_masks = [mask_of([units.index(u) for u in g]) for g in gold_multi + gold_single]
    masks = sorted(set(masks) | set(gold_masks))  # every gold mixture also gets its proxy

    device = resolve_device(train_cfg.device)
    evs = build_eval_sets(manifest, pool, cfg.eval, train_cfg.precision)
    cache = EvalCache(rd.root / "ablation_cache" / "evals.jsonl")
    specs = [cfg.merge, *(MergeConfig.parse(x) for x in cfg.extra_proxies)]
    spec_names = [sp.name for sp in specs]
    if len(set(spec_names)) != len(spec_names):
        raise ConfigError(f"ablation.extra_proxies repeats a merge rule: {spec_names}")
    token_w = [float(manifest.unit(u)["tokens"]) for u in units]
    unit_ids = {u: weights_sha(p) for u, p in zip(units, unit_paths)}

    def spec_weights(sp) -> list[float] | None:
        return token_w if sp.method == "weighted" else None

    def pkey(sp, mask: int) -> str:
        """A proxy's identity: its members' weights (and token counts) and the rule, nothing about the
        units outside it, so adding a unit to a study (`add_unit`) leaves every cached proxy valid."""
        idx = members(mask)
        w = spec_weights(sp)
        tag = hashlib.sha256(json.dumps([[unit_ids[units[i]] for i in idx], sp.method, sp.lam, sp.lam_scale,
                                         [w[i] for i in idx] if w else None]).encode()).hexdigest()[:16]
        return EvalCache.key("proxy", mixture_key([units[i] for i in idx]), tag, evs.ident)

    timings: dict[str, float] = {}

    # ---- the seed (reference point)
    seed_key = EvalCache.key("seed", "seed", weights_sha(seed), evs.ident)
    if cache.get(seed_key) is None:
        m = load_model(seed, device)
        t0 = time.time()
        cache.put(seed_key, {"kind": "seed", "mixture": "seed", "k": 0, "eval": evs.evaluate(m),
                             "seconds": time.time() - t0})
        del m
    seed_eval = cache.get(seed_key)["eval"]

    # ---- proxies: Gray-code walk of running sums into one resident model
    todo = [m for m in walk_order(masks) if any(cache.get(pkey(sp, m)) is None for sp in specs)]
    log.info("proxies: %d mixtures of %d units x %d merge rule%s (%s); %d mixtures cached", len(masks), K, len(specs),
             "s" if len(specs) > 1 else "", ", ".join(spec_names), len(masks) - len(todo))
    if todo:
        model = load_model(seed, device)
        seed_params = ({n: p.detach().clone() for n, p in model.named_parameters()}
                       if any(sp.method == "task_arithmetic" for sp in specs) else None)
        store = UnitStore(unit_paths, model, cache=cfg.cache_units)
        if device.type != "cpu" and store._mem is not None:
            store._mem = [{n: t.to(device) for n, t in d.items()} for d in store._mem]
        dtype = torch.float64 if cfg.accumulate_dtype == "float64" else torch.float32
        groups: dict[Any, tuple[RunningMerge, list]] = {}  # one running sum per weight vector
        for sp in specs:
            w = spec_weights(sp)
            key = tuple(w) if w else None
            if key not in groups:
                rm = RunningMerge(store, w, dtype=dtype, recompute_every=cfg.recompute_every)
                if device.type != "cpu":
                    rm.sum = {n: t.to(device) for n, t in rm.sum.items()}
                groups[key] = (rm, [])
            groups[key][1].append(sp)
        bar = progress_bar("proxies", total=len(todo), unit="mixture")
        for mask in todo:
            names = [units[i] for i in members(mask)]
            for rm, group_specs in groups.values():
                t0 = time.time()
                rm.set(mask)
                t_set = time.time() - t0  # booked on the first rule evaluated for this mask
                same: dict[Any, dict] = {}  # rules that give the same weights here share one evaluation
                for sp in group_specs:
                    lam = sp.lam * (len(names) if sp.lam_scale == "size" else 1)
                    rule = ("mean",) if sp.method != "task_arithmetic" or lam == 1.0 else ("ta", lam)
                    row = cache.get(pkey(sp, mask))
                    if row is not None:
                        same.setdefault(rule, row["eval"])
                        continue
                    if rule in same:
                        cache.put(pkey(sp, mask), {"kind": "proxy", "proxy": sp.name, "mixture": mixture_key(names),
                                                   "k": len(names), "eval": same[rule], "same_as": rule[0]})
                        continue
                    t0 = time.time()
                    rm.load_into(model, method=sp.method, lam=lam, seed=seed_params)
                    t1 = time.time()
                    ev = evs.evaluate(model, race=True)
                    t2 = time.time()
                    cache.put(pkey(sp, mask), {"kind": "proxy", "proxy": sp.name, "mixture": mixture_key(names),
                                               "k": len(names), "eval": ev, "merge_s": t1 - t0 + t_set,
                                               "eval_s": t2 - t1})
                    t_set = 0.0
                    same[rule] = ev
            bar.update(1)
        bar.close()
        timings["unit_reads"] = sum(rm.unit_reads for rm, _ in groups.values())
        timings["resident_unit_bytes"] = store.nbytes()
        del model, store, groups

    # ---- gold models
    gold_root = rd.root / "gold"
    if gold_multi:
        needed = [g for g in gold_multi if not is_done(gold_dir(gold_root, g))]
        if needed and not train_gold_models:
            raise ArtifactMissing(f"{gold_dir(gold_root, needed[0])}: gold model not trained ({len(needed)} missing)")
        train_gold(manifest, pool, seed, gold_root, gold_multi, train_cfg, model_cfg, cfg.branch,
                   balance=cfg.gold_balance, log_dir=rd.logs)
    gold_rows = []
    for g in gold_multi + gold_single:
        key = mixture_key(g)
        path = gold_dir(gold_root, g) if len(g) > 1 else rd.unit(g[0])
        ck = EvalCache.key("gold", key, weights_sha(path), evs.ident)
        if cache.get(ck) is None:
            reuse = (len(g) == 1 and cfg.merge.method != "task_arithmetic"
                     and cache.get(pkey(cfg.merge, mask_of([units.index(g[0])]))))
            if reuse:  # a one-unit uniform / weighted proxy is bit-for-bit the unit model
                cache.put(ck, {"kind": "gold", "mixture": key, "k": 1, "eval": reuse["eval"], "reused_proxy": True})
            else:
                m = load_model(path, device)
                t0 = time.time()
                cache.put(ck, {"kind": "gold", "mixture": key, "k": len(g), "eval": evs.evaluate(m),
                               "seconds": time.time() - t0})
                del m
        gold_rows.append({**cache.get(ck), "path": str(path)})

    proxy_rows = [{"mixture": mixture_key([units[i] for i in members(m)]), "k": len(members(m)),
                   "evals": {sp.name: cache.get(pkey(sp, m))["eval"] for sp in specs}} for m in masks]
    for r in proxy_rows:
        r["eval"] = r["evals"][spec_names[0]]
    # evaluation costs from the cache rows, so a resumed study reports the work of all its runs
    prows = [cache.get(pkey(sp, m)) for m in masks for sp in specs]
    timings["merge_s"] = sum(r.get("merge_s", 0.0) for r in prows)
    timings["proxy_eval_s"] = sum(r.get("eval_s", 0.0) for r in prows)
    timings["proxy_evaluations"] = sum(1 for r in prows if "eval_s" in r)
    timings["gold_eval_s"] = sum(r.get("seconds", 0.0) for r in gold_rows)
    timings["seed_eval_s"] = cache.get(seed_key).get("seconds", 0.0)
    results = _analyse(cfg, manifest, units, evs, seed_eval, proxy_rows, gold_rows, timings, rd, seed)
    results["elapsed_s"] = time.time() - t_start
    out = Path(out) if out else rd.ablation
    with atomic_dir(out, meta=meta_record("ablate", config_hash=config_hash(cfg), partition=str(manifest.path),
                                          seed=str(seed), units=units)) as tmp:
        write_outputs(results, tmp, plots=cfg.plots)
    log.info(headline(results))
    log.info("ablation report: %s", out / "report.md")
    return results


# ----------------------------------------------------------------------------- analysis


def _costs(rd: RunDir, seed: Path, units: list[str], gold_rows: list[dict], timings: dict[str, float]) -> dict[str, Any]:
    def summ(p: Path) -> dict[str, Any]:
        f = p / "train_summary.json"
        return json.loads(f.read_text()) if f.exists() else {}

    unit_s = [summ(rd.unit(u)) for u in units]
    gold_s = [summ(Path(r["path"])) for r in gold_rows if r["k"] > 1]
    unit_seconds = [s.get("seconds_this_process", 0.0) for s in unit_s]
    K = len(units)
    mean_unit = float(np.mean(unit_seconds)) if unit_seconds else float("nan")
    all_gold_units = sum(math.comb(K, k) * k for k in range(1, K + 1))  # K 2^(K-1) unit trainings
    return {
        "seed_train_s": summ(seed).get("seconds_this_process"),
        "seed_flops": summ(seed).get("flops"),
        "unit_train_s": float(sum(unit_seconds)),
        "unit_train_s_each": unit_seconds,
        "unit_flops": float(sum(s.get("flops", 0.0) for s in unit_s)),
        "gold_train_s": float(sum(s.get("seconds_this_process", 0.0) for s in gold_s)),
        "gold_flops": float(sum(s.get("flops", 0.0) for s in gold_s)),
        "gold_unit_trainings": int(sum(r["k"] for r in gold_rows if r["k"] > 1)),
        "proxy_merge_s": timings.get("merge_s", 0.0),
        "proxy_eval_s": timings.get("proxy_eval_s", 0.0),
        "gold_eval_s": timings.get("gold_eval_s", 0.0),
        "seed_eval_s": timings.get("seed_eval_s", 0.0),
        "proxy_evaluations": timings.get("proxy_evaluations"),
        "unit_passes_last_walk": timings.get("unit_reads"),
        "every_gold_unit_trainings": all_gold_units,
        "every_gold_train_s_estimate": all_gold_units * mean_unit,
    }


def _analyse(cfg, manifest, units, evs, seed_eval, proxy_rows, gold_rows, timings, rd, seed) -> dict[str, Any]:
    sets = evs.names
    methods = list(proxy_rows[0]["evals"]) if proxy_rows else []
    unit_logppl = {r["mixture"]: {s: r["eval"][s]["logppl"] for s in sets} for r in proxy_rows if r["k"] == 1}
    proxy = {r["mixture"]: r for r in proxy_rows}
    corr: dict[str, dict[str, Any]] = {}
    for s in sets:
        by: dict[str, dict[str, Any]] = {}
        for scope, rows in (("all", gold_rows), ("multi", [r for r in gold_rows if r["k"] > 1])):
            g = np.array([r["eval"][s]["logppl"] for r in rows])
            k = np.array([r["k"] for r in rows])
            for mth in methods:
                p = np.array([proxy[r["mixture"]]["evals"][mth][s]["logppl"] for r in rows])
                by.setdefault(mth, {})[scope] = correlations(p, g, k)
            if unit_logppl and all(u in unit_logppl for r in rows for u in r["mixture"].split("+")):
                base = np.array([np.mean([unit_logppl[u][s] for u in r["mixture"].split("+")]) for r in rows])
                by.setdefault(BASELINE, {})[scope] = correlations(base, g, k)
        corr[s] = {"all": by[methods[0]]["all"], "multi": by[methods[0]]["multi"], "by_proxy": by}
    return {
        "units": [{k: v for k, v in manifest.unit(u).items() if k != "ids"} for u in units],
        "eval_sets": sets,
        "method": methods[0] if methods else cfg.merge.name,
        "proxy_methods": methods,
        "lam": cfg.merge.lam,
        "config": to_dict(cfg),
        "seed": {"path": str(seed), "eval": seed_eval},
        "proxies": proxy_rows,
        "gold": [{"mixture": r["mixture"], "k": r["k"], "eval": r["eval"], "path": r["path"],
                  "is_unit_model": r["k"] == 1} for r in gold_rows],
        "correlations": corr,
        "costs": _costs(rd, seed, units, gold_rows, timings),
    }


def headline(results: dict[str, Any]) -> str:
    lines = [f"{'eval set':<28} {'n':>3} {'pearson':>8} {'spearman':>9} {'pairwise':>9}   (multi-unit gold mixtures)"]
    for s, e in results["correlations"].items():
        c = e["multi"]
        lines.append(f"{s:<28} {c['n']:>3} {c['pearson']:>8.3f} {c['spearman']:>9.3f} {c['pairwise']:>9.3f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- outputs


def _short(mixture: str, units: list[str]) -> str:
    """'books+web' -> 'B+W' style labels: shortest unique prefixes of unit names."""
    pre = {}
    for u in units:
        n = 1
        while any(v != u and v[:n].lower() == u[:n].lower() for v in units) and n < len(u):
            n += 1
        pre[u] = u[:n]
    return "+".join(pre.get(p, p) for p in mixture.split("+"))


def write_outputs(results: dict[str, Any], out: Path, plots: bool = True) -> None:
    from datamates.run_dir import atomic_write_json

    atomic_write_json(out / "results.json", results)
    sets = results["eval_sets"]
    for name, rows in (("proxies", results["proxies"]), ("gold", results["gold"])):
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["mixture", "k", "eval_set", "ppl", "logppl", "bpb", "acc"])
        for r in rows:
            for s in sets:
                e = r["eval"][s]
                w.writerow([r["mixture"], r["k"], s, f"{e['ppl']:.6g}", f"{e['logppl']:.6g}",
                            f"{e['bpb']:.6g}" if "bpb" in e else "", f"{e['acc']:.6g}" if "acc" in e else ""])
        atomic_write_text(out / f"{name}.csv", buf.getvalue())
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["eval_set", "scope", "proxy", "n", "pearson_log", "spearman", "kendall", "pairwise", "mean_abs_log_err",
                "pairwise_same_size", "pearson_within_size", "n_within_size"])
    for s, e in results["correlations"].items():
        for name, scopes in e["by_proxy"].items():
            for scope, c in scopes.items():
                w.writerow([s, scope, name, c["n"], f"{c['pearson']:.4f}", f"{c['spearman']:.4f}",
                            f"{c['kendall']:.4f}", f"{c['pairwise']:.4f}", f"{c['mean_abs_log_err']:.4f}",
                            f"{c.get('pairwise_same_size', float('nan')):.4f}",
                            f"{c.get('pearson_within_size', float('nan')):.4f}", c.get("n_within_size", "")])
    atomic_write_text(out / "correlations.csv", buf.getvalue())
    if plots:
        for i, name in enumerate(results["proxy_methods"]):
            plot_scatter(results, out / ("scatter.png" if i == 0 else f"scatter_{_slug(name)}.png"), name)
        plot_ranking(results, out / "ranking.png")
    atomic_write_text(out / "report.md", report_markdown(results, plots))
    atomic_write_text(out / "report.html", report_html(results, plots))


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def plot_scatter(results: dict[str, Any], path: Path, method: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = results["eval_sets"]
    units = [u["name"] for u in results["units"]]
    method = method or results["method"]
    proxy = {r["mixture"]: {"eval": r["evals"][method]} for r in results["proxies"]}
    ncol = min(3, len(sets))
    nrow = math.ceil(len(sets) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.3 * ncol, 4.0 * nrow), squeeze=False)
    K = len(units)
    cmap = plt.get_cmap("viridis")
    for ax, s in zip(axes.flat, sets):
        xs, ys = [], []
        for r in results["gold"]:
            x, y = proxy[r["mixture"]]["eval"][s]["ppl"], r["eval"][s]["ppl"]
            xs.append(x)
            ys.append(y)
            ax.scatter([x], [y], color=cmap((r["k"] - 1) / max(K - 1, 1)), s=36,
                       marker="o" if r["k"] > 1 else "s", edgecolor="k", linewidth=0.4, zorder=3)
            ax.annotate(_short(r["mixture"], units), (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
        lo, hi = min(xs + ys), max(xs + ys)
        ax.plot([lo, hi], [lo, hi], color="0.7", lw=0.8, ls="--", zorder=1)
        pad = 0.04 * (hi - lo)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        ax.ticklabel_format(style="plain", useOffset=False)
        c = results["correlations"][s]["by_proxy"][method]["multi"]
        ca = results["correlations"][s]["by_proxy"][method]["all"]
        ax.set_title(f"{s}\nmulti-unit: r={c['pearson']:.2f} rho={c['spearman']:.2f} | all: r={ca['pearson']:.2f}",
                     fontsize=8)
        ax.set_xlabel("proxy perplexity (merged)", fontsize=8)
        ax.set_ylabel("gold perplexity (trained on union)", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(sets):]:
        ax.axis("off")
    fig.suptitle(f"perplexity: proxy ({method}) vs gold (Pearson on log PPL), colour = units in the mixture, "
                 "squares = single units (proxy = gold)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_ranking(results: dict[str, Any], path: Path) -> None:
    """Heat map: every mixture's proxy rank per evaluation set (1 = lowest perplexity); rows
    sorted by mean rank; gold mixtures marked with their gold rank among the gold mixtures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = results["eval_sets"]
    units = [u["name"] for u in results["units"]]
    rows = results["proxies"]
    P = np.array([[r["eval"][s]["logppl"] for s in sets] for r in rows])  # [M, S]
    ranks = P.argsort(0).argsort(0) + 1
    order = np.argsort(ranks.mean(1), kind="stable")
    gold = {r["mixture"]: r for r in results["gold"]}
    G = {s: sorted(gold, key=lambda m: gold[m]["eval"][s]["logppl"]) for s in sets}
    fig, ax = plt.subplots(figsize=(1.1 * len(sets) + 3, 0.22 * len(rows) + 1.6))
    im = ax.imshow(ranks[order], cmap="RdYlGn_r", aspect="auto")
    ax.set_xticks(range(len(sets)))
    ax.set_xticklabels([s.replace("heldout/", "") for s in sets], rotation=35, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([("* " if rows[i]["mixture"] in gold else "") + _short(rows[i]["mixture"], units) for i in order],
                       fontsize=6)
    for yi, i in enumerate(order):
        m = rows[i]["mixture"]
        for j, s in enumerate(sets):
            txt = str(ranks[i, j])
            if m in gold:
                txt += f"|{G[s].index(m) + 1}"
            ax.text(j, yi, txt, ha="center", va="center", fontsize=5)
    fig.colorbar(im, ax=ax, fraction=0.03, label="proxy rank (1 = best)")
    ax.set_title("mixtures ranked by proxy perplexity; * gold mixtures: 'proxy rank|gold rank among gold'", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _fmt(x: float | None, spec: str = ".3f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return format(x, spec)


def report_markdown(results: dict[str, Any], plots: bool = True) -> str:
    sets = results["eval_sets"]
    units = results["units"]
    cfg = results["config"]
    costs = results["costs"]
    L = []
    L.append("# Data ablation by merging: proxy vs gold\n")
    L.append(f"{len(units)} units, {len(results['proxies'])} mixture proxies ({results['method']} merge"
             + (f", lambda {results['lam']}" if results["method"] == "task_arithmetic" else "") + f"), "
             f"{sum(1 for g in results['gold'] if g['k'] > 1)} multi-unit gold models"
             + (f" + {sum(1 for g in results['gold'] if g['k'] == 1)} single-unit gold (= the unit models)"
                if any(g["k"] == 1 for g in results["gold"]) else "") + ".\n")
    L.append("| unit | sequences | tokens | documents |\n|---|---:|---:|---:|")
    for u in units:
        L.append(f"| {u['name']} | {u['sequences']:,} | {u['tokens']:,} | {u['documents']:,} |")
    L.append("")
    L.append(f"Unit models: {cfg['branch']['steps']} steps from the seed; gold model of k units: k x "
             f"{cfg['branch']['steps']} steps on the union (balance: {cfg['gold_balance']}).\n")
    L.append("## Proxy vs gold\n")
    L.append("Pearson on log perplexity, Spearman, Kendall, and pairwise agreement (share of mixture pairs ordered "
             "alike), over the multi-unit gold mixtures (`multi`) and over all gold mixtures including single units "
             "(`all`; a single unit's proxy is its gold model). *Same size*: pairs of mixtures with equally many "
             "units; *within size*: Pearson after removing each size's mean (a gold model of k units trains k times "
             "longer, which averaging cannot reproduce). Baseline: the mean of the unit models' log PPL.\n")
    L.append("| eval set | seed PPL | n | Pearson | Spearman | Kendall | pairwise | pairwise (same size) | "
             "Pearson (within size) | n (all) | Pearson (all) | Spearman (all) | pairwise (all) | baseline Pearson | "
             "baseline pairwise |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in sets:
        e = results["correlations"][s]
        c, a = e["multi"], e["all"]
        b = e["by_proxy"].get(BASELINE, {}).get("multi", {})
        L.append(f"| {s} | {results['seed']['eval'][s]['ppl']:.2f} | {c['n']} | {_fmt(c['pearson'])} | "
                 f"{_fmt(c['spearman'])} | {_fmt(c['kendall'])} | {_fmt(c['pairwise'])} | "
                 f"{_fmt(c.get('pairwise_same_size'))} | {_fmt(c.get('pearson_within_size'))} | {a['n']} | "
                 f"{_fmt(a['pearson'])} | {_fmt(a['spearman'])} | {_fmt(a['pairwise'])} | "
                 f"{_fmt(b.get('pearson'))} | {_fmt(b.get('pairwise'))} |")
    names = list(results["correlations"][sets[0]]["by_proxy"]) if sets else []
    if len(names) > 1:
        L.append("\nEvery proxy rule, multi-unit gold mixtures: Pearson (log PPL) / Spearman / pairwise agreement / "
                 "pairwise agreement within a size.\n")
        L.append("| eval set | " + " | ".join(names) + " |")
        L.append("|---|" + "---:|" * len(names))
        for s in sets:
            by = results["correlations"][s]["by_proxy"]
            L.append(f"| {s} | " + " | ".join(
                f"{_fmt(by[n]['multi']['pearson'], '.2f')} / {_fmt(by[n]['multi']['spearman'], '.2f')} / "
                f"{_fmt(by[n]['multi']['pairwise'], '.2f')} / {_fmt(by[n]['multi'].get('pairwise_same_size'), '.2f')}"
                for n in names) + " |")
    L.append("\n![proxy vs gold](scatter.png)\n" if plots else "")
    if plots:
        for name in results["proxy_methods"][1:]:
            L.append(f"![proxy vs gold, {name}](scatter_{_slug(name)}.png)\n")
    L.append("## Gold mixtures: perplexity (proxy / gold)\n")
    L.append("| mixture | k | " + " | ".join(s.replace("heldout/", "") for s in sets) + " |")
    L.append("|---|---:|" + "---:|" * len(sets))
    proxy = {r["mixture"]: r for r in results["proxies"]}
    for g in results["gold"]:
        cells = [f"{proxy[g['mixture']]['eval'][s]['ppl']:.2f} / {g['eval'][s]['ppl']:.2f}" for s in sets]
        L.append(f"| {g['mixture']} | {g['k']} | " + " | ".join(cells) + " |")
    L.append("\n## Best mixtures by proxy\n")
    L.append("| eval set | top 3 by proxy perplexity |\n|---|---|")
    for s in sets:
        top = sorted(results["proxies"], key=lambda r: r["eval"][s]["logppl"])[:3]
        L.append(f"| {s} | " + ", ".join(f"{r['mixture']} ({r['eval'][s]['ppl']:.2f})" for r in top) + " |")
    L.append("\n![mixture ranking](ranking.png)\n" if plots else "")
    L.append("## Cost\n")
    n_gold = sum(1 for g in results["gold"] if g["k"] > 1)
    rows = [("seed training", costs.get("seed_train_s"), ""),
            (f"unit training ({len(units)} models)", costs.get("unit_train_s"), f"{len(units)} unit-trainings"),
            (f"gold training ({n_gold} models)", costs.get("gold_train_s"),
             f"{costs.get('gold_unit_trainings')} unit-trainings"),
            ("proxy merges (Gray-code running sums)", costs.get("proxy_merge_s"), ""),
            ("proxy evaluations", costs.get("proxy_eval_s"), f"{costs.get('proxy_evaluations')} evaluations"),
            ("gold evaluations", costs.get("gold_eval_s"), ""),
            ("seed evaluation", costs.get("seed_eval_s"), "")]
    L.append("| item | seconds | |\n|---|---:|---|")
    for name, sec, note in rows:
        L.append(f"| {name} | {_fmt(sec, ',.1f')} | {note} |")
    L.append(f"\nTraining a gold model for every one of the {len(results['proxies'])} mixtures would take "
             f"{costs['every_gold_unit_trainings']} unit-trainings (~{_fmt(costs['every_gold_train_s_estimate'], ',.0f')} s "
             f"at the measured unit training time) instead of {len(units)} for the proxies; evaluation costs the "
             "same per mixture either way.\n")
    return "\n".join(L)


def report_html(results: dict[str, Any], plots: bool = True) -> str:
    """The Markdown report rendered as plain HTML (tables, headings, images)."""
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>datamates ablation</title>",
           "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
           "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}td:first-child{text-align:left}"
           "img{max-width:100%}</style></head><body>"]
    in_table = False
    for line in report_markdown(results, plots).splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if all(set(c) <= set("-:") for c in cells):
                continue
            if not in_table:
                out.append("<table>")
                in_table = True
                out.append("<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cells) + "</tr>")
            else:
                out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        if line.startswith("# "):
            out.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            out.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("!["):
            alt, src = line[2:].split("](")
            out.append(f"<p><img alt='{html.escape(alt)}' src='{html.escape(src.rstrip(')'))}'></p>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)
