"""Metrics tracking: metrics.jsonl always (the same numbers as the training log), TensorBoard and
wandb on request, offline, and a missing backend package is one line."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest
from datamates_testing import tiny_train_cfg

from datamates import tracking
from datamates.cli import main
from datamates.config.log import LogConfig


@pytest.fixture(autouse=True)
def _reset_tracking():
    yield
    tracking.configure(None)


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def _train(tiny_pool, tiny_model_cfg, out, steps=6):
    from datamates.core.train_loop import train

    return train(tiny_train_cfg(steps=steps, checkpoint_every=100), tiny_model_cfg, tiny_pool,
                 np.arange(0, 400), out)


def test_training_writes_metrics_jsonl_with_the_training_log_numbers(tiny_pool, tiny_model_cfg, tmp_path, one_thread):
    ck = _train(tiny_pool, tiny_model_cfg, tmp_path / "checkpoint")
    log = _lines(ck / "train_log.jsonl")
    met = _lines(ck / "metrics.jsonl")
    assert [m["step"] for m in met] == [r["global_step"] for r in log] == list(range(1, 7))
    for m, r in zip(met, log):
        assert m == {"step": r["global_step"], "train/loss": r["loss"], "train/lr": r["lr"],
                     "train/grad_norm": r["grad_norm"], "train/tokens": r["tokens"]}
    assert not (tmp_path / "tracking").exists()  # backend none: nothing but metrics.jsonl


def test_resumed_metrics_are_the_same_bytes(tmp_path):
    """A loop killed after step 5 and resumed from its step-3 checkpoint logs steps 4.. again: the
    lines after the resume step are dropped first, so the file equals an uninterrupted one's."""
    a, b = tmp_path / "a", tmp_path / "b"
    tracking.start(a)
    for s in range(1, 9):
        tracking.log_metrics(s, {"fit/loss": 1.0 / s, "fit/n": s}, folder=a)
    tracking.close(a)
    tracking.start(b)
    for s in range(1, 6):
        tracking.log_metrics(s, {"fit/loss": 1.0 / s, "fit/n": s}, folder=b)
    tracking.close(b)
    tracking.start(b, resume_step=3)
    for s in range(4, 9):
        tracking.log_metrics(s, {"fit/n": s, "fit/loss": 1.0 / s}, folder=b)
    tracking.close(b)
    assert (a / "metrics.jsonl").read_bytes() == (b / "metrics.jsonl").read_bytes()
    assert _lines(a / "metrics.jsonl")[2] == {"step": 3, "fit/loss": 1.0 / 3, "fit/n": 3}


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard not installed")
def test_tensorboard_gets_the_training_curve(tiny_pool, tiny_model_cfg, tmp_path, one_thread):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tracking.configure(LogConfig(backend="tensorboard"))
    ck = _train(tiny_pool, tiny_model_cfg, tmp_path / "stage_01" / "checkpoint", steps=4)
    ev = EventAccumulator(str(tmp_path / "stage_01" / "tracking" / "checkpoint"))
    ev.Reload()
    got = [(e.step, e.value) for e in ev.Scalars("train/loss")]
    want = [(r["global_step"], r["loss"]) for r in _lines(ck / "train_log.jsonl")]
    assert [s for s, _ in got] == [s for s, _ in want] == [1, 2, 3, 4]
    np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-6)  # TB stores float32
    assert {"train/lr", "train/grad_norm", "train/tokens"} <= set(ev.Tags()["scalars"])


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb not installed")
def test_wandb_runs_offline_unless_asked(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    tracking.configure(LogConfig(backend="wandb", dir=str(tmp_path / "wb")))
    tracking.start(tmp_path / "fit" / "influence_model.partial")
    tracking.log_metrics(1, {"fit/loss": 0.5}, folder=tmp_path / "fit" / "influence_model.partial")
    tracking.close_all()
    assert list((tmp_path / "wb").rglob("offline-run-*"))


@pytest.mark.parametrize("backend", ["tensorboard", "wandb"])
def test_a_missing_backend_package_is_one_line(backend, tmp_path, capsys, monkeypatch):
    """Blocks the import (sys.modules[name] = None) where the package is installed."""
    monkeypatch.setitem(sys.modules, backend, None)
    code = main(["train", "--pool", str(tmp_path / "nopool"), "--out", str(tmp_path / "ck"),
                 "--run-dir", str(tmp_path / "run"), "--set", f"log.backend={backend}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert f"log.backend = '{backend}' needs the {backend} package" in err[0] and f"pip install {backend}" in err[0]
    assert not (tmp_path / "ck").exists()


def test_unknown_backend_names_the_choices(tmp_path, capsys):
    code = main(["config", "show", "--set", "log.backend=mlflow"])
    err = capsys.readouterr().err
    assert code == 2 and "log.backend" in err and "tensorboard" in err and "wandb" in err
