"""Run the selection arena for several seeds, then the paired tables (issue 18; README.md).

    python experiments/selection_arena/run.py --seeds 0 1 2 3 4 [--config configs/arena_gpu.yaml]
                                              [--tag arena] [--junk-rate 0.07] [--set key=value ...]

Planted junk is a standing measurement (issue 30; datamates.junk): the config's one input folder is
copied (linked) with about `--junk-rate` of its tokens added as junk of four kinds
(`runs/junk_corpus`, shared by every arena config), and every run writes `noise.json` (junk kept per selector, kind and stage)
and `<branch>/targets.json` (targets.py: held-out clean loss by domain, LAMBADA in- and
not-in-context apart) for the report. `--junk-rate 0`: the plain pool.
The shared pool (the config's `pool_dir`) is built once. Seeds run one after another, each its own
run directory `<runs_root>/<tag>_s<seed>` (model init, data order, plan and Gumbel noise follow the
seed; within a seed every selector shares the warmup model, the plan and the noise, so differences
are paired). Resume: re-running the same command continues a killed seed where it stopped (every
stage has a DONE marker) and skips finished seeds; a selector registered later (the arena configs
say `selectors: [all]`) runs only its own branches, from the stored warmup checkpoint. Then
`datamates report RUN...` writes the paired tables (report/<tag>/) and the per-seed wall time is
appended to `<tag>_timing.json`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))


def _datamates(*args: str) -> list[str]:
    return [sys.executable, "-m", "datamates", *args]


def plant_junk(cfg, tag: str, rate: float, seed: int) -> Path:
    """runs/junk_corpus: the config's one input folder plus planted junk (datamates.junk.plant);
    refuses a shared pool that was built without junk."""
    from datamates.errors import ConfigError
    from datamates.junk import is_junk_domain, plant

    inputs = [Path(p) for p in cfg.pool.inputs]
    corpus = HERE / "runs" / "junk_corpus"
    if len(inputs) == 1 and inputs[0].resolve() == corpus.resolve():
        return corpus
    if len(inputs) != 1 or not inputs[0].is_dir():
        raise ConfigError(f"pool.inputs = {cfg.pool.inputs}: planting junk needs one input folder of domain folders; "
                          "or pass --junk-rate 0")
    if cfg.pool_dir and (Path(cfg.pool_dir) / "DONE").exists():
        domains = json.loads((Path(cfg.pool_dir) / "meta.json").read_text())["domains"]
        if not any(is_junk_domain(d) for d in domains):
            raise ConfigError(f"{cfg.pool_dir}: this shared pool was built without planted junk; delete it (it is "
                              "rebuilt with junk) or pass --junk-rate 0")
    counts = plant(inputs[0], corpus, rate, seed=seed)
    (HERE / "runs" / "junk_corpus.json").write_text(json.dumps(counts, indent=2))
    return corpus


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--config", default=str(ROOT / "configs" / "arena_cpu.yaml"))
    ap.add_argument("--tag", default=None, help="run name prefix (default: the config's name)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config override, key=value")
    ap.add_argument("--no-report", action="store_true", help="only the runs, not the tables")
    ap.add_argument("--junk-rate", type=float, default=0.07, help="planted junk, share of the tokens; 0: none")
    ap.add_argument("--junk-seed", type=int, default=0)
    args = ap.parse_args()
    from datamates.config.run import load_config
    from datamates.errors import DatamatesError
    from datamates.selectors import resolve_selectors

    try:
        cfg = load_config(args.config, args.sets)
        tag = args.tag or cfg.name
        if args.junk_rate > 0:
            args.sets = [*args.sets, f"pool.inputs=[{plant_junk(cfg, tag, args.junk_rate, args.junk_seed)}]"]
            cfg = load_config(args.config, args.sets)
    except DatamatesError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if cfg.pool_dir and not (Path(cfg.pool_dir) / "DONE").exists():
        cmd = _datamates("pool", "build", "-c", args.config, "--out", cfg.pool_dir)
        for s in args.sets:
            cmd += ["--set", s]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    runs, timing_file = [], HERE / f"{tag}_timing.json"
    timing = json.loads(timing_file.read_text()) if timing_file.exists() else {}
    for seed in args.seeds:
        name = f"{tag}_s{seed}"
        sets = [f"name={name}", f"train.seed={seed}", f"mates.select.seed={seed}", f"mates.plan_seed={seed}",
                *args.sets]
        cmd = _datamates("run", "-c", args.config, "--no-report")
        for s in sets:
            cmd += ["--set", s]
        print("+", " ".join(cmd), flush=True)
        t0 = time.time()
        r = subprocess.run(cmd)
        if r.returncode:
            print(f"seed {seed}: datamates run exited {r.returncode}; re-run this command to resume", file=sys.stderr)
            return r.returncode
        from targets import write_targets

        write_targets(Path(cfg.runs_root) / name)
        timing[name] = {"seconds_this_call": round(time.time() - t0, 1), "selectors": resolve_selectors(cfg.mates.selectors)}
        tmp = timing_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(timing, indent=2))
        tmp.rename(timing_file)
        runs.append(str(Path(cfg.runs_root) / name))
    if args.no_report:
        return 0
    cmd = _datamates("report", *runs, "--out", str(HERE / "report" / tag))
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd).returncode


if __name__ == "__main__":
    sys.exit(main())
