"""Every target a selector could be judged by, measured on one model (issue 30, item 2).

    held-out clean loss   mean next-token NLL (nats) on the plan's held-out sequences (whole documents,
                          never junk), overall and per domain
    LAMBADA, evaluation   mean target-token NLL on the plan's *evaluation* part of LAMBADA (first
    part                  `lambada_limit` examples), overall, in-context (the target word occurs in the
                          context: `core.reference.in_context`) and not-in-context, apart
    LAMBADA, reference    the same on the plan's reference part (what the probes see; its first `lambada_limit`)
    part
    clean reference       the plan's held-out clean reference (probe reference `clean`), when it has one

`measure(model, pool, plan)` returns them as a flat dict {target: loss}; `write_targets(run)` measures
every finished branch of a run (its final checkpoint) into `<run>/<branch>/targets.json`, which the
report pairs against random like every other metric (`report.run_metrics`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from datamates.core.reference import LAMBADA_FILTERS, ReferenceBatches, clean_reference, load_reference

LAMBADA_LIMIT = 1000


def lambada_sets(pool, plan, part: str, limit: int | None) -> dict[str, Any]:
    """{'all', 'ic', 'nic'}: ReferenceSets of the plan's `part` ('evaluation' or 'reference') of LAMBADA."""
    split = plan.split_of("lambada_openai")
    if split is None:
        return {}
    pos = getattr(split, part)
    pos = pos[:limit] if limit else pos
    tok = pool.tokenizer()
    out = {"all": load_reference("lambada_openai", tok, size=None, index=pos)}
    for spec in LAMBADA_FILTERS:
        out[spec.split("_")[1]] = load_reference(spec, tok, size=None, index=pos)
    return out


@torch.inference_mode()
def measure(model, pool, plan, *, lambada_limit: int | None = LAMBADA_LIMIT, sets: dict | None = None) -> dict[str, float]:
    """{target: loss in nats} of `model` (module docstring). `sets`: the reference sets, if already
    built (`target_sets`), so many models are measured on the same tensors."""
    from datamates.core.loss import sequence_nll

    sets = sets or target_sets(pool, plan, lambada_limit=lambada_limit)
    out: dict[str, float] = {}
    held = plan.heldout
    nll = sequence_nll(model, pool.tokens(held), batch_size=16, precision="fp32")
    T = pool.seq_len - 1
    dom = np.asarray(pool.seq_domain)[held]
    out["held-out clean loss"] = float(nll.sum() / (len(held) * T))
    for d, name in enumerate(pool.domains):
        m = dom == d
        if m.any():
            out[f"held-out loss {name}"] = float(nll[m].sum() / (m.sum() * T))
    for key, ref in sets["refs"].items():
        out[key] = ref.loss(model)
    return out


def target_sets(pool, plan, *, lambada_limit: int | None = LAMBADA_LIMIT) -> dict[str, Any]:
    refs: dict[str, ReferenceBatches] = {}
    pad = pool.eos_id
    seq = pool.seq_len
    for part, label in (("evaluation", "LAMBADA eval"), ("reference", "LAMBADA ref")):
        for k, r in lambada_sets(pool, plan, part, lambada_limit).items():
            refs[f"{label} {k}"] = ReferenceBatches(r.examples, max_len=seq, pad_id=pad)
    if plan.clean is not None and len(plan.clean):
        refs["clean reference"] = ReferenceBatches(clean_reference(pool.path, plan.clean).examples, max_len=seq,
                                                   pad_id=pad)
    return {"refs": refs}


def run_config(rd):
    """The resolved config a run recorded (<run>/config.yaml, less its hash)."""
    import yaml

    from datamates.config.base import from_dict
    from datamates.config.run import RunConfig

    data = yaml.safe_load(rd.config.read_text())
    data.pop("config_hash", None)
    return from_dict(RunConfig, data)


def write_targets(run: str | Path, *, lambada_limit: int | None = LAMBADA_LIMIT) -> dict[str, dict[str, float]]:
    """targets.json for every branch of `run` with a finished final checkpoint (kept when present)."""
    from datamates.core.checkpoint import load_model
    from datamates.core.pool import Pool
    from datamates.plan import make_plan
    from datamates.run_dir import RunDir, atomic_write_json, is_done, read_json

    rd = RunDir(Path(run))
    cfg = run_config(rd)
    pool = Pool(rd.pool)
    plan = make_plan(cfg, pool, rd.plan)
    sets = None
    out = {}
    for b in sorted(p for p in rd.root.iterdir() if p.is_dir() and p.name != "warmup"):
        br = rd.branch(b.name)
        f = br.base / "targets.json"
        if f.exists():
            out[b.name] = read_json(f)
            continue
        final = br.final if cfg.mates.decay_steps else br.checkpoint(cfg.mates.stages)
        if not is_done(final):
            continue
        sets = sets or target_sets(pool, plan, lambada_limit=lambada_limit)
        out[b.name] = measure(load_model(final, device="cpu"), pool, plan, sets=sets)
        atomic_write_json(f, out[b.name])
    return out
