"""`datamates report RUN...` on hand-made run folders: runs that differ only in seed are grouped,
every selector is paired with `random` of the same run, and the paired interval equals scipy's t
interval (and the t-test) on the hand-made table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from datamates.cli import main
from datamates.report import group_runs, paired_stats, paired_table, summarize_run
from datamates.run_dir import RunDir

# lambada loss of each selector in five seed runs (lower is better): mates wins 4 of 5
TABLE = {
    "random": [3.10, 3.05, 3.20, 3.12, 3.08],
    "mates": [3.02, 3.01, 3.15, 3.14, 3.00],
    "loss": [3.30, 3.21, 3.35, 3.28, 3.25],
}
GOLD_PROB = {"random": [0.30, 0.31, 0.29, 0.30, 0.32], "mates": [0.31, 0.30, 0.30, 0.31, 0.31],
             "loss": [0.30, 0.31, 0.29, 0.30, 0.32]}


def _eval_json(loss: float, prob: float) -> dict:
    return {"reference": {"lambada_openai": {"loss": loss, "acc": 0.1, "ppl": math.exp(loss)}},
            "tasks": {}, "nine_task_mean": {"value": 0.25, "stderr": 0.01, "n_tasks": 9, "metrics": {}},
            "nine_task_gold_logprob": {"value": -2.0 + prob, "stderr": 0.01, "n_tasks": 9},
            "nine_task_gold_prob": {"value": prob, "stderr": 0.01, "n_tasks": 9},
            "perplexity": {"heldout": {"all": {"ppl": 50 * loss}, "domains": {"web": {"ppl": 60 * loss}}}}}


def _done(d: Path, files: dict[str, dict]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for name, obj in files.items():
        (d / name).write_text(json.dumps(obj))
    (d / "DONE").write_text("")


def make_run(root: Path, name: str, seed: int, i: int, *, lr: float = 3e-3) -> Path:
    rd = root / name
    (rd / "pool").mkdir(parents=True)
    cfg = {"name": name, "runs_root": str(root), "config_hash": f"h{seed}{lr}", "train": {"lr": lr, "seed": seed},
           "mates": {"selectors": list(TABLE), "select": {"seed": seed, "temperature": 0.5}}}
    (rd / "config.yaml").write_text(yaml.safe_dump(cfg))
    _done(rd / "warmup" / "stage_01" / "checkpoint", {"train_summary.json": {"tokens": 1000, "flops_per_token": 6.0}})
    for sel in TABLE:
        _done(rd / sel / "stage_02" / "checkpoint", {"train_summary.json": {"tokens": 1000, "flops_per_token": 6.0}})
        if sel != "random":  # 100 forward tokens at 2 FLOPs each
            _done(rd / sel / "stage_02" / "probe", {"meta.json": {"tokens": {"lm_forward": 100},
                                                                   "flops_per_token": {"lm_forward": 2.0}}})
        _done(rd / sel / "eval", {"eval.json": _eval_json(TABLE[sel][i], GOLD_PROB[sel][i]),
                                  "meta.json": {"tokens": {"lm_forward": 10}, "flops_per_token": {"lm_forward": 2.0}}})
    return rd


@pytest.fixture
def five_seeds(tmp_path) -> list[Path]:
    return [make_run(tmp_path / "runs", f"arena_s{s}", seed=s, i=i) for i, s in enumerate([1, 2, 3, 4, 5])]


def test_paired_interval_matches_scipy_t_interval(five_seeds):
    runs = [summarize_run(RunDir(r)) for r in five_seeds]
    (group,) = group_runs(runs)
    assert len(group) == 5
    rows = {(r["metric"], r["selector"]): r for r in paired_table(group)}
    r = rows[("lambada_openai loss", "mates")]
    d = np.array(TABLE["mates"]) - np.array(TABLE["random"])
    lo, hi = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    assert r["t_ci"] == pytest.approx((lo, hi), abs=1e-12)
    assert r["mean"] == pytest.approx(d.mean()) and r["sd"] == pytest.approx(d.std(ddof=1))
    assert r["p"] == pytest.approx(stats.ttest_rel(TABLE["mates"], TABLE["random"]).pvalue, rel=1e-9)
    ci = stats.ttest_rel(TABLE["mates"], TABLE["random"]).confidence_interval(0.95)
    assert r["t_ci"] == pytest.approx((ci.low, ci.high), abs=1e-12)
    assert r["wins"] == 4 and r["n"] == 5
    assert r["verdict"] == "not distinguishable"  # the interval straddles 0
    assert r["selector_mean_sd"][0] == pytest.approx(np.mean(TABLE["mates"]))
    assert r["random_mean_sd"][1] == pytest.approx(np.std(TABLE["random"], ddof=1))
    # the bootstrap interval lies inside the range of the seed differences and around the mean
    assert d.min() <= r["boot_ci"][0] <= d.mean() <= r["boot_ci"][1] <= d.max()
    worse = rows[("lambada_openai loss", "loss")]
    assert worse["verdict"] == "worse than random at 95%" and worse["wins"] == 0
    # higher-is-better metrics: mates' gold probability is higher in 3 seeds
    gp = rows[("nine-task gold prob", "mates")]
    assert gp["lower_is_better"] is False and gp["wins"] == 3
    # identical to random: no difference, no win, not distinguishable
    same = rows[("nine-task gold prob", "loss")]
    assert same["mean"] == 0 and same["wins"] == 0 and same["verdict"] == "not distinguishable"
    # counted selection FLOPs: 100 forward tokens x 2 FLOPs, random none
    fl = rows[("selection FLOPs", "mates")]
    assert fl["mean"] == pytest.approx(200.0) and fl["verdict"] == "worse than random at 95%"


def test_verdict_better_at_95():
    d = [-0.1, -0.12, -0.09, -0.11, -0.1]
    r = paired_stats(d, lower_is_better=True)
    assert r["verdict"] == "better than random at 95%" and r["wins"] == 5
    r = paired_stats(d, lower_is_better=False)
    assert r["verdict"] == "worse than random at 95%" and r["wins"] == 0
    assert paired_stats([0.3], lower_is_better=True)["verdict"].startswith("not distinguishable (1 seed")


def test_runs_group_by_everything_but_seed(tmp_path):
    a = [make_run(tmp_path / "runs", f"a{s}", seed=s, i=s) for s in range(3)]
    b = [make_run(tmp_path / "runs", f"b{s}", seed=s, i=s, lr=1e-3) for s in range(2)]
    runs = [summarize_run(RunDir(r)) for r in a + b]
    groups = group_runs(runs)
    assert [[r["name"] for r in g] for g in groups] == [["a0", "a1", "a2"], ["b0", "b1"]]


def test_a_selector_added_to_some_seeds_keeps_them_in_one_group(tmp_path):
    """`mates.selectors` says which branches ran, not how: seeds whose config lists differ only there
    pair together (the arena adds selectors to finished seeds)."""
    import yaml

    runs = [make_run(tmp_path / "runs", f"a{s}", seed=s, i=s) for s in range(3)]
    cfg = yaml.safe_load((runs[0] / "config.yaml").read_text())
    cfg["mates"]["selectors"] = ["random", "mates"]
    (runs[0] / "config.yaml").write_text(yaml.safe_dump(cfg))
    groups = group_runs([summarize_run(RunDir(r)) for r in runs])
    assert [[r["name"] for r in g] for g in groups] == [["a0", "a1", "a2"]]


def test_report_files_and_cli(five_seeds, tmp_path, capsys):
    out = tmp_path / "rep"
    code = main(["report", *map(str, five_seeds), "--out", str(out)])
    assert code == 0
    md = (out / "report.md").read_text()
    assert "Paired against random" in md
    row = next(line for line in md.splitlines() if line.startswith("| lambada_openai loss (↓ better) | mates |"))
    assert "4/5" in row and "not distinguishable" in row
    assert (out / "forest_lambada_openai_loss.png").exists()
    html = (out / "report.html").read_text()
    assert "data:image/png;base64" in html and "not distinguishable" in html
    printed = capsys.readouterr().out
    assert "worse than random at 95%" in printed


def test_missing_token_count_is_an_error_naming_the_artifact(five_seeds, capsys):
    """No multiplier, no fallback: a probe folder without counts is reported by name."""
    bad = five_seeds[0] / "mates" / "stage_02" / "probe"
    (bad / "meta.json").write_text(json.dumps({"n_probes": 100, "mode": "exact"}))
    m = summarize_run(RunDir(five_seeds[0]))
    acc = m["selectors"]["mates"]["accounting"]
    (err,) = acc["errors"]
    assert str(bad / "meta.json") in err and "tokens" in err
    assert math.isnan(acc["flops"]["probe"]) and math.isnan(acc["flops"]["selection"])
    assert acc["flops"]["train"] == 2 * 1000 * 6.0  # what is counted stays
    assert m["selectors"]["random"]["accounting"]["errors"] == []
    assert main(["report", *map(str, five_seeds), "--out", str(five_seeds[0] / "rep")]) == 0
    assert "FLOPs not counted" in capsys.readouterr().err
    md = (five_seeds[0] / "rep" / "report.md").read_text()
    assert f"- mates: FLOPs not counted: {err}" in md
    flops_row = next(line for line in md.splitlines() if line.startswith("| mates | 12000.0000 |"))
    assert "not counted" in flops_row  # probe, selection and total: no number for mates


def test_noise_share_is_paired_and_a_noisier_selector_flagged(five_seeds):
    """<run>/noise.json (experiments/selection_arena/noise.py): `loss` keeps more noise than random."""
    for i, r in enumerate(five_seeds):
        rand = 0.06 + 0.001 * i
        (r / "noise.json").write_text(json.dumps({"domain": "noise", "random": rand, "selectors": {
            "mates": {"kept": rand - 0.002, "more_than_random": False},
            "loss": {"kept": rand + 0.05, "more_than_random": True}}}))
    runs = [summarize_run(RunDir(r)) for r in five_seeds]
    rows = {(r["metric"], r["selector"]): r for r in paired_table(runs)}
    assert rows[("noise share kept", "loss")]["mean"] == pytest.approx(0.05)
    assert rows[("noise share kept", "loss")]["verdict"] == "worse than random at 95%"
    assert rows[("noise share kept", "mates")]["wins"] == 5
    from datamates.report import paired_markdown

    md = paired_markdown(runs)
    assert "**Flagged:** `loss` keeps more planted noise than random" in md and "in 5 of 5 seed runs" in md
    assert "Flagged:** `mates`" not in md
