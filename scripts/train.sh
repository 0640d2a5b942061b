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
# The console also goes to out.log. A pipeline's status is tee's, so the trainer's is passed through a file,
# and this script exits with it.
status_file=$(mktemp)
log_start=0
if [ -f "$SAVE_PATH/out.log" ]; then log_start=$(wc -l < "$SAVE_PATH/out.log"); fi
# --max-restarts lets torchrun restart crashed workers; the trainer resumes from latest.pth by itself.
# shellcheck disable=SC2086
{
    rc=0
    torchrun --nproc_per_node "$NUM_GPU" --master_port "$PORT" --max-restarts "${MAX_RESTARTS:-0}" \
        ${TORCHRUN_ARGS:-} train.py --config "$CONFIG" --split "$SPLIT" --save-path "$SAVE_PATH" \
        train.method="$METHOD" "$@" 2>&1 || rc=$?
    echo "$rc" > "$status_file"
} | tee -a "$SAVE_PATH/out.log"
status=$(cat "$status_file")
rm -f "$status_file"
if [ "$status" -ne 0 ]; then
    # torchrun prints its own failure report after the trainer's one-line error: repeat that line last.
    # torchrun reports any worker failure as 1; a one-line error of the trainer is a user error, status 2.
    reason=$(tail -n +"$((log_start + 1))" "$SAVE_PATH/out.log" | grep '^error: ' | tail -n 1)
    if [ -n "$reason" ]; then
        echo "$reason" >&2
        exit 2
    fi
    echo "error: training failed with exit status $status; see $SAVE_PATH/out.log" >&2
fi
exit "$status"
