"""The two methods as their papers' algorithm boxes: the stage order and nothing else. A box may
import every stage (docs/index.md#layout-and-import-direction); no stage imports a box. Each
module's docstring is its box:

    selection.py   run_mates (Yu et al. 2024, Alg. 1; docs/methods.md#mates-the-loop): warmup, then
                   per selector and stage select -> train, a short decay, evaluate
    ablation/      run_ablation (Na et al. 2024; docs/methods.md#data-ablations-by-merging): partition,
                   seed, one model per unit, then ablate(): every mixture's merged proxy and a sample
                   of gold models, all scored by evaluate/, and the proxy-vs-gold correlations
    pool.py        run_pool: the pool both start from
"""

from datamates.pipelines.ablation import ablate, add_unit_study, run_ablation
from datamates.pipelines.pool import run_pool
from datamates.pipelines.selection import run_mates, stage_train_config

__all__ = ["ablate", "add_unit_study", "run_ablation", "run_mates", "run_pool", "stage_train_config"]
