"""The baselines of MATES's Table 1 and of practice (docs/baselines.md), one module per method.

Each method scores candidate sequences of a pool into a scores folder in the common format
(selection/scores_io.py, written by `_common.write_scores`; lower is better), so `datamates select`,
`write_documents`, the report and every selector treat them like MATES's influence scores.

The one list of these methods (and of MATES's) is the registry `datamates.selectors.SCORERS`:
`datamates run` and `datamates score-with` both read it, and docs/baselines.md documents each (its
formula, paper and knobs); no other list is kept here, so adding a method does not touch this file.
"""
