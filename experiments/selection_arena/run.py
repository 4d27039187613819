"""Run the selection arena for several seeds, then the paired tables (issue 18; README.md).

    python experiments/selection_arena/run.py --seeds 0 1 2 3 4 [--config configs/arena_gpu.yaml]
                                              [--tag arena] [--set key=value ...]

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


def _datamates(*args: str) -> list[str]:
    return [sys.executable, "-m", "datamates", *args]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--config", default=str(ROOT / "configs" / "arena_cpu.yaml"))
    ap.add_argument("--tag", default=None, help="run name prefix (default: the config's name)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config override, key=value")
    ap.add_argument("--no-report", action="store_true", help="only the runs, not the tables")
    args = ap.parse_args()
    from datamates.config.run import load_config
    from datamates.errors import DatamatesError
    from datamates.selectors import resolve_selectors

    try:
        cfg = load_config(args.config, args.sets)
    except DatamatesError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tag = args.tag or cfg.name
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
