"""Counted FLOPs and wall seconds per component (training, probing, influence-model fit, scoring,
evaluation), per stage.

Time: an artifact's meta.json holds `seconds`, the wall seconds its build took, measured by
`artifacts.produce` (probe, influence model, scores, selection); components whose work runs partly
outside their artifact's build (training, the decay, evaluation, the baselines' scoring) are timed
around the call (`timed`) into `<stage>/timings.json`, which wins for the components it names. Only
calls that did work are recorded, so a resumed run keeps the times of the calls it skipped.

FLOPs are *counted*, not estimated: every artifact that runs a model records in its meta.json
the tokens it processed, by kind, and the model's FLOPs per token of that kind (the training
checkpoint records them in train_summary.json):

    "tokens":          {"lm_train": n, "lm_forward": n, "encoder_train": n, "encoder_forward": n}
    "flops_per_token": {"lm_train": 6 N + 6 L T d, "lm_forward": (6 N + 6 L T d) / 3,
                        "encoder_forward": 2 N_enc + 2 L_enc T_enc d_enc, "encoder_train": 3 x that}

(N: parameters without the input embedding; L, T, d: layers, context, width; Kaplan et al. 2020,
Chinchilla appendix F.) An artifact's FLOPs are sum_kind tokens[kind] x flops_per_token[kind];
nothing is multiplied up or filled in. What each stage counts:

    train (checkpoint, and the final decay)   lm_train: steps x batch x seq_len
    probe                                     selection/probe/oracle.py `probe_tokens`: the probe
                                              steps (lm_train) and reference forwards (lm_forward)
    fit (influence_model)                     encoder tokens of the sequences embedded (frozen:
                                              those not already in the pool's cache) or trained on
    score                                     encoder tokens of the candidates embedded; the loss
                                              selector: lm_forward, one forward per candidate
    eval (per-stage curve, final)             lm_forward: packed task inputs + held-out sequences

A finished artifact without counts is an error (`ArtifactMissing`, naming the artifact), never a
guess; an absent or unfinished artifact costs nothing; `"tokens": {}` says no model ran. The
baselines' scores (baselines/_common.py) record `tokens_processed` and the FLOPs they computed from
those counts (`flops`), which are taken as they are. `summarize_branch` aggregates per stage
and per component; selection = probe + fit + score, and the selection overhead is selection /
train.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from datamates.errors import ArtifactMissing
from datamates.run_dir import (
    CHECKPOINT,
    EVAL,
    INFLUENCE_MODEL,
    PROBE,
    SCORES,
    SELECTED,
    atomic_write_json,
    is_done,
    read_json,
    train_summary,
)

COMPONENTS = ("train", "probe", "fit", "score", "select", "eval")
PROXY_DIR = "proxy"  # <branch>/proxy/stage_XX/checkpoint: a proxy LM's training (selectors.branch_proxy)
# fo_head: the LM-feature influence model's first-order head term (selection/features.py), 2 H V
# FLOPs per token on top of the LM forward it shares
# lm_embed: the `embed` feature's final norm on every token of a candidate (selection/features.py)
KINDS = ("lm_train", "lm_forward", "encoder_train", "encoder_forward", "fo_head", "lm_embed")
# stage sub-folder -> the component its FLOPs are charged to
STAGE_ARTIFACTS = {CHECKPOINT: "train", PROBE: "probe", INFLUENCE_MODEL: "fit", SCORES: "score", EVAL: "eval"}
FLOP_COMPONENTS = ("train", "probe", "fit", "score", "eval")
# stage sub-folder -> the component whose seconds its meta.json holds (written by artifacts.produce)
SECONDS_ARTIFACTS = {PROBE: "probe", INFLUENCE_MODEL: "fit", SCORES: "score", SELECTED: "select"}


@contextlib.contextmanager
def timed(stage_dir: Path, component: str, artifact: Path) -> Iterator[None]:
    """Record wall seconds of `component` in `<stage_dir>/timings.json`, unless `artifact` was
    already complete (then nothing ran and the earlier time stands)."""
    already = is_done(artifact)
    t0 = time.time()
    yield
    if already:
        return
    f = stage_dir / "timings.json"
    data = read_json(f) if f.exists() else {}
    data[component] = round(data.get(component, 0.0) + time.time() - t0, 3)
    atomic_write_json(f, data)


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def counted(artifact: Path) -> dict[str, Any] | None:
    """{"tokens", "flops_per_token", "flops"} of one finished artifact; None when it is absent or
    unfinished (nothing was spent on it that is kept). Raises ArtifactMissing when it is finished
    but carries no counts."""
    artifact = Path(artifact)
    if not is_done(artifact):
        return None
    summary = train_summary(artifact)
    if summary.exists():  # a training checkpoint
        s = _json(summary)
        tokens, fpt = {"lm_train": s.get("tokens")}, {"lm_train": s.get("flops_per_token")}
        where = summary
    else:
        meta = _json(artifact / "meta.json")
        tokens, fpt = meta.get("tokens"), meta.get("flops_per_token") or {}
        where = artifact / "meta.json"
        tp = meta.get("tokens_processed")
        if tokens is None and isinstance(tp, dict) and isinstance(meta.get("flops"), (int, float)):
            # baselines/ (scores written by `score-with`): tokens_processed = {encoder, lm, text} and
            # flops = 2 x parameters x tokens, computed by the stage from its own counts
            return {"tokens": {"encoder_forward": int(tp.get("encoder", 0)), "lm_forward": int(tp.get("lm", 0))},
                    "flops_per_token": {}, "flops": float(meta["flops"])}
    if not isinstance(tokens, dict):  # {} is a valid record: no model ran
        raise ArtifactMissing(f"{where}: no counted tokens ('tokens'); the artifact was written by an older datamates: "
                              "delete it and re-run the stage to count its FLOPs")
    flops = 0.0
    for kind, n in tokens.items():
        if kind not in KINDS or not isinstance(n, (int, float)) or n < 0:
            raise ArtifactMissing(f"{where}: tokens.{kind} = {n!r}; expected a count of one of {', '.join(KINDS)}")
        if n and not isinstance(fpt.get(kind), (int, float)):
            raise ArtifactMissing(f"{where}: no flops_per_token.{kind} for its {n} {kind} tokens; delete the artifact "
                                  "and re-run the stage to count its FLOPs")
        flops += n * fpt[kind] if n else 0.0
    return {"tokens": {k: int(v) for k, v in tokens.items()}, "flops_per_token": fpt, "flops": float(flops)}


def stage_flops(stage_dir: Path, errors: list[str] | None = None) -> tuple[dict[str, float], dict[str, dict[str, int]]]:
    """Counted FLOPs per component of one stage folder, and the tokens behind them. With `errors`
    (a list), an artifact without counts makes its component NaN and its message is appended;
    without, it raises ArtifactMissing."""
    flops = {c: 0.0 for c in FLOP_COMPONENTS}
    tokens: dict[str, dict[str, int]] = {c: {} for c in FLOP_COMPONENTS}
    for sub, comp in STAGE_ARTIFACTS.items():
        try:
            c = counted(Path(stage_dir) / sub)
        except ArtifactMissing as e:
            if errors is None:
                raise
            errors.append(str(e))
            flops[comp] = float("nan")
            continue
        if c is not None:
            flops[comp] += c["flops"]
            for k, n in c["tokens"].items():
                tokens[comp][k] = tokens[comp].get(k, 0) + n
    return flops, tokens


def stage_seconds(stage_dir: Path) -> dict[str, float]:
    """Wall seconds per component of one stage folder: `timings.json`, and for a component it does
    not name, the `seconds` produce recorded in that component's finished artifact."""
    out = _json(Path(stage_dir) / "timings.json")
    for sub, comp in SECONDS_ARTIFACTS.items():
        art = Path(stage_dir) / sub
        if comp not in out and is_done(art):
            s = _json(art / "meta.json").get("seconds")
            if isinstance(s, int | float):
                out[comp] = round(float(s), 3)
    return out


def _proxy_training(branch_dir: Path, errors: list[str]) -> dict[str, dict[str, Any]]:
    """`mates-proxy`'s proxy LM (selection/proxy.py): the counted training of `<branch>/proxy/stage_XX`
    (on stage XX's data), keyed by the stage whose selection trains it lazily and uses it: stage_{XX+1}."""
    out: dict[str, dict[str, Any]] = {}
    for ck in sorted((Path(branch_dir) / PROXY_DIR).glob("stage_*/checkpoint")):
        try:
            c = counted(ck)
        except ArtifactMissing as e:
            errors.append(str(e))
            c = {"flops": float("nan"), "tokens": {}}
        if c is not None:
            key = f"stage_{int(ck.parent.name.split('_')[1]) + 1:02d}"
            acc = out.setdefault(key, {"flops": 0.0, "tokens": {}})
            acc["flops"] += c["flops"]
            for k, n in c["tokens"].items():
                acc["tokens"][k] = acc["tokens"].get(k, 0) + n
    return out


def summarize_branch(stages: list[Path], *, final: Path | None = None, final_eval: Path | None = None,
                     branch_dir: Path | None = None) -> dict[str, Any]:
    """Per-stage and total FLOPs, tokens and seconds of one selector's history (warmup stages
    included), plus its final decay (`final`, charged to train) and final evaluation (`final_eval`).
    An artifact without counts makes its component's total NaN (and selection's, when it is part
    of it) and is named in `errors`."""
    rows = []
    errors: list[str] = []
    tot_f = {c: 0.0 for c in FLOP_COMPONENTS}
    tot_t: dict[str, dict[str, int]] = {c: {} for c in FLOP_COMPONENTS}
    tot_s: dict[str, float] = {}

    def add(f: dict[str, float], t: dict[str, dict[str, int]], s: dict[str, float]) -> None:
        for c in tot_f:
            tot_f[c] += f[c]
            for k, n in t[c].items():
                tot_t[c][k] = tot_t[c].get(k, 0) + n
        for c, v in s.items():
            tot_s[c] = tot_s.get(c, 0.0) + v

    proxy = _proxy_training(branch_dir, errors) if branch_dir is not None else {}
    for sd in stages:
        f, t = stage_flops(sd, errors)
        if Path(sd).name in proxy:  # the proxy LM trained for this stage's selection: part of its fit
            f["fit"] += proxy[Path(sd).name]["flops"]
            for k, n in proxy[Path(sd).name]["tokens"].items():
                t["fit"][k] = t["fit"].get(k, 0) + n
        s = stage_seconds(sd)
        rows.append({"stage": Path(sd).name, "flops": f, "tokens": t, "seconds": s})
        add(f, t, s)
    for art, comp in ((final, "train"), (final_eval, "eval")):
        try:
            c = counted(art) if art is not None else None
        except ArtifactMissing as e:
            errors.append(str(e))
            c = {"flops": float("nan"), "tokens": {}}
        if c is not None:
            f = {k: 0.0 for k in FLOP_COMPONENTS}
            f[comp] = c["flops"]
            t: dict[str, dict[str, int]] = {k: {} for k in FLOP_COMPONENTS}
            t[comp] = c["tokens"]
            rows.append({"stage": Path(art).name, "flops": f, "tokens": t, "seconds": {}})
            add(f, t, {})
    if branch_dir is not None:  # the decay and final evaluation are timed at the branch level
        for c, v in stage_seconds(branch_dir).items():
            tot_s[c] = tot_s.get(c, 0.0) + v
    selection = tot_f["probe"] + tot_f["fit"] + tot_f["score"]
    sel_seconds = sum(tot_s.get(c, 0.0) for c in ("probe", "proxy", "fit", "score", "select"))
    return {
        "stages": rows,
        "flops": {**tot_f, "selection": selection, "total": selection + tot_f["train"]},
        "tokens": tot_t,
        "seconds": {**tot_s, "selection": round(sel_seconds, 3)},
        "selection_overhead": selection / tot_f["train"] if tot_f["train"] else None,
        "errors": errors,
    }
