"""How much the test suite checks: collected tests (all, `make test`'s selection, `slow`) and the
assertions in the test files (`assert` statements and `pytest.raises` / `pytest.warns` checks), so a
change that makes `make test` faster can show it did not make it check less (issue 25).

    python benchmarks/test_power.py                 # JSON on stdout
    python benchmarks/test_power.py --ref main      # also the same counts at a git ref, and the change

Counting is static for assertions (an `assert` in a loop or a helper counts once) and from
`pytest --collect-only` for tests (a parametrized case counts once per parameter set).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def count_assertions(tests: Path) -> dict[str, int]:
    asserts = raises = files = 0
    for f in sorted(tests.rglob("*.py")):
        files += 1
        tree = ast.parse(f.read_text(), filename=str(f))
        for node in ast.walk(tree):
            if isinstance(node, ast.Assert):
                asserts += 1
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr in ("raises", "warns") and isinstance(node.func.value, ast.Name)
                  and node.func.value.id == "pytest"):
                raises += 1
    return {"files": files, "assert_statements": asserts, "pytest_raises_warns": raises}


def collected(root: Path, marker: str) -> int:
    """Tests pytest collects under `-m marker` (ids printed by --collect-only -q)."""
    env = dict(os.environ, PYTHONPATH=str(root / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
               HF_HUB_OFFLINE="1", DATAMATES_PROGRESS="0")
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                        "-o", "addopts=", "-m", marker, "tests"], cwd=root, env=env, capture_output=True, text=True)
    m = re.search(r"(\d+)(?:/\d+)? tests? (?:collected|selected)", r.stdout)
    if m is None:
        n = sum(1 for line in r.stdout.splitlines() if "::" in line)
        return n
    # "N/M tests collected (K deselected)" -> N is the selected count
    return int(m.group(1))


def counts(root: Path) -> dict[str, int]:
    out = count_assertions(root / "tests")
    out["tests_all_cpu"] = collected(root, "not gpu")
    out["tests_make_test"] = collected(root, "not slow and not gpu")
    out["tests_slow"] = collected(root, "slow and not gpu")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", help="also count at this git ref (its files, unpacked to a temporary folder) and print the change")
    args = ap.parse_args()
    now = counts(ROOT)
    result: dict = {"worktree": now}
    if args.ref:
        with tempfile.TemporaryDirectory() as tmp:
            wt = Path(tmp) / "ref"  # the ref's files (git archive: no worktree, nothing written to .git)
            wt.mkdir()
            tar = subprocess.run(["git", "archive", args.ref], cwd=ROOT, check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(wt)], input=tar, check=True)
            before = counts(wt)
        result[args.ref] = before
        result["change"] = {k: now[k] - before[k] for k in now}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
