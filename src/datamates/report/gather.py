"""Gathering: one run's artifacts, read through `RunDir` (never from in-memory state, so a resumed
or partial run reports what is on disk), into the dict `summarize_run` writes as `<run>/metrics.json`
(per selector: final evaluation, reference-loss curve, counted FLOPs and seconds per component and
stage (accounting.py), influence-model fits, effective temperatures, domain shares of the selected
data, planted-noise shares, targets); plus the highest- and lowest-scored sequences of a run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from datamates.accounting import summarize_branch
from datamates.core.pool import Pool
from datamates.run_dir import WARMUP, RunDir, StagePaths, atomic_write_json, is_done, read_json, train_summary
from datamates.selection.scores_io import read_scores

# the branch every selector is paired with (report/stats.py)
BASELINE = "random"


def run_stages(rd: RunDir, branch: str) -> list[tuple[int, StagePaths]]:
    """(stage number, its artifacts) of a selector's history: the shared warmup stages, then its own."""
    return [(st.number, st) for b in (WARMUP, branch) for st in rd.branch(b).stages()]


def _ref_curve(stages: list[tuple[int, StagePaths]], cum_flops: list[float]) -> list[dict[str, Any]]:
    pts = []
    tokens = 0
    for (s, d), fl in zip(stages, cum_flops):
        ts = train_summary(d.checkpoint)
        ev = d.eval / "eval.json"
        if not ts.exists():
            break
        tokens += json.loads(ts.read_text())["tokens"]
        if ev.exists():
            ref = read_json(ev)["reference"]
            for name, r in ref.items():
                pts.append({"stage": s, "tokens": tokens, "flops": fl, "reference": name, "loss": r["loss"],
                            "acc": r.get("acc")})
    return pts


def _run_config(rd: RunDir) -> dict[str, Any]:
    f = rd.config
    if f.exists():
        return yaml.safe_load(f.read_text())
    return {}


def summarize_run(rd: RunDir) -> dict[str, Any]:
    """Aggregate one run's artifacts into metrics.json; returns the dict. A selector whose FLOPs
    cannot be fully counted (an artifact without token counts) gets NaN for that component and
    `accounting.errors` naming the artifact; the report shows them instead of a number."""
    cfg = _run_config(rd)
    branches = rd.branches()
    pool_meta = read_pool_meta(rd)
    out: dict[str, Any] = {"run": str(rd.root), "name": cfg.get("name", rd.root.name), "config": cfg,
                           "selectors": {}}
    for b in branches:
        stages = run_stages(rd, b)
        br = rd.branch(b)
        acc = summarize_branch([d.folder for _, d in stages], final=br.final, final_eval=br.final_eval,
                               branch_dir=br.base)
        cum, run_total = [], 0.0
        for row in acc["stages"]:
            run_total += sum(v for k, v in row["flops"].items() if k != "eval")
            cum.append(run_total)
        final = read_json(br.final_eval / "eval.json") if is_done(br.final_eval) else None
        out["selectors"][b] = {
            "curve": _ref_curve(stages, cum),
            "accounting": acc,
            "final_eval": final,
            "decay_seconds": read_json(br.base / "timings.json").get("decay") if (br.base / "timings.json").exists() else None,
            "fit": _fits(stages),
            "selected_domains": _domain_shares(rd, stages, pool_meta),
            "effective": _effective(stages),
            "noise": _noise(rd, b),
            "targets": read_json(br.base / "targets.json") if (br.base / "targets.json").exists() else None,
        }
    atomic_write_json(rd.metrics, out)
    return out


def read_pool_meta(rd: RunDir) -> dict[str, Any]:
    if (rd.pool / "meta.json").exists():
        return read_json(rd.pool / "meta.json")
    shared = _run_config(rd).get("pool_dir")
    if shared and (Path(shared) / "meta.json").exists():
        return read_json(Path(shared) / "meta.json")
    return {}


def _fits(stages: list[tuple[int, StagePaths]]) -> list[dict[str, Any]]:
    out = []
    for s, d in stages:
        m = d.influence_model / "meta.json"
        if m.exists():
            met = read_json(m).get("metrics", {})
            out.append({"stage": s, "val_spearman": met.get("val_spearman"), "val_pearson": met.get("val_pearson"),
                        "n_labels": met.get("n_labels"), "scatter": str(d.influence_model / "scatter.png")})
    return out


def _effective(stages: list[tuple[int, StagePaths]]) -> list[dict[str, Any]]:
    """Per stage: the selection's effective temperature (selection/select.py meta.json `effective`)."""
    out = []
    for s, d in stages:
        m = d.selected / "meta.json"
        if m.exists():
            eff = read_json(m).get("effective")
            if eff:
                out.append({"stage": s, **eff})
    return out


def _domain_shares(rd: RunDir, stages: list[tuple[int, StagePaths]], pool_meta: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for s, d in stages:
        m = d.selected / "meta.json"
        if m.exists():
            meta = read_json(m)
            counts = meta.get("kept_per_domain") or meta.get("per_domain") or {}
            out.append({"stage": s, "counts": counts})
    return out


def _noise(rd: RunDir, branch: str) -> dict[str, Any] | None:
    """This selector's share of planted noise in its kept set, from `<run>/noise.json`
    (experiments/selection_arena/noise.py: {"domain", "random": share, "selectors": {name: {"kept",
    "candidates", "per_stage", "ratio_to_random", "more_than_random"}}}); None without that file."""
    f = rd.root / "noise.json"
    if not f.exists():
        return None
    data = read_json(f)
    entry = dict((data.get("selectors") or {}).get(branch) or {})
    if branch == BASELINE and "kept" not in entry and isinstance(data.get("random"), (int, float)):
        entry["kept"] = data["random"]
    if "kept" not in entry:
        return None
    return {"domain": data.get("domain", "noise"), "random": data.get("random"), **entry}


def selector_names(runs: list[dict[str, Any]]) -> list[str]:
    seen: list[str] = []
    for r in runs:
        for s in r["selectors"]:
            if s not in seen:
                seen.append(s)
    return seen


def scored_examples(rd: RunDir, n: int = 3, chars: int = 400) -> dict[str, list[tuple[float, str]]]:
    """Highest- and lowest-scored candidates of the last scored stage of the first MATES branch."""

    done = [st.scores for b in reversed(rd.branches()) for st in reversed(rd.branch(b).stages())
            if is_done(st.scores)]
    if not done:
        return {}
    ids, sc = read_scores(done[0])
    pool = Pool(rd.pool)
    tok = pool.tokenizer()
    order = np.argsort(sc)

    def txt(i: int) -> tuple[float, str]:
        return float(sc[i]), tok.decode(pool.tokens([int(ids[i])])[0].tolist())[:chars]

    return {"stage": [str(done[0].parent.relative_to(rd.root))],  # type: ignore[dict-item]
            "lowest (kept first)": [txt(i) for i in order[:n]],
            "highest": [txt(i) for i in order[::-1][:n]]}
