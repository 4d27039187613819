"""The overall line of `datamates run` (run_progress): its position, its remaining-time estimate, the
steps the training bars report to it, and the closing lines that name what to open."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from datamates import log, run_progress
from datamates.run_progress import RunProgress


def _mates(stages=4, warmup=2, steps=10, decay=5):
    return SimpleNamespace(stages=stages, warmup_stages=warmup, stage_steps=steps, decay_steps=decay)


def test_parts_and_remaining_follow_what_was_measured(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(run_progress.time, "time", lambda: now[0])
    p = RunProgress("r", ["random", "mates"], 4, 2, 10, 5)
    assert p.parts == 2 + 2 * (2 + 1)  # warmup stages, then per selector 2 stages and a final
    assert p.remaining() is None  # nothing measured yet
    p.stage(1, "random", warmup=True)
    for i in range(10):  # 10 steps of 1 s, then 4 s of curve evaluation
        now[0] += 1.0
        p.train_step(i + 1, 10, 1.0)
    now[0] += 4.0
    p.stage(2, "random", warmup=True)
    assert p.overhead == {"warmup": [pytest.approx(4.0)]}
    # left: the rest of warmup stage 2 (14 s) + random 2 stages + final + mates 2 stages + final,
    # stages priced at 10 x 1 s + 4 s, finals (none measured) at 5 steps x 1 s + 4 s
    assert p.remaining() == pytest.approx(14 + 4 * 14 + 2 * 9)
    assert "[2/8] warmup (random) stage 2/4" in p.line()
    # a selector's measured non-training time prices its later stages; an unmeasured one is priced
    # like the slowest measured selector
    now[0] += 14
    p.steps_done += 10
    p.step_seconds += 10
    p.stage(3, "random", warmup=False)
    now[0] += 10 + 30  # random's stage 3: 10 s of steps, 30 s of selection
    p.steps_done += 10
    p.step_seconds += 10
    p.stage(4, "random", warmup=False)
    assert p.overhead["random"] == [pytest.approx(30.0)]
    assert p.remaining() == pytest.approx(40 + 9 + 2 * 40 + 9)


def test_resumed_parts_are_not_measured(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(run_progress.time, "time", lambda: now[0])
    p = RunProgress("r", ["random"], 2, 1, 10, 0)
    p.stage(1, "random", warmup=True)
    now[0] += 0.5  # finished by an earlier call: no training step
    p.stage(2, "random", warmup=False)
    assert p.overhead == {}


def test_training_bars_report_steps_to_the_run_line(monkeypatch):
    monkeypatch.setenv("DATAMATES_PROGRESS", "1")
    seen = []
    log.set_step_listener(lambda done, total, s: seen.append((done, total)))
    try:
        bar = log.progress_bar("train warmup/stage_01", total=3, unit="step")
        for _ in range(3):
            bar.update(1)
        bar.close()
        other = log.progress_bar("score", total=2)
        other.update(1)
        other.close()
    finally:
        log.set_step_listener(None)
    assert seen == [(1, 3), (2, 3), (3, 3)]  # the training bar's steps, not the scoring bar's


def test_summary_names_the_report_the_plot_and_the_run(tmp_path):
    rep = tmp_path / "report" / "report.html"
    rep.parent.mkdir()
    rep.write_text("x")
    (rep.parent / "curve_tokens.png").write_bytes(b"png")
    text = run_progress.summary(tmp_path / "run", str(rep), 75.0)
    assert "done in 1:15" in text and str(rep) in text
    assert str(rep.parent / "curve_tokens.png") in text and str(tmp_path / "run") in text
