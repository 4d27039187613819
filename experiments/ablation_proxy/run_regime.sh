#!/usr/bin/env bash
# The issue-29 study, end to end and resumable (killed and rerun: it redoes only unfinished work).
# Needs both cores for about 90 minutes (README, "Issue 29"). From the repository root:
#   bash experiments/ablation_proxy/run_regime.sh                 # -> experiments/ablation_proxy/runs/regime29/analysis/
#   bash experiments/ablation_proxy/run_regime.sh --scale smoke --root /tmp/regime_smoke
set -euo pipefail
PY=${PY:-$PWD/.venv/bin/python}
[ -x "$PY" ] || PY=python
exec env PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} "$PY" experiments/ablation_proxy/regime.py "$@"
