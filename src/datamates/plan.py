"""The data plan of a MATES run: what is held out, probed, offered at each stage, and evaluated.

    heldout    `heldout_per_domain` sequences of every domain, drawn by whole documents
               (core.documents.draw_heldout, the rule the ablation partitions use): the held-out
               perplexity set
    guard      every other sequence of a held-out document: never a candidate, probe or training
               sequence either, so no document is split between training and evaluation
    probe      `probe.n_probes` sequences, disjoint from every block (MATES probes held-out shards),
               the same set at every stage
    block_NN   stage NN's candidates, disjoint across stages (MATES: a fresh 1/5 of the pool per stage)
    references every text reference set of the run (the probe's `probe.reference` and the evaluation's
               `eval.reference`, one split per file) cut once into a *reference* part (probe labels,
               influence labels, the per-stage curve) and a disjoint *evaluation* part (the final
               evaluation), `mates.reference_eval_fraction` of the examples (core.reference.split_examples)

so nothing a selector sees is ever evaluated on (issue 18; docs/methods.md#the-plan). Written once to
`<run>/plan/` (ids as .npy, sizes in meta.json) and reused by every selector.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datamates.artifacts import Output, finished, produce
from datamates.config.base import config_hash
from datamates.config.run import RunConfig
from datamates.core.documents import DocIndex, draw_heldout
from datamates.core.pool import Pool
from datamates.core.reference import count_examples, reference_path, split_examples
from datamates.errors import ConfigError
from datamates.evaluate.spec import load_spec, resolve_tasks
from datamates.run_dir import meta_record, read_json

PLAN_VERSION = 2  # 2: held-out by whole documents, reference / evaluation split


@dataclass
class ReferenceSplit:
    source: str  # the file
    names: list[str]  # the probe reference specs that read it (a registered name or the path)
    tasks: list[str]  # the evaluation tasks (eval.reference specs, by their `task:` name) that read it
    n_available: int
    reference: np.ndarray  # example positions for probes, labels, curves
    evaluation: np.ndarray  # example positions for the final evaluation


@dataclass
class Plan:
    heldout: np.ndarray
    probe: np.ndarray
    blocks: list[np.ndarray]  # blocks[s - 1] is stage s's
    k: int  # sequences kept per stage = stage_steps x global batch
    guard: np.ndarray | None = None
    references: dict[str, ReferenceSplit] | None = None  # by source file

    def block(self, stage: int) -> np.ndarray:
        return self.blocks[stage - 1]

    def split_of(self, name: str) -> ReferenceSplit | None:
        """The split of the reference set a spec name (or file) reads, if the plan has one."""
        for r in (self.references or {}).values():
            if name in r.names or name in r.tasks or name == r.source:
                return r
        return None

    def examples(self, part: str) -> dict[str, np.ndarray]:
        """{evaluation task name: example positions of `part` ('reference' or 'evaluation')} for every
        eval.reference spec (the `examples` argument of `evaluate`)."""
        return {t: getattr(r, part) for r in (self.references or {}).values() for t in r.tasks}


def global_batch(cfg: RunConfig) -> int:
    """Sequences per optimizer step: micro batch x accumulation x processes (torchrun)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return cfg.train.micro_batch_size * cfg.train.grad_accum * world


def reference_files(cfg: RunConfig) -> dict[str, dict[str, list[str]]]:
    """{file: {"names": probe reference specs, "tasks": evaluation task names}} of every text
    reference set the run reads: the probe's reference set and the evaluation's loglikelihood specs.
    Pool references (a directory) are not split: they are pool sequences, which the plan keeps
    apart by id."""

    files: dict[str, dict[str, list[str]]] = {}
    path = reference_path(cfg.mates.probe.reference)
    if path.is_file():
        files.setdefault(str(path.resolve()), {"names": [], "tasks": []})["names"].append(cfg.mates.probe.reference)
    for spec_path in resolve_tasks(list(cfg.eval.reference)):
        spec = load_spec(spec_path)
        files.setdefault(str(Path(spec.data).resolve()), {"names": [], "tasks": []})["tasks"].append(spec.name)
    return files


def _settings(cfg: RunConfig, k: int, block: int, refs: dict[str, list[str]]) -> dict[str, Any]:
    m = cfg.mates
    return {"version": PLAN_VERSION, "seed": m.plan_seed, "k": k, "block": block, "stages": m.stages,
            "n_probes": m.probe.n_probes, "heldout_per_domain": m.heldout_per_domain,
            "heldout_max_per_doc": m.heldout_max_per_doc, "reference_eval_fraction": m.reference_eval_fraction,
            "references": sorted(refs)}


def _key(source: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(source).name)


def make_plan(cfg: RunConfig, pool: Pool, out: Path) -> Plan:
    m = cfg.mates
    k = m.stage_steps * global_batch(cfg)
    block = m.candidates_per_stage or int(np.ceil(k / m.select.fraction))
    if block < k:
        raise ConfigError(f"mates.candidates_per_stage = {block}: smaller than the {k} sequences a stage trains on "
                          f"(stage_steps x global batch)")
    refs = reference_files(cfg)
    settings = _settings(cfg, k, block, refs)
    output = Output(out, "plan", {"settings": settings, "pool": pool.pool_id}, inputs=(pool.path,))
    if not finished(output):
        rng = np.random.default_rng(m.plan_seed)
        index = DocIndex(pool)
        held_by_dom, guard = draw_heldout(pool, index, m.heldout_per_domain,
                                          max_per_doc=m.heldout_max_per_doc, seed=m.plan_seed,
                                          key="mates.heldout_per_domain", max_share=0.1)
        held = np.sort(np.concatenate(list(held_by_dom.values()))) if held_by_dom else np.zeros(0, np.int64)
        rest = np.setdiff1d(np.arange(len(pool)), np.concatenate([held, guard]))
        need = m.probe.n_probes + m.stages * block
        if need > len(rest):
            raise ConfigError(
                f"the pool has {len(rest):,} sequences outside the held-out documents, the plan needs {need:,} "
                f"(probe.n_probes {m.probe.n_probes} + stages {m.stages} x block {block}); lower mates.stage_steps, "
                "mates.stages, mates.probe.n_probes or mates.heldout_per_domain, or raise select.fraction"
            )
        perm = rest[rng.permutation(len(rest))]
        probe = np.sort(perm[: m.probe.n_probes])
        blocks = [np.sort(perm[m.probe.n_probes + i * block : m.probe.n_probes + (i + 1) * block]) for i in range(m.stages)]
        splits: dict[str, dict[str, Any]] = {}
        arrays: dict[str, np.ndarray] = {}
        for source, users in sorted(refs.items()):
            n_total = count_examples(source)
            r, e = split_examples(n_total, m.reference_eval_fraction, m.plan_seed)
            key = _key(source)
            while key in splits:
                key += "_"
            arrays[f"reference/{key}.reference.npy"], arrays[f"reference/{key}.evaluation.npy"] = r, e
            splits[key] = {"source": source, **users, "n_available": n_total, "reference": len(r),
                           "evaluation": len(e)}
        meta = meta_record("plan", seed=m.plan_seed, heldout=len(held), guard=len(guard), probe=len(probe),
                           block=block, k=k, stages=m.stages, pool_id=pool.pool_id, settings=settings,
                           settings_hash=config_hash(settings),
                           heldout_per_domain={d: int(len(v)) for d, v in held_by_dom.items()},
                           heldout_documents=int(len(index.docs_of(held))) if len(held) else 0,
                           references=splits)
        def build(tmp: Path) -> dict[str, Any]:
            np.save(tmp / "heldout.npy", held)
            np.save(tmp / "guard.npy", guard)
            np.save(tmp / "probe.npy", probe)
            for i, b in enumerate(blocks, start=1):
                np.save(tmp / f"block_{i:02d}.npy", b)
            (tmp / "reference").mkdir()
            for name, a in arrays.items():
                np.save(tmp / name, a)
            return meta

        produce(output, build)
    meta = read_json(out / "meta.json")  # a plan of an older datamates (no fingerprint) is checked here
    if meta["pool_id"] != pool.pool_id or meta.get("settings_hash") != config_hash(settings):
        raise ConfigError(f"{out}: the plan was made for another pool, stage size, held-out or reference settings "
                          "(or by an older datamates); use a new run name")
    return Plan(
        heldout=np.load(out / "heldout.npy"),
        probe=np.load(out / "probe.npy"),
        blocks=[np.load(out / f"block_{i:02d}.npy") for i in range(1, m.stages + 1)],
        k=k,
        guard=np.load(out / "guard.npy"),
        # which specs read a file comes from the config (the files themselves are in settings_hash)
        references={r["source"]: ReferenceSplit(r["source"], refs[r["source"]]["names"], refs[r["source"]]["tasks"],
                                                int(r["n_available"]),
                                                np.load(out / "reference" / f"{key}.reference.npy"),
                                                np.load(out / "reference" / f"{key}.evaluation.npy"))
                    for key, r in meta["references"].items()},
    )


__all__ = ["Plan", "ReferenceSplit", "global_batch", "make_plan", "reference_files"]
