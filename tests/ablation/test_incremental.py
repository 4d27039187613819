"""Incremental studies (issue 17, Na et al. 2024 §5): adding a unit to a finished study trains one
model and evaluates only the 2^K mixtures that contain it, and gives the table of a from-scratch
study with all K + 1 units; a unit model from another seed is refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from ablation_helpers import TINY, make_checkpoint, study_config, train_cfg

from datamates.ablation.ablate import ablate, add_unit_study
from datamates.ablation.partition import add_unit, partition, read_manifest
from datamates.ablation.train_partition import train_partitions, train_seed
from datamates.cli import main
from datamates.config.ablation import PartitionConfig
from datamates.errors import IncompatibleArtifacts, InputError
from datamates.run_dir import RunDir

pytestmark = pytest.mark.slow  # trains two small studies: about 20 CPU-seconds


def _cfg(domains):
    return study_config(partition=PartitionConfig(by="domain", token_balanced=True, heldout_sequences=8,
                                                  heldout_max_per_doc=4, domains=domains),
                        gold=[domains[:2]], plots=False, bootstrap=20)


def _new_unit_ids(pool, manifest, domain):
    rest = manifest.rest_ids()
    dom = np.asarray(pool.seq_domain)[rest]
    return rest[dom == pool.domains.index(domain)][: manifest.data["unit_sequences"]]


def _table(res):
    return {r["mixture"]: {s: round(v["logppl"], 5) for s, v in r["eval"].items()} for r in res["proxies"]}


@pytest.fixture(scope="module")
def studies(tiny_pool, tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        doms = tiny_pool.domains
        cfg, tcfg = _cfg(doms[:3]), train_cfg()
        # the study with K = 3 units, then --add-unit the 4th domain
        a = RunDir(tmp_path_factory.mktemp("inc") / "a")
        man = partition(tiny_pool, cfg.partition, a.partitions)
        seed = train_seed(man, tiny_pool, cfg.seed, tcfg, TINY, a.seed_model)
        train_partitions(man, tiny_pool, seed, a.root / "units", tcfg, TINY, cfg.branch)
        first = ablate(cfg, tcfg, TINY, a, tiny_pool)
        ids = _new_unit_ids(tiny_pool, man, doms[3])
        added = add_unit_study(study_config(**{**cfg.__dict__, "gold": None}), tcfg, TINY, a, tiny_pool, "new", ids,
                               "new.npy")
        # from scratch with all K + 1 units (same seed state)
        b = RunDir(tmp_path_factory.mktemp("inc") / "b")
        man_b = add_unit(partition(tiny_pool, cfg.partition, b.partitions), tiny_pool, "new", ids, "new.npy")
        shutil.copytree(seed, b.seed_model)
        train_partitions(man_b, tiny_pool, b.seed_model, b.root / "units", tcfg, TINY, cfg.branch)
        scratch = ablate(cfg, tcfg, TINY, b, tiny_pool)
    finally:
        torch.set_num_threads(n)
    return {"a": a, "b": b, "first": first, "added": added, "scratch": scratch, "ids": ids, "cfg": cfg, "tcfg": tcfg}


def test_adding_a_unit_trains_one_model_and_evaluates_the_new_mixtures(studies):
    first, added, scratch = studies["first"], studies["added"], studies["scratch"]
    K = 3
    assert first["this_run"]["proxy_evaluations"] == 2 ** K - 1
    assert added["this_run"] == {"proxy_evaluations": 2 ** K, "gold_trained": 0, "units_trained": 1,
                                 "added_unit": "new"}
    assert len(added["proxies"]) == 2 ** (K + 1) - 1
    # the same table as a from-scratch study of K + 1 units (merges differ only in summation order)
    ta, tb = _table(added), _table(scratch)
    assert ta.keys() == tb.keys()
    for m in ta:
        for s in ta[m]:
            assert ta[m][s] == pytest.approx(tb[m][s], abs=2e-5), (m, s)
    ga = {g["mixture"]: g["eval"] for g in added["gold"]}
    gb = {g["mixture"]: g["eval"] for g in scratch["gold"]}
    assert ga.keys() == gb.keys()
    for m in ga:
        for s in ga[m]:
            assert ga[m][s]["logppl"] == pytest.approx(gb[m][s]["logppl"], abs=2e-5)
    prov = {u["name"]: u["provenance"] for u in added["units"]}
    assert prov["new"]["source"] == "add-unit" and prov["new"]["input"] == "new.npy"
    assert {p["seed_sha"] for p in prov.values()} == {prov["new"]["seed_sha"]}  # all from one seed
    man = read_manifest(studies["a"].partitions)
    assert man.units[-1] == "new" and man.data["config_hash"] == read_manifest(studies["b"].partitions).data["config_hash"]


def test_adding_the_same_unit_again_does_nothing(studies, tiny_pool):
    cfg = study_config(**{**studies["cfg"].__dict__, "gold": None})
    again = add_unit_study(cfg, studies["tcfg"], TINY, studies["a"], tiny_pool, "new", studies["ids"], "new.npy")
    assert again["this_run"]["units_trained"] == 0 and again["this_run"]["proxy_evaluations"] == 0
    with pytest.raises(InputError, match="already has a unit 'new' with other sequences"):
        add_unit_study(cfg, studies["tcfg"], TINY, studies["a"], tiny_pool, "new", studies["ids"][:-1], "x.npy")
    man = read_manifest(studies["a"].partitions)
    with pytest.raises(InputError, match="already in unit"):
        add_unit(man, tiny_pool, "dup", man.unit_ids(man.units[0])[:4], "dup.npy")
    with pytest.raises(InputError, match="held-out"):
        add_unit(man, tiny_pool, "leak", man.heldout_ids(man.heldout_domains[0])[:2], "leak.npy")


def test_a_unit_from_another_seed_is_refused(studies, tiny_pool, tmp_path, capsys):
    a = studies["a"]
    other = make_checkpoint(tmp_path / "other", meta={"seed_sha": "0" * 16, "unit_tokens": 100})
    np.save(tmp_path / "ids.npy", studies["ids"][:2])
    rc = main(["ablate", "--run-dir", str(a.root), "--pool", str(tiny_pool.path), "--add-unit", "late",
               "--input", str(tmp_path / "ids.npy"), "--model", str(other)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "not trained from this study's seed" in err[0]
    assert "late" not in read_manifest(a.partitions).units  # refused before anything was written
    # unit models that agree on a seed, but not on this study's seed
    metas = {u: (a.unit(u) / "meta.json").read_text() for u in read_manifest(a.partitions).units}
    try:
        for u, text in metas.items():
            (a.unit(u) / "meta.json").write_text(json.dumps({**json.loads(text), "seed_sha": "f" * 16}))
        with pytest.raises(IncompatibleArtifacts, match="not the seed the unit models were trained from|trained from another seed"):
            ablate(studies["cfg"], studies["tcfg"], TINY, a, tiny_pool)
    finally:
        for u, text in metas.items():
            (a.unit(u) / "meta.json").write_text(text)


def test_add_unit_model_onto_a_folder_of_the_users_is_one_line(studies, tiny_pool, tmp_path, capsys):
    """--add-unit NAME --model PATH where <run>/units/NAME is a folder of the user's: one line,
    exit 2, nothing written (the copy goes through artifacts.produce; it used to fail renaming
    onto the folder, with a traceback, after the manifest had taken the unit)."""
    a, b = studies["a"], studies["b"]
    man = read_manifest(a.partitions)
    free = np.setdiff1d(man.rest_ids(), np.concatenate([man.unit_ids(u) for u in man.units]))[:2]
    np.save(tmp_path / "ids.npy", free)
    mine = a.unit("mine")
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("keep me")
    try:
        rc = main(["ablate", "--run-dir", str(a.root), "--pool", str(tiny_pool.path), "--add-unit", "mine",
                   "--input", str(tmp_path / "ids.npy"), "--model", str(b.unit("new"))])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and str(mine) in err[0], err
        assert "mine" not in read_manifest(a.partitions).units
        assert (mine / "notes.txt").read_text() == "keep me"
    finally:
        shutil.rmtree(mine)
