"""Issue 29: the plateau criterion, "which mixture is best" (regret, pairwise decision accuracy) by
hand, and a study that trains every multi-unit gold mixture exactly once and resumes to the same
bytes."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from ablation_helpers import TINY, study_config

from datamates.ablation.plateau import plateau_test, write_plateau_report
from datamates.ablation.stats import decision_stats, mean_ci, pick_regret, seed_model_table
from datamates.errors import InputError

# ----------------------------------------------------------------------------- plateau


def _noise(n: int, seed: int = 0, sd: float = 0.2) -> np.ndarray:
    return sd * np.random.default_rng(seed).standard_normal(n)


@pytest.mark.parametrize("seed", range(3))
def test_plateau_flat_noisy_curve_passes(seed):
    r = plateau_test(4.0 + _noise(2000, seed))
    assert r["slope_ci"][0] <= 0 <= r["slope_ci"][1] and r["slope_ok"]
    assert r["drop_p"] > 0.05 and r["drop_ok"] and r["on_plateau"]


@pytest.mark.parametrize("seed", range(3))
def test_plateau_decreasing_curve_fails(seed):
    t = np.arange(2000)
    r = plateau_test(4.0 + 2.0 * np.exp(-t / 2500) + _noise(2000, seed))  # still 0.1 nats per 10% of the run
    assert not r["on_plateau"]
    assert r["slope_ci"][1] < 0 and not r["slope_ok"]
    assert r["drop"] > 0 and r["drop_p"] < 0.05 and not r["drop_ok"]


def test_plateau_drop_in_the_last_tenth_alone_fails():
    # flat, then a 0.1-nat step down at 90% of the run: the last-two-tenths test must catch it
    y = 4.0 + _noise(2000, 5, sd=0.1)
    y[1800:] -= 0.1
    r = plateau_test(y)
    assert r["drop"] == pytest.approx(0.1, abs=0.03) and not r["drop_ok"] and not r["on_plateau"]


def test_plateau_tolerance_accepts_a_tiny_significant_slope():
    t = np.arange(4000, dtype=float)
    y = 4.0 - 2e-7 * t + _noise(4000, 1, sd=0.001)  # significant, but 0.00016 nats over the tail
    assert not plateau_test(y)["slope_ok"]
    assert plateau_test(y, tol=0.01)["slope_ok"]


def test_plateau_needs_a_curve():
    with pytest.raises(InputError, match="at least 20 steps"):
        plateau_test([1.0] * 5)


def test_plateau_report_from_a_checkpoint(tmp_path):
    ck = tmp_path / "seed"
    ck.mkdir()
    y = 4.0 + _noise(200, 2)
    (ck / "train_log.jsonl").write_text("".join(json.dumps({"step": i + 1, "loss": float(v), "lr": 1e-4,
                                                            "tokens": 100 * (i + 1)}) + "\n" for i, v in enumerate(y)))
    res = write_plateau_report(ck, tmp_path / "plateau", plot=False)
    assert res == json.loads((tmp_path / "plateau" / "plateau.json").read_text())
    assert res["on_plateau"] == plateau_test(y)["on_plateau"] and res["tokens"] == 20000
    assert "on the plateau" in (tmp_path / "plateau" / "plateau.md").read_text()


# ----------------------------------------------------------------------------- which mixture is best


def test_regret_and_pairwise_by_hand():
    pred = np.array([0.1, 0.3, 0.2, 0.4])
    gold = np.array([1.2, 1.0, 1.1, 1.3])
    # the proxy picks mixture 0 (gold 1.2); the gold best is mixture 1 (1.0)
    assert pick_regret(pred, gold) == pytest.approx(0.2)
    # pairs (0,1) (0,2) (1,2) are ordered against gold; (0,3) (1,3) (2,3) with it: 3 of 6
    d = decision_stats(pred, gold, np.array([2, 2, 3, 3]))
    assert d["pairwise"] == pytest.approx(0.5)
    assert d["pairwise_same_size"] == pytest.approx(0.5)  # (0,1) wrong, (2,3) right
    assert d["picks_best"] == 0.0 and d["regret"] == pytest.approx(0.2)
    # within size 2 the proxy picks 0 (1.2; best 1.0), within size 3 it picks 2 (1.1, the best): (0.2 + 0) / 2
    assert d["regret_same_size"] == pytest.approx(0.1)
    # a perfect predictor has no regret; a constant one scores a random pick: mean(gold) - min(gold)
    assert pick_regret(gold, gold) == 0.0
    assert pick_regret(np.zeros(4), gold) == pytest.approx(gold.mean() - 1.0)
    # ties at the top share the pick: mixtures 1 and 2 tied -> (0 + 0.1) / 2
    assert pick_regret(np.array([0.5, 0.1, 0.1, 0.9]), gold) == pytest.approx(0.05)


def test_mean_ci_over_seed_models_by_hand():
    r = mean_ci([1.0, 2.0, 3.0])
    h = 4.302653 * 1.0 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert r["mean"] == 2.0 and r["ci"] == pytest.approx((2 - h, 2 + h), rel=1e-5)


def _fake_results(gold_vals, proxy_vals, unit_vals, seed_val):
    """A minimal `ablate` results dict on one evaluation set 'x'."""
    ev = lambda v: {"x": {"logppl": float(v)}}  # noqa: E731
    units = sorted(unit_vals)
    proxies = [{"mixture": u, "k": 1, "eval": ev(v), "evals": {"uniform": ev(v)}} for u, v in unit_vals.items()]
    proxies += [{"mixture": m, "k": m.count("+") + 1, "eval": ev(v), "evals": {"uniform": ev(v)}}
                for m, v in proxy_vals.items()]
    gold = [{"mixture": m, "k": m.count("+") + 1, "eval": ev(v)} for m, v in gold_vals.items()]
    return {"eval_sets": ["x"], "method": "uniform", "proxies": proxies, "gold": gold,
            "seed": {"eval": ev(seed_val)}, "units": units}


def test_seed_model_table_by_hand():
    gold = {"a+b": 1.0, "a+c": 1.2, "b+c": 1.1, "a+b+c": 0.9}
    proxy = {"a+b": 1.3, "a+c": 1.1, "b+c": 1.2, "a+b+c": 1.4}  # picks a+c (regret 0.3)
    res = _fake_results(gold, proxy, {"a": 1.0, "b": 2.0, "c": 3.0}, 5.0)
    t = seed_model_table([res, res])["x"]
    assert t["proxy"]["regret"]["mean"] == pytest.approx(0.3) and t["proxy"]["regret"]["n"] == 2
    # mean-unit baseline: a+b 1.5, a+c 2.0, b+c 2.5, a+b+c 2.0 -> picks a+b (regret 0.1)
    assert t["mean_unit_logppl"]["regret"]["mean"] == pytest.approx(0.1)
    # the seed: a constant, so a random pick (mean gold 1.05 - 0.9) and pairwise 1/2
    assert t["seed"]["regret"]["mean"] == pytest.approx(0.15)
    assert t["seed"]["pairwise"]["mean"] == 0.5
    # pairwise by hand, 6 pairs. Proxy: a+b/a+c 1.3 > 1.1 vs gold 1.0 < 1.2, a+b/b+c, a+b/a+b+c,
    # a+c/b+c, a+c/a+b+c, b+c/a+b+c: every pair ordered against gold
    assert t["proxy"]["pairwise"]["mean"] == 0.0
    # mean-unit baseline (1.5, 2.0, 2.5, 2.0): right on a+b/a+c, a+b/b+c, b+c/a+b+c; wrong on a+b/a+b+c,
    # a+c/b+c; a tie on a+c/a+b+c counts 1/2 -> 3.5 / 6
    assert t["mean_unit_logppl"]["pairwise"]["mean"] == pytest.approx(3.5 / 6)


# ----------------------------------------------------------------------------- every gold, once, resumable


def _copy_study(tiny_study, dest):
    src = tiny_study["rd"].root
    dest.mkdir(parents=True)
    for part in ("partitions", "seed", "units"):
        shutil.copytree(src / part, dest / part)
    from datamates.run_dir import RunDir

    return RunDir(dest)


def test_every_gold_mixture_trained_once_and_resumes_to_the_same_bytes(tiny_study, tiny_pool, tmp_path):
    from datamates.ablation.train_partition import gold_dir, train_gold
    from datamates.core.train_loop import read_train_log
    from datamates.pipelines.ablation import ablate, all_mixtures

    units = tiny_study["manifest"].units
    mix = all_mixtures(units)
    K = len(units)
    assert len(mix) == 2**K - 1 - K and len({tuple(m) for m in mix}) == len(mix)
    assert sorted(map(len, mix)) == sorted(k for k in range(2, K + 1) for _ in range(math.comb(K, k)))
    cfg, tcfg = study_config(plots=False, bootstrap=20), tiny_study["train"]

    # A: a run killed after 4 gold models, then rerun twice
    a = _copy_study(tiny_study, tmp_path / "a")
    from datamates.ablation.partition import read_manifest

    train_gold(read_manifest(a.partitions), tiny_pool, a.seed_model, a.root / "gold", mix[:4], tcfg, TINY, cfg.branch)
    ra = ablate(cfg, tcfg, TINY, a, tiny_pool, gold=mix)
    assert ra["this_run"]["gold_trained"] == len(mix) - 4
    ra2 = ablate(cfg, tcfg, TINY, a, tiny_pool, gold=mix)
    assert ra2["this_run"] == {"proxy_evaluations": 0, "gold_trained": 0}
    # B: straight through
    b = _copy_study(tiny_study, tmp_path / "b")
    rb = ablate(cfg, tcfg, TINY, b, tiny_pool, gold=mix)
    assert rb["this_run"]["gold_trained"] == len(mix)

    assert sorted(p.name for p in (a.root / "gold").iterdir()) == sorted(p.name for p in (b.root / "gold").iterdir())
    assert len(list((a.root / "gold").iterdir())) == len(mix)
    for m in mix:
        ga, gb = gold_dir(a.root / "gold", m), gold_dir(b.root / "gold", m)
        assert (ga / "model.safetensors").read_bytes() == (gb / "model.safetensors").read_bytes(), m
        steps = [r["step"] for r in read_train_log(ga)]
        assert steps == list(range(1, len(m) * cfg.branch.steps + 1)), m  # one training, no step twice
    strip = lambda r: [(g["mixture"], g["eval"]) for g in r["gold"]] + [(p["mixture"], p["evals"]) for p in r["proxies"]]  # noqa: E731
    assert strip(ra) == strip(rb) == strip(ra2)
    assert json.dumps(seed_model_table([ra]), sort_keys=True) == json.dumps(seed_model_table([rb]), sort_keys=True)
    # every multi-unit gold mixture is in the tables, with its proxy
    assert {g["mixture"] for g in ra["gold"] if g["k"] > 1} == {"+".join(m) for m in mix}
    # per-sequence losses are kept for paired standard errors
    assert all("seq_nll" in g["eval"][s] for g in ra["gold"] for s in ra["eval_sets"])


def test_pooled_pearson_over_seed_models_removes_each_models_level():
    from datamates.ablation.stats import claim_stats

    # within each seed model the proxy orders the mixtures backwards; the seed models' levels differ a lot
    gold = np.array([1.0, 1.1, 1.2, 1.3, 3.0, 3.1, 3.2, 3.3])
    proxy = np.array([1.3, 1.2, 1.1, 1.0, 3.3, 3.2, 3.1, 3.0])
    st = claim_stats(proxy, gold, np.full(8, 2), strata=np.array([0] * 4 + [1] * 4), B=20)
    assert st["pearson"]["value"] == pytest.approx(-1.0) and st["spearman"]["value"] == pytest.approx(-1.0)
    assert claim_stats(proxy, gold, np.full(8, 2), B=20)["pearson"]["value"] > 0.9  # one stratum: plain Pearson


def test_mean_ci_keeps_correlations_and_shares_in_range():
    r = mean_ci([0.99, 0.9, 0.6], fisher=True)
    assert -1 < r["ci"][0] < r["mean"] < r["ci"][1] < 1
    assert r["mean"] == pytest.approx(math.tanh(np.mean(np.arctanh([0.99, 0.9, 0.6]))))
    s = mean_ci([1.0, 0.7, 1.0], bounds=(0.0, 1.0))
    assert s["ci"][1] == 1.0 and s["mean"] == pytest.approx(0.9)
