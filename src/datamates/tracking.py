"""Metrics tracking: every training, probing and fitting loop writes `metrics.jsonl` into the
artifact it is producing, and, on request, the same numbers to TensorBoard or Weights & Biases.

    from datamates import tracking
    tracking.log_metrics(step, {"fit/train_loss": 0.41, "fit/val_loss": 0.47}, folder=work)

One line per call in `<folder>/metrics.jsonl`: `{"step": step, "<name>": value, ...}` with the
values as given (floats, ints), keys sorted; no wall-clock time, so a killed and resumed loop
that logs the same steps writes the same bytes (`start(folder, resume_step=s)` drops the lines
after step s first). Only rank 0 writes.

Backends (`--set log.backend=...`, config `log:`, datamates.config.log.LogConfig):

    none          metrics.jsonl only (the default)
    tensorboard   torch.utils.tensorboard.SummaryWriter; event files in
                  `<log.dir or the artifact's parent/tracking>/<artifact name>/`
                  (`tensorboard --logdir runs/NAME` finds every stage's). Needs `tensorboard`.
    wandb         wandb.init(project=log.project, name=<artifact>, dir=..., mode=$WANDB_MODE or
                  "offline"): nothing leaves the machine unless the user set WANDB_MODE=online
                  (then `wandb sync` is not needed). Needs `wandb`.

A backend whose package is missing is one line naming the package (`configure` checks it before
any work starts). The backend gets every `log.every`-th step; metrics.jsonl gets all.
The CLI calls `configure(cfg.log)` once per command (commands/_common.setup); library users who
never call it get metrics.jsonl only.
"""

from __future__ import annotations

import atexit
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from datamates.config.log import LogConfig
from datamates.errors import ConfigError
from datamates.log import get_logger, is_main

log = get_logger(__name__)
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}

_cfg = LogConfig()
_open: dict[Path, _Tracker] = {}


def configure(cfg: LogConfig | None) -> None:
    """Process-wide tracking settings; a backend whose package is not installed is a ConfigError."""
    global _cfg
    cfg = cfg or LogConfig()
    if cfg.backend in PACKAGES:
        _require(cfg.backend)
    close_all()
    _cfg = cfg


def _require(backend: str) -> None:
    try:
        if backend == "tensorboard":
            import tensorboard  # noqa: F401
        else:
            import wandb  # noqa: F401
    except ImportError:
        pkg = PACKAGES[backend]
        raise ConfigError(f"log.backend = {backend!r} needs the {pkg} package, which is not installed: "
                          f"pip install {pkg} (or pip install 'datamates[track]'), or set log.backend=none") from None


def artifact_name(folder: Path) -> str:
    """`stage_01/checkpoint` for `.../stage_01/checkpoint.partial` (the name the artifact will have)."""
    name = folder.name.removesuffix(".partial")
    return f"{folder.parent.name}/{name}" if folder.parent.name else name


class _Tracker:
    def __init__(self, folder: Path, cfg: LogConfig, resume_step: int | None, config: Mapping[str, Any] | None):
        self.folder, self.cfg = folder, cfg
        self.path = folder / "metrics.jsonl"
        folder.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            keep = [ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in keep))
        elif resume_step is None:
            self.path.write_text("")
        self.fh = open(self.path, "a")
        self.writer: Any = None
        self.run: Any = None
        name = artifact_name(folder)
        base = Path(cfg.dir) if cfg.dir else folder.parent / "tracking"
        if cfg.backend == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(base / name if cfg.dir else base / name.split("/")[-1]))
        elif cfg.backend == "wandb":
            import wandb

            base.mkdir(parents=True, exist_ok=True)
            mode = os.environ.get("WANDB_MODE", "offline")
            self.run = wandb.init(project=cfg.project, name=name, dir=str(base), mode=mode,
                                  config=dict(config or {}), reinit=True)

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        rec = {"step": int(step), **{k: _plain(v) for k, v in sorted(metrics.items())}}
        self.fh.write(json.dumps(rec) + "\n")
        self.fh.flush()
        if step % self.cfg.every:
            return
        nums = {k: v for k, v in rec.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.writer is not None:
            for k, v in nums.items():
                self.writer.add_scalar(k, v, global_step=int(step))
        if self.run is not None:
            self.run.log(nums, step=int(step))

    def close(self) -> None:
        self.fh.close()
        if self.writer is not None:
            self.writer.close()
        if self.run is not None:
            self.run.finish()


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):  # numpy / torch scalars
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN / inf
    return v


def start(folder: str | Path, *, resume_step: int | None = None, config: Mapping[str, Any] | None = None) -> None:
    """Start the metrics of the artifact being written in `folder`: a fresh metrics.jsonl, or, with
    `resume_step`, the existing one without its lines after that step (a resumed loop)."""
    if not is_main():
        return
    folder = Path(folder)
    close(folder)
    _open[folder] = _Tracker(folder, _cfg, resume_step, config)


def log_metrics(step: int, metrics: Mapping[str, Any], *, folder: str | Path) -> None:
    """One line of metrics for `step` into `<folder>/metrics.jsonl` (and the backend). The first
    call of a process for a folder that `start` did not open starts a fresh metrics.jsonl."""
    if not is_main():
        return
    folder = Path(folder)
    if folder not in _open:
        _open[folder] = _Tracker(folder, _cfg, None, None)
    _open[folder].log(step, metrics)


def close(folder: str | Path) -> None:
    """Flush and close the folder's log (before the folder is renamed into place)."""
    t = _open.pop(Path(folder), None)
    if t is not None:
        t.close()


def close_all() -> None:
    for f in list(_open):
        close(f)


atexit.register(close_all)
