#!/usr/bin/env bash
# The proxy-vs-gold study at CPU scale (issue 7). From the repository root:
#   bash experiments/ablation_proxy/run.sh
# K = 5 domain units of $DATAMATES_DATA/pretrain, the tiny GPT-NeoX, 256-token sequences; reuses the
# tiny_cpu pool read-only when it exists (same inputs, seq_len and tokenizer), else builds one.
# Everything is resumable: re-running skips finished models and cached evaluations.
set -euo pipefail
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
HERE=experiments/ablation_proxy
CFG=$HERE/config.yaml
RUN=$HERE/runs/ablation_proxy
DM=${DM:-.venv/bin/datamates}
POOL=runs/tiny_cpu/pool
mkdir -p $RUN
if [ ! -f $POOL/DONE ]; then
  POOL=$RUN/pool
  $DM pool build -c $CFG --run-dir $RUN
fi
t0=$(date +%s)
$DM partition -c $CFG --run-dir $RUN --pool $POOL
t1=$(date +%s)
$DM train-partitions -c $CFG --run-dir $RUN --pool $POOL
t2=$(date +%s)
$DM ablate -c $CFG --run-dir $RUN --pool $POOL
t3=$(date +%s)
echo "{\"partition_s\": $((t1-t0)), \"train_partitions_s\": $((t2-t1)), \"ablate_s\": $((t3-t2)), \"threads\": $OMP_NUM_THREADS}" > $RUN/wall_times.json
echo "report: $RUN/ablation/report.md"
