"""FLOPs and time per component (training, probing, influence-model fit, scoring), per stage.

Time is measured around each component call by the pipeline and kept in
`<stage>/timings.json` (only calls that did work are recorded, so a resumed run keeps the times
of the calls it skipped). FLOPs are estimated from the artifacts' counts with the usual rules:

    LM training, per token          6 N + 6 L T d     (N: parameters without the input embedding)
    LM forward, per token           (6 N + 6 L T d) / 3
    probe (exact / naive), each     train(seq_len tokens) + forward(all reference input tokens)
    probe (first order), each       train(seq_len tokens); + train(reference tokens) once per call
    encoder forward, per token      2 N_enc (+ attention), on the encoder's tokens of a sequence
    fit, finetune                   3 x forward x epochs over the training labels + validation forwards
    fit, frozen / score             forward over the sequences not yet in the embedding cache
    score, loss selector            LM forward over every candidate

`summarize` aggregates per stage and per component into `metrics.json` from the files on disk.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from datamates.run_dir import atomic_write_json, is_done, read_json

COMPONENTS = ("train", "probe", "fit", "score", "select", "eval")


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


def lm_flops_per_token(checkpoint: Path) -> float:
    s = _json(checkpoint / "train_summary.json")
    return float(s.get("flops_per_token", 0.0))


def stage_flops(stage_dir: Path, *, seq_len: int, lm_fpt: float, ref_input_tokens: int,
                enc_fwd_per_seq: float) -> dict[str, float]:
    """Estimated FLOPs of each component of one stage folder, from its artifacts."""
    out = {c: 0.0 for c in ("train", "probe", "fit", "score")}
    ck = stage_dir / "checkpoint"
    if is_done(ck):
        out["train"] = float(_json(ck / "train_summary.json").get("flops", 0.0))
    pm = _json(stage_dir / "probe" / "meta.json")
    if pm:
        n = pm.get("n_probes", 0)
        step = lm_fpt * seq_len
        if pm.get("mode") == "first_order":
            out["probe"] = n * step + lm_fpt * ref_input_tokens
        else:
            out["probe"] = n * (step + lm_fpt / 3 * ref_input_tokens)
    fm = _json(stage_dir / "influence_model" / "meta.json").get("metrics", {})
    if fm:
        n_tr, n_va = fm.get("n_train", 0), fm.get("n_val", 0)
        epochs = _json(stage_dir / "influence_model" / "meta.json").get("config", {}).get("epochs", 1)
        if fm.get("mode") == "finetune":
            out["fit"] = enc_fwd_per_seq * (3 * epochs * n_tr + n_va)
        else:  # frozen: only the embeddings not already in the pool's cache were computed
            out["fit"] = enc_fwd_per_seq * fm.get("embeddings_computed", n_tr + n_va)
    sm = _json(stage_dir / "scores" / "meta.json")
    if sm.get("mode") == "lm_loss":  # the loss selector: one LM forward per candidate
        out["score"] = lm_fpt / 3 * seq_len * sm.get("n", 0)
    elif sm:
        out["score"] = enc_fwd_per_seq * sm.get("n", 0)
    return out


def stage_seconds(stage_dir: Path) -> dict[str, float]:
    return _json(stage_dir / "timings.json")


def summarize_branch(stages: list[Path], **kw: Any) -> dict[str, Any]:
    """Per-stage and total FLOPs and seconds of one selector's stages (warmup stages included)."""
    rows = []
    tot_f = {c: 0.0 for c in ("train", "probe", "fit", "score")}
    tot_s: dict[str, float] = {}
    for sd in stages:
        f = stage_flops(sd, **kw)
        s = stage_seconds(sd)
        rows.append({"stage": sd.name, "flops": f, "seconds": s})
        for c in tot_f:
            tot_f[c] += f[c]
        for c, v in s.items():
            tot_s[c] = tot_s.get(c, 0.0) + v
    selection = tot_f["probe"] + tot_f["fit"] + tot_f["score"]
    return {
        "stages": rows,
        "flops": {**tot_f, "selection": selection, "total": selection + tot_f["train"]},
        "seconds": tot_s,
        "selection_overhead": selection / tot_f["train"] if tot_f["train"] else None,
    }
