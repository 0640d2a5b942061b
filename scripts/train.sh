#!/bin/sh
# Train on <num_gpu> processes of this machine:   sh scripts/train.sh <num_gpu> <port> [key.sub=value ...]
# The config, method, split and save path may come from the environment:
#   DATASET=potsdam METHOD=fixmatch SPLIT=5 sh scripts/train.sh 4 29500
# They become overrides placed before the command line's, so a key given on the command line wins (train.py
# applies overrides in order), and the run folder is the one the final settings name (save_path). Relative paths
# in CONFIG and in overrides are taken from the folder this script is started from.
# Several machines: pass torchrun's own options through TORCHRUN_ARGS, e.g. on each node
#   TORCHRUN_ARGS="--nnodes 2 --node_rank 0 --master_addr 10.0.0.1" sh scripts/train.sh 8 29500
# (on SLURM, sbatch scripts/slurm_train.sh finds the nodes itself). With no GPU the processes run on the CPU (gloo).
#
# The console is appended to <run>/out.log when the launch ends. Exit status: the trainers' (scripts/launch.py):
# 0 when done, or when SIGTERM or SIGUSR1 (to this script, or to the whole process group, as schedulers send it)
# stopped the run after saving latest.pth: run the same command to resume; 130 after Ctrl-C (saved the same way);
# 2 with the trainer's one-line error repeated last. A refused launch leaves no run folder behind.
set -eu

usage="usage: sh scripts/train.sh <num_gpu> <port> [key.sub=value ...]"
if [ $# -lt 2 ]; then
    echo "$usage" >&2
    exit 2
fi
case "$1" in ''|*[!0-9]*|0) echo "error: <num_gpu> must be a positive whole number, not '$1' ($usage)" >&2; exit 2;; esac
case "$2" in ''|*[!0-9]*) echo "error: <port> must be a port number (1-65535), not '$2' ($usage)" >&2; exit 2;; esac
if [ "$2" -lt 1 ] || [ "$2" -gt 65535 ]; then
    echo "error: <port> must be a port number (1-65535), not '$2' ($usage)" >&2
    exit 2
fi
NUM_GPU=$1
PORT=$2
shift 2
for arg in "$@"; do
    case "$arg" in
        *=*) ;;
        *) echo "error: '$arg' is not an override of the form key.sub=value ($usage)" >&2; exit 2;;
    esac
done

HERE=$(pwd)
REPO=$(cd "$(dirname "$0")/.." && pwd)
DATASET=${DATASET:-loveda}          # loveda | potsdam | deepglobe (or demo): picks configs/<DATASET>.yaml
CONFIG=${CONFIG:-$REPO/configs/${DATASET}.yaml}
case "$CONFIG" in /*) ;; *) CONFIG="$HERE/$CONFIG";; esac
if [ -n "${SAVE_PATH:-}" ]; then set -- "save_path=$SAVE_PATH" "$@"; fi
if [ -n "${SPLIT:-}" ]; then set -- "dataset.split=$SPLIT" "$@"; fi
if [ -n "${METHOD:-}" ]; then set -- "train.method=$METHOD" "$@"; fi
cd "$REPO"
# The run folder of the final settings; a bad config or override is reported here, in one line.
RUN_DIR=$(python train.py --config "$CONFIG" --relative-to "$HERE" --get run_dir "$@") || exit 2

# The launcher writes into a FIFO read by tee, into a temporary log. tee ignores SIGTERM and SIGINT, so that a
# signal to the whole process group never cuts the log (or the trainers' last lines) short; this script passes a
# SIGTERM or SIGUSR1 of its own on to the launcher, which passes it on to the trainers.
tmp_dir=$(mktemp -d)
mkfifo "$tmp_dir/console"
(trap '' TERM INT; exec tee "$tmp_dir/out.log") < "$tmp_dir/console" &
tee_pid=$!
# shellcheck disable=SC2086
python scripts/launch.py --nproc_per_node "$NUM_GPU" --master_port "$PORT" --max-restarts "${MAX_RESTARTS:-0}" \
    ${TORCHRUN_ARGS:-} train.py --config "$CONFIG" --relative-to "$HERE" "$@" > "$tmp_dir/console" 2>&1 &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null || true' TERM
trap 'kill -USR1 "$pid" 2>/dev/null || true' USR1
trap ':' INT  # Ctrl-C reaches the launcher and the trainers from the terminal; this script waits for them
status=0
while :; do
    if wait "$pid"; then status=0; else status=$?; fi
    kill -0 "$pid" 2>/dev/null || break  # still running: the wait was cut short by a signal
done
wait "$tee_pid" || true
if [ -d "$RUN_DIR" ]; then
    cat "$tmp_dir/out.log" >> "$RUN_DIR/out.log"
fi
if [ "$status" -eq 2 ]; then
    # The trainer's one-line error, repeated last (after the launcher's own lines).
    grep '^error: ' "$tmp_dir/out.log" | tail -n 1 >&2 || true
fi
rm -rf "$tmp_dir"
exit "$status"
