"""The two methods as their papers' algorithm boxes: the stage order and nothing else. A box may
import every stage (docs/index.md#layout-and-import-direction); no stage imports a box.

run_mates (Yu et al. 2024, Alg. 1; docs/methods.md#mates-the-loop), in selection.py:
    pool <- tokenize the corpus;  plan <- held-out documents, probe set, one candidate block per
            stage, every reference set split into a reference part and an evaluation part
    for the warmup stages:  train on a random k of the block                  (shared by all selectors)
    for each selector, for each later stage s:
        selected <- selector(model, block_s)      probe -> fit -> score -> Gumbel-top-k for MATES
        model    <- train(model, selected)        AdamW state carried across stages
    final <- a short learning-rate decay on the last stage's data
    evaluate(final) on the held-out documents and the evaluation part of the reference sets only

run_ablation (Na et al. 2024; docs/methods.md#data-ablations-by-merging), in ablation/:
    pool <- tokenize the corpus;  units <- partition(pool), held-out data of every domain set aside
    seed <- train(seed mixture)                    (or an existing checkpoint)
    theta_i <- train(seed, unit_i), i = 1..K       same steps, constant low lr, full seed state
    proxy(S) <- mean(theta_i : i in S)             every mixture S, Gray-code running sums
    gold(S) <- train(seed, union of S)             a sample of mixtures, k x unit steps
    report <- corr(log PPL proxy, log PPL gold)    per evaluation set, every model scored by evaluate/
"""

from datamates.pipelines.ablation import ablate, add_unit_study, run_ablation
from datamates.pipelines.pool import run_pool
from datamates.pipelines.selection import run_mates, stage_train_config

__all__ = ["ablate", "add_unit_study", "run_ablation", "run_mates", "run_pool", "stage_train_config"]
