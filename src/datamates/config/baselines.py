"""The baselines' config section, `mates.baselines` (`datamates score-with METHOD --set
baselines.<section>.<knob>=...`). It declares no method's knobs: each scorer declares its section in
its own module (`Scorer.config` in selectors.SCORERS: DSIRConfig in baselines/dsir.py, the rater's
in baselines/quality.py, ...; group-level selection's in selection/group.py). config/ cannot import a
scorer, so each section is kept raw in `BaselinesConfig.scorers` until `selectors.resolve_config`
checks it against its dataclass (config/base.py, owned sections); code reads a section through
`selectors.section` / `Scorer.section_config`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from datamates.config.base import knob


@dataclass(kw_only=True)
class BaselinesConfig:
    scorers: dict[str, Any] = knob({}, "the sections scorer modules declare themselves (`Scorer.config` in "
                                       "selectors.SCORERS, e.g. dsir, heuristic; group: selection/group.py), each "
                                       "at baselines.<name>: kept as written by the loader, checked against its "
                                       "dataclass when a verb starts (selectors.resolve_config)", owned=True)
