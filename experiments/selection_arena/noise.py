"""Do selectors keep junk? The arena with planted junk, over seeds (issue 30, item 1; README, "Junk").

    python experiments/selection_arena/noise.py --seeds 0 1 2 \\
        [--selectors random loss oracle@lambada_openai oracle mates@lambada_openai mates] \\
        [--config configs/arena_cpu.yaml] [--rate 0.07] [--tag junk] [--set key=value ...]

Plants about `rate` of the pool's tokens as junk of four kinds (datamates.junk: word-shuffled web
text, random character strings, repeated web boilerplate lines, SEO keyword lists; one pool domain
`junk_<kind>` each, deterministic from --junk-seed), builds the pool once, and runs the arena's own
schedule (the config as committed: warmup, selection stages, decay, evaluation) for every seed with
the given selectors (`NAME@REF` probes the reference REF: `oracle@lambada_openai` is the oracle on
MATES's LAMBADA, `mates` the config's probe reference). Each run writes `<run>/noise.json`
(junk kept per selector, per kind, per stage; the pipeline does it for every run on a pool with junk)
and `<run>/<branch>/targets.json` (every target: held-out clean loss by domain, LAMBADA's evaluation
part in- and not-in-context, the references; targets.py). Then over the seeds: per selector the
share of junk kept, mean ± sd per kind, and paired against random (mean [95% t interval], seeds
with more junk than random), and every target paired against random: `<tag>_results.json` and
`<tag>_results.md` next to this script. Resumable: re-run the same command.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
DEFAULT_SELECTORS = ["random", "loss", "oracle@lambada_openai", "oracle", "mates@lambada_openai", "mates"]


def _datamates(*args: str) -> list[str]:
    return [sys.executable, "-m", "datamates", *args]


def run_seeds(config: str, seeds: list[int], selectors: list[str], tag: str, rate: float, junk_seed: int,
              sets: list[str]) -> list[Path]:
    from datamates.config.base import data_dir
    from datamates.config.run import load_config
    from datamates.junk import plant

    corpus = HERE / "runs" / "junk_corpus"  # the arena configs' corpus and pool (run.py plants the same)
    counts = plant(data_dir() / "pretrain", corpus, rate, seed=junk_seed)
    (HERE / "runs" / "junk_corpus.json").write_text(json.dumps(counts, indent=2))
    pool_dir = HERE / "runs" / "junk_pool"
    base = [f"pool.inputs=[{corpus}]", f"pool_dir={pool_dir}", f"mates.selectors=[{', '.join(selectors)}]"]
    if not (pool_dir / "DONE").exists():
        subprocess.run(_datamates("pool", "build", "-c", config, "--out", str(pool_dir), "--set", base[0]), check=True)
    runs = []
    for seed in seeds:
        name = f"{tag}_s{seed}"
        s = [f"name={name}", *base, f"train.seed={seed}", f"mates.select.seed={seed}", f"mates.plan_seed={seed}", *sets]
        cmd = _datamates("run", "-c", config, "--no-report")
        for x in s:
            cmd += ["--set", x]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        cfg = load_config(config, s)
        run = Path(cfg.runs_root) / name
        from targets import write_targets

        write_targets(run)
        runs.append(run)
    return runs


def _ms(x: list[float]) -> str:
    a = np.asarray(x, dtype=np.float64)
    return f"{a.mean():.1%} ± {a.std(ddof=1) if len(a) > 1 else float('nan'):.1%}"


def summarize(runs: list[Path]) -> dict[str, Any]:
    """Junk kept and every target, over the seed runs, paired against random (module docstring)."""
    from datamates.report import paired_stats

    noise = [json.loads((r / "noise.json").read_text()) for r in runs]
    targets = [{b.name: json.loads((b / "targets.json").read_text()) for b in r.iterdir()
                if (b / "targets.json").exists()} for r in runs]
    kinds = sorted({k for n in noise for k in n["kinds"]})
    sels = list(dict.fromkeys(s for n in noise for s in n["selectors"]))
    out: dict[str, Any] = {"runs": [str(r) for r in runs], "kinds": kinds, "junk": {}, "targets": {}}
    for s in sels:
        rows = [n["selectors"][s] for n in noise if s in n["selectors"] and "random" in n["selectors"]]
        rnd = [n["selectors"]["random"] for n in noise if s in n["selectors"] and "random" in n["selectors"]]
        d = [a["kept"] - b["kept"] for a, b in zip(rows, rnd)]
        out["junk"][s] = {"kept": [r["kept"] for r in rows], "candidates": [r["candidates"] for r in rows],
                          "per_kind": {k: [r["per_kind"].get(k, 0.0) for r in rows] for k in kinds},
                          "per_stage": [r["per_stage"] for r in rows],
                          "vs_random": paired_stats(d, lower_is_better=True) if s != "random" else None,
                          "seeds_more_than_random": int(sum(x > 0 for x in d))}
    metrics = list(dict.fromkeys(m for t in targets for b in t.values() for m in b))
    for s in sels:
        if s == "random":
            continue
        res = {}
        for m in metrics:
            d = [t[s][m] - t["random"][m] for t in targets if s in t and "random" in t and m in t[s]]
            if d:
                res[m] = paired_stats(d, lower_is_better=True)
        out["targets"][s] = res
    out["targets_random"] = {m: [t["random"][m] for t in targets if "random" in t and m in t["random"]]
                             for m in metrics}
    return out


def markdown(res: dict[str, Any]) -> str:
    kinds = res["kinds"]
    n = len(res["runs"])
    lines = [f"Junk kept (share of the kept sequences over the selection stages, mean ± sd over {n} seeds):", "",
             "| selector | junk kept | " + " | ".join(kinds) + " | Δ vs random [95% t] | seeds above random |",
             "|---|---|" + "---|" * len(kinds) + "---|---|"]
    for s, j in res["junk"].items():
        vr = j["vs_random"]
        delta = "" if vr is None else f"{vr['mean']:+.1%} [{vr['t_ci'][0]:+.1%}, {vr['t_ci'][1]:+.1%}]"
        seeds = "" if vr is None else f"{j['seeds_more_than_random']}/{vr['n']}"
        lines.append(f"| {s} | {_ms(j['kept'])} | " + " | ".join(_ms(j["per_kind"][k]) for k in kinds)
                     + f" | {delta} | {seeds} |")
    metrics = [m for m in res["targets_random"] if not m.startswith("held-out loss ")] + \
              [m for m in res["targets_random"] if m.startswith("held-out loss ")]
    lines += ["", "Targets (nats), Δ = selector − random of the same seed, mean [95% t interval], seeds better:", "",
              "| selector | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    rnd = res["targets_random"]
    lines.append("| random (mean ± sd) | " + " | ".join(
        f"{np.mean(rnd[m]):.3f} ± {np.std(rnd[m], ddof=1) if len(rnd[m]) > 1 else float('nan'):.3f}"
        for m in metrics) + " |")
    for s, t in res["targets"].items():
        cells = []
        for m in metrics:
            st = t.get(m)
            if st is None:
                cells.append("")
                continue
            bold = "**" if "95%" in st["verdict"] else ""
            cells.append(f"{bold}{st['mean']:+.3f} [{st['t_ci'][0]:+.3f}, {st['t_ci'][1]:+.3f}]{bold} {st['wins']}/{st['n']}")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "arena_cpu.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--selectors", nargs="+", default=DEFAULT_SELECTORS)
    ap.add_argument("--tag", default="junk")
    ap.add_argument("--rate", type=float, default=0.07)
    ap.add_argument("--junk-seed", type=int, default=0)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--summary-only", action="store_true", help="only the tables, from the finished runs")
    args = ap.parse_args()
    from datamates.errors import DatamatesError

    try:
        if args.summary_only:
            from datamates.config.run import load_config

            root = Path(load_config(args.config, args.sets).runs_root)
            runs = [root / f"{args.tag}_s{s}" for s in args.seeds]
        else:
            runs = run_seeds(args.config, args.seeds, args.selectors, args.tag, args.rate, args.junk_seed, args.sets)
    except DatamatesError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    res = summarize(runs)
    (HERE / f"{args.tag}_results.json").write_text(json.dumps(res, indent=2, default=float))
    md = markdown(res)
    (HERE / f"{args.tag}_results.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
