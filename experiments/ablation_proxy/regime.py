"""The merging study in the paper's regime (issue 29), end to end and resumable: three seed models,
each with its own units and all 26 multi-unit gold models, the plateau test of every seed, and
the claim / decision tables over the three seed models.

    bash experiments/ablation_proxy/run_regime.sh             (= python experiments/ablation_proxy/regime.py)
    python experiments/ablation_proxy/regime.py --scale smoke --root /tmp/regime_smoke

Stages, each a `datamates` command or a library call that skips finished work (so a killed run,
rerun, redoes only the unfinished model or evaluation and ends with the same bytes):

    pool       datamates pool build (reused when it exists)
    sN/partition, sN/seed      datamates partition; datamates train-partitions --seed-only
    sN/plateau                 ablation.plateau.write_plateau_report on the seed's loss curve; the
                               study of a seed that is not on its plateau is not run (--no-plateau-gate
                               runs it anyway)
    sN/study                   datamates train-partitions (the 5 unit models), datamates ablate with
                               ablation.gold = every multi-unit mixture (trains each gold model once,
                               evaluates seed, 31 proxies, 26 gold models)
    analysis                   <root>/analysis/: claim.md, decisions.md, summary.json (no timings:
                               the same bytes on every rerun), times.json (wall clock per stage)

Stages run as subprocesses, `--slots` at a time (default 2: the two cores), one torch thread each,
in dependency order (a study starts as soon as its seed has passed the plateau test).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SEEDS = (1337, 2024, 4242)
# the smoke scale: the same pipeline on a 1-layer d-32 model and a few steps (minutes, not hours)
SMOKE = ["model.n_layers=1", "model.d_model=32", "ablation.seed.steps=150", "ablation.seed.warmup_steps=10",
         "ablation.branch.steps=4", "ablation.eval.tokens_per_set=1024", "ablation.eval.lambada_n=50",
         "ablation.bootstrap=200", "train.checkpoint_every=50", "train.log_every=50"]


class Runner:
    """Runs tasks (argv lists) with dependencies, `slots` subprocesses at a time; logs per task."""

    def __init__(self, root: Path, slots: int, env: dict[str, str]):
        self.root, self.slots, self.env = root, slots, env
        self.times_path = root / "times.jsonl"

    def stamp(self, **rec) -> None:
        with open(self.times_path, "a") as fh:
            fh.write(json.dumps({**rec, "t": round(time.time(), 1)}) + "\n")

    def run(self, tasks: dict[str, dict]) -> dict[str, int]:
        """tasks: name -> {"argv": [...] or "fn": callable, "deps": [names]}; a callable runs in this
        process once its dependencies are done (it returns True to let its dependents run)."""
        state: dict[str, int] = {}
        running: dict[str, subprocess.Popen] = {}

        def stop(signum, frame):  # a killed driver takes its stages with it (they resume on the rerun)
            for p in running.values():
                p.terminate()
            for p in running.values():
                p.wait()
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        while True:
            ready = [n for n, t in tasks.items() if n not in state and n not in running
                     and all(state.get(d) == 0 for d in t.get("deps", []))]
            blocked = [n for n, t in tasks.items() if n not in state and n not in running
                       and any(d in state and state[d] != 0 for d in t.get("deps", []))]
            for n in blocked:
                state[n] = -1  # a dependency failed or was gated
            for n in ready:
                t = tasks[n]
                if "fn" in t:
                    self.stamp(task=n, event="start")
                    state[n] = 0 if t["fn"]() else 3
                    self.stamp(task=n, event="end", rc=state[n])
                    continue
                if len(running) >= self.slots:
                    break
                log = open(self.root / "logs" / f"{n.replace('/', '_')}.log", "a")
                self.stamp(task=n, event="start")
                print(f"[regime] start {n}", flush=True)
                running[n] = subprocess.Popen(t["argv"], stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=REPO)
            if not running and not [n for n in tasks if n not in state]:
                return state
            if not running and not ready:
                return state
            time.sleep(0.5)
            for n, p in list(running.items()):
                rc = p.poll()
                if rc is not None:
                    state[n] = rc
                    del running[n]
                    self.stamp(task=n, event="end", rc=rc)
                    print(f"[regime] {'done' if rc == 0 else f'FAILED (exit {rc})'} {n}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(HERE / "regime.yaml"))
    ap.add_argument("--root", default=str(HERE / "runs" / "regime29"), help="run folder of the whole study")
    ap.add_argument("--pool", help="an existing pool with the config's inputs, seq_len and tokenizer (default: <root>/pool)")
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="one seed model per value (train.seed)")
    ap.add_argument("--slots", type=int, default=2, help="subprocesses at a time (one torch thread each)")
    ap.add_argument("--scale", choices=["full", "smoke"], default="full")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="more config overrides (KEY=VALUE)")
    ap.add_argument("--no-plateau-gate", action="store_true", help="run the studies of seeds that are not on their plateau")
    ap.add_argument("--plateau-tol", type=float, default=0.01,
                    help="slope test tolerance: nats of change over the tested tail (ablation/plateau.py)")
    args = ap.parse_args(argv)

    root = Path(args.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    sets = (SMOKE if args.scale == "smoke" else []) + args.sets
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    dm = [sys.executable, "-m", "datamates"]
    pool = Path(args.pool).resolve() if args.pool else root / "pool"
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    studies = {f"s{i + 1}": s for i, s in enumerate(seeds)}
    gold_file = root / "gold_mixtures.json"

    def base(study: str) -> list[str]:
        return ["-c", args.config, "--run-dir", str(root / study), "--pool", str(pool),
                *[x for s in sets for x in ("--set", s)], "--set", f"train.seed={studies[study]}"]

    tasks: dict[str, dict] = {}
    if not args.pool:
        tasks["pool"] = {"argv": dm + ["pool", "build", "-c", args.config, "--run-dir", str(root),
                                       *[x for s in sets for x in ("--set", s)]]}
    first = list(studies)[0]
    for st in studies:  # every seed first: they gate everything else
        tasks[f"{st}/partition"] = {"argv": dm + ["partition", *base(st)], "deps": [] if args.pool else ["pool"]}
        tasks[f"{st}/seed"] = {"argv": dm + ["train-partitions", "--seed-only", *base(st)], "deps": [f"{st}/partition"]}
    tasks["gold_mixtures"] = {"fn": lambda: _gold_list(root / first, gold_file), "deps": [f"{first}/partition"]}
    for st in studies:
        tasks[f"{st}/plateau"] = {"fn": lambda st=st: _plateau(root, st, args.plateau_tol, args.no_plateau_gate),
                                  "deps": [f"{st}/seed"]}
        tasks[f"{st}/units"] = {"argv": dm + ["train-partitions", *base(st)], "deps": [f"{st}/plateau"]}
        tasks[f"{st}/study"] = {"argv": dm + ["ablate", "--gold", str(gold_file), *base(st)],
                                "deps": [f"{st}/units", "gold_mixtures"]}
    tasks["analysis"] = {"fn": lambda: analyse(root, list(studies)) or True, "deps": [f"{st}/study" for st in studies]}
    runner = Runner(root, args.slots, env)
    runner.stamp(event="run", scale=args.scale, slots=args.slots)
    state = runner.run(tasks)
    failed = {n: state.get(n, -1) for n in tasks if state.get(n) != 0}
    if failed:
        print(f"[regime] not finished: {failed} (-1: a dependency failed; 3: a seed is not on its plateau, see "
              f"{root}/sN/plateau/plateau.md); logs in {root}/logs; rerun the same command to resume", flush=True)
        return 3 if all(rc in (-1, 3) for rc in failed.values()) and 3 in failed.values() else 1
    print(f"[regime] done: {root}/analysis/claim.md", flush=True)
    return 0


def _gold_list(run: Path, out: Path) -> bool:
    """Every multi-unit mixture of the partition's units, as the `--gold` file of every study."""
    from datamates.ablation.partition import read_manifest
    from datamates.pipelines.ablation import all_mixtures
    from datamates.run_dir import atomic_write_json

    mix = all_mixtures(read_manifest(run / "partitions").units)
    if not out.exists() or json.loads(out.read_text()) != mix:
        atomic_write_json(out, mix)
    return True


def _plateau(root: Path, study: str, tol: float, no_gate: bool) -> bool:
    from datamates.ablation.plateau import write_plateau_report

    res = write_plateau_report(root / study / "seed", root / study / "plateau", name=f"seed model {study}", tol=tol)
    print(f"[regime] {study}: seed {'on' if res['on_plateau'] else 'NOT on'} its plateau (slope CI "
          f"[{res['slope_ci'][0]:.2e}, {res['slope_ci'][1]:.2e}], drop {res['drop']:+.4f} p {res['drop_p']:.3f})",
          flush=True)
    return res["on_plateau"] or no_gate


# ----------------------------------------------------------------------------- analysis


def analyse(root: Path, studies: list[str]) -> dict:
    """Tables over the seed models: <root>/analysis/{summary.json, claim.md, claim.csv}, and times.json."""
    from datamates.ablation.plateau import read_plateau
    from datamates.ablation.report import claim_csv, claim_markdown
    from datamates.ablation.stats import BASELINE, SEED_BASELINE, claim_table, eval_precision, seed_model_table
    from datamates.run_dir import atomic_dir, atomic_write_json, atomic_write_text

    results = [json.loads((root / s / "ablation" / "results.json").read_text()) for s in studies]
    B = results[0]["config"]["bootstrap"]
    boot = claim_table(results, B=B)
    per = seed_model_table(results)
    prec = eval_precision(results)
    plateaus = {s: read_plateau(root / s / "plateau") for s in studies}
    for p in plateaus.values():
        p.pop("checkpoint", None)
    summ = {"studies": studies, "seeds": [r["config"].get("seed", {}) for r in results], "plateau": plateaus,
            "eval_precision": prec, "seed_models": per, "bootstrap": boot,
            "units": [{k: v for k, v in u.items() if k != "provenance"} for u in results[0]["units"]],  # no paths
            "gold_mixtures": len([g for g in results[0]["gold"] if g["k"] > 1])}
    flat = [s for s in studies if plateaus[s]["on_plateau"]]
    with atomic_dir(root / "analysis") as tmp:
        atomic_write_json(tmp / "summary.json", _clean(summ))
        atomic_write_text(tmp / "claim.md", decisions_markdown(per, prec, plateaus, BASELINE, SEED_BASELINE)
                          + "\n\n" + per_seed_markdown(per, studies, plateaus, BASELINE)
                          + "\n\n## Bootstrap over gold mixtures (stratified by seed model)\n\n" + claim_markdown(boot) + "\n")
        if 2 <= len(flat) < len(studies):  # the same tables over the seed models that passed the plateau test
            sub = [r for s, r in zip(studies, results, strict=True) if s in flat]
            atomic_write_text(tmp / "claim_on_plateau.md",
                              f"Only the seed models on their plateau: {', '.join(flat)}\n\n"
                              + decisions_markdown(seed_model_table(sub), eval_precision(sub),
                                                   {s: plateaus[s] for s in flat}, BASELINE, SEED_BASELINE) + "\n")
        atomic_write_text(tmp / "claim.csv", claim_csv(boot))
        for s in studies:
            png = root / s / "plateau" / "plateau.png"
            if png.exists():
                (tmp / f"plateau_{s}.png").write_bytes(png.read_bytes())
    atomic_write_json(root / "times.json", stage_times(root))
    return summ


def _clean(o):
    if isinstance(o, float):
        return None if math.isnan(o) else round(o, 6)
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def _c(d: dict, fmt: str = ".2f") -> str:
    m, (lo, hi) = d["mean"], d["ci"]
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "n/a"
    if isinstance(lo, float) and math.isnan(lo):
        return f"{m:{fmt}}"
    return f"{m:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


def decisions_markdown(per: dict, prec: dict, plateaus: dict, BASELINE: str, SEED: str) -> str:
    n = len(next(iter(next(iter(per.values()))["proxy"].values()))["values"])
    ks = sorted({int(k[len("pearson_k"):]) for t in per.values() for k in t["proxy"] if k.startswith("pearson_k")})
    ks = [k for k in ks if any(not math.isnan(v) for t in per.values() for v in t["proxy"][f"pearson_k{k}"]["values"])]
    L = [f"# Merged proxies vs gold models over {n} seed models (mean [95% t-interval over seed models])", "",
         "## The claim", "",
         "| eval set | Pearson pooled | " + " | ".join(f"Pearson k={k}" for k in ks)
         + " | Pearson within size | Spearman pooled | pairwise | pairwise same size | regret (nats) | picks best |",
         "|---|" + "---:|" * (7 + len(ks))]
    for s, t in per.items():
        p = t["proxy"]
        L.append(f"| {s} | {_c(p['pearson'])} | " + " | ".join(_c(p[f'pearson_k{k}']) for k in ks)
                 + f" | {_c(p['pearson_within_size'])} | {_c(p['spearman'])} | {_c(p['pairwise'])} | "
                   f"{_c(p['pairwise_same_size'])} | {_c(p['regret'], '.3f')} | {_c(p['picks_best'])} |")
    L += ["", "## Which mixture is best: the proxy against the two free baselines", "",
          "| eval set | pairwise: proxy / mean-unit / seed | regret (nats): proxy / mean-unit / seed (random pick) | "
          "regret within a size: proxy / mean-unit / seed | "
          "Pearson pooled: proxy / mean-unit | Pearson within size: proxy / mean-unit | proxy beats both on pairwise |",
          "|---|---|---|---|---|---|---|"]
    for s, t in per.items():
        p, b, sd = t["proxy"], t[BASELINE], t[SEED]
        beat = p["pairwise"]["mean"] > max(b["pairwise"]["mean"], sd["pairwise"]["mean"])
        L.append(f"| {s} | {_c(p['pairwise'])} / {_c(b['pairwise'])} / 0.50 | {_c(p['regret'], '.3f')} / "
                 f"{_c(b['regret'], '.3f')} / {_c(sd['regret'], '.3f')} | {_c(p['regret_same_size'], '.3f')} / "
                 f"{_c(b['regret_same_size'], '.3f')} / {_c(sd['regret_same_size'], '.3f')} | {_c(p['pearson'])} / {_c(b['pearson'])} | "
                 f"{_c(p['pearson_within_size'])} / {_c(b['pearson_within_size'])} | {'yes' if beat else 'no'} |")
    L += ["", "## Evaluation budget: standard error of a log PPL vs the spread between gold mixtures", "",
          "| eval set | SE of one log PPL | paired SE of a difference (median) | sd of gold log PPL | sd within size |",
          "|---|---:|---:|---:|---:|"]
    for s, e in prec.items():
        L.append(f"| {s} | {e['se_mean']:.4f} | {e['paired_se_median']:.4f} | {e['gold_sd']:.4f} | "
                 f"{e['gold_sd_within_size']:.4f} |")
    L += ["", "## Plateau of each seed model (ablation/plateau.py)", "",
          "| seed model | steps | tokens | slope over the last 20% (nats/step) [95% CI] | change over it | "
          "drop 9th -> 10th tenth [95% CI] | p (one-sided Welch) | on plateau |", "|---|---:|---:|---|---:|---|---:|---|"]
    for s, r in plateaus.items():
        L.append(f"| {s} | {r['steps']} | {r.get('tokens') or 0:,} | {r['slope_per_step']:.2e} [{r['slope_ci'][0]:.2e}, "
                 f"{r['slope_ci'][1]:.2e}] | {r['change_over_window']:+.4f} | {r['drop']:+.4f} [{r['drop_ci'][0]:+.4f}, "
                 f"{r['drop_ci'][1]:+.4f}] | {r['drop_p']:.3f} | {'yes' if r['on_plateau'] else 'NO'} |")
    return "\n".join(L)


def per_seed_markdown(per: dict, studies: list[str], plateaus: dict, BASELINE: str) -> str:
    """The headline numbers of each seed model on its own (a seed model off its plateau stands out)."""
    cols = [("pearson_within_size", ".2f"), ("pearson", ".2f"), ("pairwise", ".2f"), ("regret", ".3f")]
    L = ["## Each seed model on its own (proxy; mean-unit baseline in parentheses)", "",
         "| eval set | " + " | ".join(f"{s}{'' if plateaus[s]['on_plateau'] else ' (off plateau)'}: within / pooled / "
                                     "pairwise / regret" for s in studies) + " |",
         "|---|" + "---|" * len(studies)]
    for es, t in per.items():
        cells = []
        for i in range(len(studies)):
            cells.append(" / ".join(f"{t['proxy'][k]['values'][i]:{f}} ({t[BASELINE][k]['values'][i]:{f}})"
                                    for k, f in cols))
        L.append(f"| {es} | " + " | ".join(cells) + " |")
    return "\n".join(L)


def stage_times(root: Path) -> dict:
    """Wall seconds per task from times.jsonl (the last start and end of each), and the run's span."""
    recs = [json.loads(x) for x in (root / "times.jsonl").read_text().splitlines() if x.strip()]
    start, out = {}, {}
    for r in recs:
        if "task" in r:
            if r["event"] == "start":
                start[r["task"]] = r["t"]
            elif r["task"] in start:
                out[r["task"]] = round(r["t"] - start[r["task"]], 1)
    return {"seconds": out, "note": "wall clock; a resumed task counts its last attempt only"}


if __name__ == "__main__":
    sys.exit(main())
