"""Typed configs, one dataclass per component; `load_config` builds the RunConfig from YAML."""

from datamates.config.ablation import AblationConfig, MergeConfig, PartitionConfig
from datamates.config.base import config_hash, describe, from_dict, knob, to_dict
from datamates.config.core import ModelConfig, PoolConfig, TokenizerConfig, TrainConfig
from datamates.config.evaluate import EvalConfig
from datamates.config.influence import FitConfig, ScoreConfig, SelectConfig
from datamates.config.mates import MatesConfig
from datamates.config.probe import ProbeConfig
from datamates.config.run import RunConfig, load_config

__all__ = [
    "AblationConfig", "EvalConfig", "FitConfig", "MatesConfig", "MergeConfig", "ModelConfig",
    "PartitionConfig", "PoolConfig", "ProbeConfig", "RunConfig", "ScoreConfig", "SelectConfig",
    "TokenizerConfig", "TrainConfig", "config_hash", "describe", "from_dict", "knob", "load_config",
    "to_dict",
]
