"""Without the sample data bundle the tests that need it are skipped, with one line that says where to
put it (issue 11, defect 6c: they failed at setup instead)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# tests that need the bundle through different fixtures: the pool (data -> small_corpus -> tiny_pool),
# the LAMBADA file, and `data` itself
NEEDS_DATA = ["tests/selection/test_probe.py::test_sample_probe_set",
              "tests/core/test_reference.py::test_lambada_by_name_is_load_lambada",
              "tests/evaluate/test_spec.py::test_harness_prompts"]


def test_missing_bundle_skips_with_one_line(tmp_path):
    env = {**os.environ, "DATAMATES_DATA": str(tmp_path), "DATAMATES_PROGRESS": "0"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *NEEDS_DATA],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert " error" not in out and "failed" not in out, out[-3000:]
    summary = [ln for ln in out.splitlines() if "skipped" in ln and " in " in ln]
    assert summary and " passed" not in summary[-1], out[-3000:]
    reasons = [ln for ln in out.splitlines() if ln.startswith("SKIPPED")]
    assert reasons, out[-3000:]
    for ln in reasons:
        assert f"sample data bundle not found at {tmp_path}" in ln and "set DATAMATES_DATA" in ln, ln
