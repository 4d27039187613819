"""Has the seed model reached its loss plateau? (Na et al. 2024 §3 branch every unit from a seed
trained to convergence; docs/ablation.md).

Two tests on the seed's per-step training loss (`train_log.jsonl`, one record per optimizer step):

    slope   least-squares slope of the loss over the last `tail` share of the steps, with its 95%
            t-interval (df = n - 2). Passes when the interval contains zero, or when the whole
            interval, times the window's length, lies within +-`tol` nats (the change over the
            window is below the tolerance even if it is significantly non-zero).
    drop    Welch's one-sided t-test of "the mean loss of the 9th tenth of the run is above the
            mean loss of the 10th tenth" (the two tenths hold different batches, so the test is
            unpaired). Passes when the drop is not significant at `alpha`.

The seed is on its plateau when both pass. `plateau_test` computes them; `write_plateau_report`
writes plateau.json, plateau.md and plateau.png (the curve, the fitted tail, the tenths' means)
into one report folder.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from datamates.core.train_loop import read_train_log
from datamates.errors import InputError
from datamates.run_dir import atomic_dir, atomic_write_json, atomic_write_text, meta_record


def plateau_test(loss: np.ndarray | list[float], *, tail: float = 0.2, alpha: float = 0.05,
                 tol: float = 0.0) -> dict[str, Any]:
    """Both plateau tests of the module docstring on a per-step loss curve (at least 20 steps)."""
    from scipy import stats

    y_all = np.asarray(loss, dtype=float)
    n = len(y_all)
    if n < 20:
        raise InputError(f"plateau test: {n} loss values; need at least 20 steps")
    if not 0 < tail <= 1:
        raise InputError(f"plateau test: tail = {tail}; expected a share of the steps in (0, 1]")
    w = max(3, int(round(n * tail)))
    x = np.arange(n - w, n, dtype=float)
    y = y_all[-w:]
    fit = stats.linregress(x, y)
    tq = float(stats.t.ppf(0.975, w - 2))
    lo, hi = fit.slope - tq * fit.stderr, fit.slope + tq * fit.stderr
    slope_ok = bool((lo <= 0 <= hi) or (max(abs(lo), abs(hi)) * w <= tol))

    tenth = n // 10
    a, b = y_all[n - 2 * tenth : n - tenth], y_all[n - tenth :]
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    drop = float(a.mean() - b.mean())
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if se > 0 else float(len(a) + len(b) - 2)
    t = drop / se if se > 0 else (0.0 if drop == 0 else math.copysign(math.inf, drop))
    p = float(stats.t.sf(t, df))
    tq2 = float(stats.t.ppf(0.975, df))
    drop_ok = bool(p >= alpha)
    return {
        "steps": n, "tail": tail, "window": w, "alpha": alpha, "tol": tol,
        "slope_per_step": float(fit.slope), "slope_se": float(fit.stderr), "slope_ci": [float(lo), float(hi)],
        "change_over_window": float(fit.slope * w), "change_over_window_ci": [float(lo * w), float(hi * w)],
        "slope_ok": slope_ok,
        "tenth": tenth, "mean_9th_tenth": float(a.mean()), "mean_10th_tenth": float(b.mean()),
        "drop": drop, "drop_se": se, "drop_ci": [drop - tq2 * se, drop + tq2 * se], "drop_t": float(t),
        "drop_df": float(df), "drop_p": p, "drop_ok": drop_ok,
        "on_plateau": slope_ok and drop_ok,
        "mean_first_tenth": float(y_all[:tenth].mean()), "mean_middle_tenth": float(y_all[n // 2 - tenth // 2 : n // 2 + (tenth + 1) // 2].mean()),
    }


def read_losses(checkpoint: str | Path) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Per-step losses of a checkpoint's train_log.jsonl (steps must be consecutive from 1)."""
    recs = read_train_log(checkpoint)
    if not recs:
        raise InputError(f"{checkpoint}: no train_log.jsonl records; the plateau test needs the per-step loss")
    steps = [r["step"] for r in recs]
    if steps != list(range(1, len(recs) + 1)):
        raise InputError(f"{checkpoint}/train_log.jsonl: steps are not 1..{len(recs)} (one record per step)")
    return np.array([r["loss"] for r in recs], dtype=float), recs


def plateau_markdown(name: str, res: dict[str, Any]) -> str:
    f = lambda v: f"{v:.2e}"  # noqa: E731
    return "\n".join([
        f"## Plateau test: {name}",
        "",
        f"- steps {res['steps']}; first tenth {res['mean_first_tenth']:.3f}, middle tenth {res['mean_middle_tenth']:.3f}, "
        f"9th tenth {res['mean_9th_tenth']:.4f}, last tenth {res['mean_10th_tenth']:.4f} nats",
        f"- slope over the last {res['window']} steps: {f(res['slope_per_step'])} nats/step, 95% CI "
        f"[{f(res['slope_ci'][0])}, {f(res['slope_ci'][1])}] (change over the window {res['change_over_window']:+.4f} "
        f"[{res['change_over_window_ci'][0]:+.4f}, {res['change_over_window_ci'][1]:+.4f}], tolerance {res['tol']:g}): "
        f"**{'pass' if res['slope_ok'] else 'FAIL'}**",
        f"- drop 9th -> 10th tenth: {res['drop']:+.4f} nats, 95% CI [{res['drop_ci'][0]:+.4f}, {res['drop_ci'][1]:+.4f}], "
        f"Welch t = {res['drop_t']:.2f} (df {res['drop_df']:.0f}), one-sided p = {res['drop_p']:.3f} (alpha {res['alpha']}): "
        f"**{'pass' if res['drop_ok'] else 'FAIL'}**",
        f"- on the plateau: **{'yes' if res['on_plateau'] else 'NO'}**",
        "",
    ])


def plot_plateau(loss: np.ndarray, res: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(loss)
    x = np.arange(1, n + 1)
    k = max(1, n // 100)
    smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, lo in zip(axes, (0, n - 2 * res["tenth"])):
        ax.plot(x[lo:], loss[lo:], lw=0.4, alpha=0.35, color="tab:blue", label="per-step loss")
        xs = x[k - 1 :]
        m = xs > lo
        ax.plot(xs[m], smooth[m], lw=1.2, color="tab:blue", label=f"mean of {k} steps")
        xw = np.arange(n - res["window"], n, dtype=float)
        b = res["slope_per_step"]
        a = loss[-res["window"]:].mean() - b * xw.mean()
        ax.plot(xw + 1, a + b * xw, color="tab:red", lw=1.5, label=f"tail slope {b:.1e}/step")
        t = res["tenth"]
        ax.hlines([res["mean_9th_tenth"], res["mean_10th_tenth"]], [n - 2 * t + 1, n - t + 1], [n - t, n],
                  colors="k", lw=2, label="tenths 9 and 10")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (nats)")
    lo_y = min(res["mean_10th_tenth"], res["mean_9th_tenth"])
    axes[1].set_ylim(lo_y - 0.4, lo_y + 0.4)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{title}: {'on the plateau' if res['on_plateau'] else 'NOT on the plateau'} "
                 f"(slope {'ok' if res['slope_ok'] else 'fails'}, p(drop) = {res['drop_p']:.2f})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plateau_report(checkpoint: str | Path, out: str | Path, *, name: str | None = None, tail: float = 0.2,
                         alpha: float = 0.05, tol: float = 0.0, plot: bool = True) -> dict[str, Any]:
    """Test the seed `checkpoint`'s loss curve and write plateau.json / plateau.md / plateau.png
    into the folder `out` (atomically). Returns the test's result."""
    loss, recs = read_losses(checkpoint)
    res = plateau_test(loss, tail=tail, alpha=alpha, tol=tol)
    res["final_lr"] = recs[-1].get("lr")
    res["tokens"] = recs[-1].get("tokens")
    res["checkpoint"] = str(checkpoint)
    name = name or Path(checkpoint).name
    with atomic_dir(Path(out), meta=meta_record("plateau", checkpoint=str(checkpoint))) as tmp:
        atomic_write_json(tmp / "plateau.json", res)
        atomic_write_text(tmp / "plateau.md", plateau_markdown(name, res))
        if plot:
            plot_plateau(loss, res, tmp / "plateau.png", name)
    return res


def read_plateau(out: str | Path) -> dict[str, Any]:
    return json.loads((Path(out) / "plateau.json").read_text())
