#!/bin/sh
# Train on <num_gpu> processes of this machine:   sh scripts/train.sh <num_gpu> <port> [key.sub=value ...]
# The config, method, split and save path may come from the environment:
#   DATASET=potsdam METHOD=fixmatch SPLIT=5 sh scripts/train.sh 4 29500
# They become overrides placed before the command line's, so a key given on the command line wins (train.py
# applies overrides in order), and the run folder is the one the final settings name (save_path).
# Several machines: pass torchrun's own options through TORCHRUN_ARGS, e.g. on each node
#   TORCHRUN_ARGS="--nnodes 2 --node_rank 0 --master_addr 10.0.0.1" sh scripts/train.sh 8 29500
# With no GPU the processes run on the CPU (gloo), which is how the demo and the tests use it.
#
# The console also goes to <run>/out.log. Exit status: the trainer's; 2 with its one-line error repeated
# last; 0 when SIGTERM (to this script, to torchrun or to the whole process group, as schedulers send it)
# stopped the run after saving latest.pth: run the same command to resume.
set -eu

DATASET=${DATASET:-loveda}          # loveda | potsdam | deepglobe (or demo): picks configs/<DATASET>.yaml
CONFIG=${CONFIG:-configs/${DATASET}.yaml}

if [ $# -lt 2 ]; then
    echo "usage: sh scripts/train.sh <num_gpu> <port> [key.sub=value ...]" >&2
    exit 2
fi
NUM_GPU=$1
PORT=$2
shift 2
cd "$(dirname "$0")/.."

if [ -n "${SAVE_PATH:-}" ]; then set -- "save_path=$SAVE_PATH" "$@"; fi
if [ -n "${SPLIT:-}" ]; then set -- "dataset.split=$SPLIT" "$@"; fi
if [ -n "${METHOD:-}" ]; then set -- "train.method=$METHOD" "$@"; fi
# The run folder of the final settings (a bad config or override is reported here, in one line).
RUN_DIR=$(python -m util.config --config "$CONFIG" --get run_dir "$@") || exit 2
mkdir -p "$RUN_DIR"
LOG="$RUN_DIR/out.log"
log_start=0
if [ -f "$LOG" ]; then log_start=$(wc -l < "$LOG"); fi

# torchrun writes into a FIFO read by tee. tee ignores SIGTERM, so that a signal to the whole process group
# never cuts the log (or the trainer's last lines) short; this script forwards a SIGTERM of its own to
# torchrun, which passes it on to the trainer processes.
fifo_dir=$(mktemp -d)
mkfifo "$fifo_dir/console"
(trap '' TERM; exec tee -a "$LOG") < "$fifo_dir/console" &
tee_pid=$!
# shellcheck disable=SC2086
torchrun --nproc_per_node "$NUM_GPU" --master_port "$PORT" --max-restarts "${MAX_RESTARTS:-0}" \
    ${TORCHRUN_ARGS:-} train.py --config "$CONFIG" "$@" > "$fifo_dir/console" 2>&1 &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null || true' TERM
trap ':' INT  # Ctrl-C reaches torchrun from the terminal; this script waits for it to finish
status=0
while :; do
    if wait "$pid"; then status=0; else status=$?; fi
    kill -0 "$pid" 2>/dev/null || break  # still running: the wait was cut short by a signal
done
wait "$tee_pid" || true
rm -rf "$fifo_dir"

if [ "$status" -ne 0 ]; then
    new=$(tail -n +"$((log_start + 1))" "$LOG")
    # torchrun prints its own report after the trainer's one-line error: repeat that line last. A one-line
    # error of the trainer is a user error, status 2.
    reason=$(printf '%s\n' "$new" | grep '^error: ' | tail -n 1 || true)
    if [ -n "$reason" ]; then
        echo "$reason" >&2
        exit 2
    fi
    # torchrun signalled ends with its own traceback, after the trainer saved and exited cleanly.
    if printf '%s\n' "$new" | grep -q 'stopped by SIGTERM at iteration'; then
        echo "stopped by SIGTERM; latest.pth is saved in $RUN_DIR: run the same command to resume" >&2
        exit 0
    fi
    echo "error: training failed with exit status $status; see $LOG" >&2
fi
exit "$status"
