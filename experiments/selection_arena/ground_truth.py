"""Ground truth for every target: train a few real steps on one kind of data, measure every target
(issue 30, item 2; README, "Junk").

    python experiments/selection_arena/ground_truth.py RUN... [--n 80]

For each seed run of the junk arena (noise.py: a pool with planted junk, a finished warmup), from the
warmup's last checkpoint: one selection stage's real training (the arena's stage config: stage_steps
AdamW steps, the run's schedule and optimizer state) on `n` sequences of one kind:

    random clean          n random clean sequences of the first selection stage's block
    junk <kind>           n random sequences of each planted junk kind
    pick <selector>       the n sequences each selector of the run kept at its first selection stage

then the change of every target (targets.py: held-out clean loss, per domain; LAMBADA's evaluation
part overall, in-context and not-in-context; LAMBADA's reference part, what LAMBADA probes see; the
clean reference, what `clean` probes see) against the warmup checkpoint. Writes
`<run>/ground_truth/<row>.json` (resumable), and over the runs `ground_truth_results.{json,md}`
next to this script: Δ mean ± sd over the seeds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def rows_of(rd, cfg, pool, plan, n: int, seed: int) -> dict[str, np.ndarray]:
    from datamates.junk import is_junk_domain, junk_kind
    from datamates.selection.select import read_selection

    w = cfg.mates.warmup_stages
    dom = np.asarray(pool.seq_domain)
    junk = np.array([is_junk_domain(d) for d in pool.domains])[dom]
    rng = np.random.default_rng([seed, 30])
    block = plan.block(w + 1)
    rows = {"random clean": np.sort(rng.choice(block[~junk[block]], n, replace=False))}
    for d, name in enumerate(pool.domains):
        if is_junk_domain(name):  # junk is never held out, a clean reference or in a guard
            ids = np.nonzero(dom == d)[0]
            rows[f"junk {junk_kind(name)}"] = np.sort(rng.choice(ids, min(n, len(ids)), replace=False))
    for b in sorted(p for p in rd.root.iterdir() if p.is_dir() and p.name not in ("warmup", "random", "ground_truth")):
        sel = rd.branch(b.name).selected(w + 1)
        if (sel / "ids.npy").exists():
            rows[f"pick {b.name}"] = np.sort(read_selection(sel))[:n]
    return rows


def ground_truth(run: Path, n: int = 80) -> dict[str, Any]:
    from targets import measure, run_config, target_sets

    from datamates.core.checkpoint import load_model
    from datamates.core.pool import Pool
    from datamates.core.train_loop import train
    from datamates.pipelines import stage_train_config
    from datamates.plan import make_plan
    from datamates.run_dir import RunDir, atomic_write_json, read_json

    rd = RunDir(run)
    cfg = run_config(rd)
    pool = Pool(rd.pool)
    plan = make_plan(cfg, pool, rd.plan)
    w = cfg.mates.warmup_stages
    warm = rd.branch("warmup").checkpoint(w)
    out_dir = rd.root / "ground_truth"
    out_dir.mkdir(exist_ok=True)
    sets = target_sets(pool, plan)
    base_f = out_dir / "warmup.json"
    if not base_f.exists():
        atomic_write_json(base_f, measure(load_model(warm, device="cpu"), pool, plan, sets=sets))
    base = read_json(base_f)
    res: dict[str, Any] = {"warmup": base, "delta": {}}
    for row, ids in rows_of(rd, cfg, pool, plan, n, cfg.train.seed).items():
        f = out_dir / (row.replace(" ", "_").replace("/", "_") + ".json")
        if not f.exists():
            ckpt = out_dir / "checkpoints" / row.replace(" ", "_")
            tcfg = stage_train_config(cfg, w + 1)
            train(tcfg, cfg.model, pool, ids, ckpt, init=warm, meta={"ground_truth": row})
            after = measure(load_model(ckpt, device="cpu"), pool, plan, sets=sets)
            atomic_write_json(f, {"n": int(len(ids)), "after": after,
                                  "delta": {k: after[k] - base[k] for k in after}})
        res["delta"][row] = read_json(f)["delta"]
    return res


def markdown(per_run: list[dict[str, Any]]) -> str:
    rows = list(dict.fromkeys(r for x in per_run for r in x["delta"]))
    metrics = ["LAMBADA eval all", "LAMBADA eval ic", "LAMBADA eval nic", "held-out clean loss", "LAMBADA ref all",
               "clean reference"]
    metrics = [m for m in metrics if any(m in x["warmup"] for x in per_run)]
    lines = [f"Δ loss (nats) after one stage of real training from the warmup checkpoint, mean ± sd over "
             f"{len(per_run)} seeds:", "", "| trained on | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for r in rows:
        cells = []
        for m in metrics:
            v = [x["delta"][r][m] for x in per_run if r in x["delta"] and m in x["delta"][r]]
            cells.append(f"{np.mean(v):+.3f} ± {np.std(v, ddof=1):.3f}" if len(v) > 1 else
                         (f"{v[0]:+.3f}" if v else ""))
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--n", type=int, default=80)
    ap.add_argument("--tag", default="ground_truth")
    args = ap.parse_args()
    per_run = [ground_truth(Path(r), args.n) for r in args.runs]
    (HERE / f"{args.tag}_results.json").write_text(json.dumps({"runs": args.runs, "per_run": per_run}, indent=2))
    md = markdown(per_run)
    (HERE / f"{args.tag}_results.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
