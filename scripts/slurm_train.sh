#!/bin/sh
# Train on a SLURM allocation, one process per task (srun starts train.py once per task; each takes its rank,
# the world size and its local rank from SLURM; they meet at the allocation's first node, on a port derived from
# the job id unless MASTER_PORT is set). Submit it, or run it inside an allocation or a batch script of your own:
#   sbatch [sbatch options] scripts/slurm_train.sh [key.sub=value ...]
#   DATASET=potsdam METHOD=fixmatch SPLIT=1 sbatch --nodes 2 --ntasks-per-node 4 --gpus-per-node 4 \
#       scripts/slurm_train.sh dataset.root=/data/potsdam_tiles
#   salloc --ntasks 2 ...   then   sh scripts/slurm_train.sh ...
# DATASET, METHOD, SPLIT, SAVE_PATH and CONFIG come from the environment as for scripts/train.sh; relative paths
# are taken from the folder sbatch was run in. The defaults below are sbatch's; its command line overrides them.
#
# Stopping: SLURM's warning signal (--signal=USR1@180: three minutes before the time limit), a requeue or a
# preemption (SIGTERM) make every rank save latest.pth at the same step (or after the current evaluation) and exit
# 0. With --requeue a requeued job resumes exactly. RESUBMIT=1: a job stopped by the time-limit warning requeues
# itself (scontrol requeue) until the run is finished or fails; a job cancelled with scancel is not resubmitted.
#
#SBATCH --job-name=rs-mtdf
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=USR1@180
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
set -eu

if [ -z "${SLURM_JOB_ID:-}" ]; then
    echo "error: not inside a SLURM job: submit it with sbatch scripts/slurm_train.sh, run it inside salloc, or use scripts/train.sh on this machine" >&2
    exit 2
fi
if [ -n "${SLURM_STEP_ID:-}" ]; then
    echo "error: scripts/slurm_train.sh starts its own job step (srun): run it with sbatch or sh inside an allocation, not under srun" >&2
    exit 2
fi
# sbatch runs a copy of this script from its spool: the repository is where the submitted file was.
REPO=${RS_MTDF_REPO:-}
if [ -z "$REPO" ]; then
    for candidate in "$(dirname "$0")/.." \
            "$(dirname "$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')")/.." \
            "${SLURM_SUBMIT_DIR:-.}"; do
        if [ -f "$candidate/train.py" ] && [ -d "$candidate/scripts" ]; then REPO=$(cd "$candidate" && pwd); break; fi
    done
fi
if [ -z "$REPO" ]; then
    echo "error: cannot find the repository (train.py) from $0 or the job's command; set RS_MTDF_REPO" >&2
    exit 2
fi
HERE=${SLURM_SUBMIT_DIR:-$(pwd)}

# One element of a job array of scripts/reproduce.py --slurm: its line of the plan sets method, split, seed, folder.
if [ -n "${RS_MTDF_PLAN:-}" ] && [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
    line=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" "$RS_MTDF_PLAN")
    [ -n "$line" ] || { echo "error: $RS_MTDF_PLAN has no line $((SLURM_ARRAY_TASK_ID + 1))" >&2; exit 2; }
    tab=$(printf '\t')
    old_ifs=$IFS
    IFS=$tab
    # shellcheck disable=SC2086  # the line's overrides are tab-separated: split at tabs only
    set -- "$@" $line
    IFS=$old_ifs
fi

DATASET=${DATASET:-loveda}
CONFIG=${CONFIG:-$REPO/configs/${DATASET}.yaml}
case "$CONFIG" in /*) ;; *) CONFIG="$HERE/$CONFIG";; esac
if [ -n "${SAVE_PATH:-}" ]; then set -- "save_path=$SAVE_PATH" "$@"; fi
if [ -n "${SPLIT:-}" ]; then set -- "dataset.split=$SPLIT" "$@"; fi
if [ -n "${METHOD:-}" ]; then set -- "train.method=$METHOD" "$@"; fi
cd "$REPO"
RUN_DIR=$(python train.py --config "$CONFIG" --relative-to "$HERE" --get run_dir "$@") || exit 2

# Every task trains; util/dist.py checks that the step has the tasks the job asked for.
export RS_MTDF_TASKS="${SLURM_NTASKS:-1}"
echo "[slurm_train] job ${SLURM_JOB_ID} (restart ${SLURM_RESTART_COUNT:-0}): ${SLURM_NTASKS:-1} task(s) on ${SLURM_JOB_NODELIST:-?}; run folder $RUN_DIR"
status=0
srun --kill-on-bad-exit=1 python train.py --config "$CONFIG" --relative-to "$HERE" "$@" || status=$?

if [ "$status" -eq 0 ] && [ "${RESUBMIT:-0}" = 1 ] && [ -f "$RUN_DIR/progress.json" ]; then
    stop=$(python -c "import json, sys; p = json.load(open(sys.argv[1])); print('' if p.get('finished') else p.get('stopped_by', ''))" "$RUN_DIR/progress.json")
    if [ "$stop" = SIGUSR1 ]; then
        echo "[slurm_train] stopped at the time limit's warning, unfinished: requeueing job $SLURM_JOB_ID (RESUBMIT=1)"
        scontrol requeue "$SLURM_JOB_ID"
    fi
fi
exit "$status"
