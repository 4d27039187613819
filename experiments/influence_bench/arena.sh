#!/bin/sh
# Issue 28, "Must show": the paper-scale pick (embed + stats/hidden/fo of a 16-token prefix through the embedding
# and head only; configs/paper_410m.yaml, arena_gpu.yaml) as `mates` in the selection arena (configs/arena_cpu.yaml,
# 5 seeds), against `mates-full` (the full-forward LM-feature model, arena_cpu's own default), `loss` and `random`;
# `oracle` for the share of its gain. Resumable: re-run after a kill. Then the paired differences
# (experiments/selection_arena/pairs.py), selection FLOPs included. Not run in issue 28's session (heavy time).
#   PYTHONPATH=src DATAMATES_DATA=... flock /work/wt/heavy.lock sh experiments/influence_bench/arena.sh
set -e
PY=${PYTHON:-python}
$PY experiments/selection_arena/run.py --seeds 0 1 2 3 4 --no-report \
    --set 'mates.selectors=[random,loss,mates,mates-full,oracle]' \
    --set 'mates.fit.features=[embed,stats,hidden,fo]' --set mates.fit.prefix_tokens=16 --set mates.fit.exit_layer=0
R=experiments/selection_arena/runs
$PY experiments/selection_arena/pairs.py $R/arena_cpu_s0 $R/arena_cpu_s1 $R/arena_cpu_s2 $R/arena_cpu_s3 $R/arena_cpu_s4 \
    --pair mates:mates-full --pair mates:loss --pair mates:random --pair mates-full:loss --share mates --share mates-full \
    --out experiments/influence_bench/arena_pairs.json --md experiments/influence_bench/arena_pairs.md
