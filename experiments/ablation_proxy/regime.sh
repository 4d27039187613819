#!/usr/bin/env bash
# The proxy-vs-gold study in the paper's regime (issue 17): configs/ablation_plateau.yaml, a seed
# trained to its plateau, 2 study seeds sharing it (unit / gold data order and gold mixtures differ).
# From the repository root:  nohup bash experiments/ablation_proxy/regime.sh > regime.log 2>&1 &
# PARALLEL=1 trains and evaluates the two studies in two processes once the seed exists (one torch
# thread each). Training runs from a snapshot of src/ taken at the start; the evaluation (ablate)
# waits for the file $GO when set, and runs from a snapshot taken then. Resumable: re-run it.
set -euo pipefail
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
HERE=experiments/ablation_proxy
CFG=configs/ablation_plateau.yaml
ROOT=${ROOT:-$HERE/runs/regime}
POOL=${POOL:-runs/tiny_cpu/pool}
[ -f $POOL/DONE ] || POOL=runs/arena_cpu/pool   # the same pool (same inputs, seq_len, tokenizer)
PY=$PWD/.venv/bin/python
SNAP=${SNAP:-/tmp/datamates_regime_snap}
rm -rf $SNAP.train && mkdir -p $SNAP.train && cp -r src/datamates $SNAP.train/
mkdir -p $ROOT
declare -A TSEED=([s1]=1337 [s2]=2024)
# gold mixtures per study: 3 pairs, 2 triples and the full set, drawn at random (numpy seeds 0 / 1);
# proxies only for them and the 5 single units (the mean-unit baseline needs the unit models)
declare -A GOLD=(
  [s1]='[[science,web],[science,wiki],[web,wiki],[books,domain_samples,web],[domain_samples,science,web],[books,domain_samples,science,web,wiki]]'
  [s2]='[[books,domain_samples],[domain_samples,web],[science,web],[domain_samples,science,web],[science,web,wiki],[books,domain_samples,science,web,wiki]]')
SINGLE='[[books],[domain_samples],[science],[web],[wiki]]'
stamp() { echo "{\"stage\": \"$1\", \"study\": \"$2\", \"t\": $(date +%s)}" >> $ROOT/times.jsonl; }
sets() {
  SETS=(--set train.seed=${TSEED[$1]} --set "ablation.gold=${GOLD[$1]}" --set "ablation.subsets=$SINGLE")
  [ $1 = s1 ] || SETS+=(--set ablation.seed.checkpoint=$ROOT/s1/seed)
}
train_study() {
  local s=$1 RUN=$ROOT/$1; sets $s
  stamp partition $s
  PYTHONPATH=$SNAP.train $PY -m datamates partition -c $CFG --run-dir $RUN --pool $POOL "${SETS[@]}"
  stamp train_partitions $s
  PYTHONPATH=$SNAP.train $PY -m datamates train-partitions -c $CFG --run-dir $RUN --pool $POOL "${SETS[@]}"
  stamp train_gold $s
  PYTHONPATH=$SNAP.train $PY $HERE/train_gold.py $CFG $RUN $POOL "${SETS[@]}"
  stamp trained $s
}
eval_study() {
  local s=$1 RUN=$ROOT/$1; sets $s
  stamp ablate $s
  PYTHONPATH=$SNAP.eval $PY -m datamates ablate -c $CFG --run-dir $RUN --pool $POOL "${SETS[@]}" ${ABLATE_ARGS:-}
  stamp done $s
}
# the seed first (it is s1's), then the studies
sets s1
PYTHONPATH=$SNAP.train $PY -m datamates partition -c $CFG --run-dir $ROOT/s1 --pool $POOL "${SETS[@]}"
PYTHONPATH=$SNAP.train $PY -m datamates train-partitions -c $CFG --run-dir $ROOT/s1 --pool $POOL --seed-only "${SETS[@]}"
stamp seed_done s1
if [ -n "${PARALLEL:-}" ]; then
  train_study s1 > $ROOT/s1.train.log 2>&1 & P1=$!
  train_study s2 > $ROOT/s2.train.log 2>&1 & P2=$!
  wait $P1; wait $P2
else
  train_study s1; train_study s2
fi
if [ -n "${GO:-}" ]; then while [ ! -f "$GO" ]; do sleep 20; done; fi
rm -rf $SNAP.eval && mkdir -p $SNAP.eval && cp -r src/datamates $SNAP.eval/
if [ -n "${PARALLEL:-}" ]; then
  eval_study s1 > $ROOT/s1.ablate.log 2>&1 & P1=$!
  eval_study s2 > $ROOT/s2.ablate.log 2>&1 & P2=$!
  wait $P1; wait $P2
else
  eval_study s1; eval_study s2
fi
