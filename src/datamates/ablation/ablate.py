"""The ablation study: a merged proxy for every mixture, gold models for a sample, and how well
the proxies predict the gold models (Na et al. 2024, §4-5; docs/methods.md#merging, docs/methods.md#proxy-evaluation-and-statistics).

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
from datamates.ablation.partition import Manifest, add_unit, read_manifest
from datamates.ablation.report import headline, write_outputs
from datamates.ablation.stats import BASELINE, claim_table, correlations, pairwise_agreement, ratio_se
from datamates.ablation.train_partition import gold_dir, resolve_seed, train_gold, train_partitions
from datamates.config.ablation import AblationConfig, AblationEvalConfig, MergeConfig
from datamates.config.base import config_hash, expand_vars, to_dict
from datamates.config.core import ModelConfig, TrainConfig
from datamates.core.checkpoint import load_model
from datamates.core.lm import resolve_device
from datamates.core.loss import TargetExample, load_lambada, perplexity_and_bpb, score_targets, sequence_nll
from datamates.core.pool import Pool
from datamates.errors import ArtifactMissing, ConfigError, IncompatibleArtifacts, InputError
from datamates.identity import hash_text
from datamates.log import get_logger, progress_bar
from datamates.run_dir import RunDir, atomic_dir, is_done, meta_record

log = get_logger(__name__)

HELDOUT_ALL = "heldout_all"
LAMBADA = "lambada"


# ----------------------------------------------------------------------------- evaluation sets


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
        """{set name: {nll, tokens, ppl, logppl, se, n, bpb (held-out), acc (LAMBADA), stopped_early,
        seq_nll (per sequence / example, for paired standard errors), seq_tokens (LAMBADA)}}."""
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
                         "se": ratio_se(seq, t), "n": n, "stopped_early": stopped, "seq_nll": seq.tolist()}
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
                                "n": len(seq), "stopped_early": stopped_any, "seq_nll": seq.tolist()}
        if self.lambada:
            sc = score_targets(model, self.lambada, batch_size=self.batch_size, precision=self.precision)
            nll, n_tok = float(sc.nll.sum()), int(sc.n_tokens.sum())
            res[LAMBADA] = {"nll": nll, "tokens": n_tok, "ppl": math.exp(nll / n_tok), "logppl": nll / n_tok,
                            "acc": float(sc.greedy.mean()), "se": ratio_se(sc.nll, sc.n_tokens.astype(np.float64)),
                            "n": len(sc.nll), "seq_nll": np.asarray(sc.nll, dtype=float).tolist(),
                            "seq_tokens": np.asarray(sc.n_tokens).astype(int).tolist()}
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
    ident = hash_text(json.dumps(key))
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


def all_mixtures(units: list[str], min_k: int = 2) -> list[list[str]]:
    """Every mixture of at least `min_k` units (2^K - 1 - K multi-unit mixtures for min_k = 2), by
    size, then in unit order: the gold list of a study that trains every multi-unit mixture."""
    return [list(c) for k in range(min_k, len(units) + 1) for c in combinations(units, k)]


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


# ----------------------------------------------------------------------------- the study


def _model_id(paths: list[Path]) -> str:
    return hash_text("|".join(weights_sha(p) for p in paths))


def ablate(cfg: AblationConfig, train_cfg: TrainConfig, model_cfg: ModelConfig, rd: RunDir, pool: Pool, *,
           subsets: list[list[str]] | None = None, gold: list[list[str]] | None = None,
           train_gold_models: bool = True, out: str | Path | None = None,
           this_run: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the study and write `<run>/ablation/` (or `out`). Returns the results dict; its
    `this_run` counts the work of this call (proxy evaluations, gold models trained, plus the
    entries of `this_run`)."""
    t_start = time.time()
    study = _Study.open(cfg, train_cfg, rd, pool, this_run, subsets, gold)
    masks, gold_multi, gold_single = study.masks, study.gold_multi, study.gold_single
    log.info("proxies: %d mixtures of %d units x %d merge rule%s (%s)", len(masks), len(study.units),
             len(study.specs), "s" if len(study.specs) > 1 else "", ", ".join(study.spec_names))
    seed_key = study.evaluate_seed()
    timings = study.evaluate_proxies(masks)
    gold_by = {bal: study.evaluate_gold(bal, gold_multi, gold_single, train_cfg, model_cfg, pool, train_gold_models)
               for bal in study.balances}
    results = study.results(masks, gold_by, gold_multi, seed_key, timings)
    results["elapsed_s"] = time.time() - t_start
    out = Path(out) if out else rd.ablation
    # the study's report is re-derived from the evaluation cache on every run (the cache is what
    # resumes), so it is rewritten rather than reused by identity
    with atomic_dir(out, meta=meta_record("ablate", config_hash=config_hash(cfg), partition=str(study.manifest.path),
                                          seed=str(study.seed), units=study.units)) as tmp:
        write_outputs(results, tmp, plots=cfg.plots)
    log.info(headline(results))
    log.info("ablation report: %s", out / "report.md")
    return results


def _mixtures(cfg: AblationConfig, manifest: Manifest, units: list[str], subsets: list[list[str]] | None,
              gold: list[list[str]] | None) -> tuple[list[int], list[list[str]], list[list[str]]]:
    """(proxy masks, gold mixtures of 2+ units, gold singletons); every gold mixture gets its proxy."""
    K = len(units)
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
    return sorted(set(masks) | set(gold_masks)), gold_multi, gold_single


@dataclass
class _Study:
    """What every step of one ablation study reads: the units and their models, the seed, the
    evaluation sets and their cache, the merge rules (ablate() runs the steps in order)."""

    cfg: AblationConfig
    rd: RunDir
    manifest: Manifest
    units: list[str]
    unit_paths: list[Path]
    seed: Path
    provenance: dict[str, Any]
    device: torch.device
    evs: EvalSets
    cache: EvalCache
    specs: list[MergeConfig]
    token_w: list[float]
    unit_ids: dict[str, str]
    counts: dict[str, int]
    masks: list[int]
    gold_multi: list[list[str]]
    gold_single: list[list[str]]

    @classmethod
    def open(cls, cfg: AblationConfig, train_cfg: TrainConfig, rd: RunDir, pool: Pool, this_run: dict[str, Any] | None,
             subsets: list[list[str]] | None, gold: list[list[str]] | None) -> _Study:
        manifest = read_manifest(rd.partitions)
        manifest.check_pool(pool)
        units = manifest.units
        seed = Path(cfg.seed.checkpoint) if cfg.seed.checkpoint else rd.seed_model
        unit_paths = [rd.unit(u) for u in units]
        missing = [u for u, p in zip(units, unit_paths) if not is_done(p)]
        if not is_done(seed) and not (seed / "model.safetensors").exists():
            raise ArtifactMissing(f"{seed}: no seed model; run `datamates train-partitions` first")
        if missing:
            raise ArtifactMissing(f"{rd.unit(missing[0])}: unit model '{missing[0]}' is not trained "
                                  f"({len(missing)} of {len(units)} missing); run `datamates train-partitions`")
        check_compatible([inspect_checkpoint(p) for p in unit_paths], inspect_checkpoint(seed))
        provenance = check_unit_seeds(manifest, units, unit_paths, seed, weights_sha(seed))
        mixtures = _mixtures(cfg, manifest, units, subsets, gold)
        device = resolve_device(train_cfg.device)
        evs = build_eval_sets(manifest, pool, cfg.eval, train_cfg.precision)
        specs = [cfg.merge, *(MergeConfig.parse(x) for x in cfg.extra_proxies)]
        if cfg.gold_balance == "both":  # both pairings need both merge rules
            specs += [MergeConfig(method=m) for m in ("uniform", "weighted") if m not in [sp.name for sp in specs]]
        spec_names = [sp.name for sp in specs]
        if len(set(spec_names)) != len(spec_names):
            raise ConfigError(f"ablation.extra_proxies repeats a merge rule: {spec_names}")
        return cls(cfg, rd, manifest, units, unit_paths, seed, provenance, device, evs,
                   EvalCache(rd.root / "ablation_cache" / "evals.jsonl"), specs,
                   [float(manifest.unit(u)["tokens"]) for u in units],
                   {u: weights_sha(p) for u, p in zip(units, unit_paths)},
                   {"proxy_evaluations": 0, "gold_trained": 0, **(this_run or {})},  # work of this call
                   *mixtures)

    @property
    def spec_names(self) -> list[str]:
        return [sp.name for sp in self.specs]

    @property
    def balances(self) -> list[str]:
        """gold_balance 'both': upsampled to equal weight per unit (paper) in gold/, and natural token
        proportions in gold_natural/; paired with the uniform and the token-weighted merge."""
        return ["upsample", "natural"] if self.cfg.gold_balance == "both" else [self.cfg.gold_balance]

    def spec_weights(self, sp: MergeConfig) -> list[float] | None:
        return self.token_w if sp.method == "weighted" else None

    def pkey(self, sp: MergeConfig, mask: int) -> str:
        """A proxy's identity: its members' weights (and token counts) and the rule, nothing about the
        units outside it, so adding a unit to a study (`add_unit`) leaves every cached proxy valid."""
        idx = members(mask)
        w = self.spec_weights(sp)
        tag = hash_text(json.dumps([[self.unit_ids[self.units[i]] for i in idx], sp.method, sp.lam, sp.lam_scale,
                                    [w[i] for i in idx] if w else None]))
        return EvalCache.key("proxy", mixture_key([self.units[i] for i in idx]), tag, self.evs.ident)

    def evaluate_seed(self) -> str:
        """The seed's evaluation (the reference point), cached; returns its cache key."""
        seed_key = EvalCache.key("seed", "seed", weights_sha(self.seed), self.evs.ident)
        if self.cache.get(seed_key) is None:
            m = load_model(self.seed, self.device)
            t0 = time.time()
            self.cache.put(seed_key, {"kind": "seed", "mixture": "seed", "k": 0, "eval": self.evs.evaluate(m),
                                      "seconds": time.time() - t0})
            del m
        return seed_key

    def evaluate_proxies(self, masks: list[int]) -> dict[str, float]:
        """Every proxy not in the cache: a Gray-code walk of running sums into one resident model."""
        timings: dict[str, float] = {}
        todo = [m for m in walk_order(masks) if any(self.cache.get(self.pkey(sp, m)) is None for sp in self.specs)]
        log.info("proxies: %d mixtures cached, %d to evaluate", len(masks) - len(todo), len(todo))
        if not todo:
            return timings
        model = load_model(self.seed, self.device)
        seed_params = ({n: p.detach().clone() for n, p in model.named_parameters()}
                       if any(sp.method == "task_arithmetic" for sp in self.specs) else None)
        store = UnitStore(self.unit_paths, model, cache=self.cfg.cache_units)
        if self.device.type != "cpu" and store._mem is not None:
            store._mem = [{n: t.to(self.device) for n, t in d.items()} for d in store._mem]
        groups = self._running_sums(store)
        bar = progress_bar("proxies", total=len(todo), unit="mixture")
        for mask in todo:
            for rm, group_specs in groups.values():
                self._evaluate_mask(model, rm, group_specs, mask, seed_params)
            bar.update(1)
        bar.close()
        timings["unit_reads"] = sum(rm.unit_reads for rm, _ in groups.values())
        timings["resident_unit_bytes"] = store.nbytes()
        return timings

    def _running_sums(self, store: UnitStore) -> dict[Any, tuple[RunningMerge, list[MergeConfig]]]:
        """One running sum per weight vector, with the merge rules that read it."""
        dtype = torch.float64 if self.cfg.accumulate_dtype == "float64" else torch.float32
        groups: dict[Any, tuple[RunningMerge, list[MergeConfig]]] = {}
        for sp in self.specs:
            w = self.spec_weights(sp)
            key = tuple(w) if w else None
            if key not in groups:
                rm = RunningMerge(store, w, dtype=dtype, recompute_every=self.cfg.recompute_every)
                if self.device.type != "cpu":
                    rm.sum = {n: t.to(self.device) for n, t in rm.sum.items()}
                groups[key] = (rm, [])
            groups[key][1].append(sp)
        return groups

    def _evaluate_mask(self, model: torch.nn.Module, rm: RunningMerge, group_specs: list[MergeConfig], mask: int,
                       seed_params: dict[str, torch.Tensor] | None) -> None:
        names = [self.units[i] for i in members(mask)]
        t0 = time.time()
        rm.set(mask)
        t_set = time.time() - t0  # booked on the first rule evaluated for this mask
        same: dict[Any, dict] = {}  # rules that give the same weights here share one evaluation
        for sp in group_specs:
            lam = sp.lam * (len(names) if sp.lam_scale == "size" else 1)
            rule = ("mean",) if sp.method != "task_arithmetic" or lam == 1.0 else ("ta", lam)
            row = self.cache.get(self.pkey(sp, mask))
            if row is not None:
                same.setdefault(rule, row["eval"])
                continue
            if rule in same:
                self.cache.put(self.pkey(sp, mask), {"kind": "proxy", "proxy": sp.name, "mixture": mixture_key(names),
                                                     "k": len(names), "eval": same[rule], "same_as": rule[0]})
                continue
            t0 = time.time()
            rm.load_into(model, method=sp.method, lam=lam, seed=seed_params)
            t1 = time.time()
            ev = self.evs.evaluate(model, race=True)
            self.counts["proxy_evaluations"] += 1
            t2 = time.time()
            self.cache.put(self.pkey(sp, mask), {"kind": "proxy", "proxy": sp.name, "mixture": mixture_key(names),
                                                 "k": len(names), "eval": ev, "merge_s": t1 - t0 + t_set,
                                                 "eval_s": t2 - t1})
            t_set = 0.0
            same[rule] = ev

    def evaluate_gold(self, bal: str, gold_multi: list[list[str]], gold_single: list[list[str]],
                      train_cfg: TrainConfig, model_cfg: ModelConfig, pool: Pool, train_gold_models: bool
                      ) -> list[dict[str, Any]]:
        """Train the missing gold models of balance `bal` and evaluate every gold mixture (cached)."""
        cfg, rd, cache = self.cfg, self.rd, self.cache
        gold_root = rd.root / ("gold_natural" if cfg.gold_balance == "both" and bal == "natural" else "gold")
        if gold_multi:
            needed = [g for g in gold_multi if not is_done(gold_dir(gold_root, g))]
            self.counts["gold_trained"] += len(needed)
            if needed and not train_gold_models:
                raise ArtifactMissing(f"{gold_dir(gold_root, needed[0])}: gold model not trained ({len(needed)} missing)")
            train_gold(self.manifest, pool, self.seed, gold_root, gold_multi, train_cfg, model_cfg, cfg.branch,
                       balance=bal, log_dir=rd.logs)
        rows = []
        for g in gold_multi + gold_single:
            key = mixture_key(g)
            path = gold_dir(gold_root, g) if len(g) > 1 else rd.unit(g[0])
            ck = EvalCache.key("gold", key, weights_sha(path), self.evs.ident)
            if cache.get(ck) is None:
                reuse = (len(g) == 1 and cfg.merge.method != "task_arithmetic"
                         and cache.get(self.pkey(cfg.merge, mask_of([self.units.index(g[0])]))))
                if reuse:  # a one-unit uniform / weighted proxy is bit-for-bit the unit model
                    cache.put(ck, {"kind": "gold", "mixture": key, "k": 1, "eval": reuse["eval"], "reused_proxy": True})
                else:
                    m = load_model(path, self.device)
                    t0 = time.time()
                    cache.put(ck, {"kind": "gold", "mixture": key, "k": len(g), "eval": self.evs.evaluate(m),
                                   "seconds": time.time() - t0})
                    del m
            rows.append({**cache.get(ck), "path": str(path)})
        return rows

    def results(self, masks: list[int], gold_by: dict[str, list[dict[str, Any]]], gold_multi: list[list[str]],
                seed_key: str, timings: dict[str, float]) -> dict[str, Any]:
        """The study's results from the cache rows (so a resumed study reports the work of all its runs)."""
        cfg, cache, units, specs = self.cfg, self.cache, self.units, self.specs
        gold_rows = gold_by[self.balances[0]]
        proxy_rows = [{"mixture": mixture_key([units[i] for i in members(m)]), "k": len(members(m)),
                       "evals": {sp.name: cache.get(self.pkey(sp, m))["eval"] for sp in specs}} for m in masks]
        for r in proxy_rows:
            r["eval"] = r["evals"][self.spec_names[0]]
        prows = [cache.get(self.pkey(sp, m)) for m in masks for sp in specs]
        timings["merge_s"] = sum(r.get("merge_s", 0.0) for r in prows)
        timings["proxy_eval_s"] = sum(r.get("eval_s", 0.0) for r in prows)
        timings["proxy_evaluations"] = sum(1 for r in prows if "eval_s" in r)
        timings["gold_eval_s"] = sum(r.get("seconds", 0.0) for r in gold_rows)
        timings["seed_eval_s"] = cache.get(seed_key).get("seconds", 0.0)
        results = _analyse(cfg, self.manifest, units, self.evs, cache.get(seed_key)["eval"], proxy_rows, gold_rows,
                           timings, self.rd, self.seed)
        results["claim"] = claim_table([results], B=cfg.bootstrap) if len(gold_multi) >= 3 else {}
        if cfg.gold_balance == "both":  # uneven units: each merge rule against the gold recipe it mirrors
            results["gold_natural"] = [{"mixture": r["mixture"], "k": r["k"], "eval": r["eval"], "path": r["path"]}
                                       for r in gold_by["natural"]]
            results["pairings"] = {}
            for rule, bal in (("uniform", "upsample"), ("weighted", "natural")):
                alt = {**results, "gold": [{"mixture": r["mixture"], "k": r["k"], "eval": r["eval"]}
                                           for r in gold_by[bal]]}
                results["pairings"][f"{rule}~{bal}"] = (claim_table([alt], B=cfg.bootstrap, method=rule)
                                                        if len(gold_multi) >= 3 else {})
        results["this_run"] = self.counts
        for u in results["units"]:
            u["provenance"] = self.provenance[u["name"]]
        return results


def check_unit_seeds(manifest: Manifest, units: list[str], paths: list[Path], seed: Path, seed_sha: str) -> dict:
    """Every unit model must have branched from this study's seed (its meta.json records the
    seed's weights hash): a unit from another seed is refused with one line, since its delta
    from the seed would not be a unit's effect. Returns each unit's provenance (manifest entry +
    the model's seed hash)."""
    out = {}
    for u, p in zip(units, paths):
        meta_f = p / "meta.json"
        meta = json.loads(meta_f.read_text()) if meta_f.exists() else {}
        got = meta.get("seed_sha")
        if got is not None and got != seed_sha:
            raise IncompatibleArtifacts(
                f"{p}: unit model '{u}' was trained from another seed (weights {got}; this study's seed {seed} is "
                f"{seed_sha}); retrain it from this seed (`datamates train-partitions --units {u}`)")
        out[u] = {**manifest.unit(u).get("provenance", {"source": "partition"}), "seed_sha": got,
                  "model": str(p)}
    return out


def add_unit_study(cfg: AblationConfig, train_cfg: TrainConfig, model_cfg: ModelConfig, rd: RunDir, pool: Pool,
                   name: str, ids: np.ndarray, source: str, *, model: str | Path | None = None,
                   out: str | Path | None = None) -> dict[str, Any]:
    """An incremental study (Na et al. 2024 §5): add unit `name` (sequence ids of the pool) to the
    study in `rd`, train only its model from the same seed state (or take `model`, which must have
    branched from this seed), and re-run the study: every cached proxy and gold evaluation is
    reused, so only the 2^K mixtures that contain the new unit are merged and evaluated. Without
    `ablation.gold`, the gold mixtures are the previous study's (results.json), so no gold model
    is trained; the new unit model is its own single-unit gold model."""
    import shutil

    manifest = read_manifest(rd.partitions)
    seed = resolve_seed(cfg.seed, rd.seed_model)
    gold = cfg.gold
    prev = rd.ablation / "results.json"
    if gold is None and prev.exists():
        gold = [g["mixture"].split("+") for g in json.loads(prev.read_text())["gold"] if g["k"] > 1]
    if not is_done(seed) and not (seed / "model.safetensors").exists():
        raise ArtifactMissing(f"{seed}: no seed model; an incremental study extends a trained study")
    if model is not None:  # refused before anything is written
        model = Path(model)
        inspect_checkpoint(model)
        meta = json.loads((model / "meta.json").read_text()) if (model / "meta.json").exists() else {}
        if meta.get("seed_sha") != weights_sha(seed):
            raise IncompatibleArtifacts(
                f"{model}: --model was not trained from this study's seed ({seed}, weights {weights_sha(seed)}; the "
                f"model records {meta.get('seed_sha')}); train the unit from this seed instead (leave out --model)")
    manifest = add_unit(manifest, pool, name, ids, source)
    dest = rd.unit(name)
    trained = 0
    if model is not None:
        if not is_done(dest):
            tmp = dest.with_name(dest.name + ".copy-partial")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(model, tmp)
            tmp.rename(dest)
    elif not is_done(dest):
        train_partitions(manifest, pool, seed, rd.root / "units", train_cfg, model_cfg, cfg.branch, units=[name],
                         log_dir=rd.logs)
        trained = 1
    return ablate(cfg, train_cfg, model_cfg, rd, pool, gold=gold, out=out,
                  this_run={"units_trained": trained, "added_unit": name})


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


__all__ = ["EvalCache", "all_mixtures", "EvalSets", "ablate", "add_unit_study", "build_eval_sets", "choose_gold", "claim_table", "correlations",
           "headline", "pairwise_agreement", "ratio_se"]
