"""MATES, in data-flow order: probe -> fit -> score -> select (baselines in selectors/)."""
