"""benchmarks/gpu_check.sh --cpu-dry-run: every part of the GPU check runs on CPU at tiny sizes and the
summary holds a number for each (the GPU run itself needs a GPU machine)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _run(*args, timeout=600):
    env = {**os.environ, "PYTHON": os.environ.get("PYTHON", sys.executable)}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_cpu_dry_run_runs_every_part(data, tmp_path):
    """With the data bundle (the evaluation part reads its task files; without it the part reports a skip)."""
    # the pytest part is left out here: in a dry run it only collects the gpu tests (this suite does that)
    r = _run("--cpu-dry-run", "--out", str(tmp_path / "out"), "--skip", "pytest_gpu")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary == json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert summary["ok"] and summary["dry_run"] and summary["cuda"] is None
    parts = summary["parts"]
    assert set(parts) == {"pool", "train", "probe", "score", "evaluate"}
    for name, p in parts.items():
        assert "error" not in p and "skipped" not in p, (name, p)
        assert p["peak_rss_gb_process"] > 0 and p["seconds"] > 0, (name, p)
    t = parts["train"]
    assert t["ratio"] == pytest.approx(t["datamates_tok_s"] / t["plain_loop_tok_s"], rel=0.01)
    assert parts["probe"]["exact"]["probes"] == 3 and parts["probe"]["exact"]["probes_per_s"] > 0
    assert parts["probe"]["first_order"]["probes_per_s"] > 0
    assert parts["score"]["sequences"] == 32 and parts["score"]["scores_finite"] and parts["score"]["sequences_per_s"] > 0
    assert parts["evaluate"]["tasks"] == 10 and parts["evaluate"]["examples"] == 30  # 9 tasks + LAMBADA, 3 each


def test_refuses_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    r = _run("--cpu-dry-run", "--out", str(tmp_path), timeout=120)
    assert r.returncode == 2 and "did not make" in r.stderr
    assert (tmp_path / "mine.txt").read_text() == "keep me"
