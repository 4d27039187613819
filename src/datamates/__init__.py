"""datamates: model-aware pretraining data selection (MATES) and data ablations by merging."""

__version__ = "0.1.0"
