#!/usr/bin/env bash
# The GPU check: pytest -m gpu, training tokens/s vs a plain loop + MFU (pythia-160m, bf16), exact and
# first-order probes/s, scoring sequences/s (BERT-base shape), evaluation examples/s, peak memory of
# each; one JSON summary on stdout (and in <out>/gpu_check.json). Finishes within 8 minutes on one
# H100 / H200 (the python helper skips parts not started within --budget-s, 450 s by default; the
# timeout below is the hard stop). What each part measures: benchmarks/gpu_check.py.
#
#   bash benchmarks/gpu_check.sh                   # on a GPU machine
#   bash benchmarks/gpu_check.sh --cpu-dry-run     # here: every part on CPU at tiny sizes
#
# Data: $DATAMATES_DATA (default ../shared/data) if present, else synthetic text; nothing downloads.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false DATAMATES_PROGRESS=0
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec timeout --kill-after=10 475 "$PY" benchmarks/gpu_check.py "$@"
