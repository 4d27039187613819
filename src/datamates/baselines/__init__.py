"""The baselines of MATES's Table 1 and of practice (docs/baselines.md), one module per method.

Each method scores candidate sequences of a pool into a scores folder in the common format
(selection/scores_io.py, written by `_common.write_scores`; lower is better), so `datamates select`,
`write_documents`, the report and every selector treat them like MATES's influence scores:

    dsir        -log importance weight on hashed n-grams (Xie et al. 2023)                  dsir.py
    semdedup    rank in SemDeDup's keep order over k-means clusters (Abbas et al. 2023)      semdedup.py
    qurating    -predicted quality of a rater fitted on judgements (Wettig et al. 2024)      quality.py
    fasttext    -P(positive) of a fastText classifier (DCLM, Li et al. 2024)                 classifier.py
    perplexity  a reference LM's log-perplexity: low / middle / high (CCNet; Ankner 2024)    perplexity.py
    heuristic   Gopher / C4-style quality rules failed (Rae et al. 2021; Raffel et al. 2020) heuristic.py
    dsdm        TRAK datamodel scores (Engstrom et al. 2024)                                 trak.py
    rholoss     reducible loss (Mindermann et al. 2022)                                      rholoss.py

The one registry of these names (and of MATES's) is `datamates.selectors.SCORERS`: `datamates run`
and `datamates score-with` both read it.
"""
