"""Run the MATES vs random vs oracle comparison for several seeds, then the report.

    python experiments/mates_vs_random/run.py --seeds 0 1 2 [--set key=value ...]

Each seed is its own run (runs/mvr_s<seed>): model init, data order, plan and Gumbel noise all
follow the seed. Every run resumes where it stopped if interrupted. The aggregate goes to
results.json and report/ (mean and standard deviation over seeds).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--config", default=str(HERE / "config.yaml"))
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--tag", default="mvr")
    args = ap.parse_args()
    runs = []
    for seed in args.seeds:
        name = f"{args.tag}_s{seed}"
        sets = [f"name={name}", f"train.seed={seed}", f"mates.select.seed={seed}", f"mates.plan_seed={seed}", *args.sets]
        cmd = [sys.executable, "-m", "datamates", "run", "-c", args.config, "--no-report"]
        for s in sets:
            cmd += ["--set", s]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        runs.append(str(HERE / "runs" / name))
    from datamates.report import build_report, comparison_rows, summarize_run
    from datamates.run_dir import RunDir

    report = build_report(runs, HERE / "report" / args.tag)
    summaries = [summarize_run(RunDir(r)) for r in runs]
    rows = comparison_rows(summaries)
    (HERE / f"results_{args.tag}.json").write_text(json.dumps({"runs": runs, "comparison": rows}, indent=2, default=str))
    print(f"report: {report}")


if __name__ == "__main__":
    main()
