"""The static (data-only) baselines of MATES's Table 1 and of practice (docs/baselines.md).

Each method scores candidate sequences of a pool into a scores folder in the common format
(selection/scores_io.py; lower is better), so `datamates select`, `write_documents`, the selector
registry and the report treat them like MATES's influence scores:

    dsir        -log importance weight on hashed n-grams (Xie et al. 2023)          dsir.py
    semdedup    rank in SemDeDup's keep order over k-means clusters (Abbas et al. 2023)  semdedup.py
    rater       -predicted quality of a rater fitted on judgements (QuRating, Wettig et al. 2024)  quality.py
    classifier  -P(positive) of a fastText classifier (DCLM, Li et al. 2024)        classifier.py
    perplexity  a reference LM's log-perplexity: low / middle / high (CCNet; Ankner et al. 2024)  perplexity.py

`METHODS` maps the name to its scoring function; `datamates score-with METHOD` runs one.
"""

from __future__ import annotations

from datamates.baselines.classifier import classify
from datamates.baselines.dsir import dsir
from datamates.baselines.perplexity import perplexity_filter
from datamates.baselines.quality import rate
from datamates.baselines.semdedup import semdedup

METHODS = {"dsir": dsir, "semdedup": semdedup, "rater": rate, "classifier": classify,
           "perplexity": perplexity_filter}

__all__ = ["METHODS", "classify", "dsir", "perplexity_filter", "rate", "semdedup"]
