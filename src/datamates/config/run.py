"""RunConfig: the whole run, used only at the top (pipelines, CLI). Stages get their own part."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from datamates.config.ablation import AblationConfig
from datamates.config.base import Sources, apply_sets, check_name, expand_vars, from_dict, knob, load_yaml
from datamates.config.core import ModelConfig, PoolConfig, TrainConfig
from datamates.config.evaluate import EvalConfig
from datamates.config.log import LogConfig
from datamates.config.mates import MatesConfig
from datamates.errors import ConfigError


@dataclass(kw_only=True)
class DistributedConfig:
    """torchrun: how ranks wait for one another (datamates.executor, docs/executor.md). Not part of
    any artifact's identity: changing it never invalidates a run."""

    timeout_minutes: float = knob(
        30.0,
        "process-group timeout (torch.distributed) in minutes; only training's collectives and one short "
        "broadcast per serial step wait inside a collective (the serial selection steps on rank 0 are waited "
        "for on files), so torch's own default of 30 minutes is ample; a rank waiting for rank 0 also gives up "
        "(one error line) when rank 0 has shown no sign of life this long",
        gt=0,
    )
    heartbeat_seconds: float = knob(60.0, "a rank waiting for another logs a line this often", gt=0)


@dataclass(kw_only=True)
class RunConfig:
    name: str = knob("run", "run name; artifacts go to <runs_root>/<name>")
    runs_root: str = knob("runs", "folder holding run directories")
    pool_dir: str | None = knob(
        None, "use this already-built pool (shared by several runs) instead of building <run>/pool; `auto` "
        "(datamates run): the pool cache <runs_root>/pools/<hash of the pool's fingerprint>, built on first use"
    )
    pool: PoolConfig = knob(PoolConfig(), "the pool of training sequences")
    model: ModelConfig = knob(ModelConfig(), "the language model")
    train: TrainConfig = knob(TrainConfig(), "the training loop")
    eval: EvalConfig = knob(EvalConfig(), "evaluation")
    mates: MatesConfig = knob(MatesConfig(), "model-aware selection loop")
    ablation: AblationConfig = knob(AblationConfig(), "data ablations by merging")
    log: LogConfig = knob(LogConfig(), "metrics tracking: metrics.jsonl always, TensorBoard / wandb on request")
    distributed: DistributedConfig = knob(DistributedConfig(), "torchrun: timeouts and heartbeats")

    def check(self) -> None:
        check_name(self.name, "name")  # runs/<name>: '../x' or '' would write outside runs_root

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_root) / self.name


def stage_train_config(cfg: RunConfig, s: int) -> TrainConfig:
    """Stage s trains stage_steps steps of one schedule that spans the run: its horizon is every
    stage's steps (warmup and selection stages; the pre-evaluation decay is its own exp_decay),
    so a cosine decays once over the run, not once per stage."""
    m = cfg.mates
    return replace(cfg.train, steps=m.stage_steps, seed=cfg.train.seed + s,
                   total_steps=cfg.train.total_steps or m.stages * m.stage_steps)


def config_search_path() -> list[Path]:
    """Where `--config NAME` is looked up: ./configs, the repository's configs/ (editable
    installs), and the copy bundled in the wheel."""
    here = Path(__file__).resolve()
    return [Path.cwd() / "configs", here.parents[3] / "configs", here.parents[1] / "configs"]


def resolve_config_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise ConfigError(f"{p}: config file not found")
        if p.is_dir():
            raise ConfigError(f"{p}: is a folder; give a YAML config file (or the name of one in configs/)")
        return p
    for folder in config_search_path():
        cand = folder / f"{name_or_path}.yaml"
        if cand.exists():
            return cand
    names = sorted({c.stem for f in config_search_path() if f.is_dir() for c in f.glob("*.yaml")})
    raise ConfigError(f"config '{name_or_path}' not found; named configs: {', '.join(names) or 'none'}")


def load_config(config: str | None = None, sets: list[str] | None = None) -> RunConfig:
    """YAML file (or named config) + `--set a.b=c` overrides -> validated RunConfig."""
    data: dict = {}
    path = None
    if config:
        path = resolve_config_path(config)
        data = load_yaml(path)
        data.setdefault("name", path.stem)
    data = expand_vars(apply_sets(data, sets or []))
    # an error names what the user typed: the YAML file, the `--set`, or the CLI flag
    return from_dict(RunConfig, data, where=Sources(path, sets))
