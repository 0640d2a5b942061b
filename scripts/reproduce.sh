#!/bin/sh
# The published table in one command: every method x labelled split (x seed) trained with scripts/train.sh,
# each selected checkpoint scored on the test split by the published protocol, and the report written.
#
#   sh scripts/reproduce.sh <dataset> <num_gpu> <port> [methods] [splits] [seeds] [key.sub=value ...]
#   sh scripts/reproduce.sh potsdam 4 29500                                  # all methods, 1/5/10 %, seed 42
#   sh scripts/reproduce.sh deepglobe 8 29500 fixmatch,rs_mtdf 1,5 0,1,2 train.epochs=40
#
# methods, splits and seeds are comma-separated (defaults: supervised,fixmatch,unimatch_v2,rs_mtdf; 1,5,10;
# 42); arguments with '=' are config overrides passed to every run. Each run goes to
# $EXP/<method>/<split>/seed<seed> (EXP defaults to exp/<dataset>); the table and plot to $EXP/report/.
# CONFIG (default configs/<dataset>.yaml) picks the config file.
#
# Run it again after an interruption: finished runs are not retrained (their progress.json says finished),
# unfinished ones resume from latest.pth, and finished evaluations are kept. A run that fails is reported
# and the others go on; the exit status is 1 if any failed.
set -u

if [ $# -lt 3 ]; then
    echo "usage: sh scripts/reproduce.sh <dataset> <num_gpu> <port> [methods] [splits] [seeds] [key.sub=value ...]" >&2
    exit 2
fi
DATASET=$1
NUM_GPU=$2
PORT=$3
shift 3
METHODS=supervised,fixmatch,unimatch_v2,rs_mtdf
SPLITS=1,5,10
SEEDS=42
# Keep only the overrides in "$@" (the one list POSIX sh has), so that values with spaces survive.
positional=0
for arg in "$@"; do
    shift
    case "$arg" in
        *=*) set -- "$@" "$arg" ;;
        *)
            positional=$((positional + 1))
            case $positional in
                1) METHODS=$arg ;;
                2) SPLITS=$arg ;;
                3) SEEDS=$arg ;;
                *) echo "error: unexpected argument '$arg' (methods, splits and seeds are comma-separated)" >&2
                   exit 2 ;;
            esac ;;
    esac
done

for seed in $(echo "$SEEDS" | tr ',' ' '); do
    case "$seed" in
        ''|*[!0-9]*) echo "error: seed '$seed' is not a whole number (seeds are comma-separated, e.g. 0,1,2)" >&2
                     exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."
CONFIG=${CONFIG:-configs/${DATASET}.yaml}
EXP=${EXP:-exp/${DATASET}}
if [ ! -f "$CONFIG" ]; then
    echo "error: config file not found: $CONFIG (set CONFIG=... or use loveda, potsdam, deepglobe)" >&2
    exit 2
fi

# A run is finished when its progress.json says so; evaluating it again is needed only when best.pth is
# newer than the last test score.
finished() {
    [ -f "$1/progress.json" ] && grep -q '"finished": true' "$1/progress.json"
}
evaluated() {
    newest=$(ls -t "$1"/eval_best_test_*/metrics.json "$1/best.pth" 2>/dev/null | head -n 1)
    [ -n "$newest" ] && [ "$newest" != "$1/best.pth" ]
}

failed=""
for method in $(echo "$METHODS" | tr ',' ' '); do
    for split in $(echo "$SPLITS" | tr ',' ' '); do
        for seed in $(echo "$SEEDS" | tr ',' ' '); do
            run="$EXP/$method/$split/seed$seed"
            echo "=== $method, $split % labelled, seed $seed -> $run"
            if finished "$run"; then
                echo "finished before: not retrained"
            else
                if ! CONFIG=$CONFIG METHOD=$method SPLIT=$split SAVE_PATH=$run \
                        sh scripts/train.sh "$NUM_GPU" "$PORT" train.seed="$seed" "$@"; then
                    echo "FAILED: training of $run (see $run/out.log); going on with the others" >&2
                    failed="$failed $run"
                    continue
                fi
            fi
            if evaluated "$run"; then
                echo "test scores there already: $(ls -d "$run"/eval_best_test_* | head -n 1)"
                continue
            fi
            # The published protocol: the test split, the run's own resolved config (its model, mode and class
            # exclusions), and the weights best.pth was selected by (train.best_by).
            if ! python eval/eval.py --config "$run/config.yaml" --checkpoint "$run/best.pth" --split test; then
                echo "FAILED: test evaluation of $run; going on with the others" >&2
                failed="$failed $run"
            fi
        done
    done
done

python eval/report.py "$EXP" --out "$EXP/report" || failed="$failed report"
if [ -n "$failed" ]; then
    echo "error: $(echo $failed | wc -w) of the runs failed:$failed" >&2
    exit 1
fi
echo "all runs done; table and plot in $EXP/report/"
