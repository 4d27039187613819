"""The study end to end on the tiny pool: seed -> units -> gold -> proxies -> correlations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ablation_helpers import TINY, study_config, train_cfg

from datamates.ablation.merge import merge
from datamates.ablation.train_partition import gold_dir, train_partitions
from datamates.cli import main
from datamates.config.executor import ExecutorConfig
from datamates.core.checkpoint import load_model, trainer_state
from datamates.core.train_loop import read_train_log
from datamates.errors import InputError
from datamates.pipelines.ablation import (
    EvalCache,
    ablate,
    build_eval_sets,
    choose_gold,
    correlations,
    pairwise_agreement,
)


def test_units_branch_from_the_full_seed_state(tiny_study):
    seed, units, cfg = tiny_study["seed"], tiny_study["units"], tiny_study["cfg"]
    s = trainer_state(seed)
    assert s["global_step"] == cfg.seed.steps
    for name, path in units.items():
        st = trainer_state(path)
        assert st["global_step"] == cfg.seed.steps + cfg.branch.steps  # AdamW step counter continued
        assert st["call"]["init"] == str(seed)
        lrs = {r["lr"] for r in read_train_log(path)}
        assert lrs == {s["lr"]}  # constant at the seed's final learning rate
        meta = json.loads((path / "meta.json").read_text())
        assert meta["unit"] == name and meta["unit_tokens"] == tiny_study["manifest"].unit(name)["tokens"]
    shas = {json.loads((p / "meta.json").read_text())["seed_sha"] for p in units.values()}
    assert len(shas) == 1


def test_train_partitions_skips_finished_units(tiny_study, tiny_pool):
    units = tiny_study["units"]
    before = {n: (p / "model.safetensors").stat().st_mtime_ns for n, p in units.items()}
    again = train_partitions(tiny_study["manifest"], tiny_pool, tiny_study["seed"], tiny_study["rd"].root / "units",
                             tiny_study["train"], TINY, tiny_study["cfg"].branch)
    assert {n: (p / "model.safetensors").stat().st_mtime_ns for n, p in again.items()} == before
    with pytest.raises(InputError, match="unknown unit 'nope'"):
        train_partitions(tiny_study["manifest"], tiny_pool, tiny_study["seed"], tiny_study["rd"].root / "units",
                         tiny_study["train"], TINY, tiny_study["cfg"].branch, units=["nope"])


def test_ablate_end_to_end(tiny_study, tiny_pool):
    rd, cfg = tiny_study["rd"], study_config(gold_count=3)
    res = ablate(cfg, tiny_study["train"], TINY, rd, tiny_pool)
    units = tiny_study["manifest"].units
    assert len(res["proxies"]) == 2 ** len(units) - 1
    multi = [g for g in res["gold"] if g["k"] > 1]
    assert len(multi) == 3 and multi[-1]["mixture"] == "+".join(units)  # the full set is always a gold mixture
    assert sum(g["k"] == 1 for g in res["gold"]) == len(units)
    for f in ("results.json", "proxies.csv", "gold.csv", "correlations.csv", "scatter.png", "ranking.png",
              "report.md", "report.html"):
        assert (rd.ablation / f).stat().st_size > 0
    sets = res["eval_sets"]
    assert sets == [f"heldout/{d}" for d in tiny_pool.domains] + ["heldout_all", "lambada"]
    c = res["correlations"]["heldout_all"]
    assert c["multi"]["n"] == 3 and c["all"]["n"] == 3 + len(units)
    # a gold model of k units trains k x unit steps from the seed on the union of its units
    g = multi[0]
    names = g["mixture"].split("+")
    st = trainer_state(gold_dir(rd.root / "gold", names))
    assert st["global_step"] == cfg.seed.steps + len(names) * cfg.branch.steps
    union = np.concatenate([tiny_study["manifest"].unit_ids(n) for n in names])
    assert st["call"]["n_ids"] == len(union)
    # single units: proxy == gold (the unit model), exactly
    proxy = {r["mixture"]: r for r in res["proxies"]}
    for gr in res["gold"]:
        if gr["k"] == 1:
            assert proxy[gr["mixture"]]["eval"] == gr["eval"]

    # the in-memory Gray-code proxy equals the merged checkpoint written to disk and evaluated
    evs = build_eval_sets(tiny_study["manifest"], tiny_pool, cfg.eval, "fp32")
    for names in (units[:2], units[1:]):
        out = merge([tiny_study["units"][n] for n in names], rd.root / "merged" / "+".join(names))
        ev = evs.evaluate(load_model(out))
        for s in sets:
            assert ev[s]["logppl"] == pytest.approx(proxy["+".join(names)]["eval"][s]["logppl"], rel=1e-5)

    # a second run re-evaluates nothing: every evaluation is cached
    cache = EvalCache(rd.root / "ablation_cache" / "evals.jsonl")
    n_rows = len(cache.rows)
    res2 = ablate(study_config(gold_count=3, plots=False), tiny_study["train"], TINY, rd, tiny_pool)
    assert len(EvalCache(rd.root / "ablation_cache" / "evals.jsonl").rows) == n_rows
    assert json.dumps(res2["correlations"], sort_keys=True) == json.dumps(res["correlations"], sort_keys=True)


def test_ablate_bad_mixtures(tiny_study, tiny_pool):
    cfg = study_config(subsets=[["web", "nope"]])
    with pytest.raises(InputError, match="unknown unit 'nope'"):
        ablate(cfg, tiny_study["train"], TINY, tiny_study["rd"], tiny_pool)
    with pytest.raises(InputError, match="empty mixture"):
        ablate(study_config(gold=[[]]), tiny_study["train"], TINY, tiny_study["rd"], tiny_pool)


def test_cli_ablate_bad_subset_file(tiny_study, tiny_pool, tmp_path, capsys):
    f = tmp_path / "subsets.txt"
    f.write_text("web+wiki\nweb+unknown\n")
    rc = main(["ablate", "--run-dir", str(tiny_study["rd"].root), "--pool", str(tiny_pool.path), "--subsets", str(f)])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown unit 'unknown'" in err


def test_choose_gold_spans_sizes():
    units = ["a", "b", "c", "d", "e"]
    g = choose_gold(units, 10, seed=0)
    assert len(g) == 10 and len({tuple(m) for m in g}) == 10
    assert [sum(len(m) == k for m in g) for k in (2, 3, 4, 5)] == [4, 3, 2, 1]
    assert g == choose_gold(units, 10, seed=0)
    assert choose_gold(units[:2], 10, seed=0) == [["a", "b"]]


def test_statistics_against_scipy_and_a_naive_loop():
    from scipy import stats

    rng = np.random.default_rng(0)
    g = rng.normal(size=12)
    p = g + rng.normal(scale=0.5, size=12)
    c = correlations(p, g)
    assert c["pearson"] == pytest.approx(stats.pearsonr(p, g)[0])
    assert c["spearman"] == pytest.approx(stats.spearmanr(p, g)[0])
    naive = np.mean([np.sign(p[i] - p[j]) == np.sign(g[i] - g[j]) for i in range(12) for j in range(i + 1, 12)])
    assert pairwise_agreement(p, g) == pytest.approx(naive)
    assert pairwise_agreement(-g, g) == 0.0 and pairwise_agreement(g, g) == 1.0
    assert torch.isnan(torch.tensor(correlations(p[:2], g[:2])["pearson"]))


@pytest.mark.slow
def test_parallel_workers_match_serial(tiny_study, tiny_pool, tmp_path):
    """Two spawned worker processes train the same unit models as the serial loop."""
    from dataclasses import replace

    cfg = tiny_study["cfg"]
    par = train_partitions(tiny_study["manifest"], tiny_pool, tiny_study["seed"], tmp_path / "units",
                           train_cfg(), TINY, replace(cfg.branch, executor=ExecutorConfig(workers=2)), log_dir=tmp_path / "logs")
    for name, path in par.items():
        a, b = load_model(path), load_model(tiny_study["units"][name])
        for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=f"{name} {n}")


def test_stale_unit_models_are_refused(tiny_study, tiny_pool, tmp_path):
    """A finished unit model trained on other sequences (the partition changed) is not reused silently."""
    import shutil

    from datamates.ablation.partition import partition
    from datamates.config.ablation import PartitionConfig
    from datamates.errors import IncompatibleArtifacts

    units = tmp_path / "units"
    shutil.copytree(tiny_study["units"]["web"], units / "web")
    other = partition(tiny_pool, PartitionConfig(by="domain", token_balanced=True, heldout_sequences=8, seed=5),
                      tmp_path / "parts")
    with pytest.raises(IncompatibleArtifacts, match="other sequences"):
        train_partitions(other, tiny_pool, tiny_study["seed"], units, tiny_study["train"], TINY,
                         tiny_study["cfg"].branch, units=["web"])


@pytest.mark.slow
@pytest.mark.ray
def test_ray_backend_matches_serial(tiny_study, tiny_pool, tmp_path):
    """Ray tasks (a local instance) train the same unit models as the serial loop."""
    pytest.importorskip("ray")
    from dataclasses import replace

    import ray

    cfg = tiny_study["cfg"]
    try:
        par = train_partitions(tiny_study["manifest"], tiny_pool, tiny_study["seed"], tmp_path / "units",
                               train_cfg(), TINY, replace(cfg.branch, executor=ExecutorConfig(workers=2, backend="ray")),
                               units=["web", "wiki"])
    finally:
        ray.shutdown()
    for name, path in par.items():
        a, b = load_model(path), load_model(tiny_study["units"][name])
        for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=f"{name} {n}")


def test_run_ablation_reuses_finished_stages(tiny_study, tiny_pool):
    """The pipeline entry point: partition -> seed -> units -> ablate, each skipped when done."""
    from datamates.config.run import RunConfig
    from datamates.pipelines import run_ablation

    rd = tiny_study["rd"]
    seed_mtime = (tiny_study["seed"] / "model.safetensors").stat().st_mtime_ns
    cfg = RunConfig(model=TINY, train=tiny_study["train"], ablation=study_config(gold_count=3, plots=False))
    res = run_ablation(cfg, rd, tiny_pool)
    assert (tiny_study["seed"] / "model.safetensors").stat().st_mtime_ns == seed_mtime
    assert len(res["proxies"]) == 15 and (rd.ablation / "report.md").exists()


def test_within_size_statistics_against_a_naive_loop():
    rng = np.random.default_rng(1)
    k = np.array([2, 2, 2, 3, 3, 3, 4, 4, 5])
    g = rng.normal(size=9) + k  # a size effect the proxy does not see
    p = g - k + rng.normal(scale=0.3, size=9)
    c = correlations(p, g, k)
    pairs = [(i, j) for i in range(9) for j in range(i + 1, 9) if k[i] == k[j]]
    naive = np.mean([np.sign(p[i] - p[j]) == np.sign(g[i] - g[j]) for i, j in pairs])
    assert c["pairwise_same_size"] == pytest.approx(naive)
    keep = k != 5
    dp, dg = p[keep].copy(), g[keep].copy()
    for s in (2, 3, 4):
        dp[k[keep] == s] -= dp[k[keep] == s].mean()
        dg[k[keep] == s] -= dg[k[keep] == s].mean()
    assert c["n_within_size"] == 8
    assert c["pearson_within_size"] == pytest.approx(np.corrcoef(dp, dg)[0, 1])


def test_the_study_paths_are_the_run_dirs(tmp_path):
    """RunDir owns every path of the study (the evaluation cache, gold/ and gold_natural/), at the
    places existing runs have them; the study builds none by hand."""
    from pathlib import Path

    import datamates.pipelines.ablation.study as study
    from datamates.run_dir import RunDir

    rd = RunDir(tmp_path / "run")
    assert rd.eval_cache == tmp_path / "run" / "ablation_cache" / "evals.jsonl"
    assert (rd.gold_root(), rd.gold_root(natural=True)) == (tmp_path / "run" / "gold", tmp_path / "run" / "gold_natural")
    assert "rd.root /" not in Path(study.__file__).read_text()
