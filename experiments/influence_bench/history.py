"""Do an earlier stage's labels help this stage's fit? (issue 14 item 3, `mates.label_history`)

The label sets share their candidates (labels.py), so for (earlier, current) = (early, middle) and
(middle, current = late) the default variant (ridge on stats + hidden + fo of the CURRENT checkpoint,
cached by run.py in runs/features/) is fitted on n of the current set's training labels alone, and
on the same rows plus the earlier set's labels of those rows with weight w (weighted ridge, as
`fit` does with history); validation: the current set's validation rows. Also the stage-to-stage
Spearman of the labels themselves.

    .venv/bin/python experiments/influence_bench/history.py [--suffix _n800]   # writes history.json (issue 14's: commit 69dfbd9)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import label_set, read  # noqa: E402

KINDS = ["stats", "hidden", "fo"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--suffix", default="", help="feature cache suffix of run.py --max-n runs, e.g. _n800")
    args = ap.parse_args()
    from datamates.selection.fit import fit_head
    from datamates.selection.influence_model import predict_head

    out = {}
    for earlier, current in (("early", "middle"), ("middle", "late")):
        f = HERE / "runs" / "features" / f"{current}{args.suffix}.npz"
        if not f.exists() or label_set(earlier) is None:
            print(f"{earlier} -> {current}: features or labels missing; skipped")
            continue
        z = np.load(f)
        ids = z["ids"]
        X = np.concatenate([z[f"|{k}"] for k in KINDS], axis=1)  # run.py's cache: "<view>|<kind>", "" = the whole LM
        _, _, _, _, all_ids, split = label_set(current)
        sp = dict(zip(all_ids.tolist(), split.tolist(), strict=True))
        cur, old = read(label_set(current)[0]), read(label_set(earlier)[0])
        y, y0 = np.array([cur[int(i)] for i in ids]), np.array([old[int(i)] for i in ids])
        va = np.array([j for j, i in enumerate(ids) if sp[int(i)] == 1])
        tr = np.array([j for j, i in enumerate(ids) if sp[int(i)] == 0])
        rho_labels = float(spearmanr(y, y0).statistic)
        res = {"label_spearman": rho_labels, "n_val": int(len(va)), "rows": []}
        mu, sd = y[tr].mean(), y[tr].std()
        for n in (77, 307, len(tr)):
            sub = tr[np.random.default_rng(n).permutation(len(tr))[:n]]
            for w in (0.0, 0.25, 0.5, 1.0):
                if w == 0:
                    m = fit_head(X[sub], (y[sub] - mu) / sd)
                else:
                    m = fit_head(np.concatenate([X[sub], X[sub]]), np.concatenate([(y[sub] - mu) / sd, (y0[sub] - mu) / sd]),
                                 weights=np.concatenate([np.ones(n), np.full(n, w)]))
                rho = float(spearmanr(predict_head(m, X[va]), y[va]).statistic)
                res["rows"].append({"n_current": int(n), "weight_earlier": w, "val_spearman": rho})
                print(f"{earlier:6s} -> {current:6s} labels rho {rho_labels:+.3f}  n {n:4d}  w {w:4.2f}  val {rho:+.3f}")
        out[f"{earlier}->{current}"] = res
    (HERE / f"history{args.suffix}.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
