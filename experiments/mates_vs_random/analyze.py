"""Tables for the write-up from the runs' metrics: per selector mean ± sd over seeds, and the paired
difference to random (same seed: same warmup model, plan and Gumbel noise).

    python experiments/mates_vs_random/analyze.py [--tag mvr] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def metric_rows(m: dict) -> dict[str, float]:
    out = {}
    for sel, v in m["selectors"].items():
        f = v["final_eval"]
        out[(sel, "LAMBADA loss")] = f["reference"]["lambada_openai"]["loss"]
        out[(sel, "nine-task mean")] = f["nine_task_mean"]["value"]
        out[(sel, "held-out ppl (all)")] = f["perplexity"]["heldout"]["all"]["ppl"]
        for d, r in f["perplexity"]["heldout"]["domains"].items():
            out[(sel, f"held-out ppl {d}")] = r["ppl"]
        for t, r in f["tasks"].items():
            out[(sel, f"{t} ({r['metric']})")] = r[r["metric"]]
        out[(sel, "selection FLOPs")] = v["accounting"]["flops"]["selection"]
        out[(sel, "training FLOPs")] = v["accounting"]["flops"]["train"]
        out[(sel, "selection seconds")] = sum(v["accounting"]["seconds"].get(c, 0) for c in ("probe", "fit", "score"))
        out[(sel, "training seconds")] = v["accounting"]["seconds"].get("train", 0)
    return out


def domain_shares(m: dict) -> dict[str, dict[str, float]]:
    out = {}
    for sel, v in m["selectors"].items():
        tot: dict[str, float] = {}
        for row in v["selected_domains"]:
            if row["stage"] == 1:
                continue  # the shared warmup stage
            for d, c in row["counts"].items():
                tot[d] = tot.get(d, 0) + c
        n = sum(tot.values()) or 1
        out[sel] = {d: c / n for d, c in tot.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tag", default="mvr")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    ms = [json.loads((HERE / "runs" / f"{args.tag}_s{s}" / "metrics.json").read_text()) for s in args.seeds]
    rows = [metric_rows(m) for m in ms]
    sels = list(ms[0]["selectors"])
    metrics = list(dict.fromkeys(k[1] for k in rows[0]))
    lines = [f"| metric | {' | '.join(sels)} | " + " | ".join(f"{s} - random (paired)" for s in sels if s != "random") + " |",
             "|" + "---|" * (1 + len(sels) + len(sels) - 1)]
    summary = {}
    for met in metrics:
        cells, diffs = [], []
        for s in sels:
            vals = np.array([r[(s, met)] for r in rows])
            summary[f"{s}/{met}"] = {"mean": float(vals.mean()), "sd": float(vals.std(ddof=1)), "values": vals.tolist()}
            cells.append(_fmt(vals))
        for s in sels:
            if s == "random":
                continue
            d = np.array([r[(s, met)] - r[("random", met)] for r in rows])
            summary[f"{s}-random/{met}"] = {"mean": float(d.mean()), "sd": float(d.std(ddof=1)), "values": d.tolist()}
            diffs.append(_fmt(d, signed=True))
        lines.append(f"| {met} | " + " | ".join(cells) + " | " + " | ".join(diffs) + " |")
    shares = [domain_shares(m) for m in ms]
    doms = sorted({d for sh in shares for s in sh.values() for d in s})
    share_lines = ["| selected share (stages 2-4) | " + " | ".join(doms) + " |", "|" + "---|" * (len(doms) + 1)]
    for s in sels:
        share_lines.append(f"| {s} | " + " | ".join(f"{np.mean([sh[s].get(d, 0) for sh in shares]):.3f}" for d in doms) + " |")
    fits = []
    for m in ms:
        for f in m["selectors"].get("mates", {}).get("fit", []):
            fits.append(f["val_spearman"])
    text = "\n".join(lines) + "\n\n" + "\n".join(share_lines)
    if fits:
        text += (f"\n\nInfluence-model validation Spearman over {len(fits)} stage fits: "
                 f"{np.mean(fits):.3f} ± {np.std(fits, ddof=1):.3f} (min {min(fits):.3f}, max {max(fits):.3f})")
    (HERE / f"tables_{args.tag}.md").write_text(text + "\n")
    (HERE / f"summary_{args.tag}.json").write_text(json.dumps(summary, indent=2))
    print(text)


def _fmt(v: np.ndarray, signed: bool = False) -> str:
    m, s = float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0
    big = abs(m) >= 1e4
    if big:
        return f"{m:+.3g} ± {s:.2g}" if signed else f"{m:.3g} ± {s:.2g}"
    return f"{m:+.4f} ± {s:.4f}" if signed else f"{m:.4f} ± {s:.4f}"


if __name__ == "__main__":
    main()
