"""Paired differences between two selectors of the arena (not only against random), seed by seed.

    python experiments/selection_arena/pairs.py RUN... --pair mates:mates-static --pair group:loss:loss

For each pair A:B (the last colon splits; `group:loss:loss` is group:loss against loss) and each
headline metric: the mean of A - B over the seeds that ran both, its 95% t and bootstrap intervals
and the seeds A won (report.paired_stats, the same statistics as the report's rows against random).
Also the share of the oracle's gain a selector keeps on the reference-evaluation loss,
(S - random) / (oracle - random), per seed and of the means. Writes JSON to stdout (or --out) and a
markdown table with --md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from datamates.report import paired_stats, run_metrics, summarize_run
from datamates.run_dir import RunDir

METRICS = ("lambada_openai loss", "held-out ppl (all)", "held-out clean loss", "LAMBADA eval ic", "LAMBADA eval nic",
           "junk share kept", "nine-task acc", "selection FLOPs")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--pair", action="append", default=[], help="A:B, selector A against selector B")
    ap.add_argument("--share", action="append", default=[], help="selector whose share of the oracle's gain to report")
    ap.add_argument("--out", default=None)
    ap.add_argument("--md", default=None)
    args = ap.parse_args()
    runs = [summarize_run(RunDir(Path(r))) for r in args.runs]
    out: dict = {"runs": [r["name"] for r in runs], "pairs": {}, "oracle_share": {}}
    lines = ["| A - B | metric | mean [95% t interval] | seeds A won | n | verdict |", "|---|---|---|---|---|---|"]
    for pair in args.pair:
        a, b = pair.rsplit(":", 1)
        res = {}
        for m in METRICS:
            d, lower = [], True
            for r in runs:
                sa, sb = r["selectors"].get(a), r["selectors"].get(b)
                if not sa or not sb:
                    continue
                xa, lower = run_metrics(sa).get(m, (None, True))
                xb, _ = run_metrics(sb).get(m, (None, True))
                if xa is not None and xb is not None:
                    d.append(xa - xb)
            if d:
                st = paired_stats(d, lower_is_better=lower)
                st["verdict"] = st["verdict"].replace("random", b)
                res[m] = st
                lines.append(f"| {a} - {b} | {m} | {st['mean']:.4g} [{st['t_ci'][0]:.4g}, {st['t_ci'][1]:.4g}] | "
                             f"{st['wins']}/{st['n']} | {st['n']} | {st['verdict']} |")
        out["pairs"][pair] = res
    m = METRICS[0]
    for s in args.share:
        per_seed, ds, do = [], [], []
        for r in runs:
            sel, orc, rnd = (r["selectors"].get(k) for k in (s, "oracle", "random"))
            if not (sel and orc and rnd):
                continue
            x, o, y = (run_metrics(v).get(m, (None, True))[0] for v in (sel, orc, rnd))
            ds.append(x - y)
            do.append(o - y)
            per_seed.append((x - y) / (o - y) if o != y else float("nan"))
        out["oracle_share"][s] = {"n": len(ds), "share_of_means": float(np.mean(ds) / np.mean(do)) if ds else None,
                                  "per_seed": per_seed, "delta_mean": float(np.mean(ds)) if ds else None,
                                  "oracle_delta_mean": float(np.mean(do)) if do else None}
    text = json.dumps(out, indent=2, default=float)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text)
    if args.md:
        Path(args.md).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
