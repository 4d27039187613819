"""Uneven units (issue 17): the paper's upsampled gold mixtures paired with the uniform merge, and
natural (token-proportional) gold mixtures paired with the token-weighted merge; both evaluated."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ablation_helpers import TINY, study_config, train_cfg

from datamates.ablation.merge import merge
from datamates.ablation.partition import partition
from datamates.ablation.train_partition import gold_dir, gold_multipliers, train_partitions, train_seed
from datamates.config.ablation import PartitionConfig
from datamates.core.checkpoint import load_model, trainer_state
from datamates.pipelines.ablation import ablate
from datamates.run_dir import RunDir

pytestmark = pytest.mark.slow  # a small study with two gold sets: about 15 CPU-seconds


def test_uneven_units_both_gold_recipes(tiny_pool, tmp_path):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        doms = tiny_pool.domains[:3]
        cfg = study_config(partition=PartitionConfig(by="domain", heldout_sequences=8, heldout_max_per_doc=4,
                                                     domains=doms),
                           gold=[doms[:2], doms[1:], [doms[0], doms[2]], doms], gold_balance="both", plots=False,
                           bootstrap=20)
        tcfg = train_cfg()
        rd = RunDir(tmp_path / "run")
        man = partition(tiny_pool, cfg.partition, rd.partitions)
        sizes = {u: man.unit(u)["sequences"] for u in man.units}
        assert len(set(sizes.values())) > 1  # uneven
        seed = train_seed(man, tiny_pool, cfg.seed, tcfg, TINY, rd.seed_model)
        train_partitions(man, tiny_pool, seed, rd.root / "units", tcfg, TINY, cfg.branch)
        res = ablate(cfg, tcfg, TINY, rd, tiny_pool)
    finally:
        torch.set_num_threads(n)
    top = max(sizes.values())
    assert gold_multipliers(man, "upsample") == {u: max(1, top // s) for u, s in sizes.items()}
    full = man.units
    up = trainer_state(gold_dir(rd.root / "gold", full))["call"]["n_ids"]
    nat = trainer_state(gold_dir(rd.root / "gold_natural", full))["call"]["n_ids"]
    assert up == sum(max(1, top // s) * s for s in sizes.values()) and nat == sum(sizes.values())
    assert set(res["pairings"]) == {"uniform~upsample", "weighted~natural"}
    assert set(res["proxy_methods"]) >= {"uniform", "weighted"}
    for pairing in res["pairings"].values():
        assert pairing["heldout_all"]["proxy"]["n"] == 4
    # the weighted proxy of a mixture is the token-weighted merge of its unit models
    mix = "+".join(doms[:2])
    row = next(r for r in res["proxies"] if r["mixture"] == mix)
    out = merge([rd.unit(u) for u in doms[:2]], tmp_path / "w", method="weighted",
                weights=[float(man.unit(u)["tokens"]) for u in doms[:2]])
    from datamates.pipelines.ablation import build_eval_sets

    ev = build_eval_sets(man, tiny_pool, cfg.eval, tcfg.precision).evaluate(load_model(out))
    for s, v in ev.items():
        assert row["evals"]["weighted"][s]["logppl"] == pytest.approx(v["logppl"], abs=2e-5)
    assert not np.isclose(row["evals"]["weighted"]["heldout_all"]["logppl"],
                          row["evals"]["uniform"]["heldout_all"]["logppl"], rtol=0, atol=1e-7)
