"""Logging a person can follow: one logger per module, a log file per verb, progress bars."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)


def setup_logging(log_file: str | Path | None = None, verbose: bool = False) -> None:
    """Console (rank 0 only, INFO) plus an optional file (every rank, DEBUG when verbose)."""
    root = logging.getLogger("datamates")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for h in list(root.handlers):
        if getattr(h, "_datamates", False):
            root.removeHandler(h)
    if is_main():
        console = _BarSafeHandler()
        console.setFormatter(logging.Formatter("%(message)s"))
        console._datamates = True  # type: ignore[attr-defined]
        root.addHandler(console)
    if log_file is not None:
        log_file = Path(log_file)
        if not is_main():
            log_file = log_file.with_name(f"{log_file.stem}.rank{rank()}{log_file.suffix}")
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh.setFormatter(logging.Formatter(_FORMAT))
        fh._datamates = True  # type: ignore[attr-defined]
        root.addHandler(fh)
    root.propagate = False
    try:  # transformers' own "Writing model shards" bars would drown ours
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


class _BarSafeHandler(logging.StreamHandler):
    """The console handler: a line is written through tqdm, so it lands above the open progress bars
    (the run's overall line and the per-step bars) instead of through them."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


# Called after every step of a training bar (a progress_bar whose description starts with "train "):
# (steps done, total, seconds of that step). run_progress sets it while a `datamates run` is going.
_step_listener: Callable[[int, int, float], None] | None = None


def set_step_listener(fn: Callable[[int, int, float], None] | None) -> None:
    global _step_listener
    _step_listener = fn


class _TrainBar(tqdm):
    """A tqdm bar that also tells the run's overall line about every training step."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self._last = time.time()

    def update(self, n: float | None = 1):
        out = super().update(n)
        now = time.time()
        if _step_listener is not None and n == 1 and not self.disable:
            _step_listener(int(self.n), int(self.total or 0), now - self._last)
        self._last = now
        return out


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """tqdm on rank 0, silent elsewhere and when DATAMATES_PROGRESS=0."""
    disable = not is_main() or os.environ.get("DATAMATES_PROGRESS", "1") == "0"
    return iter(tqdm(iterable, desc=desc, total=total, unit=unit, disable=disable, mininterval=1.0,
                     dynamic_ncols=True, leave=False))


def progress_bar(desc: str, total: int | None = None, unit: str = "it") -> tqdm:
    disable = not is_main() or os.environ.get("DATAMATES_PROGRESS", "1") == "0"
    cls = _TrainBar if desc.startswith("train ") else tqdm
    return cls(desc=desc, total=total, unit=unit, disable=disable, mininterval=1.0, dynamic_ncols=True,
                leave=False)


def close_progress_bars() -> None:
    """Close (and, as they are leave=False, clear) every open progress bar, so that the next line
    written to the terminal, e.g. the CLI's error line, starts on a fresh line."""
    from tqdm import tqdm as std_tqdm

    for bar in list(getattr(std_tqdm, "_instances", ())):
        try:
            bar.close()
        except Exception:  # noqa: BLE001 - a bar that cannot be closed must not hide the error
            pass


def ascii_curve(values: list[float], width: int = 60, height: int = 12, title: str = "") -> str:
    """A terminal plot of a curve (e.g. training loss per step), downsampled to `width` columns."""
    if not values:
        return ""
    n = len(values)
    cols = [values[min(n - 1, int(i * n / width))] for i in range(min(width, n))]
    # average within each column's span for a less noisy picture
    spans = [(int(i * n / len(cols)), max(int((i + 1) * n / len(cols)), int(i * n / len(cols)) + 1))
             for i in range(len(cols))]
    cols = [sum(values[a:b]) / (b - a) for a, b in spans]
    lo, hi = min(cols), max(cols)
    rng = (hi - lo) or 1.0
    grid = [[" "] * len(cols) for _ in range(height)]
    for x, v in enumerate(cols):
        y = int(round((v - lo) / rng * (height - 1)))
        grid[height - 1 - y][x] = "*"
    lines = [f"{title} (steps 1..{n})" if title else f"steps 1..{n}"]
    for r, row in enumerate(grid):
        label = hi - r * rng / (height - 1)
        lines.append(f"{label:8.3f} |" + "".join(row))
    lines.append(" " * 9 + "+" + "-" * len(cols))
    return "\n".join(lines)
