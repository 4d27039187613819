"""The MATES loop end to end on the tiny pool: reproducible by seed, and a run killed with SIGKILL
at several points finishes, after re-running the same command, exactly like an uninterrupted run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from datamates.config import load_config
from datamates.pipelines import run_mates
from datamates.run_dir import RunDir, read_json


def _write_cfg(tmp: Path, name: str, **over) -> Path:
    cfg = {
        "name": name,
        "runs_root": str(tmp / "runs"),
        "pool": {"seq_len": 64, "tokenizer": {"vocab_size": 512}},
        "model": {"preset": "tiny", "n_layers": 2, "d_model": 32, "n_heads": 2, "context": 128},
        "train": {"micro_batch_size": 4, "lr": 3.0e-3, "warmup_steps": 2, "device": "cpu", "log_every": 100,
                  "checkpoint_every": 2},
        "eval": {"tasks": ["arc_easy", "piqa"], "limit": 8, "batch_size": 16},
        "mates": {
            "selectors": ["random", "mates"], "stages": 2, "stage_steps": 4, "heldout_per_domain": 8,
            "decay_steps": 2, "decay_half_life": 1.0, "curve_reference_size": 16,
            "probe": {"mode": "first_order", "n_probes": 32, "reference_size": 16, "chunk_size": 8},
            "fit": {"mode": "frozen", "encoder": {"max_tokens": 64, "chunk_len": 64}, "min_labels": 8},
            "select": {"temperature": 0.1},
        },
    }
    for k, v in over.items():
        node = cfg
        *path, last = k.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = v
    f = tmp / f"{name}.yaml"
    f.write_text(yaml.safe_dump(cfg))
    return f


def _with_pool(tmp: Path, name: str, tiny_pool) -> None:
    """Reuse the session's tiny pool (building one is tested elsewhere)."""
    dst = tmp / "runs" / name / "pool"
    if not dst.exists():
        shutil.copytree(tiny_pool.path, dst)


def _run_inprocess(tmp: Path, name: str, tiny_pool, **over) -> RunDir:
    f = _write_cfg(tmp, name, **over)
    _with_pool(tmp, name, tiny_pool)
    cfg = load_config(str(f))
    rd = RunDir(cfg.run_dir)
    run_mates(cfg, rd)
    return rd


def _selected(rd: RunDir, branch: str, stage: int) -> np.ndarray:
    return np.load(rd.branch(branch).selected(stage) / "ids.npy")


@pytest.fixture(scope="module")
def reference_run(tiny_pool, tmp_path_factory) -> tuple[Path, RunDir, int]:
    import torch

    tmp = tmp_path_factory.mktemp("pipe")
    # float sums depend on the thread count: the killed run's subprocesses use the same
    return tmp, _run_inprocess(tmp, "ref", tiny_pool), torch.get_num_threads()


def test_selected_ids_reproducible_by_seed(reference_run, tiny_pool):
    tmp, ref, _ = reference_run
    again = _run_inprocess(tmp, "again", tiny_pool)
    other = _run_inprocess(tmp, "other", tiny_pool, **{"mates.select.seed": 7})
    for branch, stage in [("warmup", 1), ("mates", 2), ("random", 2)]:
        np.testing.assert_array_equal(_selected(ref, branch, stage), _selected(again, branch, stage))
    assert not np.array_equal(_selected(ref, "mates", 2), _selected(other, "mates", 2))
    # the selectors really differ, and the mates branch is made of probe -> fit -> score -> select
    assert not np.array_equal(_selected(ref, "mates", 2), _selected(ref, "random", 2))
    for art in ("probe", "influence_model", "scores", "selected", "checkpoint", "eval"):
        assert (ref.branch("mates").stage(2) / art / "DONE").exists(), art
    m = read_json(ref.metrics)
    acc = m["selectors"]["mates"]["accounting"]
    assert acc["flops"]["probe"] > 0 and acc["flops"]["train"] > 0 and acc["selection_overhead"] > 0
    assert m["selectors"]["random"]["accounting"]["flops"]["selection"] == 0
    assert m["selectors"]["mates"]["final_eval"]["tasks"]["piqa"]["n"] == 8
    assert len(m["selectors"]["mates"]["curve"]) == 2  # one reference-loss point per stage


def test_loss_selector_branch(reference_run, tiny_pool):
    """The `loss` selector starts from the same warmup as the other selectors and is charged one LM
    forward per candidate (no probes, no influence model)."""
    from datamates.selection.score import read_scores

    tmp, ref, _ = reference_run
    rd = _run_inprocess(tmp, "loss", tiny_pool, **{"mates.selectors": ["loss"]})
    np.testing.assert_array_equal(_selected(rd, "warmup", 1), _selected(ref, "warmup", 1))
    ids, s = read_scores(rd.branch("loss").scores(2))
    sel = _selected(rd, "loss", 2)
    assert s[np.isin(ids, sel)].mean() < s[~np.isin(ids, sel)].mean()  # high-loss candidates kept
    acc = read_json(rd.metrics)["selectors"]["loss"]["accounting"]["flops"]
    # a forward costs a third of a training step per token, over 64 tokens per candidate
    train_fpt = read_json(rd.branch("warmup").checkpoint(1) / "train_summary.json")["flops_per_token"]
    assert acc["probe"] == 0 and acc["score"] == pytest.approx(train_fpt / 3 * 64 * len(ids), rel=1e-6)


def test_killed_run_resumes_to_the_same_result(reference_run, tiny_pool):
    """SIGKILL the CLI when given artifacts appear, re-run the same command, compare with the
    uninterrupted run: same selections, same final weights, same evaluation."""
    tmp, ref, threads = reference_run
    name = "killed"
    f = _write_cfg(tmp, name)
    _with_pool(tmp, name, tiny_pool)
    rd = RunDir(tmp / "runs" / name)
    kill_points = [
        rd.branch("warmup").checkpoint(1).with_name("checkpoint.partial") / "step_00000002",  # mid-training
        rd.branch("mates").probe(2),
        rd.branch("mates").influence_model(2),
        rd.branch("random").final,
    ]
    env = {**os.environ, "DATAMATES_PROGRESS": "0", "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "datamates", "run", "-c", str(f), "--no-report"]
    killed = 0
    for point in kill_points:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while proc.poll() is None and not point.exists():
            time.sleep(0.02)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            killed += 1
    assert killed >= 3, "the run finished before the kill points were reached"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for branch, stage in [("warmup", 1), ("mates", 2), ("random", 2)]:
        np.testing.assert_array_equal(_selected(ref, branch, stage), _selected(rd, branch, stage))
    for branch in ("mates", "random"):
        a = (ref.branch(branch).final / "model.safetensors").read_bytes()
        b = (rd.branch(branch).final / "model.safetensors").read_bytes()
        assert a == b, branch
        ea = read_json(ref.branch(branch).final_eval / "eval.json")
        eb = read_json(rd.branch(branch).final_eval / "eval.json")
        for part in ("tasks", "reference"):
            assert {t: (r["acc"], r.get("acc_norm"), r.get("loss")) for t, r in ea[part].items()} == \
                   {t: (r["acc"], r.get("acc_norm"), r.get("loss")) for t, r in eb[part].items()}
    assert not list(rd.root.rglob("*.partial"))
