#!/bin/sh
# Train on <num_gpu> processes of this machine:   sh scripts/train.sh <num_gpu> <port> [key.sub=value ...]
# Dataset, method, split and save path are the variables below; each can also come from the environment:
#   DATASET=potsdam METHOD=fixmatch SPLIT=5 sh scripts/train.sh 4 29500
# Several machines: pass torchrun's own options through TORCHRUN_ARGS, e.g. on each node
#   TORCHRUN_ARGS="--nnodes 2 --node_rank 0 --master_addr 10.0.0.1" sh scripts/train.sh 8 29500
# With no GPU the processes run on the CPU (gloo), which is how the demo and the tests use it.
set -eu

DATASET=${DATASET:-loveda}          # loveda | potsdam | deepglobe (or demo)
METHOD=${METHOD:-rs_mtdf}           # supervised | fixmatch | unimatch_v2 | rs_mtdf
SPLIT=${SPLIT:-10}                  # labelled percent: 1 | 5 | 10
CONFIG=${CONFIG:-configs/${DATASET}.yaml}
SAVE_PATH=${SAVE_PATH:-exp/${DATASET}/${METHOD}/${SPLIT}}

if [ $# -lt 2 ]; then
    echo "usage: sh scripts/train.sh <num_gpu> <port> [key.sub=value ...]" >&2
    exit 2
fi
NUM_GPU=$1
PORT=$2
shift 2

cd "$(dirname "$0")/.."
mkdir -p "$SAVE_PATH"
# --max-restarts lets torchrun restart crashed workers; the trainer resumes from latest.pth by itself.
# shellcheck disable=SC2086
exec torchrun --nproc_per_node "$NUM_GPU" --master_port "$PORT" --max-restarts "${MAX_RESTARTS:-0}" \
    ${TORCHRUN_ARGS:-} train.py --config "$CONFIG" --split "$SPLIT" --save-path "$SAVE_PATH" \
    train.method="$METHOD" "$@" 2>&1 | tee -a "$SAVE_PATH/out.log"
