"""One ablation study's steps (Na et al. 2024, §4-5; docs/methods.md#merging): what every step
reads (`Study.open`: the units and their models, the seed, the evaluation sets and their cache,
the merge rules), then one method per step, which `ablate()` runs in order:

    evaluate_seed      the seed's evaluation, the reference point
    evaluate_proxies   proxy(S) = the parameter average of S's unit models, for every mixture not in
                       the cache: a Gray-code walk over running sums loaded straight into one
                       resident model; no checkpoint is written per mixture
    evaluate_gold      gold(S) = continued pretraining from the seed on the union of S's units
                       (train_partition.train_gold; for |S| = 1 the unit model itself)
    results            the analysis over the cache rows (analysis.analyse, stats.claim_table)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from datamates.ablation.stats import claim_table
from datamates.ablation.train_partition import gold_dir, train_gold
from datamates.config.ablation import AblationConfig, MergeConfig
from datamates.config.core import ModelConfig, TrainConfig
from datamates.core.checkpoint import load_model
from datamates.core.lm import resolve_device
from datamates.core.pool import Pool
from datamates.errors import ArtifactMissing, ConfigError, IncompatibleArtifacts
from datamates.identity import hash_text
from datamates.log import get_logger, progress_bar
from datamates.pipelines.ablation.analysis import analyse
from datamates.pipelines.ablation.mixtures import study_mixtures
from datamates.pipelines.ablation.sets import EvalCache, EvalSets, build_eval_sets
from datamates.run_dir import RunDir, is_done

log = get_logger(__name__)


@dataclass
class Study:
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
             subsets: list[list[str]] | None, gold: list[list[str]] | None) -> Study:
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
        mixtures = study_mixtures(cfg, manifest, units, subsets, gold)
        device = resolve_device(train_cfg.device)
        evs = build_eval_sets(manifest, pool, cfg.eval, train_cfg.precision)
        specs = [cfg.merge, *(MergeConfig.parse(x) for x in cfg.extra_proxies)]
        if cfg.gold_balance == "both":  # both pairings need both merge rules
            specs += [MergeConfig(method=m) for m in ("uniform", "weighted") if m not in [sp.name for sp in specs]]
        spec_names = [sp.name for sp in specs]
        if len(set(spec_names)) != len(spec_names):
            raise ConfigError(f"ablation.extra_proxies repeats a merge rule: {spec_names}")
        return cls(cfg, rd, manifest, units, unit_paths, seed, provenance, device, evs,
                   EvalCache(rd.eval_cache), specs,
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
        gold_root = rd.gold_root(natural=cfg.gold_balance == "both" and bal == "natural")
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
        results = analyse(cfg, self.manifest, units, self.evs, cache.get(seed_key)["eval"], proxy_rows, gold_rows,
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

