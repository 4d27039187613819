"""Where a `datamates run` is: one overall line above the per-step bars, and what to open at the end.

The MATES loop (pipelines.run_mates) calls three hooks: `start` once, `stage` at the start of every
stage (warmup or selection), `final` before a branch's decay and evaluation, and `finish` at the
end. The line (tqdm position 0; the training, scoring and evaluation bars open below it) reads

    run tiny_cpu [5/11] mates stage 3/4, train step 12/40 | 1:02 elapsed, ~3:10 left

The remaining time is an estimate from what this run has measured so far: seconds per training step,
the non-training time of a stage (selection, curve evaluation) per selector, and the decay plus the
final evaluation of a branch. A selector that has not finished a stage yet is priced like the
slowest one measured (a lower bound until then); the estimate sharpens as the run goes on.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from datamates.log import is_main, set_step_listener


def _hms(s: float) -> str:
    s = max(0, int(round(s)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


@dataclass
class RunProgress:
    name: str
    selectors: list[str]
    stages: int
    warmup_stages: int
    stage_steps: int
    decay_steps: int
    t0: float = field(default_factory=time.time)
    part: int = 0  # parts done or under way: warmup stages, selection stages, finals
    label: str = "starting"
    steps_done: int = 0  # training steps finished, all calls together
    step_seconds: float = 0.0  # wall time of those steps
    overhead: dict[str, list[float]] = field(default_factory=dict)  # selector -> non-training seconds per stage
    finals: list[float] = field(default_factory=list)
    _open: tuple[str, float, float, int] | None = None  # (kind, start time, step seconds and steps at start)
    _inner: tuple[int, int] | None = None  # the current training call: (done, total)
    _bar: Any = None

    @property
    def parts(self) -> int:
        per_branch = self.stages - self.warmup_stages
        return self.warmup_stages + len(self.selectors) * (per_branch + 1)

    # ---- hooks --------------------------------------------------------------------------------
    def stage(self, s: int, selector: str, warmup: bool) -> None:
        self._close_part()
        self.part += 1
        self.label = f"{'warmup (random)' if warmup else selector} stage {s}/{self.stages}"
        self._open = ("warmup" if warmup else selector, time.time(), self.step_seconds, self.steps_done)
        self._inner = None
        self._draw()

    def final(self, selector: str) -> None:
        self._close_part()
        self.part += 1
        self.label = f"{selector} decay + evaluation"
        self._open = ("final", time.time(), self.step_seconds, self.steps_done)
        self._inner = None
        self._draw()

    def train_step(self, done: int, total: int, seconds: float) -> None:
        """One optimizer step of the current training call finished (from log.progress_bar)."""
        self.steps_done += 1
        self.step_seconds += seconds
        self._inner = (done, total)
        self._draw()

    def finish(self) -> float:
        self._close_part()
        self.label = "done"
        self._inner = None
        self._draw()
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        return time.time() - self.t0

    # ---- estimate -----------------------------------------------------------------------------
    def _close_part(self) -> None:
        if self._open is None:
            return
        kind, start, seconds_at, steps_at = self._open
        self._open = None
        if self.steps_done == steps_at:  # a part finished by an earlier call (resume): nothing measured
            return
        wall = time.time() - start
        non_train = max(0.0, wall - (self.step_seconds - seconds_at))
        if kind == "final":
            self.finals.append(wall)
        else:
            self.overhead.setdefault(kind, []).append(non_train)

    def remaining(self) -> float | None:
        """Seconds left (estimate), None before the first measured step."""
        if self.steps_done == 0:
            return None
        rate = self.step_seconds / self.steps_done
        mean = {k: sum(v) / len(v) for k, v in self.overhead.items() if v}
        known = [v for k, v in mean.items() if k != "warmup"]
        unseen = max(known) if known else mean.get("warmup", 0.0)
        per_branch = self.stages - self.warmup_stages
        left = 0.0
        # parts after the current one, in run order: warmup stages, then per selector its stages and final
        order: list[str] = ["warmup"] * self.warmup_stages
        for sel in self.selectors:
            order += [sel] * per_branch + ["final"]
        final_est = (sum(self.finals) / len(self.finals)) if self.finals else None
        for kind in order[self.part:]:
            if kind == "final":
                left += final_est if final_est is not None else self.decay_steps * rate + mean.get("warmup", 0.0)
            else:
                left += self.stage_steps * rate + mean.get(kind, unseen)
        if self._open is not None:  # the part under way: what its kind usually costs, less what it has spent
            kind, start = self._open[:2]
            if kind == "final":
                expect = final_est if final_est is not None else self.decay_steps * rate + mean.get("warmup", 0.0)
            else:
                expect = self.stage_steps * rate + mean.get(kind, unseen)
            left += max(0.0, expect - (time.time() - start))
        return left

    def line(self) -> str:
        el = time.time() - self.t0
        rem = self.remaining()
        step = f", train step {self._inner[0]}/{self._inner[1]}" if self._inner else ""
        left = f"~{_hms(rem)} left" if rem is not None else "time left: after the first training step"
        return f"run {self.name} [{self.part}/{self.parts}] {self.label}{step} | {_hms(el)} elapsed, {left}"

    def _draw(self) -> None:
        if self._bar is not None:
            self._bar.set_description_str(self.line(), refresh=True)


_CURRENT: RunProgress | None = None


def current() -> RunProgress | None:
    return _CURRENT


def start(name: str, mates_cfg, selectors: list[str]) -> RunProgress:
    """Open the overall line (rank 0, and not with DATAMATES_PROGRESS=0: then the object still
    keeps the estimate, for the summary, without drawing)."""
    global _CURRENT
    p = RunProgress(name, list(selectors), mates_cfg.stages, mates_cfg.warmup_stages, mates_cfg.stage_steps,
                    mates_cfg.decay_steps)
    if is_main() and os.environ.get("DATAMATES_PROGRESS", "1") != "0":
        from tqdm.auto import tqdm

        p._bar = tqdm(total=None, position=0, bar_format="{desc}", dynamic_ncols=True, leave=True)
        p._draw()
        set_step_listener(p.train_step)
    _CURRENT = p
    return p


def finish() -> float | None:
    """Close the overall line; seconds since `start` (None when no run was started)."""
    global _CURRENT
    p, _CURRENT = _CURRENT, None
    set_step_listener(None)
    return p.finish() if p is not None else None


def stage(s: int, selector: str, warmup: bool) -> None:
    """Hook: stage s of a branch starts (no-op outside `datamates run`)."""
    if _CURRENT is not None:
        _CURRENT.stage(s, selector, warmup)


def final(selector: str) -> None:
    """Hook: a branch's decay and final evaluation start (no-op outside `datamates run`)."""
    if _CURRENT is not None:
        _CURRENT.final(selector)


def summary(run_dir, report: str | None, seconds: float | None) -> str:
    """What to open next, after the tables: the report, the curve plot, the run folder."""
    from pathlib import Path

    lines = [f"done{f' in {_hms(seconds)}' if seconds is not None else ''}. Open next:"]
    if report:
        rep = Path(report)
        lines.append(f"  report      {rep}   (paired against random, curves, FLOPs, examples)")
        plot = rep.parent / "curve_tokens.png"
        if plot.exists():
            lines.append(f"  plot        {plot}   (reference loss per stage, one line per selector)")
    lines.append(f"  run folder  {Path(run_dir)}   (config.yaml, logs/, one branch per selector)")
    return "\n".join(lines)
