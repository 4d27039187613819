#!/bin/bash
# The longer selection arena (issue 30, item 4; README, "The longer arena"): 5 seeds of configs/arena_long_cpu.yaml,
# alone on the machine (about 90 minutes on 2 cores). Resumable: re-run this script after a crash or a kill;
# finished seeds, branches and stages are kept (every stage has a DONE marker), then the paired report is written
# to experiments/selection_arena/report/arena_long_cpu/ and experiments/selection_arena/arena_long_cpu_pairs.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
$PY experiments/selection_arena/run.py --config configs/arena_long_cpu.yaml --seeds 0 1 2 3 4 "$@"
$PY experiments/selection_arena/pairs.py experiments/selection_arena/runs/arena_long_cpu_s{0,1,2,3,4} \
    --pair mates:loss --pair mates:random --pair mates:mates-parity --pair mates:mates-static \
    --pair group:mates:mates --pair mates-prefix:mates --pair mates-prefix:loss --pair mates-prefix:random \
    --pair mates-proxy:mates --pair mates-proxy:loss --pair mates-proxy:random \
    --pair loss:random --pair oracle:random --pair dsdm:random --pair fasttext:random --pair mates-parity:random \
    --share mates-prefix --share mates-proxy --share mates --share mates-parity --share dsdm --share loss \
    --out experiments/selection_arena/arena_long_cpu_pairs.json --md experiments/selection_arena/arena_long_cpu_pairs.md
